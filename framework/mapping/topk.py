"""Teacher top-k → student vocabulary by byte prefix (docs/design.md §3.6), following the
byte-prefix marginal of "Cross-Tokenizer On-Policy Distillation via Byte-Prefix Marginalization" [4].

At a student position that is also a teacher token boundary both models condition on the same bytes.
The teacher's next-token distribution there is a distribution over how the continuation starts:
p_T(t) is the teacher's probability that the continuation starts with bytes(t) (as its token t). The
target q over student tokens takes each top-k teacher token t with p_T(t) in one of three ways:

1. **direct** — no student token strictly extends bytes(t): the mass goes to the LONGEST student token
   whose bytes are a prefix of bytes(t) (the student's first piece of that continuation)::

       q(π(t)) += p_T(t)            π(t) = argmax_{s : bytes(s) ⊑ bytes(t)} |bytes(s)|

   Teacher stop tokens map to the student stop token.
2. **group** — some student token strictly extends bytes(t) (teacher "1" then "2" vs the student's "12"):
   the student's first token is then any token of

       E(t) = {s not special : bytes(t) ⊑ bytes(s)}      (the student token equal to bytes(t) included)

   and p_T(t) bounds the student's mass on the whole of E(t), not on one member. The mass is spread
   over E(t) in proportion to the student's own (detached) probabilities — the student-side
   byte-prefix marginal::

       q(s) += p_T(t) · π_S(s) / Σ_{s' ∈ E(t)} π_S(s')        for every s ∈ E(t)

   Crediting p_T(t) to the student's "1" alone (the first piece) trains the student towards
   non-canonical tokenizations of its own text; we measured that collapse on a single-digit teacher
   and a 3-digit-group student (held-out accuracy 0.27 → 0.07 in 20 steps). The split needs π_S over
   E(t), so it happens in the learner's loss (`framework.algo.topk_kl.split_group_targets`); this
   module emits each group's mass and which student ids it covers.
3. **unmapped** — no student piece at all, a non-stop special token, or |E(t)| > ``max_group_size``
   (the learner gathers one logprob per member; see `build_projection_map`): the mass stays in ``other``.

    q(other) = 1 − Σ_s q(s)          (teacher mass outside the top-k + unmapped tokens)

E(t) misses one way the student could start the same bytes: a student piece SHORTER than bytes(t)
followed by more pieces (the student writing "1", "2|..." after a teacher "12"); weighting it would
need the student's next-step distribution, so like the direct rule this is the first-piece marginal.

Encoding. Sorting the student's eligible tokens by their bytes makes every E(t) a contiguous range of
that order (the byte strings starting with b form an interval in lexicographic order). Groups are those
ranges, deduplicated (teacher tokens with the same E(t) share a group); they are built once per
tokenizer pair. Per position the work is a gather, a row-wise sort of K keys and a segmented sum — no
Python loop over positions. Per sample, `pack_groups` ships only the student ids of the groups it uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from framework.mapping.token_bytes import TokenByteTable, void_view

MAX_GROUP_SIZE = 1024  # largest E(t) spread over; larger groups stay in `other` (learner memory)


@dataclass
class ProjectionMap:
    """The top-k projection of one (student, teacher) pair, precomputed once.

    ``teacher_to_student`` gives each teacher id's DIRECT student id (-1: none). ``teacher_to_group``
    gives the group of a teacher token whose bytes some student token extends (-1: none): group ``g``
    is E(t) = ``student_order[group_bounds[g, 0] : group_bounds[g, 1]]``. A teacher id has at most one
    of the two; with neither its mass stays in ``other``.
    """

    teacher_to_student: np.ndarray  # int32[Vt]
    exact: np.ndarray  # bool[Vt]: bytes(π(t)) == bytes(t) (the projection loses nothing for t)
    teacher_to_group: np.ndarray | None = None  # int32[Vt]; None: no groups (identity)
    group_bounds: np.ndarray | None = None  # int32[G, 2], half-open ranges of student_order
    student_order: np.ndarray | None = None  # int32[N]: non-special student ids with bytes, by bytes
    _codes: tuple[np.ndarray, int] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def num_groups(self) -> int:
        return 0 if self.group_bounds is None else int(self.group_bounds.shape[0])

    def group_members(self, g: int) -> np.ndarray:
        """int32[|E|]: the student ids of group ``g`` (in byte order)."""
        assert self.group_bounds is not None and self.student_order is not None
        lo, hi = self.group_bounds[g]
        return self.student_order[lo:hi]

    def target_codes(self) -> tuple[np.ndarray, int]:
        """(int64[Vt] code of each teacher id, offset): a student id, ``offset + g`` for group g, -1."""
        if self._codes is None:
            codes = self.teacher_to_student.astype(np.int64)
            offset = int(codes.max(initial=-1)) + 1
            if self.teacher_to_group is not None:
                grouped = self.teacher_to_group >= 0
                codes[grouped] = offset + self.teacher_to_group[grouped]
            self._codes = (codes, offset)
        return self._codes


def build_projection_map(
    student: TokenByteTable,
    teacher: TokenByteTable,
    teacher_stop_ids: frozenset[int],
    student_stop_id: int | None,
    max_group_size: int = MAX_GROUP_SIZE,
) -> ProjectionMap:
    """Direct piece or byte-prefix group of every teacher token (module docstring).

    A group larger than ``max_group_size`` student tokens is left unmapped: the learner gathers the
    student's logprob of every member at every position that uses the group.

    Vectorised over the vocabularies: the student's eligible tokens in byte order (``student.byte_order``,
    cached per tokenizer) are searched with every teacher token at once, as fixed-width keys that sort
    like the byte strings (`TokenByteTable.sort_keys`).
    """
    order = student.byte_order
    if student.special_ids:
        order = order[~np.isin(order, _id_array(student.special_ids))]
    N, Vt = order.shape[0], teacher.vocab_size
    t2s = np.full(Vt, -1, dtype=np.int32)
    t2g = np.full(Vt, -1, dtype=np.int32)
    exact = np.zeros(Vt, dtype=bool)
    if student_stop_id is not None and teacher_stop_ids:
        stops = np.array(sorted(teacher_stop_ids), dtype=np.int64)
        stops = stops[(stops >= 0) & (stops < Vt)]
        stops = stops[teacher.byte_lengths[stops] == 0]
        t2s[stops], exact[stops] = student_stop_id, True
    tids = teacher.byte_order.astype(np.int64)  # in byte order: sorted queries search fast
    if N == 0 or tids.shape[0] == 0:
        return ProjectionMap(t2s, exact, t2g, np.zeros((0, 2), dtype=np.int32), order)
    s_len = student.byte_lengths[order].astype(np.int64)
    t_len = teacher.byte_lengths[tids].astype(np.int64)
    width = int(max(s_len.max(), t_len.max()))
    s_keys, t_keys = student.sort_keys(order, width), teacher.sort_keys(tids, width)
    s_void, t_void = void_view(s_keys), void_view(t_keys)
    # Runs of equal student bytes (ids ascending inside a run): the run's DIRECT id is its first regular
    # piece, else its first byte-fallback piece (<0x41> and "A" share bytes: "A" wins).
    new_run = np.ones(N, dtype=bool)
    new_run[1:] = s_void[1:] != s_void[:-1]
    run_start = np.flatnonzero(new_run)
    run_of = np.cumsum(new_run) - 1
    regular = ~np.isin(order, _id_array(student.fallback_ids))
    first_regular = np.minimum.reduceat(np.where(regular, np.arange(N), N), run_start)
    run_direct = order[np.where(first_regular < N, first_regular, run_start)]

    # E(t) non-empty beyond bytes(t) itself <=> the first student string above bytes(t) extends it.
    above = np.searchsorted(s_void, t_void, side="right")
    ok = above < N
    rows = np.flatnonzero(ok)
    extended = np.zeros(tids.shape[0], dtype=bool)
    extended[rows] = _starts_with(s_keys[above[rows]], s_len[above[rows]], t_keys[rows], t_len[rows])

    # groups: E(t) = [lo, hi) of the byte order, with hi the position of the prefix successor of bytes(t)
    ext = np.flatnonzero(extended)
    lo = np.searchsorted(s_void, t_void[ext], side="left")
    succ, has_succ = prefix_successors(t_keys[ext], t_len[ext], width)
    hi = np.full(ext.shape[0], N, dtype=np.int64)
    hi[has_succ] = np.searchsorted(s_void, void_view(succ[has_succ]), side="left")
    fits = hi - lo <= max_group_size
    bounds = np.zeros((0, 2), dtype=np.int32)
    if fits.any():
        # number groups by first use in teacher id order; teacher ids sharing E(t) share the group
        members = tids[ext[fits]]
        pair = lo[fits] * (N + 1) + hi[fits]
        uniq, inverse = np.unique(pair, return_inverse=True)
        inverse = inverse.reshape(-1)
        first = np.full(uniq.shape[0], Vt, dtype=np.int64)
        np.minimum.at(first, inverse, members)  # a group's number: its first teacher id's rank
        by_first = np.argsort(first)
        number = np.empty(uniq.shape[0], dtype=np.int64)
        number[by_first] = np.arange(uniq.shape[0])
        t2g[members] = number[inverse]
        bounds = np.stack([uniq[by_first] // (N + 1), uniq[by_first] % (N + 1)], axis=1).astype(np.int32)

    # direct: the longest student string that is a prefix of bytes(t)
    rest = np.flatnonzero(~extended)
    pos = np.searchsorted(s_void, t_void[rest], side="left")
    hit = np.zeros(rest.shape[0], dtype=bool)
    inside = pos < N
    hit[inside] = s_void[pos[inside]] == t_void[rest[inside]]
    t2s[tids[rest[hit]]] = run_direct[run_of[pos[hit]]]
    exact[tids[rest[hit]]] = True
    # Otherwise let p be the student string just below the query q (initially bytes(t)): if p prefixes
    # q it is the longest student prefix of q; if not, no prefix of q is longer than c = lcp(p, q), and
    # the search goes on with q[:c] (each round shortens q, so at most `width` rounds).
    rest, pos = rest[~hit], pos[~hit]
    q_keys, q_len = t_keys[rest], t_len[rest]
    while rest.shape[0]:
        below = pos - 1
        has_below = below >= 0
        rest, q_keys, q_len, below = rest[has_below], q_keys[has_below], q_len[has_below], below[has_below]
        p_len = s_len[below]
        c = np.minimum(_common_prefix(s_keys[below, :width], q_keys[:, :width]), np.minimum(p_len, q_len))
        found = c == p_len
        t2s[tids[rest[found]]] = run_direct[run_of[below[found]]]
        go_on = ~found & (c > 0)
        rest, q_keys, c = rest[go_on], q_keys[go_on], c[go_on]
        q_keys[:, :width][np.arange(width)[None, :] >= c[:, None]] = 0  # the query becomes q[:c]
        q_keys[:, width], q_keys[:, width + 1] = c >> 8, c & 0xFF
        q_len = c
        q_void = void_view(q_keys)
        pos = np.searchsorted(s_void, q_void, side="left")
        hit = np.zeros(rest.shape[0], dtype=bool)
        inside = pos < N
        hit[inside] = s_void[pos[inside]] == q_void[inside]
        t2s[tids[rest[hit]]] = run_direct[run_of[pos[hit]]]
        rest, pos, q_keys, q_len = rest[~hit], pos[~hit], q_keys[~hit], q_len[~hit]
    return ProjectionMap(t2s, exact, t2g, bounds, order)


def _id_array(ids: frozenset[int]) -> np.ndarray:
    return np.fromiter(ids, dtype=np.int64, count=len(ids))


def _common_prefix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """int64[N]: index of the first differing column of two uint8[N, W] arrays (W where none differs)."""
    differ = a != b
    return np.where(differ.any(axis=1), differ.argmax(axis=1), a.shape[1]).astype(np.int64)


def _starts_with(
    keys: np.ndarray, lens: np.ndarray, prefix_keys: np.ndarray, prefix_lens: np.ndarray
) -> np.ndarray:
    """bool[N]: row i of ``keys`` is strictly longer than, and starts with, row i of ``prefix_keys``."""
    width = keys.shape[1] - 2
    same = _common_prefix(keys[:, :width], prefix_keys[:, :width]) >= prefix_lens
    return same & (lens > prefix_lens)


def prefix_successors(keys: np.ndarray, lens: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Keys of the smallest byte string above every string that starts with each row's bytes (strip
    trailing 0xFF bytes, add one to the last byte), and whether it exists (not for all-0xFF rows)."""
    body = keys[:, :width]
    cols = np.arange(width)[None, :]
    raisable = (body != 0xFF) & (cols < lens[:, None])
    has = raisable.any(axis=1)
    last = width - 1 - raisable[:, ::-1].argmax(axis=1)
    succ = np.where(cols < last[:, None], body, 0).astype(np.uint8)
    rows = np.arange(keys.shape[0])
    succ[rows, last] = body[rows, last] + 1  # wraps only on rows without a successor (not used)
    out = np.zeros_like(keys)
    out[:, :width] = succ
    n = last + 1
    out[:, width], out[:, width + 1] = n >> 8, n & 0xFF
    return out, has


