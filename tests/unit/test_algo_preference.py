"""``dpo`` and ``ctpd`` vs plain references; CTPD reduces to DPO."""

from __future__ import annotations

import math

import pytest
import torch

from framework.algo import (
    CTPD,
    DPO,
    LossInputs,
    ctpd_loss,
    ctpd_span_weights,
    dpo_loss,
    span_logprobs,
)

torch.set_num_threads(1)
F64 = torch.float64


def _logsig(x):
    return -math.log1p(math.exp(-x)) if x > 0 else x - math.log1p(math.exp(x))


# ---- preference data: 3 pairs = 6 rows, responses cut into spans ----------------------------------


def _pref_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    B, T, K = 6, 7, 4
    mask = torch.ones(B, T, dtype=F64)
    mask[1, 5:] = 0
    mask[4, 6:] = 0
    # spans partition each row's response tokens: contiguous runs of 1-3 tokens
    span_index = torch.full((B, T), -1, dtype=torch.long)
    span_mask = torch.zeros(B, K, dtype=F64)
    for b in range(B):
        t, k = 0, 0
        length = int(mask[b].sum())
        while t < length:
            run = min(int(torch.randint(1, 4, (1,), generator=g)), length - t)
            if k == K - 1:
                run = length - t
            span_index[b, t : t + run] = k
            span_mask[b, k] = 1
            t, k = t + run, k + 1
    batch = LossInputs(
        mask_B_T=mask,
        chosen_index_N=torch.tensor([0, 2, 5]),
        rejected_index_N=torch.tensor([1, 3, 4]),
        reference_logprobs_B_T=-torch.rand(B, T, generator=g, dtype=F64) * 3,
        span_index_B_T=span_index,
        teacher_span_logprobs_B_K=-torch.rand(B, K, generator=g, dtype=F64) * 5,
        span_mask_B_K=span_mask,
    )
    logp = (-torch.rand(B, T, generator=g, dtype=F64) * 3).requires_grad_()
    return batch, logp


def test_span_logprobs_sum_tokens_of_each_span():
    batch, logp = _pref_batch()
    got = span_logprobs(logp, batch.span_index_B_T, batch.mask_B_T, 4)
    for b in range(6):
        for k in range(4):
            want = sum(
                float(logp.detach()[b, t])
                for t in range(7)
                if batch.span_index_B_T[b, t] == k and batch.mask_B_T[b, t]
            )
            assert abs(float(got.detach()[b, k]) - want) < 1e-12


def test_dpo_matches_naive():
    batch, logp = _pref_batch()
    beta = 0.3
    out = DPO(beta=beta)(logp, batch)
    total = 0.0
    for c, r in zip(batch.chosen_index_N.tolist(), batch.rejected_index_N.tolist()):
        lc = sum(
            float(logp.detach()[c, t] - batch.reference_logprobs_B_T[c, t])
            for t in range(7)
            if batch.mask_B_T[c, t]
        )
        lr = sum(
            float(logp.detach()[r, t] - batch.reference_logprobs_B_T[r, t])
            for t in range(7)
            if batch.mask_B_T[r, t]
        )
        total += -_logsig(beta * (lc - lr))
    assert abs(float(out.loss.detach()) - total / 3) < 1e-12
    assert 0 <= float(out.metrics["dpo/reward_acc"]) <= 1


def test_dpo_gradcheck_and_label_smoothing():
    g = torch.Generator().manual_seed(1)
    pc, pr = (
        torch.randn(4, generator=g, dtype=F64, requires_grad=True),
        torch.randn(4, generator=g, dtype=F64),
    )
    rc, rr = torch.randn(4, generator=g, dtype=F64), torch.randn(4, generator=g, dtype=F64)
    assert torch.autograd.gradcheck(lambda x: dpo_loss(x, pr, rc, rr, 4.0, beta=0.5).loss, (pc,))
    smooth = dpo_loss(pc, pr, rc, rr, 4.0, beta=0.5, label_smoothing=0.1).loss
    h = 0.5 * ((pc - rc) - (pr - rr)).detach()
    want = sum(-0.9 * _logsig(float(x)) - 0.1 * _logsig(-float(x)) for x in h) / 4
    assert abs(float(smooth.detach()) - want) < 1e-12


def _naive_weights(tau, rho, real, is_chosen, mu, c, wmin, wmax):
    out = torch.zeros_like(tau)
    for b in range(tau.shape[0]):
        ks = [k for k in range(tau.shape[1]) if real[b, k]]
        sign = 1.0 if is_chosen[b] else -1.0
        u = {k: math.exp(sign * mu * max(-c, min(c, float(tau[b, k] - rho[b, k])))) for k in ks}
        z = sum(u.values())
        for k in ks:
            out[b, k] = min(wmax, max(wmin, len(ks) * u[k] / z))
    return out


