"""Sampled-path chunk credit (docs/design.md §3.5; Niu et al. 2026 [1], "Breaking the Tokenizer Barrier").

For each aligned chunk c (a student token range and a teacher token range over the same bytes):

    log p_T(c) = Σ_{j ∈ c} log p_T(t_j | t_<j)        (realised teacher tokens)
    log p_S(c) = Σ_{i ∈ c} log p_S(s_i | s_<i)        (behaviour logprobs of the sampled student tokens)
    A_c        = log p_T(c) − log p_S(c)              (chunk-level reverse-KL advantage, cf. [5])

``A_c`` is credited to the chunk's student tokens, Σ_i adv_i = A_c:

- ``proportional``: adv_i = A_c · lpS_i / lpS_c  (uniform when |lpS_c| < eps: no mass to split by)
- ``uniform``:      adv_i = A_c / n_c
- ``last``:         adv_i = A_c on the chunk's last student token, 0 elsewhere

and the per-token teacher target is ``teacher_logprob_i = lpS_i + adv_i``, so that its chunk sum is
exactly log p_T(c). Chunk sums telescope: Σ_c log p_T(c) is the teacher's logprob of the aligned bytes.

Stop-token bridging: the student's stop token is scored against the teacher's whole stop set at that
position, ``log p_T(stop) = logsumexp_{t ∈ stop set available} log p_T(t)`` (the realised appended
stop token, plus other stop ids found in that row's top-k).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CREDIT_MODES = ("proportional", "uniform", "last")


@dataclass
class ChunkCredit:
    """Per-token credit of a batch (flat over the student tokens) and per-chunk sums."""

    advantages: np.ndarray  # float64[Ns], 0 where the token is not aligned
    teacher_logprobs: np.ndarray  # float64[Ns], lpS_i + adv_i (= lpS_i where not aligned)
    chunk_logp_student: np.ndarray  # float64[C]
    chunk_logp_teacher: np.ndarray  # float64[C]
    chunk_num_student: np.ndarray  # int64[C]
    chunk_num_teacher: np.ndarray  # int64[C]


def chunk_credit(
    student_chunk: np.ndarray,
    student_logprobs: np.ndarray,
    teacher_chunk: np.ndarray,
    teacher_logprobs: np.ndarray,
    num_chunks: int,
    mode: str = "proportional",
    eps: float = 1e-6,
    teacher_shift: np.ndarray | None = None,
) -> ChunkCredit:
    """Credit each chunk's advantage to its student tokens (see module docstring).

    ``teacher_shift`` (float64[C]) is added to each chunk's teacher log-probability: the byte-prefix
    boundary term ``d_c − d_{c−1}`` of `framework.mapping.boundary` (None: token-level chunks).

    ``student_chunk`` / ``teacher_chunk`` come from :func:`framework.mapping.align.align_flat`:
    chunk ids are non-decreasing along the tokens, -1 for tokens without a chunk.
    """
    if mode not in CREDIT_MODES:
        raise ValueError(f"credit mode {mode!r} is not one of {CREDIT_MODES}")
    lp_s = np.asarray(student_logprobs, dtype=np.float64)
    lp_t = np.asarray(teacher_logprobs, dtype=np.float64)
    s_idx = np.flatnonzero(student_chunk >= 0)
    t_idx = np.flatnonzero(teacher_chunk >= 0)
    s_c, t_c = student_chunk[s_idx], teacher_chunk[t_idx]
    lpS_C = np.bincount(s_c, weights=lp_s[s_idx], minlength=num_chunks)
    lpT_C = np.bincount(t_c, weights=lp_t[t_idx], minlength=num_chunks)
    nS_C = np.bincount(s_c, minlength=num_chunks)
    nT_C = np.bincount(t_c, minlength=num_chunks)
    if teacher_shift is not None:
        lpT_C = lpT_C + teacher_shift
    adv_C = lpT_C - lpS_C

    share = np.zeros(s_idx.shape[0], dtype=np.float64)  # fraction of A_c given to each aligned token
    if mode == "last":
        last = np.ones(s_idx.shape[0], dtype=bool)
        last[:-1] = s_c[1:] != s_c[:-1]
        share[last] = 1.0
    else:
        uniform = 1.0 / np.maximum(nS_C[s_c], 1)
        if mode == "uniform":
            share = uniform
        else:
            denom = lpS_C[s_c]
            small = np.abs(denom) < eps
            share = np.where(small, uniform, lp_s[s_idx] / np.where(small, 1.0, denom))

    advantages = np.zeros(lp_s.shape[0], dtype=np.float64)
    advantages[s_idx] = adv_C[s_c] * share
    return ChunkCredit(
        advantages=advantages,
        teacher_logprobs=lp_s + advantages,
        chunk_logp_student=lpS_C,
        chunk_logp_teacher=lpT_C,
        chunk_num_student=nS_C,
        chunk_num_teacher=nT_C,
    )


def bridged_stop_logprob(
    realised_logprob_B: np.ndarray,
    realised_id_B: np.ndarray,
    stop_ids: np.ndarray,
    topk_ids_BK: np.ndarray | None = None,
    topk_logprobs_BK: np.ndarray | None = None,
) -> np.ndarray:
    """log Σ_{t ∈ teacher stop set} p_T(t) at B stop positions (float64[B]).

    The realised (appended) stop token is always counted; other stop ids count when they appear in
    the position's top-k row (each id once).
    """
    realised = np.asarray(realised_logprob_B, dtype=np.float64)
    if topk_ids_BK is None or topk_logprobs_BK is None or realised.shape[0] == 0:
        return realised
    ids = np.asarray(topk_ids_BK)
    lps = np.asarray(topk_logprobs_BK, dtype=np.float64)
    extra = np.isin(ids, stop_ids) & (ids != np.asarray(realised_id_B)[:, None])
    if not extra.any():
        return realised
    # A stop id listed twice in a row would be counted twice: keep only its first occurrence.
    order = np.argsort(ids, axis=1, kind="stable")
    sorted_ids = np.take_along_axis(ids, order, axis=1)
    dup_sorted = np.zeros_like(extra)
    dup_sorted[:, 1:] = sorted_ids[:, 1:] == sorted_ids[:, :-1]
    dup = np.zeros_like(extra)
    np.put_along_axis(dup, order, dup_sorted, axis=1)
    extra &= ~dup
    top = np.maximum(realised, np.where(extra, lps, -np.inf).max(axis=1))
    total = np.exp(realised - top) + np.where(extra, np.exp(lps - top[:, None]), 0.0).sum(axis=1)
    return top + np.log(total)