def identity_projection(vocab_size: int) -> ProjectionMap:
    return ProjectionMap(np.arange(vocab_size, dtype=np.int32), np.ones(vocab_size, dtype=bool))


def project_topk(
    topk_ids_PK: np.ndarray, topk_logprobs_PK: np.ndarray, teacher_to_student: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Project P teacher top-k rows through a plain id map (teacher id → target id, -1 = unmapped).

    Returns ``support_ids int32[P, K]`` (distinct target ids; -1 marks padding, which may sit between
    entries where duplicates were merged), ``support_probs float32[P, K]`` (0 where padded) and
    ``other_prob float32[P]``; each row of support_probs plus other_prob sums to 1. The grouped
    projection of the module docstring is `project_topk_groups`.
    """
    ids, probs, other = _project_codes(topk_ids_PK, topk_logprobs_PK, teacher_to_student)
    return ids.astype(np.int32), probs, other


def project_topk_groups(
    topk_ids_PK: np.ndarray, topk_logprobs_PK: np.ndarray, projection: ProjectionMap
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Project P teacher top-k rows onto direct student ids and byte-prefix groups.

    Returns ``support_ids int32[P, K]``, ``support_probs float32[P, K]``, ``group_ids int32[P, K]`` and
    ``other_prob float32[P]``. Each slot holds one target: a direct student id (``support_ids >= 0``),
    or a group (``group_ids >= 0``, an index into ``projection.group_bounds``; ``support_ids == -1``
    there), with its summed teacher mass in ``support_probs``; slots with neither are padding (mass 0).
    Each row of support_probs plus other_prob sums to 1.
    """
    codes, offset = projection.target_codes()
    merged, probs, other = _project_codes(topk_ids_PK, topk_logprobs_PK, codes)
    is_group = merged >= offset
    support_ids = np.where(is_group, -1, merged).astype(np.int32)
    group_ids = np.where(is_group, merged - offset, -1).astype(np.int32)
    return support_ids, probs, group_ids, other


def _project_codes(
    topk_ids_PK: np.ndarray, topk_logprobs_PK: np.ndarray, code_map: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Map teacher ids to target codes (-1 = unmapped) and merge equal codes per row: (int64 codes with
    -1 padding, float32 probs, float32 other)."""
    ids_PK = np.asarray(topk_ids_PK)
    P, K = ids_PK.shape
    if P == 0:
        return np.zeros((0, K), np.int64), np.zeros((0, K), np.float32), np.zeros(0, np.float32)
    V = code_map.shape[0]
    sid_PK = np.take(code_map, ids_PK, mode="clip").astype(np.int64)
    if ids_PK.min() < 0 or ids_PK.max() >= V:  # ids outside the teacher vocabulary cannot be mapped
        sid_PK[(ids_PK < 0) | (ids_PK >= V)] = -1
    probs_PK = np.exp(np.asarray(topk_logprobs_PK, dtype=np.float32))
    total_P = probs_PK.sum(axis=1)
    if total_P.max() > 1.0:  # top-k mass can exceed 1 by rounding only
        probs_PK /= np.maximum(total_P, 1.0)[:, None]
    # Sort each row by code (unmapped last) with one sort of packed keys: key = code' * K + column.
    unmapped_id = int(code_map.max(initial=0)) + 1
    sid_PK[sid_PK < 0] = unmapped_id
    key_PK = sid_PK * K + np.arange(K)
    key_PK.sort(axis=1)
    sorted_sid = key_PK // K
    sorted_p = np.take_along_axis(probs_PK, key_PK - sorted_sid * K, axis=1)
    first = np.ones((P, K), dtype=bool)
    np.not_equal(sorted_sid[:, 1:], sorted_sid[:, :-1], out=first[:, 1:])
    if first.all():  # no two teacher tokens of a row share a target
        support_probs = sorted_p
    else:  # merge duplicates: sum each run of equal codes into the run's first slot
        starts = np.flatnonzero(first)
        support_probs = np.zeros((P, K), dtype=np.float32)
        support_probs.ravel()[starts] = np.add.reduceat(sorted_p.ravel(), starts)
    padding = ~first | (sorted_sid == unmapped_id)
    support_probs[padding] = 0.0
    sorted_sid[padding] = -1
    other = np.clip(1.0 - support_probs.sum(axis=1, dtype=np.float64), 0.0, 1.0).astype(np.float32)
    return sorted_sid, support_probs, other


def pack_groups(
    group_ids_PK: np.ndarray, projection: ProjectionMap
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """One sample's group payload: (``group_index int32[P, K]``, ``group_members int32[M]``,
    ``group_bounds int32[G, 2]``), or None when the sample uses no group.

    ``group_index`` renumbers the pair's group ids ``0..G-1`` in this sample (-1 = not a group);
    ``group_members`` is the union of the used groups' student ids, distinct and in byte order, so each
    group is the contiguous slice ``group_members[lo:hi]`` (``group_bounds[g] = (lo, hi)``).
    """
    slots = group_ids_PK >= 0
    if not slots.any():
        return None
    assert projection.group_bounds is not None and projection.student_order is not None
    used, inverse = np.unique(group_ids_PK[slots], return_inverse=True)
    local = np.full(group_ids_PK.shape, -1, dtype=np.int32)
    local[slots] = inverse
    lo = projection.group_bounds[used, 0].astype(np.int64)
    hi = projection.group_bounds[used, 1].astype(np.int64)
    ranks = _union_of_ranges(lo, hi)  # positions in the pair's byte order: sorted, distinct
    bounds = np.stack([np.searchsorted(ranks, lo), np.searchsorted(ranks, hi)], axis=1).astype(np.int32)
    return local, projection.student_order[ranks], bounds


def _union_of_ranges(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """int64[M]: every integer of the half-open ranges ``[lo[i], hi[i])``, sorted and distinct.

    The ranges are merged first (sorted by start, a new run begins where a start passes every earlier
    end), so the work is O(G log G + M), not a sort of the members of all ranges with their overlaps.
    """
    keep = hi > lo
    lo, hi = lo[keep], hi[keep]
    if lo.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(lo, kind="stable")
    lo, hi = lo[order], hi[order]
    reach = np.maximum.accumulate(hi)
    starts = np.flatnonzero(np.concatenate(([True], lo[1:] > reach[:-1])))
    run_lo = lo[starts]
    run_hi = reach[np.concatenate((starts[1:], [lo.shape[0]])) - 1]
    sizes = run_hi - run_lo
    total = int(sizes.sum())
    return np.arange(total, dtype=np.int64) + np.repeat(run_lo - (np.cumsum(sizes) - sizes), sizes)
