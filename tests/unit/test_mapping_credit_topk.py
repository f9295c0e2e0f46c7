"""Chunk credit (sampled path), stop bridging and the top-k projection."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from framework.mapping import (
    TokenByteTable,
    align_tokens,
    bridged_stop_logprob,
    build_projection_map,
    chunk_credit,
    project_topk,
)
from framework.mapping.topk import ProjectionMap, pack_groups, project_topk_groups


def _table(pieces: list[bytes], special=()) -> TokenByteTable:
    lengths = np.array([len(p) for p in pieces], dtype=np.int32)
    return TokenByteTable("bytelevel", pieces, lengths, frozenset(special), False)


@st.composite
def aligned_case(draw):
    n_bytes = draw(st.integers(1, 40))

    def cut():
        points = (
            sorted(draw(st.sets(st.integers(1, n_bytes - 1), max_size=n_bytes - 1))) if n_bytes > 1 else []
        )
        return np.diff([0, *points, n_bytes])

    s_lens, t_lens = cut(), cut()
    lp_s = -draw(hnp.arrays(np.float64, s_lens.shape[0], elements=st.floats(0, 8)))
    lp_t = -draw(hnp.arrays(np.float64, t_lens.shape[0], elements=st.floats(0, 8)))
    return s_lens, t_lens, lp_s, lp_t


@pytest.mark.parametrize("mode", ["proportional", "uniform", "last"])
@settings(max_examples=150, deadline=None)
@given(case=aligned_case())
def test_chunk_sums_telescope(mode, case):
    s_lens, t_lens, lp_s, lp_t = case
    al = align_tokens(s_lens, t_lens)
    cr = chunk_credit(al.student_chunk, lp_s, al.teacher_chunk, lp_t, al.num_chunks, mode)
    for (a, b), (c, d) in al.spans():
        # Σ over the chunk of the per-token teacher target is the teacher's chunk logprob.
        assert cr.teacher_logprobs[a:b].sum() == pytest.approx(lp_t[c:d].sum(), abs=1e-9)
        assert cr.advantages[a:b].sum() == pytest.approx(lp_t[c:d].sum() - lp_s[a:b].sum(), abs=1e-9)
    assert cr.teacher_logprobs.sum() == pytest.approx(lp_t.sum(), abs=1e-8)  # whole response
    assert cr.chunk_logp_student.sum() == pytest.approx(lp_s.sum(), abs=1e-8)


def test_credit_modes_by_hand():
    # one chunk: 2 student tokens (lp -1, -3) vs 1 teacher token (lp -2): A = -2 - (-4) = 2
    s_chunk, t_chunk = np.array([0, 0]), np.array([0])
    lp_s, lp_t = np.array([-1.0, -3.0]), np.array([-2.0])
    prop = chunk_credit(s_chunk, lp_s, t_chunk, lp_t, 1, "proportional")
    assert prop.advantages.tolist() == pytest.approx([0.5, 1.5])
    assert chunk_credit(s_chunk, lp_s, t_chunk, lp_t, 1, "uniform").advantages.tolist() == [1.0, 1.0]
    assert chunk_credit(s_chunk, lp_s, t_chunk, lp_t, 1, "last").advantages.tolist() == [0.0, 2.0]
    # proportional falls back to uniform when the student chunk logprob is ~0 (nothing to split by)
    zero = chunk_credit(s_chunk, np.array([0.0, 0.0]), t_chunk, lp_t, 1, "proportional")
    assert zero.advantages.tolist() == [-1.0, -1.0]
    with pytest.raises(ValueError, match="credit mode"):
        chunk_credit(s_chunk, lp_s, t_chunk, lp_t, 1, "bogus")


def test_unaligned_tokens_get_no_credit():
    s_chunk, t_chunk = np.array([0, -1]), np.array([0, -1])
    cr = chunk_credit(s_chunk, np.array([-1.0, -2.0]), t_chunk, np.array([-0.5, -9.0]), 1)
    assert cr.advantages.tolist() == [0.5, 0.0]
    assert cr.teacher_logprobs.tolist() == [-0.5, -2.0]


def test_stop_bridging_is_logsumexp_over_available_stop_ids():
    realised = np.array([np.log(0.5), np.log(0.2)])
    topk_ids = np.array([[7, 9, 3], [9, 9, 1]])  # row 0: other stop id 9; row 1: 9 twice (count once)
    topk_lp = np.log(np.array([[0.5, 0.3, 0.1], [0.25, 0.25, 0.2]]))
    got = bridged_stop_logprob(realised, np.array([7, 1]), np.array([7, 9, 1]), topk_ids, topk_lp)
    assert got == pytest.approx(np.log([0.5 + 0.3, 0.2 + 0.25]))
    assert (
        bridged_stop_logprob(realised, np.array([7, 1]), np.array([7]), None, None).tolist()
        == realised.tolist()
    )


def test_projection_map_longest_prefix_and_stop():
    student = _table([b"", b"a", b"ab", b"abc", b" ", b" t", b"\xe6"], special=[0])
    teacher = _table([b"", b"abcd", b"ab", b" the", b"\xe6\x9d", b"zz", b""], special=[0, 6])
    pm = build_projection_map(student, teacher, frozenset({0}), student_stop_id=0)
    # "ab" has no direct piece: the student's "abc" extends it, so after "ab" the student's token is open
    assert pm.teacher_to_student.tolist() == [0, 3, -1, 5, 6, -1, -1]
    assert pm.exact.tolist() == [True, False, False, False, False, False, False]
    # ... it is the byte-prefix group E("ab") = {"ab", "abc"} instead (in byte order)
    assert pm.teacher_to_group.tolist() == [-1, -1, 0, -1, -1, -1, -1]
    assert pm.group_members(0).tolist() == [2, 3]
    # the byte order of the eligible (non-special, non-empty) student tokens
    assert [student.token_bytes[s] for s in pm.student_order] == sorted(student.token_bytes[1:])


def test_projection_groups_a_teacher_token_the_student_would_extend():
    # single-digit teacher, digit-group student: teacher "1" cannot say whether the student writes
    # "1" or "12", so its mass goes to the group E("1") = {"1", "12", "123"} (split by the student in
    # the loss), never to the student's "1" alone; "2" (no student token extends it) maps to "2"
    student = _table([b"", b"1", b"12", b"123", b"2", b" +"], special=[0])
    teacher = _table([b"", b"1", b"2", b" +", b" +1"], special=[0])
    pm = build_projection_map(student, teacher, frozenset({0}), student_stop_id=0)
    assert pm.teacher_to_student.tolist() == [0, -1, 4, 5, 5]
    assert pm.teacher_to_group.tolist() == [-1, 0, -1, -1, -1]
    assert pm.group_members(0).tolist() == [1, 2, 3]
    ids, probs, groups, other = project_topk_groups(
        np.array([[1, 2, 3]]), np.log(np.array([[0.5, 0.3, 0.2]])), pm
    )
    assert dict(zip(ids[0].tolist(), probs[0].tolist())) == pytest.approx({-1: 0.5, 4: 0.3, 5: 0.2})
    assert groups[0].tolist() == [-1, -1, 0]  # the group slot sorts last; its support id is -1
    assert probs[0, 2] == pytest.approx(0.5)
    assert other[0] == pytest.approx(0.0, abs=1e-6)
    index, members, bounds = pack_groups(groups, pm)
    assert index.tolist() == [[-1, -1, 0]] and members.tolist() == [1, 2, 3] and bounds.tolist() == [[0, 3]]
    # the plain id map (no groups) still leaves the teacher "1" in `other`
    _, _, plain_other = project_topk(
        np.array([[1, 2, 3]]), np.log(np.array([[0.5, 0.3, 0.2]])), pm.teacher_to_student
    )
    assert plain_other[0] == pytest.approx(0.5)


def test_groups_are_deduplicated_capped_and_packed_per_sample():
    student = _table([b"", b"1", b"12", b"123", b"13", b"2", b"x1", b"x12"], special=[0])
    # teacher "12" and a second "12" share E("12"); "x" and "x1" have the same E = {"x1", "x12"}
    teacher = _table([b"", b"1", b"12", b"12", b"x", b"x1", b"123"], special=[0])
    pm = build_projection_map(student, teacher, frozenset({0}), student_stop_id=0)
    g = pm.teacher_to_group
    assert g[2] == g[3] >= 0 and g[4] == g[5] >= 0 and g[1] >= 0 and g[6] == -1
    assert pm.num_groups == 3
    assert pm.teacher_to_student[6] == 3 and pm.exact[6]  # "123": nothing extends it, a direct piece
    assert sorted(pm.group_members(g[1]).tolist()) == [1, 2, 3, 4]
    assert sorted(pm.group_members(g[4]).tolist()) == [6, 7]
    ids, probs, groups, other = project_topk_groups(
        np.array([[2, 3, 1, 6], [4, 5, 0, 1]]),
        np.log(np.array([[0.2, 0.1, 0.3, 0.1], [0.1, 0.2, 0.3, 0.1]])),
        pm,
    )
    for r, expect in enumerate([{g[2]: 0.3, g[1]: 0.3}, {g[4]: 0.3, g[1]: 0.1}]):  # merged per group
        got = {int(k): float(v) for k, v in zip(groups[r], probs[r]) if k >= 0}
        assert got == pytest.approx(expect)
    assert {int(i): float(v) for i, v in zip(ids[0], probs[0]) if i >= 0} == pytest.approx({3: 0.1})
    assert {int(i): float(v) for i, v in zip(ids[1], probs[1]) if i >= 0} == pytest.approx({0: 0.3})
    np.testing.assert_allclose(probs.sum(1) + other, 1.0, atol=1e-6)
    index, members, bounds = pack_groups(groups, pm)
    assert len(set(members.tolist())) == members.shape[0]  # union, each id once
    for r in range(2):
        for k in range(4):
            if groups[r, k] >= 0:  # each local group is its contiguous slice of the members
                local = members[slice(*bounds[index[r, k]])].tolist()
                assert local == pm.group_members(groups[r, k]).tolist()
    assert pack_groups(np.full((2, 4), -1), pm) is None
    capped = build_projection_map(student, teacher, frozenset({0}), student_stop_id=0, max_group_size=2)
    assert capped.teacher_to_group[1] == -1 and capped.teacher_to_student[1] == -1  # too big: `other`
    assert capped.teacher_to_group[4] >= 0


@settings(max_examples=100, deadline=None)
@given(
    k=st.integers(1, 8),
    rows=st.integers(0, 6),
    seed=st.integers(0, 2**32 - 1),
)
def test_projection_is_a_probability_vector_and_merges_duplicates(k, rows, seed):
    rng = np.random.default_rng(seed)
    vt = 30
    t2s = rng.integers(-1, 5, size=vt).astype(np.int32)  # heavy collisions and unmappable ids
    ids = np.stack([rng.choice(vt, size=k, replace=False) for _ in range(rows)]) if rows else np.zeros((0, k))
    probs = rng.dirichlet(np.ones(k + 1), size=rows)[:, :k] if rows else np.zeros((0, k))
    sup, p, other = project_topk(ids.astype(np.int64), np.log(np.maximum(probs, 1e-30)), t2s)
    assert sup.shape == p.shape == (rows, k)
    assert np.all(p >= 0) and np.all(other >= 0)
    np.testing.assert_allclose(p.sum(axis=1) + other, 1.0, atol=1e-5)
    for r in range(rows):
        used = sup[r][sup[r] >= 0]
        assert len(set(used.tolist())) == used.shape[0]  # duplicates merged
        assert np.all(p[r][sup[r] < 0] == 0)
        for sid in range(5):  # each student id gets the summed mass of its teacher tokens
            expect = probs[r][t2s[ids[r].astype(int)] == sid].sum()
            assert p[r][sup[r] == sid].sum() == pytest.approx(expect, abs=1e-6)


@settings(max_examples=60, deadline=None)
@given(k=st.integers(1, 8), rows=st.integers(0, 6), seed=st.integers(0, 2**32 - 1))
def test_grouped_projection_is_a_probability_vector_over_ids_and_groups(k, rows, seed):
    rng = np.random.default_rng(seed)
    vt, vs, ng = 30, 5, 4
    choice = rng.integers(0, 3, size=vt)  # 0: direct, 1: group, 2: unmapped
    t2s = np.where(choice == 0, rng.integers(0, vs, size=vt), -1).astype(np.int32)
    t2g = np.where(choice == 1, rng.integers(0, ng, size=vt), -1).astype(np.int32)
    order = rng.permutation(12).astype(np.int32)
    bounds = np.array([[0, 3], [1, 2], [4, 9], [9, 12]], dtype=np.int32)
    pm = ProjectionMap(t2s, t2s >= 0, t2g, bounds, order)
    ids = np.stack([rng.choice(vt, size=k, replace=False) for _ in range(rows)]) if rows else np.zeros((0, k))
    probs = rng.dirichlet(np.ones(k + 1), size=rows)[:, :k] if rows else np.zeros((0, k))
    sup, p, groups, other = project_topk_groups(ids.astype(np.int64), np.log(np.maximum(probs, 1e-30)), pm)
    assert sup.shape == p.shape == groups.shape == (rows, k)
    np.testing.assert_allclose(p.sum(axis=1) + other, 1.0, atol=1e-5)
    assert not np.any((sup >= 0) & (groups >= 0))
    assert np.all(p[(sup < 0) & (groups < 0)] == 0)
    for r in range(rows):
        t = ids[r].astype(int)
        for sid in range(vs):
            assert p[r][sup[r] == sid].sum() == pytest.approx(probs[r][t2s[t] == sid].sum(), abs=1e-6)
        for g in range(ng):
            assert (groups[r] == g).sum() <= 1
            assert p[r][groups[r] == g].sum() == pytest.approx(probs[r][t2g[t] == g].sum(), abs=1e-6)
