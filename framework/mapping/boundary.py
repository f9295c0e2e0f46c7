"""Byte-prefix chunk log-probabilities: who pays for "the token ends here" (docs/design.md §3.5).

A token-level model charges one decision twice over: the bytes of its next token *and* where that
token ends. The teacher token "12" (a Llama-3-style tokenizer groups up to three digits) says "the
number is 12 and stops": its probability is

    p_T("12") = P_T(bytes start with "12") · P_T(the token is "12", not "123", "125", … | that prefix).

A Qwen-style student writing "1", "2", "." decides the second factor at its "." token. With chunk
credit over the aligned chunks "12" | "." the end-of-number decision lands on the wrong chunk: a
student that stops one digit early ("12." for 123) sees its correct digits punished (p_T("12") ≈ 0)
and its wrong "." rewarded (p_T("." | "12") ≈ 1). Measured on the zoo, that drove a weak Qwen-style
student away from a Llama-3-style teacher (README, Known problems).

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

import numpy as np

from framework.mapping.token_bytes import TokenByteTable

BOUNDARY_MODES = ("byte_prefix", "token")  # token: the token-level chunks, d = 0 everywhere
_BLOCK_CELLS = 1 << 24  # bytes compared per block: bounds memory on long tokens


def extension_logmass(
    table: TokenByteTable,
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
    lp = np.asarray(logprobs_R, dtype=np.float64)
    cand = np.asarray(topk_ids_RK, dtype=np.int64)
    cand_lp = np.asarray(topk_logprobs_RK, dtype=np.float64)
    R, K = cand.shape if cand.ndim == 2 else (ids.shape[0], 0)
    d = np.zeros(R, dtype=np.float64)
    lens = table.byte_lengths[ids].astype(np.int64) if R else np.zeros(0, np.int64)
    rows = np.flatnonzero(lens > 0)
    if rows.shape[0] == 0 or K == 0 or table.flat_bytes.shape[0] == 0:
        return d
    width = int(lens[rows].max())
    step = max(1, _BLOCK_CELLS // (K * width))
    last_byte = table.flat_bytes.shape[0] - 1
    for lo in range(0, rows.shape[0], step):
        r = rows[lo : lo + step]
        cols = np.arange(width, dtype=np.int64)
        n_r, c_r = lens[r], cand[r]
        inside = cols[None, :] < n_r[:, None]  # [r, width]
        own = table.flat_bytes[np.minimum(table.byte_starts[ids[r]][:, None] + cols, last_byte)]
        other = table.flat_bytes[np.minimum(table.byte_starts[c_r][:, :, None] + cols, last_byte)]
        same = ((other == own[:, None, :]) | ~inside[:, None, :]).all(axis=2)
        extends = same & (table.byte_lengths[c_r] >= n_r[:, None]) & (c_r != ids[r][:, None])
        if not extends.any():
            continue
        ext_lp = np.where(extends, cand_lp[r], -np.inf)
        top = np.maximum(lp[r], ext_lp.max(axis=1))
        total = np.exp(lp[r] - top) + np.exp(ext_lp - top[:, None]).sum(axis=1)
        d[r] = np.maximum(top + np.log(total) - lp[r], 0.0)
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
    """bool[V]: some other non-special token's bytes strictly extend this token's bytes.

    In byte order the smallest string above ``b`` that differs from it extends ``b`` if any string
    does (a string above ``b`` that does not start with ``b`` is above all of ``b``'s extensions),
    so one comparison with the next distinct neighbour decides."""
    order = table.byte_order.astype(np.int64)
    if table.special_ids:
        order = order[~np.isin(order, np.fromiter(table.special_ids, np.int64))]
    out = np.zeros(table.vocab_size, dtype=bool)
    if order.shape[0] < 2:
        return out
    lens = table.byte_lengths[order].astype(np.int64)
    width = int(lens.max())
    keys = table.sort_keys(order, width)[:, :width]
    same_as_next = (lens[:-1] == lens[1:]) & (keys[:-1] == keys[1:]).all(axis=1)
    # the next distinct string after position i: past the end of i's run of equal strings
    new_run = np.concatenate(([True], ~same_as_next))
    run_last = np.flatnonzero(np.concatenate((new_run[1:], [True])))
    run_end = run_last[np.cumsum(new_run) - 1]
    nxt = run_end + 1
    has_next = nxt < order.shape[0]
    rows = np.flatnonzero(has_next)
    n = nxt[rows]
    cols = np.arange(width)[None, :]
    prefix_ok = ((keys[n] == keys[rows]) | (cols >= lens[rows][:, None])).all(axis=1)
    out[order[rows]] = prefix_ok & (lens[n] > lens[rows])
    return out


def chunk_boundary_shift(d_C: np.ndarray, chunk_sample: np.ndarray) -> np.ndarray:
    """float64[C]: ``d_c − d_{c−1}``, the amount added to each chunk's teacher log-probability
    (``d_{c−1}`` = 0 for the first chunk of a sample)."""
    prev = np.zeros(d_C.shape[0], dtype=np.float64)
    if d_C.shape[0] > 1:
        prev[1:] = np.where(chunk_sample[1:] == chunk_sample[:-1], d_C[:-1], 0.0)
    return d_C - prev
