"""Token logprobs from final hidden states without materialising the ``[B, T, V]`` logits.

For every token position ``n`` (hidden ``h_n``), logits ``z_n = c(W h_n + b) / τ`` (τ = temperature;
``c(r) = r``, or with logit soft-capping as in Gemma 2, ``c(r) = κ·tanh(r/κ)``) and

    log p(y_n)   = z_n[y_n] − logsumexp(z_n)                      (target logprob)
    H_n          = −Σ_v p_v log p_v                              (entropy)
    log p(s_nk)  = z_n[s_nk] − logsumexp(z_n)                     (support logprobs, s_nk = -1 → 0)

The positions are processed ``chunk_size`` at a time, so only ``[chunk_size, V]`` blocks of logits exist
(float32, or float64 for float64 inputs; at most two alive at once). Backward is chunked too: a custom
`torch.autograd.Function` (not `torch.utils.checkpoint`) saves only the inputs, ``logsumexp`` and the
entropy, recomputes each chunk's logits, and applies the closed-form gradient with respect to the logits

    ∂L/∂z = g_y·(e_y − p) + Σ_k g_k·(e_{s_k} − p) − g_H·p ⊙ (log p + H)

(the entropy term: ∂H/∂z_v = −p_v (log p_v + H)), then ``∂L/∂r = (∂L/∂z) c'(r) / τ`` with
``c'(r) = 1 − tanh²(r/κ)`` under soft-capping (else 1), ``∂L/∂h = (∂L/∂r) W``, ``∂L/∂W = (∂L/∂r)ᵀ h``
(accumulated over chunks in float32/float64) and ``∂L/∂b = Σ_n ∂L/∂r_n``.
This is the fused "linear + cross-entropy" trick used by memory-lean RL trainers.
"""

from __future__ import annotations

from typing import Any

import torch

