"""``opd_topk``: KL over support ∪ {other} vs a plain reference; log1mexp; mixing with opd."""

from __future__ import annotations

import math

import pytest
import torch

from framework.algo import LossInputs, OPDTopK, TokenLogprobs, opd_loss, topk_kl_loss
from framework.algo.topk_kl import log1mexp
from tests.unit.loss_shards import select_rows

torch.set_num_threads(1)
F64 = torch.float64
V = 9


def _targets(P=5, S=4, seed=0):
    """Teacher targets: random support (unique ids, some padded), probs + other summing to 1."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randperm(V, generator=g)[:S] for _ in range(P)])
    ids[1, -1] = -1
    ids[2, 2:] = -1
    raw = torch.rand(P, S + 1, generator=g, dtype=F64) + 0.05
    raw[:, :S] = torch.where(ids >= 0, raw[:, :S], torch.zeros_like(raw[:, :S]))
    raw[-1, S] = 0.0  # a position whose target has no "other" mass
    raw = raw / raw.sum(-1, keepdim=True)
    return ids, raw[:, :S], raw[:, S]


def _student(P=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(P, V, generator=g, dtype=F64, requires_grad=True)


def _gather(logits_P_V, ids):
    lp = torch.log_softmax(logits_P_V, -1).gather(-1, ids.clamp(min=0))
    return torch.where(ids >= 0, lp, torch.zeros_like(lp))


def _naive_kl(logits_P_V, ids, probs, other, weight, n_global, direction, floor=1e-8):
    """Position by position, building the coarsened distributions explicitly in probability space."""
    p_full = torch.softmax(logits_P_V, -1)
    total = 0.0
    for i in range(ids.shape[0]):
        if weight[i] == 0:
            continue
        p_list, q_list = [], []
        for k in range(ids.shape[1]):
            if ids[i, k] >= 0:
                p_list.append(p_full[i, ids[i, k]])
                q_list.append(probs[i, k])
        p_list.append(1 - sum(p_list))
        q_list.append(other[i])
        kl = 0.0
        for p, q in zip(p_list, q_list):
            if direction == "forward":
                kl = kl + (q * (torch.log(q) - torch.log(p)) if q > 0 else 0.0)
            else:
                kl = kl + p * (torch.log(p) - math.log(max(float(q), floor)))
        total = total + weight[i] * kl
    return total / n_global


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_matches_naive_values_and_gradients(direction):
    ids, probs, other = _targets()
    logits = _student()
    weight = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.5], dtype=F64)
    out = topk_kl_loss(_gather(logits, ids), ids, probs, other, weight, 6.0, direction=direction)
    ref = _naive_kl(logits, ids, probs, other, weight, 6.0, direction)
    torch.testing.assert_close(out.loss, ref)
    (g_out,) = torch.autograd.grad(out.loss, logits)
    (g_ref,) = torch.autograd.grad(ref, logits)
    torch.testing.assert_close(g_out, g_ref)
    assert out.loss > 0


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_gradcheck(direction):
    ids, probs, other = _targets(P=3, S=3, seed=4)
    logits = _student(P=3, seed=2)
    weight = torch.ones(3, dtype=F64)

    def fn(z):
        return topk_kl_loss(_gather(z, ids), ids, probs, other, weight, 3.0, direction=direction).loss

    assert torch.autograd.gradcheck(fn, (logits,))


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_zero_iff_student_matches_target_on_the_buckets(direction):
    ids, probs, other = _targets()
    weight = torch.ones(5, dtype=F64)
    # student puts exactly the target mass on the support; the rest of its mass is spread elsewhere
    # (position 4 has other = 0: the student must put ~all mass on the support there)
    match_lp = torch.where(ids >= 0, torch.log(probs.clamp(min=1e-300)), torch.zeros_like(probs))
    out = topk_kl_loss(match_lp, ids, probs, other, weight, 5.0, direction=direction)
    assert abs(float(out.loss.detach())) < 1e-9
    shifted = match_lp.clone()
    shifted[0, 0] -= 0.3  # move some support mass into "other"
    assert (
        float(topk_kl_loss(shifted, ids, probs, other, weight, 5.0, direction=direction).loss.detach()) > 1e-4
    )


def test_log1mexp_is_accurate_and_finite():
    x = torch.tensor([-1e-12, -1e-6, -0.1, -math.log(2.0), -1.0, -30.0, -800.0], dtype=F64)
    mpmath = pytest.importorskip("mpmath")  # 50-digit reference
    mpmath.mp.dps = 50
    want = torch.tensor([float(mpmath.log(1 - mpmath.exp(mpmath.mpf(float(v))))) for v in x], dtype=F64)
    torch.testing.assert_close(log1mexp(x), want, rtol=1e-12, atol=0)
    x32 = torch.tensor([-1e-7, -0.5, -20.0], requires_grad=True)
    y = log1mexp(x32)
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x32.grad).all()
    # a support covering ~all mass (logsumexp rounds to 0) stays finite instead of -inf/NaN
    z = torch.zeros(2, requires_grad=True)
    log1mexp(z).sum().backward()
    assert torch.isfinite(log1mexp(z)).all() and torch.isfinite(z.grad).all()


def test_masked_positions_and_padded_slots_are_ignored():
    ids, probs, other = _targets()
    logits = _student()
    weight = torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0], dtype=F64)
    lp = _gather(logits, ids)
    clean = topk_kl_loss(lp, ids, probs, other, weight, 4.0)
    garbage = _gather(logits, ids)
    garbage[2] = 1e6  # masked position
    garbage[1, 3] = float("nan")  # padded slot
    dirty = topk_kl_loss(garbage, ids, probs, other, weight, 4.0)
    torch.testing.assert_close(dirty.loss, clean.loss)
    (g_clean,) = torch.autograd.grad(clean.loss, logits)
    (g_dirty,) = torch.autograd.grad(dirty.loss, logits)
    torch.testing.assert_close(g_dirty, g_clean)


def _dense_batch():
    """[B=2, T=4] batch with dense targets at 3 positions (one on a masked token)."""
    ids_P, probs_P, other_P = _targets(P=3, S=4, seed=7)
    B, T, S = 2, 4, 4
    g = torch.Generator().manual_seed(9)
    positions = [(0, 1), (1, 0), (1, 3)]
    batch = LossInputs(
        mask_B_T=torch.tensor([[1, 1, 1, 0], [1, 1, 1, 0]], dtype=F64),
        behaviour_logprobs_B_T=-torch.rand(B, T, generator=g, dtype=F64),
        advantages_B_T=torch.randn(B, T, generator=g, dtype=F64),
        dense_mask_B_T=torch.zeros(B, T, dtype=F64),
        support_ids_B_T_S=torch.full((B, T, S), -1, dtype=torch.long),
        support_probs_B_T_S=torch.zeros(B, T, S, dtype=F64),
        other_prob_B_T=torch.zeros(B, T, dtype=F64),
    )
    for p, (b, t) in enumerate(positions):
        batch.dense_mask_B_T[b, t] = 1
        batch.support_ids_B_T_S[b, t] = ids_P[p]
        batch.support_probs_B_T_S[b, t] = probs_P[p]
        batch.other_prob_B_T[b, t] = other_P[p]
    logits_B_T_V = torch.randn(B, T, V, generator=g, dtype=F64, requires_grad=True)
    return batch, logits_B_T_V, positions


def _student_outputs(batch, logits_B_T_V):
    logp = torch.log_softmax(logits_B_T_V, -1)
    ids = batch.support_ids_B_T_S
    sup = logp.gather(-1, ids.clamp(min=0))
    targets = torch.zeros(logp.shape[:2], dtype=torch.long)
    return TokenLogprobs(
        logprobs_B_T=logp.gather(-1, targets[..., None]).squeeze(-1),
        support_logprobs_B_T_S=torch.where(ids >= 0, sup, torch.zeros_like(sup)),
    )


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_objective_mixes_opd_and_topk(direction):
    batch, logits, positions = _dense_batch()
    student = _student_outputs(batch, logits)
    obj = OPDTopK(topk_weight=0.7, kl_direction=direction, clip_eps=0.2, adv_clamp=None)
    out = obj(student, batch)
    # dense position (1, 3) sits on a masked token: only 2 dense positions count
    trained = [(b, t) for b, t in positions if batch.mask_B_T[b, t] > 0]
    assert len(trained) == 2
    rows = torch.tensor([b * 4 + t for b, t in trained])
    S = batch.support_ids_B_T_S.shape[-1]
    topk_ref = _naive_kl(
        logits.reshape(-1, V)[rows],
        batch.support_ids_B_T_S.reshape(-1, S)[rows],
        batch.support_probs_B_T_S.reshape(-1, S)[rows],
        batch.other_prob_B_T.reshape(-1)[rows],
        torch.ones(2, dtype=F64),
        2.0,
        direction,
    )
    opd_ref = opd_loss(
        student.logprobs_B_T, batch.behaviour_logprobs_B_T, batch.advantages_B_T, batch.mask_B_T, 6.0
    ).loss
    torch.testing.assert_close(out.loss, opd_ref + 0.7 * topk_ref)
    assert "opd/clip_frac" in out.metrics and "topk/kl" in out.metrics
    alone = OPDTopK(topk_weight=0.7, kl_direction=direction, with_sampled=False)(student, batch)
    torch.testing.assert_close(alone.loss, 0.7 * topk_ref)


def test_objective_requires_support_logprobs():
    batch, logits, _ = _dense_batch()
    student = _student_outputs(batch, logits)
    student.support_logprobs_B_T_S = None
    with pytest.raises(ValueError, match="support"):
        OPDTopK()(student, batch)
    with pytest.raises(ValueError, match="kl_direction"):
        OPDTopK(kl_direction="sideways")
    with pytest.raises(ValueError, match="trains nothing"):
        OPDTopK(topk_weight=0.0, with_sampled=False)


# ------------------------------------------------------------------ byte-prefix groups (loss-side split)
def _grouped_targets():
    """P=3 rows over S=5 slots (distinct ids), with nested groups, a direct id inside a group and a padded
    group; Σ direct + Σ group mass + other = 1 on every row."""
    ids = torch.tensor([[2, 5, 7, 1, -1], [0, 3, 4, 8, 6], [1, 2, -1, -1, -1]])
    direct = torch.tensor(
        [[0.1, 0.0, 0.0, 0.2, 0.0], [0.0, 0.15, 0.0, 0.0, 0.1], [0.3, 0.0, 0.0, 0.0, 0.0]], dtype=F64
    )
    mass = torch.tensor([[0.4, 0.1, 0.0], [0.3, 0.2, 0.0], [0.5, 0.0, 0.0]], dtype=F64)
    start = torch.tensor([[0, 1, 0], [0, 2, 0], [0, 0, 0]])  # row 0: {0,1,2} ⊃ {1,2}; row 1: {0..3} ⊃ {2,3}
    end = torch.tensor([[3, 3, 0], [4, 4, 0], [2, 0, 0]])
    other = 1.0 - direct.sum(-1) - mass.sum(-1)
    return ids, direct, mass, start, end, other


def _naive_split(logits_P_V, ids, direct, mass, start, end):
    p_full = torch.softmax(logits_P_V.detach(), -1)
    q = direct.clone()
    for i in range(ids.shape[0]):
        for g in range(mass.shape[1]):
            slots = list(range(int(start[i, g]), int(end[i, g])))
            if mass[i, g] == 0 or not slots:
                continue
            w = p_full[i, ids[i, slots]]
            q[i, slots] += mass[i, g] * w / w.sum()
    return q


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_group_split_matches_naive_values_and_gradients(direction):
    ids, direct, mass, start, end, other = _grouped_targets()
    logits = _student(P=3, seed=5)
    weight = torch.tensor([1.0, 0.5, 1.0], dtype=F64)
    out = topk_kl_loss(
        _gather(logits, ids), ids, direct, other, weight, 3.0, direction=direction,
        group_mass_P_G=mass, group_start_P_G=start, group_end_P_G=end,
    )  # fmt: skip
    q = _naive_split(logits, ids, direct, mass, start, end)
    torch.testing.assert_close(q.sum(-1) + other, torch.ones(3, dtype=F64))
    ref = _naive_kl(logits, ids, q, other, weight, 3.0, direction)
    torch.testing.assert_close(out.loss, ref)
    (g_out,) = torch.autograd.grad(out.loss, logits)
    (g_ref,) = torch.autograd.grad(ref, logits)
    torch.testing.assert_close(g_out, g_ref)
    assert float(out.metrics["topk/target_group_mass"]) == pytest.approx((0.5 + 0.5 * 0.5 + 0.5) / 3.0)


def test_group_split_is_exact_in_log_space_and_uniform_when_undefined():
    from framework.algo.topk_kl import split_group_targets

    ids = torch.tensor([[0, 1, 2, 3]])
    valid = ids >= 0
    direct = torch.tensor([[0.2, 0.0, 0.0, 0.0]], dtype=F64)
    mass, start, end = torch.tensor([[0.6]], dtype=F64), torch.tensor([[1]]), torch.tensor([[4]])
    # the student gives the group ~e^-2000 of its mass: the split still follows its relative preferences
    lp = torch.tensor([[-1e-6, -2000.0, -2000.0 - math.log(3.0), -2001.0]], dtype=F64)
    q = split_group_targets(lp, valid, direct, mass, start, end)
    w = torch.tensor([1.0, 1.0 / 3.0, math.exp(-1.0)], dtype=F64)
    torch.testing.assert_close(q[0, 1:], 0.6 * w / w.sum())
    assert float(q[0, 0]) == 0.2
    # every member at -inf: no preference to follow, the mass is split uniformly
    lp_inf = torch.tensor([[0.0, -math.inf, -math.inf, -math.inf]], dtype=F64)
    q_inf = split_group_targets(lp_inf, valid, direct, mass, start, end)
    torch.testing.assert_close(q_inf[0, 1:], torch.full((3,), 0.2, dtype=F64))
    # float32 inputs, positions processed in several blocks: same as float64 in one block
    import framework.algo.topk_kl as topk_kl

    P, S, G = 7, 6, 2
    g = torch.Generator().manual_seed(0)
    lp_many = torch.log_softmax(torch.randn(P, S, generator=g, dtype=F64), -1)
    st = torch.randint(0, 3, (P, G), generator=g)
    en = st + torch.randint(1, 4, (P, G), generator=g)
    ms = torch.rand(P, G, generator=g, dtype=F64) * 0.3
    valid_many = torch.ones(P, S, dtype=torch.bool)
    d0 = torch.zeros(P, S, dtype=F64)
    whole = split_group_targets(lp_many, valid_many, d0, ms, st, en)
    old = topk_kl._SPLIT_CHUNK
    try:
        topk_kl._SPLIT_CHUNK = S * G * 2  # two positions per block
        blocks = split_group_targets(lp_many.float(), valid_many, d0.float(), ms.float(), st, en)
    finally:
        topk_kl._SPLIT_CHUNK = old
    torch.testing.assert_close(blocks, whole, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(whole.sum(-1), ms.sum(-1))


def test_group_fields_come_together_and_the_objective_uses_them():
    ids, direct, mass, start, end, other = _grouped_targets()
    logits = _student(P=3, seed=5)
    weight = torch.ones(3, dtype=F64)
    with pytest.raises(ValueError, match="together"):
        topk_kl_loss(_gather(logits, ids), ids, direct, other, weight, 3.0, group_mass_P_G=mass)
    batch = LossInputs(
        mask_B_T=torch.ones(1, 3, dtype=F64),
        dense_mask_B_T=torch.ones(1, 3, dtype=F64),
        support_ids_B_T_S=ids[None],
        support_probs_B_T_S=direct[None],
        other_prob_B_T=other[None],
        group_mass_B_T_G=mass[None],
        group_start_B_T_G=start[None],
        group_end_B_T_G=end[None],
    )
    student = TokenLogprobs(
        logprobs_B_T=torch.zeros(1, 3, dtype=F64), support_logprobs_B_T_S=_gather(logits, ids)[None]
    )
    got = OPDTopK(with_sampled=False)(student, batch).loss
    want = topk_kl_loss(
        _gather(logits, ids), ids, direct, other, weight, 3.0,
        group_mass_P_G=mass, group_start_P_G=start, group_end_P_G=end,
    ).loss  # fmt: skip
    torch.testing.assert_close(got, want)
    # a shard keeps its rows' groups
    torch.testing.assert_close(select_rows(batch, [0]).group_end_B_T_G, end[None])
