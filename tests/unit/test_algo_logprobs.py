"""Chunked token logprobs vs the naive full-softmax computation (float64)."""

from __future__ import annotations

import pytest
import torch

from framework.algo.logprobs import chunked_token_logprobs, entropy_from_logits, logprobs_from_logits

torch.set_num_threads(1)
F64 = torch.float64


def _problem(B=2, T=5, H=4, V=11, S=3, seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, H, generator=g, dtype=dtype, requires_grad=True)
    weight = torch.randn(V, H, generator=g, dtype=dtype, requires_grad=True)
    bias = torch.randn(V, generator=g, dtype=dtype, requires_grad=True)
    targets = torch.randint(0, V, (B, T), generator=g)
    support = torch.randint(0, V, (B, T, S), generator=g)
    support[0, 1, -1] = -1  # padding slots
    support[-1, -2, :] = -1
    return hidden, weight, bias, targets, support


def _naive(hidden, weight, bias, targets, support, temperature=1.0, softcap=None):
    """Materialise all logits and use log_softmax: the reference."""
    logits = hidden @ weight.t()
    if bias is not None:
        logits = logits + bias
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    logp = torch.log_softmax(logits / temperature, dim=-1)
    lp = logp.gather(-1, targets[..., None]).squeeze(-1)
    ent = -(logp.exp() * logp).sum(-1)
    sup = logp.gather(-1, support.clamp(min=0))
    sup = torch.where(support >= 0, sup, torch.zeros_like(sup))
    return lp, ent, sup


@pytest.mark.parametrize("chunk_size", [1, 3, 4, 100])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("softcap", [None, 1.5])  # 1.5: well inside tanh's curve for these logits
def test_values_and_gradients_match_naive(chunk_size, temperature, softcap):
    hidden, weight, bias, targets, support = _problem()
    out = chunked_token_logprobs(
        hidden,
        weight,
        targets,
        bias_V=bias,
        support_ids_B_T_S=support,
        chunk_size=chunk_size,
        temperature=temperature,
        softcap=softcap,
    )
    ref = _naive(hidden, weight, bias, targets, support, temperature, softcap)
    for got, want in zip((out.logprobs_B_T, out.entropy_B_T, out.support_logprobs_B_T_S), ref):
        assert got.dtype == F64
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)

    # a loss touching all three outputs with random coefficients exercises every gradient term
    g = torch.Generator().manual_seed(1)
    a, b, c = (torch.randn(t.shape, generator=g, dtype=F64) for t in ref)

    def scalar(lp, ent, sup):
        return (a * lp).sum() + (b * ent).sum() + (c * sup).sum()

    got_grads = torch.autograd.grad(
        scalar(out.logprobs_B_T, out.entropy_B_T, out.support_logprobs_B_T_S), (hidden, weight, bias)
    )
    want_grads = torch.autograd.grad(scalar(*ref), (hidden, weight, bias))
    for got, want in zip(got_grads, want_grads):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_gradcheck_small():
    hidden, weight, bias, targets, support = _problem(B=2, T=3, H=3, V=5, S=2)

    def fn(h, w, b):
        out = chunked_token_logprobs(h, w, targets, bias_V=b, support_ids_B_T_S=support, chunk_size=2)
        return out.logprobs_B_T, out.entropy_B_T, out.support_logprobs_B_T_S

    assert torch.autograd.gradcheck(fn, (hidden, weight, bias))


def test_partial_outputs_and_no_bias():
    """Using only the logprobs (entropy/support grads None) and no bias still gives correct gradients."""
    hidden, weight, _, targets, _ = _problem()
    out = chunked_token_logprobs(hidden, weight, targets, chunk_size=3)
    assert out.support_logprobs_B_T_S is None
    got = torch.autograd.grad(out.logprobs_B_T.sum(), (hidden, weight))
    logp = torch.log_softmax(hidden @ weight.t(), -1).gather(-1, targets[..., None]).sum()
    want = torch.autograd.grad(logp, (hidden, weight))
    for x, y in zip(got, want):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)


def test_frozen_head_gets_no_weight_gradient():
    hidden, weight, _, targets, _ = _problem()
    w = weight.detach()
    out = chunked_token_logprobs(hidden, w, targets, chunk_size=2)
    out.logprobs_B_T.sum().backward()
    assert hidden.grad is not None and w.grad is None


