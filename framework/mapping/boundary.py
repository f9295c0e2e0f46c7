"""Byte-prefix chunk log-probabilities: who pays for "the token ends here" (docs/design.md §3.5).

A token-level model charges one decision twice over: the bytes of its next token *and* where that
token ends. The teacher token "12" (a Llama-3-style tokenizer groups up to three digits) says "the
number is 12 and stops": its probability is

    p_T("12") = P_T(bytes start with "12") · P_T(the token is "12", not "123", "125", … | that prefix).

A Qwen-style student writing "1", "2", "." decides the second factor at its "." token. With chunk
credit over the aligned chunks "12" | "." the end-of-number decision lands on the wrong chunk: a
student that stops one digit early ("12." for 123) sees its correct digits punished (p_T("12") ≈ 0)
and its wrong "." rewarded (p_T("." | "12") ≈ 1). Measured on the zoo, that drove a Gemma-style
student away from a Llama-3-style teacher (README, "Where a teacher token ends").

The fix is the byte-level chain rule. Chunk c covers bytes [a_c, b_c) and ends with teacher token
t_c; the byte-level conditional of its bytes is

    log P_T(bytes[a_c:b_c] | bytes[:a_c]) = Σ_{j ∈ c} log p_T(t_j) + d_c − d_{c−1},
    d_c = log Σ_{τ : bytes(τ) ⊒ bytes(t_c)} p_T(τ | t_<c) − log p_T(t_c | t_<c)  ≥ 0,

the mass of every token that *starts* with bytes(t_c) (t_c included) against t_c's own: the factor
"ends here", moved from chunk c to the chunk after it (d of the previous chunk is 0 at a sample's
start; a final chunk with no successor keeps its d, since no sampled byte decides it). The sums over
a sample telescope to the same total. The mass is read from the teacher's top-k row at t_c, a lower
bound (extensions outside the top-k are missing), and ignores multi-token spellings of the prefix
(a model trained on canonical tokenizations gives them little mass). This is the byte-prefix
marginal of "Cross-Tokenizer On-Policy Distillation via Byte-Prefix Marginalization" [4], applied
to the sampled path rather than to the top-k target (`framework.mapping.topk`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from framework.mapping.token_bytes import TokenByteTable, void_view
from framework.mapping.topk import prefix_successors

BOUNDARY_MODES = ("byte_prefix", "token")  # token: the token-level chunks, d = 0 everywhere


@dataclass(frozen=True)
class PrefixRanges:
    """Every token's extensions as one range of the tokenizer's byte order (built once per tokenizer).

    With the tokens that have bytes sorted by bytes, the strings that start with ``b`` form one
    contiguous run: from the first string equal to ``b`` up to the first string above every
    extension of ``b`` (its prefix successor). So "τ's bytes start with t's" is
    ``0 <= rank[τ] − lo[t] < span[t]``: one unsigned comparison per top-k entry, no byte compared.
    """

    rank: np.ndarray  # int32[V] position in byte order, -1 for tokens without bytes
    lo: np.ndarray  # int32[V] first position whose string equals the token's bytes
    span: np.ndarray  # int32[V] length of the run of strings that start with the token's bytes
    equal: np.ndarray  # int32[V] how many of them equal the token's bytes (the token included)


def prefix_ranges(table: TokenByteTable) -> PrefixRanges:
    """The `PrefixRanges` of a tokenizer (vectorised: one sort-key table and two binary searches)."""
    order = table.byte_order.astype(np.int64)
    V, N = table.vocab_size, order.shape[0]
    rank = np.full(V, -1, dtype=np.int32)
    lo = np.zeros(V, dtype=np.int32)
    span = np.zeros(V, dtype=np.int32)
    equal = np.zeros(V, dtype=np.int32)
    if N == 0:
        return PrefixRanges(rank, lo, span, equal)
    lens = table.byte_lengths[order].astype(np.int64)
    width = int(lens.max())
    keys = table.sort_keys(order, width)
    sorted_keys = void_view(keys)
    rank[order] = np.arange(N)
    starts = np.searchsorted(sorted_keys, sorted_keys, side="left")
    succ, has_succ = prefix_successors(keys, lens, width)
    ends = np.full(N, N, dtype=np.int64)
    ends[has_succ] = np.searchsorted(sorted_keys, void_view(succ[has_succ]), side="left")
    lo[order], span[order] = starts, ends - starts
    equal[order] = np.searchsorted(sorted_keys, sorted_keys, side="right") - starts
    return PrefixRanges(rank, lo, span, equal)


def extension_logmass(
    ranges: PrefixRanges,
    ids_R: np.ndarray,
    logprobs_R: np.ndarray,
    topk_ids_RK: np.ndarray,
    topk_logprobs_RK: np.ndarray,
) -> np.ndarray:
    """float64[R]: ``d = log(p(t) + Σ_{k : id_k ≠ t, bytes(id_k) ⊒ bytes(t)} p_k) − log p(t)`` per row.

    0 where the realised token has no bytes (a special token: nothing extends it) or no top-k
    entry extends it.
    """
    ids = np.asarray(ids_R, dtype=np.int64)
    d = np.zeros(ids.shape[0], dtype=np.float64)
    cand = np.asarray(topk_ids_RK)
    if cand.ndim != 2 or cand.shape[1] == 0 or ids.shape[0] == 0:
        return d
    # a row can have extensions only when its token's run holds more than the token itself
    rows = np.flatnonzero(ranges.span[ids] > 1)
    if rows.shape[0] == 0:
        return d
    t, c = ids[rows], cand[rows]
    offset = (ranges.rank[c] - ranges.lo[t][:, None]).view(np.uint32)  # rank −1 wraps to a huge value
    extends = (offset < ranges.span[t][:, None].view(np.uint32)) & (c != t[:, None])
    hit = np.flatnonzero(extends.any(axis=1))
    if hit.shape[0] == 0:
        return d
    rows, extends = rows[hit], extends[hit]
    ext_lp = np.where(extends, np.asarray(topk_logprobs_RK)[rows].astype(np.float64), -np.inf)
    own = np.asarray(logprobs_R, dtype=np.float64)[rows]
    top = np.maximum(own, ext_lp.max(axis=1))
    total = np.exp(own - top) + np.exp(ext_lp - top[:, None]).sum(axis=1)
    d[rows] = np.maximum(top + np.log(total) - own, 0.0)
    return d


def last_tokens(chunk_of_token: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(chunk ids, token index): the last token of every chunk on one side (a chunk's tokens are
    contiguous and chunk ids never decrease along the tokens; -1 = not aligned)."""
    aligned = np.flatnonzero(chunk_of_token >= 0)
    c = chunk_of_token[aligned]
    last = np.ones(aligned.shape[0], dtype=bool)
    last[:-1] = c[1:] != c[:-1]
    return c[last], aligned[last]


def extendable_tokens(table: TokenByteTable) -> np.ndarray:
    """bool[V]: some other token's bytes strictly extend this token's bytes (its run of the byte
    order holds more than the strings equal to it)."""
    ranges = prefix_ranges(table)
    return ranges.span > ranges.equal


def chunk_boundary_shift(d_C: np.ndarray, chunk_sample: np.ndarray) -> np.ndarray:
    """float64[C]: ``d_c − d_{c−1}``, the amount added to each chunk's teacher log-probability
    (``d_{c−1}`` = 0 for the first chunk of a sample)."""
    prev = np.zeros(d_C.shape[0], dtype=np.float64)
    if d_C.shape[0] > 1:
        prev[1:] = np.where(chunk_sample[1:] == chunk_sample[:-1], d_C[:-1], 0.0)
    return d_C - prev
