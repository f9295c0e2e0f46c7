"""Byte-offset chunk alignment between two tokenizations of the same bytes (docs/design.md §3.4).

Given token byte lengths ``l_i`` (student) and ``m_j`` (teacher) of the same byte string, the token
*end* offsets ``e_i = Σ_{i'≤i} l_i'`` and ``f_j = Σ_{j'≤j} m_j'`` are strictly increasing (zero-length
tokens aside). The sync points are the offsets present on both sides, ``S = {e_i} ∩ {f_j}``; the
chunks are the byte spans between consecutive sync points, each with a contiguous student token range
and a contiguous teacher token range (the dual-pointer chunking of Niu et al. 2026, docs/design.md
§12 [1], computed without a pointer loop). Token i belongs to the chunk closed by the first sync
point ≥ e_i.

Everything is vectorised over a *batch*: the samples' byte ranges are laid end to end in one global
coordinate (sample b occupies ``(base_b, base_b + covered_b]``); one tally over that coordinate finds
all sync points and its running count assigns all chunks. O(N + bytes) in NumPy, no Python loop over
tokens or samples.

Only the first ``covered_b`` bytes of sample b are aligned (the valid, matching prefix); tokens that
end beyond it, zero-length tokens (special tokens), and tokens after the last sync point of their
sample (a tail with no common boundary) get chunk ``-1``: no signal, masked.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class FlatAlignment:
    """Chunks of a batch of B samples; token arrays are concatenated over the batch."""

    student_chunk: np.ndarray  # int64[Ns] chunk id of each student token, -1 = not aligned
    teacher_chunk: np.ndarray  # int64[Nt] chunk id of each teacher token, -1 = not aligned
    chunk_end: np.ndarray  # int64[C] global byte offset closing each chunk (the sync point)
    chunk_sample: np.ndarray  # int64[C] sample index of each chunk
    student_start: np.ndarray  # int64[Ns] global byte offset where each student token starts
    teacher_start: np.ndarray  # int64[Nt]
    student_limit: np.ndarray  # int64[Ns] global end of the covered bytes of the token's sample
    teacher_limit: np.ndarray  # int64[Nt]

    @property
    def num_chunks(self) -> int:
        return int(self.chunk_end.shape[0])


def _segment_ids(offsets_B1: np.ndarray) -> np.ndarray:
    counts = np.diff(offsets_B1)
    return np.repeat(np.arange(counts.shape[0], dtype=np.int64), counts)


def _global_ends(
    lens_N: np.ndarray, offsets_B1: np.ndarray, base_B: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per-token end offset in the global coordinate, and the token's sample index."""
    cum_N = np.cumsum(lens_N, dtype=np.int64)
    before_B = np.concatenate(([0], cum_N))[offsets_B1[:-1]]  # bytes of earlier samples
    seg_N = _segment_ids(offsets_B1)
    return cum_N - before_B[seg_N] + base_B[seg_N], seg_N


def align_flat(
    student_lens: np.ndarray,
    student_offsets: np.ndarray,
    teacher_lens: np.ndarray,
    teacher_offsets: np.ndarray,
    covered: np.ndarray,
) -> FlatAlignment:
    """Align a batch of token sequences by byte offsets.

    Args:
        student_lens: int[Ns] byte length of every student token (all samples concatenated).
        student_offsets: int[B+1] sample b's student tokens are ``[offsets[b], offsets[b+1])``.
        teacher_lens, teacher_offsets: the same for the teacher.
        covered: int[B] bytes of each sample to align (both sides' bytes agree on this prefix).
    """
    covered_B = np.asarray(covered, dtype=np.int64)
    base_B = np.concatenate(([0], np.cumsum(covered_B)))[:-1]
    limit_B = base_B + covered_B
    s_lens = np.asarray(student_lens, dtype=np.int64)
    t_lens = np.asarray(teacher_lens, dtype=np.int64)
    s_end, s_seg = _global_ends(s_lens, np.asarray(student_offsets, dtype=np.int64), base_B)
    t_end, t_seg = _global_ends(t_lens, np.asarray(teacher_offsets, dtype=np.int64), base_B)
    s_limit, t_limit = limit_B[s_seg], limit_B[t_seg]
    # Active tokens have bytes inside the covered prefix; their ends are strictly increasing.
    s_active = (s_lens > 0) & (s_end <= s_limit)
    t_active = (t_lens > 0) & (t_end <= t_limit)
    s_act_end, t_act_end = s_end[s_active], t_end[t_active]
    # Both end sets are sorted, so a byte-indexed tally replaces sorted searches: an offset is a sync
    # point when it ends a token on both sides, and a token's chunk is the number of sync points
    # before its end (the same as searchsorted(sync, end), in O(bytes) instead of O(N log N)).
    total = int(limit_B[-1]) if limit_B.shape[0] else 0
    ends = np.zeros(total + 1, dtype=np.int8)
    ends[s_act_end] = 1
    ends[t_act_end] += 1
    is_sync = ends == 2
    sync = np.flatnonzero(is_sync)
    sync_sample = s_seg[s_active][is_sync[s_act_end]]  # every sync point ends an active student token
    syncs_through = np.cumsum(is_sync, dtype=np.int64)  # sync points at offsets ≤ each byte offset

    def assign(active: np.ndarray, act_end: np.ndarray, limit: np.ndarray) -> np.ndarray:
        chunk = np.full(active.shape[0], -1, dtype=np.int64)
        if sync.shape[0] == 0:
            return chunk
        k = syncs_through[act_end - 1]  # active ends are ≥ 1
        k_clipped = np.minimum(k, sync.shape[0] - 1)
        ok = (k < sync.shape[0]) & (sync[k_clipped] <= limit[active])  # closed inside its own sample
        chunk[np.flatnonzero(active)[ok]] = k[ok]
        return chunk

    return FlatAlignment(
        student_chunk=assign(s_active, s_act_end, s_limit),
        teacher_chunk=assign(t_active, t_act_end, t_limit),
        chunk_end=sync,
        chunk_sample=sync_sample,
        student_start=s_end - s_lens,
        teacher_start=t_end - t_lens,
        student_limit=s_limit,
        teacher_limit=t_limit,
    )