def test_token_mask_skips_positions():
    hidden, weight, bias, targets, support = _problem()
    mask = torch.tensor([[1, 1, 0, 1, 0], [0, 1, 1, 1, 1]])
    bad_targets = torch.where(mask > 0, targets, torch.full_like(targets, -100))  # padding ids are fine
    out = chunked_token_logprobs(
        hidden, weight, bad_targets, bias_V=bias, support_ids_B_T_S=support, token_mask_B_T=mask, chunk_size=2
    )
    full = chunked_token_logprobs(
        hidden, weight, targets, bias_V=bias, support_ids_B_T_S=support, chunk_size=2
    )
    keep = mask > 0
    torch.testing.assert_close(out.logprobs_B_T[keep], full.logprobs_B_T[keep])
    torch.testing.assert_close(out.entropy_B_T[keep], full.entropy_B_T[keep])
    torch.testing.assert_close(out.support_logprobs_B_T_S[keep], full.support_logprobs_B_T_S[keep])
    assert (out.logprobs_B_T[~keep] == 0).all() and (out.entropy_B_T[~keep] == 0).all()
    (grad_h,) = torch.autograd.grad((out.logprobs_B_T + out.entropy_B_T).sum(), (hidden,))
    assert (grad_h[~keep] == 0).all() and (grad_h[keep].abs().sum(-1) > 0).all()


def test_backward_never_saves_full_logits():
    """Everything autograd keeps for backward is far smaller than one [N, V] logits tensor."""
    B, T, H, V = 2, 32, 8, 997
    hidden, weight, bias, targets, support = _problem(B=B, T=T, H=H, V=V, S=4)
    saved: list[int] = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = chunked_token_logprobs(
            hidden, weight, targets, bias_V=bias, support_ids_B_T_S=support, chunk_size=8
        )
    assert saved, "the hook saw no saved tensors"
    assert max(saved) <= V * H  # the LM head itself; no [N, V] or [chunk, V] block is kept
    (out.logprobs_B_T.sum() + out.entropy_B_T.sum()).backward()
    assert torch.isfinite(weight.grad).all()


def test_low_precision_inputs_compute_in_float32():
    hidden, weight, _, targets, _ = _problem(B=2, T=6, H=16, V=50)
    out = chunked_token_logprobs(
        hidden.detach().bfloat16(), weight.detach().bfloat16(), targets, chunk_size=4
    )
    assert out.logprobs_B_T.dtype == torch.float32
    ref = logprobs_from_logits(hidden.detach() @ weight.detach().t(), targets)
    torch.testing.assert_close(out.logprobs_B_T.double(), ref, rtol=0.05, atol=0.15)
    out32 = chunked_token_logprobs(hidden.detach().float(), weight.detach().float(), targets, chunk_size=4)
    torch.testing.assert_close(out32.logprobs_B_T.double(), ref, rtol=1e-5, atol=1e-5)


def test_helpers_from_logits():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 4, 7, generator=g, dtype=F64)
    targets = torch.randint(0, 7, (2, 4), generator=g)
    p = torch.softmax(logits / 0.5, -1)
    want_lp = torch.log(p.gather(-1, targets[..., None]).squeeze(-1))
    torch.testing.assert_close(logprobs_from_logits(logits, targets, temperature=0.5), want_lp)
    torch.testing.assert_close(entropy_from_logits(logits, temperature=0.5), -(p * p.log()).sum(-1))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"target_ids_B_T": torch.full((2, 5), 11)}, "target ids"),
        ({"target_ids_B_T": torch.zeros(2, 4, dtype=torch.long)}, "target_ids_B_T"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"temperature": 0.0}, "temperature"),
        ({"softcap": 0.0}, "softcap"),
        ({"support_ids_B_T_S": torch.full((2, 5, 2), 11)}, "support ids"),
    ],
)
def test_bad_input_raises(kwargs, match):
    hidden, weight, _, targets, _ = _problem()
    args = {"target_ids_B_T": targets, **kwargs}
    targets_arg = args.pop("target_ids_B_T")
    with pytest.raises(ValueError, match=match):
        chunked_token_logprobs(hidden, weight, targets_arg, **args)
