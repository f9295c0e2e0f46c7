"""Offline preference distillation (``dpo`` baseline, ``ctpd``) on (prompt, chosen, rejected) pairs.

No Ray here: `run_preference` drives one learner rank in-process; the Ray layer may wrap it.

    encoded = encode_pairs(pairs, TokenMapper.from_paths(student, teacher))   # spans + teacher requests
    attach_teacher_scores(encoded, teacher.score(teacher_requests(encoded), top_k=0))
    attach_reference(encoded, learner.compute_logprobs(*student_sequences(encoded)))   # at version 0
    learner.train_micro_batches(build_preference_micro_batches(encoded, micro_batch_tokens))
"""

from framework.preference.batch import build_preference_batch, build_preference_micro_batches, pad_logprobs
from framework.preference.data import ZOO_PAIRS, load_preference_pairs, read_preference_jsonl
from framework.preference.evaluate import greedy_task_accuracy, preference_metrics
from framework.preference.from_config import settings_from_config
from framework.preference.pairs import (
    EncodedPair,
    EncodedResponse,
    attach_reference,
    attach_teacher_scores,
    encode_pairs,
    responses_of,
    student_sequences,
    teacher_requests,
)
from framework.preference.run import (
    PREFERENCE_OBJECTIVES,
    PreferenceRunSettings,
    load_pairs,
    make_preference_learner,
    run_preference,
)

__all__ = [
    "PREFERENCE_OBJECTIVES",
    "ZOO_PAIRS",
    "EncodedPair",
    "EncodedResponse",
    "PreferenceRunSettings",
    "attach_reference",
    "attach_teacher_scores",
    "build_preference_batch",
    "build_preference_micro_batches",
    "encode_pairs",
    "greedy_task_accuracy",
    "load_pairs",
    "load_preference_pairs",
    "make_preference_learner",
    "pad_logprobs",
    "preference_metrics",
    "read_preference_jsonl",
    "responses_of",
    "run_preference",
    "settings_from_config",
    "student_sequences",
    "teacher_requests",
]