def boundary_pairs(
    alignment: FlatAlignment, student_lens: np.ndarray, teacher_lens: np.ndarray, teacher_ok: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Student tokens that start exactly where a teacher token starts (docs/design.md §3.6).

    Both models then condition on the same byte prefix, so the teacher's next-token row there is a
    valid target for the student's next token. Returns (student flat index int64[P], teacher flat
    index int64[P]). ``teacher_ok`` (bool[Nt]) excludes teacher rows that must not be used.
    """
    s_ok = (np.asarray(student_lens) > 0) & (alignment.student_start < alignment.student_limit)
    t_ok = teacher_ok & (np.asarray(teacher_lens) > 0) & (alignment.teacher_start < alignment.teacher_limit)
    s_idx, t_idx = np.flatnonzero(s_ok), np.flatnonzero(t_ok)
    if s_idx.shape[0] == 0 or t_idx.shape[0] == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    s_start, t_start = alignment.student_start[s_idx], alignment.teacher_start[t_idx]
    at = np.minimum(np.searchsorted(t_start, s_start), t_start.shape[0] - 1)
    hit = t_start[at] == s_start
    return s_idx[hit], t_idx[at[hit]]


@dataclass
class Alignment:
    """Alignment of ONE sample, with explicit chunk spans (for tests, reports and debugging)."""

    student_chunk: np.ndarray  # int64[R]
    teacher_chunk: np.ndarray  # int64[Rt]
    student_spans: np.ndarray  # int64[C, 2] [start, stop) student token range of each chunk
    teacher_spans: np.ndarray  # int64[C, 2]
    chunk_end: np.ndarray  # int64[C] byte offset closing each chunk

    @property
    def num_chunks(self) -> int:
        return int(self.chunk_end.shape[0])

    def spans(self) -> list[tuple[tuple[int, int], tuple[int, int]]]:
        return [
            ((int(s[0]), int(s[1])), (int(t[0]), int(t[1])))
            for s, t in zip(self.student_spans, self.teacher_spans)
        ]


def _spans(chunk: np.ndarray, num_chunks: int) -> np.ndarray:
    spans = np.zeros((num_chunks, 2), dtype=np.int64)
    idx = np.flatnonzero(chunk >= 0)
    if idx.shape[0]:
        c = chunk[idx]
        first = np.ones(idx.shape[0], dtype=bool)
        first[1:] = c[1:] != c[:-1]
        last = np.ones(idx.shape[0], dtype=bool)
        last[:-1] = c[1:] != c[:-1]
        spans[c[first], 0] = idx[first]
        spans[c[last], 1] = idx[last] + 1
    return spans


def align_tokens(student_lens: np.ndarray, teacher_lens: np.ndarray, covered: int | None = None) -> Alignment:
    """Align one sample (see :func:`align_flat`); ``covered`` defaults to the full student byte length."""
    s_lens = np.asarray(student_lens, dtype=np.int64)
    t_lens = np.asarray(teacher_lens, dtype=np.int64)
    if covered is None:
        covered = int(s_lens.sum())
    flat = align_flat(
        s_lens, np.array([0, s_lens.shape[0]]), t_lens, np.array([0, t_lens.shape[0]]), np.array([covered])
    )
    c = flat.num_chunks
    return Alignment(
        flat.student_chunk,
        flat.teacher_chunk,
        _spans(flat.student_chunk, c),
        _spans(flat.teacher_chunk, c),
        flat.chunk_end,
    )
