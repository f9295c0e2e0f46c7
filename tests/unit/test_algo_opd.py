"""``opd``: clipped sampled-token OPD vs a plain per-token reference."""

from __future__ import annotations

import math

import pytest
import torch

from framework.algo import OPD, LossInputs, opd_loss

torch.set_num_threads(1)
F64 = torch.float64


def _naive_opd(logp, beh, adv, mask, n_global, clip_eps, clip_high, dual_clip, adv_clamp):
    """One token at a time, straight from the formula."""
    total = 0.0
    B, T = logp.shape
    for b in range(B):
        for t in range(T):
            if mask[b, t] == 0:
                continue
            a = float(adv[b, t])
            if adv_clamp is not None:
                a = max(-adv_clamp, min(adv_clamp, a))
            r = torch.exp(logp[b, t] - beh[b, t])
            obj = r * a
            if clip_eps is not None:
                hi = clip_eps if clip_high is None else clip_high
                obj = torch.minimum(obj, torch.clamp(r, 1 - clip_eps, 1 + hi) * a)
            if dual_clip is not None and a < 0:
                obj = torch.maximum(obj, torch.tensor(dual_clip * a, dtype=F64))
            total = total - mask[b, t] * obj
    return total / n_global


def _data(B=3, T=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    beh = -torch.rand(B, T, generator=g, dtype=F64) * 3
    logp = (beh + 0.4 * torch.randn(B, T, generator=g, dtype=F64)).requires_grad_()
    adv = 2 * torch.randn(B, T, generator=g, dtype=F64)
    mask = (torch.rand(B, T, generator=g) > 0.25).to(F64)
    return logp, beh, adv, mask


@pytest.mark.parametrize(
    "cfg",
    [
        {"clip_eps": 0.2, "clip_high": None, "dual_clip": None, "adv_clamp": None},
        {"clip_eps": 0.1, "clip_high": 0.3, "dual_clip": 2.0, "adv_clamp": 1.5},
        {"clip_eps": None, "clip_high": None, "dual_clip": None, "adv_clamp": 0.5},
    ],
)
def test_matches_naive_values_and_gradients(cfg):
    logp, beh, adv, mask = _data()
    n_global = 40.0  # the batch is a shard of a larger global batch
    out = opd_loss(
        logp,
        beh,
        adv,
        mask,
        n_global,
        clip_eps=cfg["clip_eps"],
        clip_eps_high=cfg["clip_high"],
        dual_clip=cfg["dual_clip"],
        adv_clamp=cfg["adv_clamp"],
    )
    ref = _naive_opd(logp, beh, adv, mask, n_global, **cfg)
    torch.testing.assert_close(out.loss, ref)
    (g_out,) = torch.autograd.grad(out.loss, logp)
    (g_ref,) = torch.autograd.grad(ref, logp)
    torch.testing.assert_close(g_out, g_ref)


def test_on_policy_gradient_is_minus_advantage():
    """At r = 1 the gradient w.r.t. log π is −m·A/N (the OPD policy gradient)."""
    _, beh, adv, mask = _data()
    logp = beh.clone().requires_grad_()
    out = opd_loss(logp, beh, adv, mask, 17.0, clip_eps=0.2)
    (grad,) = torch.autograd.grad(out.loss, logp)
    torch.testing.assert_close(grad, -mask * adv / 17.0)
    assert float(out.metrics["opd/clip_frac"]) == 0.0
    torch.testing.assert_close(out.metrics["opd/ratio_mean"], mask.sum() / 17.0)
    assert abs(float(out.metrics["opd/approx_kl"])) < 1e-15


def test_gradcheck():
    logp, beh, adv, mask = _data(B=2, T=4, seed=5)
    logp = (beh + 0.05 * torch.randn(beh.shape, dtype=F64)).requires_grad_()  # away from the clip kinks

    def fn(lp):
        return opd_loss(lp, beh, adv, mask, 7.0, clip_eps=0.2, adv_clamp=3.0).loss

    assert torch.autograd.gradcheck(fn, (logp,))


def test_clipping_zeroes_gradients_as_documented():
    beh = torch.zeros(1, 4, dtype=F64)
    # r = e^0.5 (> 1.2) with A > 0: clipped; r = e^-0.5 (< 0.8) with A < 0: clipped;
    # r = e^0.5 with A < 0: NOT clipped (pessimistic branch); r = e^-0.5 with A > 0: NOT clipped
    logp = torch.tensor([[0.5, -0.5, 0.5, -0.5]], dtype=F64, requires_grad=True)
    adv = torch.tensor([[1.0, -1.0, -1.0, 1.0]], dtype=F64)
    mask = torch.ones(1, 4, dtype=F64)
    out = opd_loss(logp, beh, adv, mask, 4.0, clip_eps=0.2)
    (grad,) = torch.autograd.grad(out.loss, logp)
    assert grad[0, 0] == 0 and grad[0, 1] == 0
    torch.testing.assert_close(grad[0, 2:], -torch.exp(logp[0, 2:].detach()) * adv[0, 2:] / 4.0)
    torch.testing.assert_close(out.metrics["opd/clip_frac"], torch.tensor(0.5, dtype=F64))
    # asymmetric clip-higher: with eps_high = 1.0 the first token (r = 1.65 < 2) is no longer clipped
    out_hi = opd_loss(logp, beh, adv, mask, 4.0, clip_eps=0.2, clip_eps_high=1.0)
    (grad_hi,) = torch.autograd.grad(out_hi.loss, logp)
    assert grad_hi[0, 0] != 0 and grad_hi[0, 1] == 0


def test_dual_clip_bounds_negative_advantage_tokens():
    beh = torch.zeros(1, 2, dtype=F64)
    logp = torch.tensor([[3.0, 0.1]], dtype=F64, requires_grad=True)  # r = e^3 ≈ 20 on token 0
    adv = torch.tensor([[-1.0, -1.0]], dtype=F64)
    mask = torch.ones(1, 2, dtype=F64)
    out = opd_loss(logp, beh, adv, mask, 2.0, clip_eps=0.2, dual_clip=3.0)
    (grad,) = torch.autograd.grad(out.loss, logp)
    assert grad[0, 0] == 0 and grad[0, 1] != 0
    # token 0 contributes −(3 · −1) = 3, token 1 contributes −(e^0.1 · −1)
    torch.testing.assert_close(out.loss, torch.tensor((3.0 + math.exp(0.1)) / 2.0, dtype=F64))
    torch.testing.assert_close(out.metrics["opd/dual_clip_frac"], torch.tensor(0.5, dtype=F64))


def test_advantage_clamp():
    beh = torch.zeros(1, 3, dtype=F64)
    logp = beh.clone().requires_grad_()
    adv = torch.tensor([[10.0, -10.0, 0.3]], dtype=F64)
    out = opd_loss(logp, beh, adv, torch.ones(1, 3, dtype=F64), 3.0, adv_clamp=1.0)
    (grad,) = torch.autograd.grad(out.loss, logp)
    torch.testing.assert_close(grad, torch.tensor([[-1.0, 1.0, -0.3]], dtype=F64) / 3.0)
    torch.testing.assert_close(out.metrics["opd/adv_clamp_frac"], torch.tensor(2 / 3, dtype=F64))


def test_masked_tokens_do_not_change_loss_or_gradients():
    logp, beh, adv, mask = _data()
    clean = opd_loss(logp, beh, adv, mask, 30.0, clip_eps=0.2, dual_clip=3.0)
    (g_clean,) = torch.autograd.grad(clean.loss, logp)
    masked = mask == 0
    logp2 = torch.where(masked, torch.full_like(logp, 1e4), logp.detach()).requires_grad_()
    beh2 = torch.where(masked, torch.full_like(beh, float("nan")), beh)
    adv2 = torch.where(masked, torch.full_like(adv, float("inf")), adv)
    dirty = opd_loss(logp2, beh2, adv2, mask, 30.0, clip_eps=0.2, dual_clip=3.0)
    (g_dirty,) = torch.autograd.grad(dirty.loss, logp2)
    torch.testing.assert_close(dirty.loss, clean.loss)
    torch.testing.assert_close(g_dirty, g_clean)
    for k, v in clean.metrics.items():
        torch.testing.assert_close(dirty.metrics[k], v)


def test_approx_kl_positive_off_policy():
    logp, beh, adv, mask = _data()
    out = opd_loss(logp, beh, adv, mask, float(mask.sum()))
    assert float(out.metrics["opd/approx_kl"]) > 0


def test_objective_wrapper_and_errors():
    logp, beh, adv, mask = _data()
    batch = LossInputs(mask_B_T=mask, behaviour_logprobs_B_T=beh, advantages_B_T=adv)
    out = OPD(clip_eps=0.2, adv_clamp=None)(logp, batch)
    torch.testing.assert_close(out.loss, opd_loss(logp, beh, adv, mask, float(mask.sum())).loss)
    with pytest.raises(ValueError, match="advantages_B_T"):
        OPD()(logp, LossInputs(mask_B_T=mask, behaviour_logprobs_B_T=beh))
    with pytest.raises(ValueError, match="dual_clip"):
        OPD(dual_clip=0.5)
    with pytest.raises(ValueError, match="shape"):
        opd_loss(logp, beh[:, :2], adv, mask, 1.0)
