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

The mirror case: the *student* token is the coarse one. A Llama-3-style student writing "12" has
decided "the number ends after 2" (else it would have written "123"), while a Qwen-style teacher's
"1", "2" say nothing about it: the teacher decides that at its next token. Where the chunk's last
student token s has longer student tokens, the chunk takes the teacher's probability that the
bytes stop continuing s there, and the next chunk gets it back:

    d_c = log(1 − e_c),  e_c = Σ_{τ : bytes(s) + first byte of τ starts a student token} p_T(τ | t_≤c)

read from the teacher's row at its next token (the first of chunk c+1, or the appended stop); e_c
is a lower bound like the top-k mass above. Both cases use the same shift d_c − d_{c−1}: the first
only where the student's last token has no longer student token, the second only where it has, so a
chunk gets one or the other. d_c = 0 where the realised next teacher token itself continues s (a
non-canonical student spelling: s did not decide the end) or no row follows (a cut sample).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from framework.mapping.token_bytes import TokenByteTable, void_view
from framework.mapping.topk import prefix_successors
from framework.types import TeacherScores

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


def prefix_ranges(table: TokenByteTable) -> PrefixRanges:
    """The `PrefixRanges` of a tokenizer (vectorised: one sort-key table and two binary searches)."""
    order = table.byte_order.astype(np.int64)
    V, N = table.vocab_size, order.shape[0]
    rank = np.full(V, -1, dtype=np.int32)
    lo = np.zeros(V, dtype=np.int32)
    span = np.zeros(V, dtype=np.int32)
    if N == 0:
        return PrefixRanges(rank, lo, span)
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
    return PrefixRanges(rank, lo, span)


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


def extendable_tokens(continuations: np.ndarray) -> np.ndarray:
    """bool[V]: some other token's bytes strictly extend this token's bytes, i.e. some byte continues
    it (a row of ``continuation_bytes`` with a bit set)."""
    return np.asarray(continuations.any(axis=1), dtype=bool)


def chunk_boundary_shift(d_C: np.ndarray, chunk_sample: np.ndarray) -> np.ndarray:
    """float64[C]: ``d_c − d_{c−1}``, the amount added to each chunk's teacher log-probability
    (``d_{c−1}`` = 0 for the first chunk of a sample)."""
    prev = np.zeros(d_C.shape[0], dtype=np.float64)
    if d_C.shape[0] > 1:
        prev[1:] = np.where(chunk_sample[1:] == chunk_sample[:-1], d_C[:-1], 0.0)
    return d_C - prev


NO_BYTE = 256  # the first-byte code of a token without bytes: no token continues with it


def continuation_bytes(table: TokenByteTable) -> np.ndarray:
    """uint8[V, 33], a 257-bit set per token: bit ``b`` of row ``s`` (``row[b >> 3] & (0x80 >> (b & 7))``)
    is set when some token's bytes start with bytes(s) followed by byte ``b``; bit ``NO_BYTE`` (in
    column 32, which is always 0) never is, so a token without bytes needs no special case."""
    mask = np.zeros((table.vocab_size, 33), dtype=np.uint8)
    ids_of: dict[bytes, list[int]] = {}
    for i, b in enumerate(table.token_bytes):
        if b and i not in table.special_ids:
            ids_of.setdefault(b, []).append(i)
    rows: list[int] = []
    next_bytes: list[int] = []
    for b in ids_of:  # each distinct string once: its proper prefixes that are tokens gain b[L]
        for L in range(1, len(b)):
            for s in ids_of.get(b[:L], ()):
                rows.append(s)
                next_bytes.append(b[L])
    if rows:
        r, nb = np.asarray(rows, dtype=np.int64), np.asarray(next_bytes, dtype=np.int64)
        np.bitwise_or.at(mask, (r, nb >> 3), (0x80 >> (nb & 7)).astype(np.uint8))
    return mask


def first_bytes(table: TokenByteTable) -> np.ndarray:
    """intp[V]: each token's first byte, ``NO_BYTE`` for tokens without bytes."""
    out = np.full(table.vocab_size, NO_BYTE, dtype=np.intp)
    has = np.flatnonzero(table.byte_lengths > 0)
    out[has] = table.flat_bytes[table.byte_starts[has]]
    return out


_BIT_OF_CODE = (0x80 >> np.arange(8)).astype(np.uint8)  # the bit of a byte code in its cell


def _continues(
    continuations: np.ndarray, s: np.ndarray, teacher_ids: np.ndarray, first: np.ndarray
) -> np.ndarray:
    """bool[...]: the first byte of teacher token ``teacher_ids`` (codes ``first``) continues student
    token ``s`` (broadcast together)."""
    code = first[teacher_ids]
    cell = continuations.ravel()[s * continuations.shape[1] + (code >> 3)]
    return (cell & _BIT_OF_CODE[code & 7]) != 0


