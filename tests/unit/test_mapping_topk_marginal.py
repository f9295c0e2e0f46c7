"""The byte-prefix top-k projection against a brute-force student-side marginal (float64).

The reference enumerates every student token and builds the target straight from the definition
(`framework.mapping.topk`): a teacher token t that some student token strictly extends puts p_T(t) on
E(t) = {s not special : bytes(t) ⊑ bytes(s)} split by the student's π(s) / π(E(t)); any other teacher
token puts p_T(t) on its longest student byte-prefix (stop tokens on the student stop token). The
pipeline under test is build_projection_map → project_topk_groups → pack_groups (mapping worker) →
collate_mapped_samples (learner) → topk_kl_loss / split_group_targets (loss).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from framework.algo import collate_mapped_samples, topk_kl_loss
from framework.algo.topk_kl import split_group_targets
from framework.mapping import TokenByteTable, TokenMapper
from framework.mapping.topk import build_projection_map, pack_groups, project_topk_groups
from framework.types import DenseTarget, MappedSample, TeacherScores
from tests.unit.mapping_fixtures import make_rollout, tokenizer_dir

torch.set_num_threads(1)
F64 = torch.float64


def _table(pieces: list[bytes], special=(), fallback=()) -> TokenByteTable:
    lengths = np.array([len(p) for p in pieces], dtype=np.int32)
    return TokenByteTable("bytelevel", pieces, lengths, frozenset(special), False, frozenset(fallback))


# ------------------------------------------------------------------------------------ reference
def brute_force_target(student, teacher, teacher_stops, student_stop, topk_ids, topk_probs, logp_V, cap):
    """(q float64[V], U sorted list of the ids the target covers, other) for one position."""
    sb = student.token_bytes
    eligible = [s for s in range(len(sb)) if sb[s] and s not in student.special_ids]
    pi = np.exp(logp_V)
    q = np.zeros(len(sb))
    support: set[int] = set()
    for t, p in zip(topk_ids.tolist(), topk_probs.tolist()):
        b = teacher.token_bytes[t]
        if not b:
            if t in teacher_stops and student_stop is not None:
                q[student_stop] += p
                support.add(student_stop)
            continue
        group = [s for s in eligible if sb[s].startswith(b)]
        if any(len(sb[s]) > len(b) for s in group):  # the student may write a longer first token
            if len(group) <= cap:
                q[group] += p * pi[group] / pi[group].sum()
                support.update(group)
            continue
        pieces = [s for s in eligible if b.startswith(sb[s])]
        if pieces:
            s = max(pieces, key=lambda s: (len(sb[s]), s not in student.fallback_ids, -s))
            q[s] += p
            support.add(s)
    return q, sorted(support), 1.0 - q.sum()


def brute_force_loss(logits_P_V, targets, direction, floor=1e-8):
    """Mean over positions of the KL over {each covered id} ∪ {rest}, the target held fixed."""
    logp = torch.log_softmax(logits_P_V, -1)
    total = 0.0
    for i, (q, U, other) in enumerate(targets):
        lp = logp[i, U]
        q_u = torch.as_tensor(q[U], dtype=F64)
        q_o = torch.tensor(other, dtype=F64).clamp(min=0.0)
        p_o = 1.0 - torch.exp(lp).sum()
        if direction == "forward":
            kl = (torch.xlogy(q_u, q_u) - q_u * lp).sum() + torch.xlogy(q_o, q_o) - q_o * torch.log(p_o)
        else:
            kl = (torch.exp(lp) * (lp - torch.log(q_u.clamp(min=floor)))).sum()
            kl = kl + p_o * (torch.log(p_o) - torch.log(q_o.clamp(min=floor)))
        total = total + kl
    return total / len(targets)


# ------------------------------------------------------------------------------------- pipeline
def collated(student, teacher, teacher_stops, student_stop, topk_ids, topk_lp, cap=1024):
    pm = build_projection_map(student, teacher, teacher_stops, student_stop, max_group_size=cap)
    ids, probs, groups, other = project_topk_groups(topk_ids, topk_lp, pm)
    np.testing.assert_allclose(probs.sum(1) + other, 1.0, atol=1e-6)  # (2) at the mapping worker
    P = ids.shape[0]
    dense = DenseTarget(np.arange(P, dtype=np.int32), ids, probs, other)
    packed = pack_groups(groups, pm)
    if packed is not None:
        dense.group_index, dense.group_members, dense.group_bounds = packed
    zeros = np.zeros(P, np.float32)
    sample = MappedSample("s#0", np.zeros(P + 1, np.int32), 1, zeros, zeros, zeros, zeros + 1, 0, dense)
    return collate_mapped_samples([sample])


def pipeline_loss(batch, logits_P_V, direction):
    ids = batch.support_ids_B_T_S[0]
    lp = torch.log_softmax(logits_P_V, -1).gather(-1, ids.clamp(min=0))
    lp = torch.where(ids >= 0, lp, torch.zeros_like(lp))
    groups = {}
    if batch.group_mass_B_T_G is not None:
        groups = {
            "group_mass_P_G": batch.group_mass_B_T_G[0].to(F64),
            "group_start_P_G": batch.group_start_B_T_G[0],
            "group_end_P_G": batch.group_end_B_T_G[0],
        }
    P = ids.shape[0]
    return topk_kl_loss(
        lp, ids, batch.support_probs_B_T_S[0].to(F64), batch.other_prob_B_T[0].to(F64),
        torch.ones(P, dtype=F64), float(P), direction=direction, **groups,
    )  # fmt: skip


def pipeline_target(batch, logits_P_V):
    """The loss-side target scattered back to the full vocabulary: float64[P, V]."""
    ids = batch.support_ids_B_T_S[0]
    valid = ids >= 0
    lp = torch.log_softmax(logits_P_V.detach(), -1).gather(-1, ids.clamp(min=0))
    probs = batch.support_probs_B_T_S[0].to(F64)
    if batch.group_mass_B_T_G is None:
        q = torch.where(valid, probs, torch.zeros_like(probs))
    else:
        g = batch.group_mass_B_T_G[0].to(F64), batch.group_start_B_T_G[0], batch.group_end_B_T_G[0]
        q = split_group_targets(lp, valid, probs, *g)
    out = torch.zeros(logits_P_V.shape, dtype=F64)
    out.scatter_add_(1, ids.clamp(min=0), torch.where(valid, q, torch.zeros_like(q)))
    return out, [sorted(ids[p][valid[p]].tolist()) for p in range(ids.shape[0])]


# -------------------------------------------------------------------------------- vocabularies
def random_case(seed: int):
    rng = np.random.default_rng(seed)
    alphabet = [b"a", b"b", b"1", b" "]

    def words(n, max_len):
        return [b"".join(rng.choice(alphabet, size=rng.integers(1, max_len + 1))) for _ in range(n)]

    s_words = list(dict.fromkeys(words(int(rng.integers(8, 30)), 4)))  # byte-level: distinct bytes
    # id 0: the stop token (special); "zz": a token no teacher token reaches, so the student's `other`
    # bucket never empties (the reference's 1 − Σ π would round to 0 or below)
    student_pieces = [b"", *s_words, b"zz"]
    fallback = []
    if rng.random() < 0.5:  # a byte-fallback duplicate of a single-byte piece
        student_pieces.append(b"a")
        fallback.append(len(student_pieces) - 1)
    teacher_pieces = [b"", b"", *words(int(rng.integers(6, 25)), 3)]  # 0 stop, 1 other special
    student = _table(student_pieces, special=[0], fallback=fallback)
    teacher = _table(teacher_pieces, special=[0, 1])
    P, K = int(rng.integers(1, 6)), int(rng.integers(1, min(8, len(teacher_pieces)) + 1))
    topk = np.stack([rng.choice(len(teacher_pieces), size=K, replace=False) for _ in range(P)])
    probs = rng.dirichlet(np.ones(K + 1), size=P)[:, :K]
    logits = torch.as_tensor(rng.normal(0.0, 2.0, (P, len(student_pieces))), dtype=F64)
    return student, teacher, topk, np.log(probs).astype(np.float32), logits


def hand_case():
    """Digits: a single-digit teacher and a 3-digit-group student, plus words and a stop token."""
    student = _table([b"", b"1", b"12", b"123", b"13", b"2", b" +", b" t", b" the", b" them", b"1x"], [0])
    teacher = _table([b"", b"1", b"2", b" +", b" +1", b" th", b" the", b"12", b"z"], [0])
    topk = np.array([[1, 2, 3, 0], [5, 6, 4, 7], [8, 1, 7, 6]])
    probs = np.array([[0.5, 0.2, 0.1, 0.1], [0.3, 0.3, 0.2, 0.1], [0.4, 0.2, 0.2, 0.1]])
    logits = torch.as_tensor(np.random.default_rng(3).normal(0.0, 2.0, (3, 11)), dtype=F64)
    return student, teacher, topk, np.log(probs).astype(np.float32), logits


CASES = [("hand", None), *[("random", seed) for seed in range(40)]]


def _case(kind, seed):
    return hand_case() if kind == "hand" else random_case(seed)


def _teacher_probs(topk_lp):
    return np.exp(topk_lp.astype(np.float32)).astype(np.float64)


@pytest.mark.parametrize(("kind", "seed"), CASES)
@pytest.mark.parametrize("cap", [1024, 3])
def test_target_equals_brute_force_marginal(kind, seed, cap):
    student, teacher, topk, topk_lp, logits = _case(kind, seed)
    batch = collated(student, teacher, frozenset({0}), 0, topk, topk_lp, cap)
    got, support = pipeline_target(batch, logits)
    probs = _teacher_probs(topk_lp)
    logp = torch.log_softmax(logits, -1).numpy()
    for p in range(topk.shape[0]):
        q, U, other = brute_force_target(student, teacher, {0}, 0, topk[p], probs[p], logp[p], cap)
        assert support[p] == U
        np.testing.assert_allclose(got[p].numpy(), q, rtol=1e-6, atol=1e-7)
        assert float(batch.other_prob_B_T[0, p]) == pytest.approx(other, abs=1e-6)
        # (2) the loss-side target plus `other` is a probability vector
        assert float(got[p].sum()) + float(batch.other_prob_B_T[0, p]) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize(("kind", "seed"), CASES[:16])
@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_loss_and_gradient_equal_brute_force(kind, seed, direction):
    student, teacher, topk, topk_lp, logits = _case(kind, seed)
    batch = collated(student, teacher, frozenset({0}), 0, topk, topk_lp)
    probs = _teacher_probs(topk_lp)
    logp = torch.log_softmax(logits, -1).numpy()
    # the reference uses the collated (float32) `other` so that only the split is compared
    targets = []
    for p in range(topk.shape[0]):
        q, U, _ = brute_force_target(student, teacher, {0}, 0, topk[p], probs[p], logp[p], 1024)
        targets.append((q, U, float(batch.other_prob_B_T[0, p])))
    z = logits.clone().requires_grad_(True)
    out = pipeline_loss(batch, z, direction)
    ref = brute_force_loss(z, targets, direction)
    torch.testing.assert_close(out.loss, ref, rtol=1e-6, atol=1e-7)
    (g_out,) = torch.autograd.grad(out.loss, z)
    (g_ref,) = torch.autograd.grad(ref, z)
    torch.testing.assert_close(g_out, g_ref, rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------------------------- gradient
def _fixed_target_fn(batch, logits0, direction):
    """z ↦ the KL with the target split at ``logits0`` and then held fixed (plain top-k KL)."""
    q0, _ = pipeline_target(batch, logits0)
    ids = batch.support_ids_B_T_S[0]
    q_slots = torch.where(ids >= 0, q0.gather(1, ids.clamp(min=0)), torch.zeros((), dtype=F64))
    # an id listed once per row: its slot carries the whole target of that id
    other = batch.other_prob_B_T[0].to(F64)
    P = ids.shape[0]

    def fn(z):
        lp = torch.log_softmax(z, -1).gather(-1, ids.clamp(min=0))
        lp = torch.where(ids >= 0, lp, torch.zeros_like(lp))
        return topk_kl_loss(
            lp, ids, q_slots, other, torch.ones(P, dtype=F64), float(P), direction=direction
        ).loss

    return fn


@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize("seed", [0, 5, 11])
def test_gradient_is_the_fixed_target_gradient_and_gradchecks(direction, seed):
    student, teacher, topk, topk_lp, logits = random_case(seed) if seed else hand_case()
    batch = collated(student, teacher, frozenset({0}), 0, topk, topk_lp)
    fn = _fixed_target_fn(batch, logits, direction)
    assert torch.autograd.gradcheck(fn, (logits.clone().requires_grad_(True),))
    z = logits.clone().requires_grad_(True)
    (g_split,) = torch.autograd.grad(pipeline_loss(batch, z, direction).loss, z)
    (g_fixed,) = torch.autograd.grad(fn(z), z)
    torch.testing.assert_close(g_split, g_fixed, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_disjoint_groups_gradcheck_through_the_split(direction):
    """Disjoint groups without direct mass on their members: the split loss IS the KL with each group as
    one bucket, so even differentiating through the (detached) split, numerical gradients agree."""
    student = _table([b"", b"1", b"12", b"123", b"2", b"27", b"x", b"y"], [0])
    teacher = _table([b"", b"1", b"2", b"x"], [0])
    topk = np.array([[1, 2, 3], [2, 3, 0], [1, 0, 3]])
    topk_lp = np.log(np.array([[0.4, 0.3, 0.2], [0.5, 0.2, 0.2], [0.3, 0.3, 0.3]])).astype(np.float32)
    batch = collated(student, teacher, frozenset({0}), 0, topk, topk_lp)
    assert batch.group_mass_B_T_G is not None
    z0 = torch.as_tensor(np.random.default_rng(1).normal(0.0, 1.0, (3, 8)), dtype=F64)
    assert torch.autograd.gradcheck(
        lambda z: pipeline_loss(batch, z, direction).loss, (z0.clone().requires_grad_(True),)
    )


# ----------------------------------------------------------------------------- the collapse case
def test_single_digit_teacher_mass_follows_the_student_over_digit_groups():
    """Teacher "1" (a single-digit tokenizer) vs a student with "1", "12", "123": p_T("1") lands on
    every student token starting with "1", weighted by the student, never all on "1"."""
    student = _table([b"", b"1", b"12", b"123", b"2", b" +"], special=[0])
    teacher = _table([b"", b"1", b"2", b" +", b" +1"], special=[0])
    pm = build_projection_map(student, teacher, frozenset({0}), student_stop_id=0)
    assert pm.teacher_to_student[1] == -1 and pm.group_members(pm.teacher_to_group[1]).tolist() == [1, 2, 3]
    topk = np.array([[1, 2, 3]])
    topk_lp = np.log(np.array([[0.5, 0.3, 0.2]])).astype(np.float32)
    batch = collated(student, teacher, frozenset({0}), 0, topk, topk_lp)
    for student_probs in ([0.05, 0.6, 0.1, 0.2, 0.05], [0.3, 0.1, 0.1, 0.4, 0.1]):
        logits = torch.log(torch.tensor([[1e-3, *student_probs]], dtype=F64))
        q, _ = pipeline_target(batch, logits)
        pi = torch.softmax(logits, -1)[0]
        share = pi[1:4] / pi[1:4].sum()
        torch.testing.assert_close(q[0, 1:4], 0.5 * share)
        assert float(q[0, 1]) < 0.5 - 1e-3  # not the first piece alone
        assert float(q[0, 4]) == pytest.approx(0.3) and float(q[0, 5]) == pytest.approx(0.2)
        assert float(q[0].sum()) + float(batch.other_prob_B_T[0, 0]) == pytest.approx(1.0, abs=1e-6)
    # the forward KL's gradient moves the group's total towards 0.5 along the student's own split
    z = logits.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(pipeline_loss(batch, z, "forward").loss, z)
    torch.testing.assert_close(g[0, 1:4] / pi[1:4], (g[0, 1] / pi[1]).expand(3))


def test_mapper_spreads_single_digit_teacher_mass_over_student_digit_groups():
    """End to end with the fixture tokenizers: a bl_single teacher (one digit per token) scoring a
    bl_group student (digit groups): every teacher digit whose bytes some student token extends
    becomes a group slot covering exactly the student tokens that start with it."""
    mapper = TokenMapper.from_paths(tokenizer_dir("bl_group"), tokenizer_dir("bl_single"))
    s_tok, t_tok = mapper.student.table, mapper.teacher.table
    digit = {b: i for i, b in enumerate(t_tok.token_bytes) if b in (b"1", b"2", b"7")}
    rng = np.random.default_rng(0)
    ids = mapper.student.encode_continuations(["1234 + 777 = 2011"])[0]
    rollout = make_rollout(mapper, ids, "length", rng)
    request = mapper.teacher_request(rollout)
    n = request.input_ids.shape[0] - request.response_start
    top = np.tile(np.array([digit[b"1"], digit[b"2"], digit[b"7"]], dtype=np.int32), (n, 1))
    top_lp = np.tile(np.log(np.array([0.5, 0.3, 0.1], dtype=np.float32)), (n, 1))
    scores = TeacherScores(rollout.sample_id, np.full(n, -1.0, np.float32), top, top_lp)
    dense = mapper.map_sample(rollout, request, scores).dense
    assert dense is not None and dense.group_index is not None and len(dense.positions)
    np.testing.assert_allclose(dense.support_probs.sum(1) + dense.other_prob, 1.0, atol=1e-6)
    starts_with_one = {
        s for s, b in enumerate(s_tok.token_bytes) if b.startswith(b"1") and s not in s_tok.special_ids
    }
    assert any(len(s_tok.token_bytes[s]) > 1 for s in starts_with_one)  # the student groups digits
    for p in range(dense.positions.shape[0]):
        groups = dense.group_index[p][dense.group_index[p] >= 0]
        covered = [set(dense.group_members[slice(*dense.group_bounds[g])].tolist()) for g in groups]
        assert starts_with_one in covered  # teacher "1" → E("1"), not the student's "1" alone
        assert np.all(dense.support_ids[p][dense.group_index[p] >= 0] == -1)


# ------------------------------------------------------------------------------ learner collation
def _grouped_sample(sample_id, seed, R=6):
    """A MappedSample whose dense rows come from the hand-made digit vocabularies."""
    student, teacher, topk, topk_lp, _ = hand_case()
    pm = build_projection_map(student, teacher, frozenset({0}), student_stop_id=0)
    ids, probs, groups, other = project_topk_groups(topk, topk_lp, pm)
    dense = DenseTarget(np.array([0, 2, 5], np.int32), ids, probs, other)
    dense.group_index, dense.group_members, dense.group_bounds = pack_groups(groups, pm)
    rng = np.random.default_rng(seed)
    ids_all = rng.integers(0, 11, 3 + R).astype(np.int32)
    zeros = np.zeros(R, np.float32)
    return MappedSample(sample_id, ids_all, 3, zeros, zeros, zeros, zeros + 1, 0, dense)


def test_collation_mixes_grouped_plain_and_empty_dense_samples():
    from framework.learner.batching import collate_micro_batch

    grouped = _grouped_sample("g#0", 0)
    plain = _grouped_sample("p#0", 1, R=4)
    plain.dense = DenseTarget(
        np.array([1], np.int32), np.array([[4, -1]], np.int32), np.array([[0.7, 0.0]], np.float32),
        np.array([0.3], np.float32),
    )  # fmt: skip
    empty = _grouped_sample("e#0", 2, R=2)
    empty.dense = DenseTarget(np.zeros(0, np.int32), np.zeros((0, 4), np.int32), np.zeros((0, 4), np.float32),
                              np.zeros(0, np.float32))  # fmt: skip
    mb = collate_micro_batch([grouped, plain, empty], with_dense=True)
    inp = mb.inputs
    alone = collate_mapped_samples([grouped]).support_ids_B_T_S[0]
    S, G = inp.support_ids_B_T_S.shape[-1], inp.group_mass_B_T_G.shape[-1]
    assert alone.shape[-1] == S and G == 3  # row 2: E("1") ⊃ E("12"), E(" the")
    for b, pos in [(0, [0, 2, 5]), (1, [1])]:
        assert inp.dense_mask_B_T[b].nonzero().squeeze(1).tolist() == pos
    torch.testing.assert_close(inp.support_ids_B_T_S[0, [0, 2, 5]], alone[[0, 2, 5]])
    assert inp.support_ids_B_T_S[1, 1].tolist() == [4] + [-1] * (S - 1)
    assert float(inp.group_mass_B_T_G[1].abs().sum()) == 0.0 and not inp.dense_mask_B_T[2].any()
    # every position: Σ direct + Σ group mass + other = 1, and each group's slots are its members
    d = grouped.dense
    for row, t in enumerate([0, 2, 5]):
        total = (
            inp.support_probs_B_T_S[0, t].sum() + inp.group_mass_B_T_G[0, t].sum() + inp.other_prob_B_T[0, t]
        )
        assert float(total) == pytest.approx(1.0, abs=1e-6)
        slots = inp.support_ids_B_T_S[0, t]
        assert len(set(slots[slots >= 0].tolist())) == int((slots >= 0).sum())
        groups = d.group_index[row][d.group_index[row] >= 0]
        got = [
            sorted(slots[int(a) : int(e)].tolist())
            for a, e, m in zip(
                inp.group_start_B_T_G[0, t], inp.group_end_B_T_G[0, t], inp.group_mass_B_T_G[0, t]
            )
            if m > 0
        ]
        want = [sorted(d.group_members[slice(*d.group_bounds[g])].tolist()) for g in groups]
        assert sorted(got) == sorted(want)


def test_validate_sample_rejects_inconsistent_groups():
    from framework.learner.batching import validate_sample

    sample = _grouped_sample("g#0", 0)
    validate_sample(sample)
    d = sample.dense
    bad_bounds = d.group_bounds.copy()
    bad_bounds[0, 1] = d.group_members.shape[0] + 1
    for field, value, match in [
        ("group_members", None, "together"),
        ("group_index", d.group_index[:, :2], "shape"),
        ("group_bounds", bad_bounds, "ranges"),
        ("support_ids", np.where(d.group_index >= 0, 1, d.support_ids), "either"),
    ]:
        broken = _grouped_sample("g#1", 0)
        setattr(broken.dense, field, value)
        with pytest.raises(ValueError, match=match):
            validate_sample(broken)
