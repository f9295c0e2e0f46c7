"""The teacher scoring protocol and the conversions every backend shares.

For a ``TeacherRequest`` with ``input_ids`` (``Lt`` tokens) and ``response_start`` (``s``), a backend
returns, for each response position ``j = 0 .. Rt-1`` (``Rt = Lt - s``), the teacher's next-token
distribution *before* response token ``j``, i.e. ``log p_T(. | input_ids[: s + j])``:

- ``token_logprobs[j] = log p_T(input_ids[s + j] | input_ids[: s + j])`` (the realised token), and
- ``topk_ids[j], topk_logprobs[j]``: the ``k`` most likely tokens there, best first.

These are the sampled-path signal of Niu et al. [1] and the dense top-k signal of
docs/design.md §3.6 (references: docs/design.md §12).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np

from framework.data.prompts import DataError
from framework.types import TeacherRequest, TeacherScores


class TeacherInputTooLong(DataError):
    """A teacher sequence (prompt in the teacher's template + response) is longer than the teacher
    accepts. A data error: the driver skips and counts that sample, the rest of the batch goes on."""

    def __init__(self, message: str, sample_ids: tuple[str, ...] = ()):
        super().__init__(message)
        self.sample_ids = sample_ids


class TeacherConfigError(ValueError):
    """The teacher cannot serve the run as configured (e.g. ``top_k`` above its ``max_logprobs``):
    the same on every request, so the driver stops the run instead of retrying."""


class TeacherBackend(Protocol):
    def score(self, requests: list[TeacherRequest], top_k: int) -> list[TeacherScores]:
        """One ``TeacherScores`` per request, in order. ``top_k = 0``: realised-token logprobs only
        (``topk_ids`` / ``topk_logprobs`` are None)."""
        ...


def check_request(req: TeacherRequest, max_len: int | None = None) -> np.ndarray:
    """Validate one request; return its ids as int64 (what the engines take)."""
    ids = np.asarray(req.input_ids)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"TeacherRequest {req.sample_id!r}: input_ids must be a 1-D integer array")
    if not 1 <= req.response_start <= len(ids):
        raise ValueError(
            f"TeacherRequest {req.sample_id!r}: response_start={req.response_start} must be in "
            f"[1, {len(ids)}] (the first response token needs at least one token before it)"
        )
    if max_len is not None and len(ids) > max_len:
        raise TeacherInputTooLong(
            f"TeacherRequest {req.sample_id!r} has {len(ids)} tokens; the teacher accepts at most "
            f"{max_len} (raise the teacher's max_model_len or shorten the sample)",
            (req.sample_id,),
        )
    return ids.astype(np.int64)


def check_top_k(top_k: int, max_top_k: int | None = None) -> None:
    if top_k < 0:
        raise TeacherConfigError(f"top_k must be >= 0 (got {top_k})")
    if max_top_k is not None and top_k > max_top_k:
        raise TeacherConfigError(
            f"top_k={top_k} exceeds the teacher engine's max_logprobs={max_top_k}; "
            "start the teacher with max_logprobs >= top_k"
        )


def empty_scores(sample_id: str, top_k: int) -> TeacherScores:
    return TeacherScores(
        sample_id=sample_id,
        token_logprobs=np.zeros(0, np.float32),
        topk_ids=np.zeros((0, top_k), np.int32) if top_k else None,
        topk_logprobs=np.zeros((0, top_k), np.float32) if top_k else None,
    )


Candidate = tuple[float, int | None]  # (logprob, vocabulary rank with 1 = best, or None)


def scores_from_candidates(
    req: TeacherRequest,
    ids: np.ndarray,
    positions: Sequence[Mapping[int, Candidate] | None],
    top_k: int,
) -> TeacherScores:
    """Build ``TeacherScores`` from per-position candidate maps (vLLM's ``prompt_logprobs``:
    ``positions[p]`` maps token id -> (logprob, rank) for the realised token ``ids[p]`` plus the
    top-k; the realised token is a ``k+1``-th entry when it is not among the k best).

    The top-k is exactly the k best, sorted by logprob (ties by rank, then id) — never the extra
    realised-token entry unless it truly is among them.
    """
    start, n = req.response_start, len(ids)
    rt = n - start
    token_lp = np.empty(rt, np.float32)
    topk_ids = np.empty((rt, top_k), np.int32) if top_k else None
    topk_lp = np.empty((rt, top_k), np.float32) if top_k else None
    for j in range(rt):
        cand = positions[start + j]
        realised = int(ids[start + j])
        if cand is None or realised not in cand:
            raise RuntimeError(
                f"teacher returned no logprob for the realised token at position {start + j} of "
                f"{req.sample_id!r}"
            )
        token_lp[j] = cand[realised][0]
        if top_k:
            ranked = sorted(cand.items(), key=lambda kv: (-kv[1][0], kv[1][1] or 0, kv[0]))[:top_k]
            if len(ranked) < top_k:
                raise RuntimeError(
                    f"teacher returned {len(ranked)} candidates at position {start + j} of "
                    f"{req.sample_id!r}, fewer than top_k={top_k} (vocabulary smaller than k?)"
                )
            topk_ids[j] = [tok for tok, _ in ranked]  # type: ignore[index]
            topk_lp[j] = [c[0] for _, c in ranked]  # type: ignore[index]
    return TeacherScores(req.sample_id, token_lp, topk_ids, topk_lp)