def student_end_logprob(
    continuations: np.ndarray,
    teacher_first_byte: np.ndarray,
    student_ids_R: np.ndarray,
    next_ids_R: np.ndarray,
    topk_ids_RK: np.ndarray,
    topk_logprobs_RK: np.ndarray,
) -> np.ndarray:
    """float64[R]: ``log(1 − e)`` per row, e = the teacher's top-k mass on next tokens whose first byte
    continues the student token (module docstring, the mirror case); 0 where the realised next
    teacher token itself continues it."""
    s = np.asarray(student_ids_R, dtype=np.int64)
    out = np.zeros(s.shape[0], dtype=np.float64)
    cand = np.asarray(topk_ids_RK, dtype=np.int64)
    if s.shape[0] == 0 or cand.ndim != 2 or cand.shape[1] == 0:
        return out
    realised = _continues(continuations, s, np.asarray(next_ids_R, dtype=np.int64), teacher_first_byte)
    cont = _continues(continuations, s[:, None], cand, teacher_first_byte)
    cont[realised] = False
    rows, cols = np.nonzero(cont)  # usually a small share of the entries: exp only those
    lp = np.asarray(topk_logprobs_RK)[rows, cols].astype(np.float64)
    mass = np.bincount(rows, weights=np.exp(lp), minlength=s.shape[0])
    # e < 1 whenever the realised token is not a continuation; the floor only guards rounding
    out[:] = np.log1p(-np.minimum(mass, 1.0 - 1e-9))
    return out


def gather_topk_rows(
    scores: list[TeacherScores], t_off: np.ndarray, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The top-k (ids, logprobs) rows at batch-flat teacher positions ``rows`` (ascending), sample by
    sample rather than concatenating every row of the batch (tens of MB on long batches)."""
    cuts = np.searchsorted(rows, t_off)
    used = [b for b in range(len(scores)) if cuts[b + 1] > cuts[b]]
    local = [rows[cuts[b] : cuts[b + 1]] - t_off[b] for b in used]
    ids = [np.asarray(scores[b].topk_ids)[r] for b, r in zip(used, local)]
    lps = [np.asarray(scores[b].topk_logprobs)[r] for b, r in zip(used, local)]
    if not ids:
        return np.zeros((0, 0), dtype=np.int64), np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(ids), np.concatenate(lps)


@dataclass(frozen=True)
class BoundaryTables:
    """What the byte-prefix chunks need of a tokenizer pair (built once per pair, at warm-up)."""

    student_extendable: np.ndarray  # bool[Vs] (extendable_tokens)
    student_continuations: np.ndarray  # uint8[Vs, 33] (continuation_bytes)
    teacher_ranges: PrefixRanges
    teacher_first_byte: np.ndarray  # intp[Vt] (first_bytes)

    @classmethod
    def of_pair(cls, student: TokenByteTable, teacher: TokenByteTable) -> BoundaryTables:
        continuations = continuation_bytes(student)
        return cls(
            extendable_tokens(continuations), continuations, prefix_ranges(teacher), first_bytes(teacher)
        )


def chunk_end_logmass(
    tables: BoundaryTables,
    student_chunk: np.ndarray,
    teacher_chunk: np.ndarray,
    num_chunks: int,
    s_flat: np.ndarray,
    t_flat: np.ndarray,
    t_off: np.ndarray,
    lp_t: np.ndarray,
    scores: list[TeacherScores],
    stop_rows: np.ndarray,
) -> np.ndarray:
    """float64[C] ``d_c`` of every chunk of a batch: the teacher's extension mass where the student's
    last token cannot extend itself, ``log(1 − e_c)`` where it can (module docstring).

    ``student_chunk`` / ``teacher_chunk``: chunk id per flat token (-1 = not aligned); ``t_off``: the
    samples' offsets into the teacher tokens; ``stop_rows``: flat positions of appended teacher stop
    tokens (a row that may follow a sample's last chunk).
    """
    d_C = np.zeros(num_chunks, dtype=np.float64)
    chunks, last = last_tokens(teacher_chunk)
    s_chunks, s_last = last_tokens(student_chunk)
    student_last = np.full(num_chunks, -1, dtype=np.int64)
    student_last[s_chunks] = s_flat[s_last]
    s_ids = student_last[chunks]
    self_ending = (s_ids >= 0) & tables.student_extendable[np.maximum(s_ids, 0)]
    # the teacher's token decides the end: only rows whose token some longer teacher token extends
    keep = ~self_ending & (s_ids >= 0) & (tables.teacher_ranges.span[t_flat[last]] > 1)
    if keep.any():
        ids, lps = gather_topk_rows(scores, t_off, last[keep])
        d_C[chunks[keep]] = extension_logmass(
            tables.teacher_ranges, t_flat[last[keep]], lp_t[last[keep]], ids, lps
        )
    # the student's token decides it: the teacher's next row, where it starts the next chunk (or is
    # the appended stop) inside the same sample
    nxt = last + 1
    inside = nxt < t_off[np.searchsorted(t_off, last, side="right")]
    safe = np.minimum(nxt, teacher_chunk.shape[0] - 1)
    follows = inside & ((teacher_chunk[safe] == chunks + 1) | np.isin(safe, stop_rows))
    mirror = self_ending & follows
    if mirror.any():
        ids, lps = gather_topk_rows(scores, t_off, nxt[mirror])
        d_C[chunks[mirror]] = student_end_logprob(
            tables.student_continuations,
            tables.teacher_first_byte,
            s_ids[mirror],
            t_flat[nxt[mirror]],
            ids,
            lps,
        )
    return d_C