from framework.algo.inputs import TokenLogprobs


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def _chunk_logits(
    h_n_H: torch.Tensor,
    weight_V_H: torch.Tensor,
    bias_V: torch.Tensor | None,
    temperature: float,
    softcap: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(z float32/64 [n, V], tanh(r/κ) or None); the matmul runs in the weights' dtype (bf16 on GPU),
    the softmax upcast. The tanh block is what the backward needs for c'(r) under soft-capping."""
    logits = (h_n_H @ weight_V_H.t()).to(_compute_dtype(h_n_H.dtype))
    if bias_V is not None:
        logits = logits + bias_V.to(logits.dtype)
    tanh = None
    if softcap is not None:
        tanh = torch.tanh(logits / softcap)
        logits = tanh * softcap
    return (logits / temperature if temperature != 1.0 else logits), tanh


class _ChunkedLinearLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        hidden_N_H: torch.Tensor,
        weight_V_H: torch.Tensor,
        bias_V: torch.Tensor | None,
        targets_N: torch.Tensor,
        support_ids_N_S: torch.Tensor,
        chunk_size: int,
        temperature: float,
        softcap: float | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        N, S = hidden_N_H.shape[0], support_ids_N_S.shape[1]
        cdt = _compute_dtype(hidden_N_H.dtype)
        logprobs_N = hidden_N_H.new_zeros(N, dtype=cdt)
        entropy_N = hidden_N_H.new_zeros(N, dtype=cdt)
        lse_N = hidden_N_H.new_zeros(N, dtype=cdt)
        support_N_S = hidden_N_H.new_zeros(N, S, dtype=cdt)
        valid_N_S = support_ids_N_S >= 0
        for s in range(0, N, chunk_size):
            e = min(s + chunk_size, N)
            logits_n_V, _ = _chunk_logits(hidden_N_H[s:e], weight_V_H, bias_V, temperature, softcap)
            lse_n = torch.logsumexp(logits_n_V, dim=-1)
            lse_N[s:e] = lse_n
            logprobs_N[s:e] = logits_n_V.gather(1, targets_N[s:e, None]).squeeze(1) - lse_n
            if S:
                ids = support_ids_N_S[s:e].clamp(min=0)
                sup = logits_n_V.gather(1, ids) - lse_n[:, None]
                support_N_S[s:e] = torch.where(valid_N_S[s:e], sup, torch.zeros_like(sup))
            # in place from here on: at most two [chunk, V] blocks are alive at once
            logp_n_V = logits_n_V.sub_(lse_n[:, None])
            entropy_N[s:e] = -torch.exp(logp_n_V).mul_(logp_n_V).sum(-1)
        ctx.save_for_backward(hidden_N_H, weight_V_H, bias_V, targets_N, support_ids_N_S, lse_N, entropy_N)
        ctx.chunk_size, ctx.temperature, ctx.softcap = chunk_size, temperature, softcap
        return logprobs_N, entropy_N, support_N_S

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, g_logprobs_N: torch.Tensor | None, g_entropy_N: torch.Tensor | None, g_support_N_S
    ) -> tuple[Any, ...]:
        hidden_N_H, weight_V_H, bias_V, targets_N, support_ids_N_S, lse_N, entropy_N = ctx.saved_tensors
        chunk_size, temperature, softcap = ctx.chunk_size, ctx.temperature, ctx.softcap
        N, S = hidden_N_H.shape[0], support_ids_N_S.shape[1]
        cdt = lse_N.dtype
        need_h, need_w, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        g_lp = g_logprobs_N if g_logprobs_N is not None else lse_N.new_zeros(N)
        g_ent = g_entropy_N if g_entropy_N is not None else None
        g_sup = g_support_N_S if (g_support_N_S is not None and S) else None
        if g_sup is not None:
            g_sup = torch.where(support_ids_N_S >= 0, g_sup, torch.zeros_like(g_sup)).to(cdt)
        grad_h = torch.zeros_like(hidden_N_H) if need_h else None
        grad_w = torch.zeros(weight_V_H.shape, dtype=cdt, device=weight_V_H.device) if need_w else None
        grad_b = torch.zeros(bias_V.shape, dtype=cdt, device=bias_V.device) if need_b else None
        for s in range(0, N, chunk_size):
            e = min(s + chunk_size, N)
            h_n_H = hidden_N_H[s:e]
            # in place: the logits block becomes log p, then the entropy term; p becomes ∂L/∂z
            logits_n_V, tanh_n_V = _chunk_logits(h_n_H, weight_V_H, bias_V, temperature, softcap)
            logp_n_V = logits_n_V.sub_(lse_N[s:e, None])
            probs_n_V = torch.exp(logp_n_V)
            g_lp_n = g_lp[s:e].to(cdt)
            # p-coefficient collects -g_y - Σ_k g_k; the one-hot parts are scattered below
            coef_n = g_lp_n if g_sup is None else g_lp_n + g_sup[s:e].sum(-1)
            entropy_term = None
            if g_ent is not None:  # g_H · p ⊙ (log p + H)
                g_ent_n = g_ent[s:e].to(cdt)
                entropy_term = logp_n_V.add_(entropy_N[s:e, None]).mul_(probs_n_V).mul_(g_ent_n[:, None])
            del logp_n_V
            g_z = probs_n_V.mul_(-coef_n[:, None])
            if entropy_term is not None:
                g_z.sub_(entropy_term)
                del entropy_term
            g_z.scatter_add_(1, targets_N[s:e, None], g_lp_n[:, None])
            if g_sup is not None:
                g_z.scatter_add_(1, support_ids_N_S[s:e].clamp(min=0), g_sup[s:e])
            if temperature != 1.0:
                g_z /= temperature
            if tanh_n_V is not None:  # through the soft-cap: c'(r) = 1 - tanh²(r/κ)
                g_z.mul_(tanh_n_V.square_().neg_().add_(1.0))
                del tanh_n_V
            if grad_h is not None:
                grad_h[s:e] = (g_z.to(weight_V_H.dtype) @ weight_V_H).to(hidden_N_H.dtype)
            if grad_w is not None:
                grad_w += g_z.t() @ h_n_H.to(cdt)
            if grad_b is not None:
                grad_b += g_z.sum(0)
        grad_w = grad_w.to(weight_V_H.dtype) if grad_w is not None else None
        grad_b = grad_b.to(bias_V.dtype) if grad_b is not None else None
        return grad_h, grad_w, grad_b, None, None, None, None, None