def test_span_weights_formula_and_properties():
    batch, _ = _pref_batch()
    g = torch.Generator().manual_seed(3)
    rho = batch.teacher_span_logprobs_B_K + torch.randn(6, 4, generator=g, dtype=F64)
    is_chosen = torch.tensor([True, False, True, False, False, True])
    w = ctpd_span_weights(
        batch.teacher_span_logprobs_B_K,
        rho,
        batch.span_mask_B_K,
        is_chosen,
        mu=1.5,
        log_ratio_clip=0.8,
        weight_min=0.5,
        weight_max=2.0,
    )
    want = _naive_weights(
        batch.teacher_span_logprobs_B_K, rho, batch.span_mask_B_K, is_chosen, 1.5, 0.8, 0.5, 2.0
    )
    torch.testing.assert_close(w, want)
    assert (w[batch.span_mask_B_K == 0] == 0).all()
    # without clipping bounds the weights average to exactly 1 per response
    w_free = ctpd_span_weights(
        batch.teacher_span_logprobs_B_K,
        rho,
        batch.span_mask_B_K,
        is_chosen,
        mu=1.5,
        weight_min=0.0,
        weight_max=float("inf"),
    )
    torch.testing.assert_close(w_free.sum(-1), batch.span_mask_B_K.sum(-1))
    # chosen: spans the teacher prefers over the reference weigh more; rejected: less
    b_c, b_r = 0, 1
    d_c = batch.teacher_span_logprobs_B_K[b_c] - rho[b_c]
    d_r = batch.teacher_span_logprobs_B_K[b_r] - rho[b_r]
    real_c, real_r = batch.span_mask_B_K[b_c] > 0, batch.span_mask_B_K[b_r] > 0
    assert w_free[b_c][real_c][d_c[real_c].argmax()] == w_free[b_c][real_c].max()
    assert w_free[b_r][real_r][d_r[real_r].argmax()] == w_free[b_r][real_r].min()
    uniform = ctpd_span_weights(batch.teacher_span_logprobs_B_K, rho, batch.span_mask_B_K, is_chosen, mu=0.0)
    torch.testing.assert_close(uniform, batch.span_mask_B_K)


def test_ctpd_matches_naive_teacher_anchored_loss():
    batch, logp = _pref_batch()
    g = torch.Generator().manual_seed(4)
    batch.reference_span_logprobs_B_K = batch.teacher_span_logprobs_B_K + torch.randn(
        6, 4, generator=g, dtype=F64
    )
    obj = CTPD(beta=0.2, mu=1.0, log_ratio_clip=1.0, weight_min=0.25, weight_max=4.0)
    assert obj.needs_reference
    out = obj(logp, batch)
    is_chosen = torch.zeros(6, dtype=torch.bool)
    is_chosen[batch.chosen_index_N] = True
    w = _naive_weights(
        batch.teacher_span_logprobs_B_K,
        batch.reference_span_logprobs_B_K,
        batch.span_mask_B_K,
        is_chosen,
        1.0,
        1.0,
        0.25,
        4.0,
    )

    def reward(b):
        total = 0.0
        for k in range(4):
            if not batch.span_mask_B_K[b, k]:
                continue
            s = sum(
                float(logp.detach()[b, t])
                for t in range(7)
                if batch.span_index_B_T[b, t] == k and batch.mask_B_T[b, t]
            )
            total += float(w[b, k]) * (s - float(batch.teacher_span_logprobs_B_K[b, k]))
        return total

    want = (
        sum(
            -_logsig(0.2 * (reward(c) - reward(r)))
            for c, r in zip(batch.chosen_index_N.tolist(), batch.rejected_index_N.tolist())
        )
        / 3
    )
    assert abs(float(out.loss.detach()) - want) < 1e-12


def test_ctpd_gradcheck():
    batch, logp = _pref_batch(seed=2)
    w = torch.rand(6, 4, dtype=F64) * batch.span_mask_B_K

    def fn(lp):
        s = span_logprobs(lp, batch.span_index_B_T, batch.mask_B_T, 4)
        return ctpd_loss(
            s,
            batch.teacher_span_logprobs_B_K,
            w,
            batch.span_mask_B_K,
            batch.chosen_index_N,
            batch.rejected_index_N,
            3.0,
            beta=0.5,
        ).loss

    assert torch.autograd.gradcheck(fn, (logp,))


def test_ctpd_with_uniform_weights_and_reference_teacher_is_dpo():
    """μ = 0 and teacher span logprobs = the student-init reference's span logprobs → exactly DPO."""
    batch, logp = _pref_batch()
    batch.teacher_span_logprobs_B_K = span_logprobs(
        batch.reference_logprobs_B_T, batch.span_index_B_T, batch.mask_B_T, 4
    )
    ctpd = CTPD(beta=0.25, mu=0.0)
    assert not ctpd.needs_reference
    out_c = ctpd(logp, batch)
    out_d = DPO(beta=0.25)(logp, batch)
    torch.testing.assert_close(out_c.loss, out_d.loss, rtol=1e-12, atol=1e-14)
    (g_c,) = torch.autograd.grad(out_c.loss, logp)
    (g_d,) = torch.autograd.grad(out_d.loss, logp)
    torch.testing.assert_close(g_c, g_d, rtol=1e-12, atol=1e-14)
    for key in ("reward_acc", "margin", "chosen_reward", "rejected_reward"):
        torch.testing.assert_close(out_c.metrics[f"ctpd/{key}"], out_d.metrics[f"dpo/{key}"])


def test_preference_masks_and_errors():
    batch, logp = _pref_batch()
    clean = CTPD(mu=0.0)(logp, batch)
    dirty_lp = torch.where(batch.mask_B_T > 0, logp.detach(), torch.full_like(logp, float("nan")))
    torch.testing.assert_close(CTPD(mu=0.0)(dirty_lp, batch).loss, clean.loss.detach())
    torch.testing.assert_close(DPO()(dirty_lp, batch).loss, DPO()(logp, batch).loss.detach())
    with pytest.raises(ValueError, match="reference"):
        CTPD(mu=1.0)(logp, batch.__class__(**{**batch.__dict__, "reference_logprobs_B_T": None}))
    with pytest.raises(ValueError, match="chosen_index_N"):
        DPO()(logp, LossInputs(mask_B_T=batch.mask_B_T, reference_logprobs_B_T=batch.reference_logprobs_B_T))
