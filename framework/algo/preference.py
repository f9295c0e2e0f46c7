"""Offline preference distillation: ``dpo`` (baseline) and ``ctpd`` (cross-tokenizer, teacher-anchored).

Both take rows of responses (per-token student logprobs ``[B, T]``) and pairs ``(chosen_index_N[n],
rejected_index_N[n])``, and minimise the logistic loss of a reward margin ``h_n``:

    ℓ_n = −(1 − ε) log σ(β h_n) − ε log σ(−β h_n)          (ε = label smoothing, 0 by default)
    L   = (1/N_global) Σ_n ℓ_n

DPO (Rafailov et al. 2023, "Direct Preference Optimization"), reference = frozen student init:

    h_n = [log π_θ(y_c) − log π_ref(y_c)] − [log π_θ(y_r) − log π_ref(y_r)]

CTPD (Nguyen et al. 2026, "CTPD: Cross Tokenizer Preference Distillation", arXiv 2601.11865). Each
response is cut into aligned spans (the chunking of the token mapping: span k covers the same bytes in
the student's and the teacher's tokenization). With student span logprob ``s_k = Σ_{t∈k} log π_θ(y_t)``,
teacher span logprob ``τ_k`` (Teacher-Anchored Reference: the teacher replaces π_ref) and span weights
``w_k`` (cross-tokenizer TIS-DPO, Liu et al. 2024):

    R(y) = Σ_k w_k (s_k − τ_k),      h_n = R(y_c) − R(y_r)

Span weights (our exact formula; the paper's importance weights come from the teacher's likelihood
ratio against a reference model ρ, here the frozen student init mapped onto the same spans):

    δ_k = clamp(τ_k − ρ_k, −c, c)
    u_k = exp(σ · μ · δ_k)          σ = +1 on a chosen response, −1 on a rejected one
    w_k = clamp(K · u_k / Σ_j u_j, w_min, w_max)     (mean 1 over the response's K spans, then clipped)

So in a chosen response the spans the teacher likes more than the reference weigh more, in a rejected
response the spans it likes less. ``μ = 0`` gives uniform weights (w_k = 1), and then, if ``τ`` is the
reference's span logprob, CTPD is exactly DPO (the spans partition the response, so Σ_k (s_k − ρ_k) is
the sequence log-ratio). The weights are constants (no gradient); TIS-DPO's extra offset term is omitted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from framework.algo.inputs import (
    LossCounts,
    LossInputs,
    LossOutput,
    Metrics,
    ObjectiveConfig,
    TokenLogprobs,
    as_token_logprobs,
    denominator,
)


def sequence_logprobs(logprobs_B_T: torch.Tensor, mask_B_T: torch.Tensor) -> torch.Tensor:
    """[B]: Σ_t m_t log π(y_t) (masked entries may hold garbage)."""
    m = mask_B_T > 0
    return torch.where(m, logprobs_B_T * mask_B_T, torch.zeros_like(logprobs_B_T)).sum(-1)


def span_logprobs(
    logprobs_B_T: torch.Tensor, span_index_B_T: torch.Tensor, mask_B_T: torch.Tensor, num_spans: int
) -> torch.Tensor:
    """[B, K]: sum of the masked token logprobs of each span (tokens with span index -1 are skipped)."""
    if span_index_B_T.shape != logprobs_B_T.shape:
        raise ValueError(
            f"span_index_B_T {tuple(span_index_B_T.shape)} must match logprobs {tuple(logprobs_B_T.shape)}"
        )
    in_span = (span_index_B_T >= 0) & (mask_B_T > 0)
    if bool((span_index_B_T[in_span] >= num_spans).any()):
        raise ValueError(f"span_index_B_T has a span id >= num_spans={num_spans} (teacher_span_logprobs_B_K)")
    values = torch.where(in_span, logprobs_B_T * mask_B_T, torch.zeros_like(logprobs_B_T))
    index = torch.where(in_span, span_index_B_T, torch.zeros_like(span_index_B_T)).long()
    out = logprobs_B_T.new_zeros(logprobs_B_T.shape[0], num_spans)
    return out.scatter_add(1, index, values)


def _pair_loss(
    margin_N: torch.Tensor,
    chosen_reward_N: torch.Tensor,
    rejected_reward_N: torch.Tensor,
    beta: float,
    label_smoothing: float,
    num_pairs_global: float | torch.Tensor,
    prefix: str,
) -> LossOutput:
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if not 0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    logits_N = beta * margin_N
    losses_N = -(1 - label_smoothing) * F.logsigmoid(logits_N) - label_smoothing * F.logsigmoid(-logits_N)
    n = denominator(num_pairs_global)
    loss = losses_N.sum() / n
    with torch.no_grad():
        metrics: Metrics = {
            f"{prefix}/reward_acc": (margin_N > 0).to(losses_N.dtype).sum() / n,
            f"{prefix}/margin": logits_N.sum() / n,
            f"{prefix}/chosen_reward": beta * chosen_reward_N.sum() / n,
            f"{prefix}/rejected_reward": beta * rejected_reward_N.sum() / n,
        }
    return LossOutput(loss, metrics)


def dpo_loss(
    policy_chosen_N: torch.Tensor,
    policy_rejected_N: torch.Tensor,
    reference_chosen_N: torch.Tensor,
    reference_rejected_N: torch.Tensor,
    num_pairs_global: float | torch.Tensor,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> LossOutput:
    """DPO on sequence logprobs (module docstring). Metrics ``dpo/reward_acc``, ``dpo/margin`` (β h),
    ``dpo/chosen_reward`` and ``dpo/rejected_reward`` (β times the log-ratio), pair means."""
    chosen = policy_chosen_N - reference_chosen_N.detach()
    rejected = policy_rejected_N - reference_rejected_N.detach()
    return _pair_loss(chosen - rejected, chosen, rejected, beta, label_smoothing, num_pairs_global, "dpo")


def ctpd_span_weights(
    teacher_span_logprobs_B_K: torch.Tensor,
    reference_span_logprobs_B_K: torch.Tensor,
    span_mask_B_K: torch.Tensor,
    is_chosen_B: torch.Tensor,
    *,
    mu: float = 1.0,
    log_ratio_clip: float = 1.0,
    weight_min: float = 0.25,
    weight_max: float = 4.0,
) -> torch.Tensor:
    """[B, K] span importance weights (module docstring); 0 on padded spans. No gradient."""
    if log_ratio_clip <= 0 or not 0 <= weight_min <= 1 <= weight_max:
        raise ValueError(
            f"need log_ratio_clip > 0 and weight_min <= 1 <= weight_max; got {log_ratio_clip}, "
            f"{weight_min}, {weight_max}"
        )
    with torch.no_grad():
        real = span_mask_B_K > 0
        delta = (teacher_span_logprobs_B_K - reference_span_logprobs_B_K).clamp(
            -log_ratio_clip, log_ratio_clip
        )
        delta = torch.where(real, delta, torch.zeros_like(delta))
        sign_B = is_chosen_B.to(delta.dtype) * 2.0 - 1.0
        u = torch.exp(sign_B[:, None] * mu * delta) * real
        num_spans_B = real.sum(-1, keepdim=True).to(delta.dtype)
        w = num_spans_B * u / u.sum(-1, keepdim=True).clamp(min=torch.finfo(u.dtype).tiny)
        return torch.where(real, w.clamp(weight_min, weight_max), torch.zeros_like(w))


def ctpd_loss(
    student_span_logprobs_B_K: torch.Tensor,
    teacher_span_logprobs_B_K: torch.Tensor,
    span_weights_B_K: torch.Tensor,
    span_mask_B_K: torch.Tensor,
    chosen_index_N: torch.Tensor,
    rejected_index_N: torch.Tensor,
    num_pairs_global: float | torch.Tensor,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> LossOutput:
    """CTPD with the teacher as anchored reference (module docstring). Metrics as `dpo_loss`, ``ctpd/``."""
    shapes = {
        tuple(t.shape)
        for t in (student_span_logprobs_B_K, teacher_span_logprobs_B_K, span_weights_B_K, span_mask_B_K)
    }
    if len(shapes) != 1:
        raise ValueError(f"ctpd_loss: span tensors must share one [B, K] shape, got {sorted(shapes)}")
    weight = (span_weights_B_K * span_mask_B_K).detach()
    gap = student_span_logprobs_B_K - teacher_span_logprobs_B_K.detach()
    reward_B = masked_sum_rows(gap, weight)
    chosen, rejected = reward_B[chosen_index_N], reward_B[rejected_index_N]
    return _pair_loss(chosen - rejected, chosen, rejected, beta, label_smoothing, num_pairs_global, "ctpd")


def masked_sum_rows(x_B_K: torch.Tensor, weight_B_K: torch.Tensor) -> torch.Tensor:
    """[B]: Σ_k w_k x_k, ignoring x where w == 0 (padded spans may hold garbage)."""
    return torch.where(weight_B_K != 0, x_B_K * weight_B_K, torch.zeros_like(x_B_K)).sum(-1)


def _pairs(batch: LossInputs, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    batch.require(name, "chosen_index_N", "rejected_index_N")
    chosen, rejected = batch.chosen_index_N.long(), batch.rejected_index_N.long()  # type: ignore[union-attr]
    if chosen.shape != rejected.shape or chosen.dim() != 1:
        raise ValueError(f"{name}: chosen_index_N and rejected_index_N must be [N] of equal length")
    return chosen, rejected


@dataclass
class DPO(ObjectiveConfig):
    """Objective ``dpo``: needs batch.reference_logprobs_B_T from the frozen student-init model."""

    beta: float = 0.1
    label_smoothing: float = 0.0
    name: str = "dpo"
    trains_on_pairs: ClassVar[bool] = True
    needs_reference: ClassVar[bool] = True

    def __call__(
        self, student: TokenLogprobs | torch.Tensor, batch: LossInputs, counts: LossCounts | None = None
    ) -> LossOutput:
        batch.require(self.name, "reference_logprobs_B_T")
        chosen, rejected = _pairs(batch, self.name)
        counts = counts or LossCounts.of(batch)
        policy_B = sequence_logprobs(as_token_logprobs(student).logprobs_B_T, batch.mask_B_T)
        reference_B_T: torch.Tensor = batch.reference_logprobs_B_T  # type: ignore[assignment]
        reference_B = sequence_logprobs(reference_B_T, batch.mask_B_T)
        return dpo_loss(
            policy_B[chosen],
            policy_B[rejected],
            reference_B[chosen],
            reference_B[rejected],
            counts.pairs,
            beta=self.beta,
            label_smoothing=self.label_smoothing,
        )


@dataclass
class CTPD(ObjectiveConfig):
    """Objective ``ctpd``. Needs span_index_B_T, teacher_span_logprobs_B_K, span_mask_B_K and, when
    ``mu != 0``, reference span logprobs (reference_span_logprobs_B_K, or reference_logprobs_B_T which is
    summed into spans here). ``mu = 0`` gives uniform span weights and needs no reference model."""

    beta: float = 0.1
    mu: float = 1.0
    log_ratio_clip: float = 1.0
    weight_min: float = 0.25
    weight_max: float = 4.0
    label_smoothing: float = 0.0
    name: str = "ctpd"
    trains_on_pairs: ClassVar[bool] = True

    @property
    def needs_reference(self) -> bool:
        return self.mu != 0.0

    def __call__(
        self, student: TokenLogprobs | torch.Tensor, batch: LossInputs, counts: LossCounts | None = None
    ) -> LossOutput:
        batch.require(self.name, "span_index_B_T", "teacher_span_logprobs_B_K", "span_mask_B_K")
        chosen, rejected = _pairs(batch, self.name)
        counts = counts or LossCounts.of(batch)
        teacher_B_K: torch.Tensor = batch.teacher_span_logprobs_B_K  # type: ignore[assignment]
        span_mask_B_K: torch.Tensor = batch.span_mask_B_K  # type: ignore[assignment]
        span_index_B_T: torch.Tensor = batch.span_index_B_T  # type: ignore[assignment]
        K = teacher_B_K.shape[1]
        student_B_K = span_logprobs(
            as_token_logprobs(student).logprobs_B_T, span_index_B_T, batch.mask_B_T, K
        )
        if self.mu == 0.0:
            weights_B_K = span_mask_B_K.to(student_B_K.dtype)
        else:
            reference_B_K = batch.reference_span_logprobs_B_K
            if reference_B_K is None and batch.reference_logprobs_B_T is not None:
                reference_B_K = span_logprobs(batch.reference_logprobs_B_T, span_index_B_T, batch.mask_B_T, K)
            if reference_B_K is None:
                raise ValueError(
                    "ctpd with mu != 0 needs reference_span_logprobs_B_K or reference_logprobs_B_T in the "
                    "batch (frozen student-init model); set mu=0 for uniform span weights"
                )
            is_chosen_B = torch.zeros(batch.num_rows, dtype=torch.bool, device=student_B_K.device)
            is_chosen_B[chosen] = True
            weights_B_K = ctpd_span_weights(
                teacher_B_K,
                reference_B_K,
                span_mask_B_K,
                is_chosen_B,
                mu=self.mu,
                log_ratio_clip=self.log_ratio_clip,
                weight_min=self.weight_min,
                weight_max=self.weight_max,
            )
        out = ctpd_loss(
            student_B_K,
            teacher_B_K,
            weights_B_K,
            span_mask_B_K,
            chosen,
            rejected,
            counts.pairs,
            beta=self.beta,
            label_smoothing=self.label_smoothing,
        )
        with torch.no_grad():  # span-weight spread per response, pair-mean over both rows (summable)
            real = (span_mask_B_K > 0).to(weights_B_K.dtype)
            k_B = real.sum(-1).clamp(min=1)
            mean_B = (weights_B_K * real).sum(-1) / k_B
            std_B = (((weights_B_K - mean_B[:, None]) ** 2 * real).sum(-1) / k_B).sqrt()
            rows = torch.cat([chosen, rejected])
            n = denominator(counts.pairs)
            out.metrics["ctpd/span_weight_mean"] = mean_B[rows].sum() / (2 * n)
            out.metrics["ctpd/span_weight_std"] = std_B[rows].sum() / (2 * n)
        return out