def chunked_token_logprobs(
    hidden_B_T_H: torch.Tensor,
    weight_V_H: torch.Tensor,
    target_ids_B_T: torch.Tensor,
    *,
    bias_V: torch.Tensor | None = None,
    support_ids_B_T_S: torch.Tensor | None = None,
    token_mask_B_T: torch.Tensor | None = None,
    chunk_size: int = 1024,
    temperature: float = 1.0,
    softcap: float | None = None,
) -> TokenLogprobs:
    """Per-token logprobs of ``target_ids_B_T``, entropies and (optionally) support logprobs.

    ``hidden_B_T_H`` are the final hidden states that PREDICT the targets (already shifted by one),
    ``weight_V_H`` / ``bias_V`` the LM head. ``support_ids_B_T_S`` uses -1 for padding (result 0 there).
    With ``token_mask_B_T`` only positions where it is non-zero are computed (the rest are 0 and get no
    gradient), which skips prompt and padding positions. The time axis (flattened with the batch) is
    processed ``chunk_size`` positions at a time in forward and backward; see the module docstring.
    ``softcap`` = κ applies the model's final-logit soft-cap ``κ·tanh(r/κ)`` before the temperature.
    Returns float32 (float64 for float64 hidden states) tensors.
    """
    if hidden_B_T_H.dim() != 3:
        raise ValueError(f"hidden_B_T_H must be [B, T, H], got shape {tuple(hidden_B_T_H.shape)}")
    B, T, H = hidden_B_T_H.shape
    if weight_V_H.dim() != 2 or weight_V_H.shape[1] != H:
        raise ValueError(f"weight_V_H must be [V, {H}] (the LM head), got shape {tuple(weight_V_H.shape)}")
    V = weight_V_H.shape[0]
    if target_ids_B_T.shape != (B, T):
        raise ValueError(f"target_ids_B_T must be [{B}, {T}], got {tuple(target_ids_B_T.shape)}")
    if bias_V is not None and bias_V.shape != (V,):
        raise ValueError(f"bias_V must be [{V}], got {tuple(bias_V.shape)}")
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if softcap is not None and not softcap > 0:
        raise ValueError(f"softcap must be positive (or None), got {softcap}")
    S = 0
    if support_ids_B_T_S is not None:
        if support_ids_B_T_S.dim() != 3 or support_ids_B_T_S.shape[:2] != (B, T):
            raise ValueError(f"support_ids_B_T_S must be [{B}, {T}, S], got {tuple(support_ids_B_T_S.shape)}")
        S = support_ids_B_T_S.shape[2]

    hidden_N_H = hidden_B_T_H.reshape(B * T, H)
    targets_N = target_ids_B_T.reshape(B * T).long()
    support_N_S = (
        support_ids_B_T_S.reshape(B * T, S).long()
        if support_ids_B_T_S is not None
        else targets_N.new_zeros(B * T, 0)
    )
    rows = None
    if token_mask_B_T is not None:
        if token_mask_B_T.shape != (B, T):
            raise ValueError(f"token_mask_B_T must be [{B}, {T}], got {tuple(token_mask_B_T.shape)}")
        rows = torch.nonzero(token_mask_B_T.reshape(-1) != 0).squeeze(1)
        hidden_N_H, targets_N, support_N_S = hidden_N_H[rows], targets_N[rows], support_N_S[rows]
    if targets_N.numel() and (int(targets_N.min()) < 0 or int(targets_N.max()) >= V):
        raise ValueError(
            f"target ids must lie in [0, {V}) at computed positions; got range "
            f"[{int(targets_N.min())}, {int(targets_N.max())}] (mask padding with token_mask_B_T)"
        )
    if S and support_N_S.numel() and int(support_N_S.max()) >= V:
        raise ValueError(f"support ids must be < V={V} (use -1 for padding), got {int(support_N_S.max())}")

    logprobs_N, entropy_N, sup_N_S = _ChunkedLinearLogprobs.apply(
        hidden_N_H, weight_V_H, bias_V, targets_N, support_N_S, chunk_size, float(temperature),
        None if softcap is None else float(softcap),
    )  # fmt: skip
    if rows is not None:  # scatter back; index_copy is differentiable w.r.t. the source
        cdt = logprobs_N.dtype
        logprobs_N = logprobs_N.new_zeros(B * T).index_copy(0, rows, logprobs_N)
        entropy_N = entropy_N.new_zeros(B * T, dtype=cdt).index_copy(0, rows, entropy_N)
        sup_N_S = sup_N_S.new_zeros(B * T, S).index_copy(0, rows, sup_N_S)
    return TokenLogprobs(
        logprobs_B_T=logprobs_N.reshape(B, T),
        entropy_B_T=entropy_N.reshape(B, T),
        support_logprobs_B_T_S=sup_N_S.reshape(B, T, S) if support_ids_B_T_S is not None else None,
    )


def logprobs_from_logits(
    logits_B_T_V: torch.Tensor, target_ids_B_T: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """log softmax(z / τ)[y] for small cases where the full logits already exist (float32 or wider)."""
    logp_B_T_V = torch.log_softmax(logits_B_T_V.to(_compute_dtype(logits_B_T_V.dtype)) / temperature, -1)
    return logp_B_T_V.gather(-1, target_ids_B_T.long().unsqueeze(-1)).squeeze(-1)


def entropy_from_logits(logits_B_T_V: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """H = −Σ_v p_v log p_v of softmax(z / τ), float32 or wider."""
    logp_B_T_V = torch.log_softmax(logits_B_T_V.to(_compute_dtype(logits_B_T_V.dtype)) / temperature, -1)
    return -(logp_B_T_V.exp() * logp_B_T_V).sum(-1)
