"""Dataclasses that cross actor boundaries.

Arrays are NumPy (cheap to pickle into Ray's object store, no torch dependency at the boundary).
Shapes are in the names or the comments: ``R`` = response length in student tokens, ``Rt`` =
response length in teacher tokens, ``K`` = top-k, ``P`` = positions that carry a dense target.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

Message = dict[str, str]  # {"role": "system"|"user"|"assistant", "content": str}


@dataclass
class Prompt:
    """One conversation to continue. ``sample_id`` is unique per (prompt, sample index)."""

    prompt_id: str
    messages: list[Message]
    answer: str | None = None  # for verifiable tasks (accuracy); never shown to the model
    meta: dict[str, Any] = field(default_factory=dict)

    def sample_id(self, index: int) -> str:
        return f"{self.prompt_id}#{index}"


@dataclass
class Rollout:
    """A student response sampled by vLLM, with the behaviour policy's logprobs."""

    sample_id: str
    prompt: Prompt
    prompt_ids: np.ndarray  # int32[Lp], student tokens of the rendered prompt (student chat template)
    response_ids: np.ndarray  # int32[R], includes the stop token when finish_reason == "stop"
    logprobs: np.ndarray  # float32[R], behaviour logprob of each sampled token
    weight_version: int
    finish_reason: str  # "stop" | "length"
    response_text: str = ""  # decoded for logging / verification only (never used for alignment)


@dataclass
class TeacherRequest:
    """What the teacher scores: the conversation rendered with the TEACHER's chat template, followed
    by the student response tokenized by the teacher (and a teacher stop token if the student stopped).
    """

    sample_id: str
    input_ids: np.ndarray  # int32[Lt]
    response_start: int  # teacher positions [response_start, Lt) are response tokens (Rt = Lt - start)


@dataclass
class TeacherScores:
    """Teacher logprobs at every response position (row j predicts teacher response token j)."""

    sample_id: str
    token_logprobs: np.ndarray  # float32[Rt], logprob of the realised teacher token
    topk_ids: np.ndarray | None = None  # int32[Rt, K], teacher vocabulary ids, best first
    topk_logprobs: np.ndarray | None = None  # float32[Rt, K]


@dataclass
class DenseTarget:
    """Teacher top-k projected onto the student vocabulary at P student response positions.

    Each slot ``k`` of a row is a direct student id (``support_ids >= 0``), a byte-prefix group
    (``group_index >= 0``, ``support_ids == -1``: the teacher mass ``support_probs`` belongs to every
    student token extending the teacher token's bytes, split by the learner in proportion to the
    student's own probabilities, see `framework.mapping.topk`) or padding (mass 0). Each row of
    ``support_probs`` plus ``other_prob`` sums to 1. The group fields are None when no slot is a group.
    """

    positions: np.ndarray  # int32[P], index into the student response (0..R-1)
    support_ids: np.ndarray  # int32[P, S] student ids (padded with -1)
    support_probs: np.ndarray  # float32[P, S] target mass of each slot (0 where padded)
    other_prob: np.ndarray  # float32[P], target mass outside the support ("other" bucket)
    group_index: np.ndarray | None = None  # int32[P, S], group of the slot (0..G-1), -1 = none
    group_members: np.ndarray | None = None  # int32[M], distinct student ids of all groups, byte order
    group_bounds: np.ndarray | None = None  # int32[G, 2], group g = group_members[lo:hi]


@dataclass
class MappedSample:
    """A student sequence with per-token training signal, ready for the learner."""

    sample_id: str
    input_ids: np.ndarray  # int32[Lp + R] student prompt + response
    response_start: int  # == Lp
    behaviour_logprobs: np.ndarray  # float32[R]
    teacher_logprobs: np.ndarray  # float32[R], chunk teacher logprob credited to student tokens
    advantages: np.ndarray  # float32[R], credited (log p_T - log p_S) per student token
    mask: np.ndarray  # float32[R], 1 = train on this token
    weight_version: int
    dense: DenseTarget | None = None
    reward: float | None = None  # task correctness (1.0 / 0.0) when a verifier exists
    diagnostics: dict[str, float] = field(default_factory=dict)
    # rewards of this sample's prompt group in its step (framework.algo.reward.attach_reward_groups)
    group_reward_sum: float = 0.0
    group_reward_count: int = 0
    teacher: str = ""  # the teacher that scored it, in a multi-teacher run (its metrics' label)

    @property
    def num_response_tokens(self) -> int:
        return int(self.mask.shape[0])


@dataclass
class PreferencePair:
    """Offline (prompt, chosen, rejected) triple for preference distillation (CTPD / DPO)."""

    pair_id: str
    messages: list[Message]
    chosen: str
    rejected: str
