"""Offline preference distillation (``dpo`` baseline, ``ctpd``) on (prompt, chosen, rejected) pairs.

No Ray here. The pieces the controller's offline source (`framework.actors.pairs.PairBatches`) uses::

    encoded = encode_pairs(pairs, TokenMapper.from_paths(student, teacher))   # spans + teacher requests
    attach_teacher_scores(encoded, teacher.score(teacher_requests(encoded), top_k=0))
    attach_reference(encoded, learner.compute_logprobs(*student_sequences(encoded)))   # at version 0
    learner.train_pairs(encoded)              # build_preference_micro_batches inside, one optimizer step
"""

from framework.preference.batch import build_preference_batch, build_preference_micro_batches, pad_logprobs
from framework.preference.data import ZOO_PAIRS, load_preference_pairs, read_preference_jsonl
from framework.preference.evaluate import preference_metrics
from framework.preference.pairs import (
    EncodedPair,
    EncodedResponse,
    attach_reference,
    attach_teacher_scores,
    encode_pairs,
    responses_of,
    span_stats,
    student_sequences,
    teacher_requests,
)

__all__ = [
    "ZOO_PAIRS",
    "EncodedPair",
    "EncodedResponse",
    "attach_reference",
    "attach_teacher_scores",
    "build_preference_batch",
    "build_preference_micro_batches",
    "encode_pairs",
    "load_preference_pairs",
    "pad_logprobs",
    "preference_metrics",
    "read_preference_jsonl",
    "responses_of",
    "span_stats",
    "student_sequences",
    "teacher_requests",
]
