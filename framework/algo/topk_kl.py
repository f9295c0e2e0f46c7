"""``opd_topk``: dense KL on the teacher's top-k projected onto the student vocabulary (DESIGN §3.6).

At each of P positions the target is a distribution over ``support ∪ {other}``: support ids
``s_1..s_S`` (student ids, -1 padded) with probabilities ``q_k`` and a tail bucket ``q_o`` (teacher mass
the byte-prefix projection could not place; in the spirit of "Cross-Tokenizer On-Policy Distillation
via Byte-Prefix Marginalization", arXiv 2607.22334, 2026). The student distribution is coarsened the
same way: ``p_k = π_θ(s_k)`` and ``p_o = 1 − Σ_k p_k``, computed in log space as
``log p_o = log1mexp(logsumexp_k log p_k)`` (stable for both small and near-total support mass).

    forward  KL(q || p) = Σ_k q_k (log q_k − log p_k) + q_o (log q_o − log p_o)
    reverse  KL(p || q) = Σ_k p_k (log p_k − log q_k) + p_o (log p_o − log q_o)

with ``0 log 0 = 0``; in the reverse direction ``log q`` is floored at ``log(min_target_prob)`` because
KL(p || q) is infinite where the target is 0 and the student is not. Being a KL between coarsenings
of the full distributions (a partition of the vocabulary), each is a lower bound on the full-vocabulary
KL (data-processing inequality) and is 0 iff the student matches the target on every bucket.

    L_topk = (1/P_global) Σ_p w_p KL_p
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from framework.algo.inputs import (
    LossCounts,
    LossInputs,
    LossOutput,
    TokenLogprobs,
    as_token_logprobs,
    denominator,
    masked_sum,
)
from framework.algo.opd import OPD

DIRECTIONS = ("forward", "reverse")


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 − exp(x)) for x ≤ 0 (Mächler 2012): log(−expm1(x)) near 0, log1p(−exp(x)) far from it.

    ``x`` is clamped to at most ``−sqrt(tiny)`` so the result stays finite (an outside mass below
    ~1e-19 in float32 is numerically zero anyway). Both branches see safe inputs so that neither
    produces inf/NaN that ``torch.where`` would leak into the gradient.
    """
    x = x.clamp(max=-math.sqrt(torch.finfo(x.dtype).tiny))
    near = x > -math.log(2.0)
    x_near = torch.where(near, x, torch.full_like(x, -math.log(2.0)))
    x_far = torch.where(near, torch.full_like(x, -math.log(2.0)), x)
    return torch.where(near, torch.log(-torch.expm1(x_near)), torch.log1p(-torch.exp(x_far)))


def topk_kl_loss(
    support_logprobs_P_S: torch.Tensor,
    support_ids_P_S: torch.Tensor,
    support_probs_P_S: torch.Tensor,
    other_prob_P: torch.Tensor,
    weight_P: torch.Tensor,
    num_positions_global: float | torch.Tensor,
    *,
    direction: str = "forward",
    min_target_prob: float = 1e-8,
) -> LossOutput:
    """Dense top-k KL (module docstring). ``support_logprobs_P_S`` are the student's log-probabilities
    at ``support_ids_P_S`` (ignored where the id is -1); ``weight_P`` is the per-position mask/weight.

    Metrics: ``topk/kl`` (the loss before any mixing weight), ``topk/student_support_mass`` and
    ``topk/target_other_mass`` (position means, summable over shards).
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if not (support_logprobs_P_S.shape == support_ids_P_S.shape == support_probs_P_S.shape):
        raise ValueError(
            "topk_kl_loss: support logprobs, ids and probs must share one [P, S] shape; got "
            f"{[tuple(t.shape) for t in (support_logprobs_P_S, support_ids_P_S, support_probs_P_S)]}"
        )
    if other_prob_P.shape != weight_P.shape or other_prob_P.shape != support_ids_P_S.shape[:1]:
        raise ValueError("topk_kl_loss: other_prob_P and weight_P must be [P] matching the support rows")
    dtype = support_logprobs_P_S.dtype
    valid = support_ids_P_S >= 0
    zeros = torch.zeros_like(support_logprobs_P_S)
    lp_s = torch.where(valid, support_logprobs_P_S, zeros)  # padded slots: 0, masked out below
    lp_for_lse = torch.where(valid, lp_s, torch.full_like(lp_s, torch.finfo(dtype).min))
    log_support_mass_P = torch.logsumexp(lp_for_lse, dim=-1)
    lp_o = log1mexp(log_support_mass_P)
    q_s = torch.where(valid, support_probs_P_S.to(dtype), zeros).detach()
    q_o = other_prob_P.to(dtype).detach()

    if direction == "forward":
        kl_s = torch.xlogy(q_s, q_s) - q_s * lp_s
        kl_o = torch.xlogy(q_o, q_o) - q_o * lp_o
    else:
        log_floor = math.log(min_target_prob)
        log_q_s = torch.log(q_s.clamp(min=min_target_prob)).clamp(min=log_floor)
        log_q_o = torch.log(q_o.clamp(min=min_target_prob)).clamp(min=log_floor)
        kl_s = torch.exp(lp_s) * (lp_s - log_q_s)
        kl_o = torch.exp(lp_o) * (lp_o - log_q_o)
    kl_P = torch.where(valid, kl_s, zeros).sum(-1) + kl_o

    n = denominator(num_positions_global)
    loss = masked_sum(kl_P, weight_P) / n
    with torch.no_grad():
        metrics = {
            "topk/kl": loss.detach(),
            "topk/student_support_mass": masked_sum(torch.exp(log_support_mass_P), weight_P) / n,
            "topk/target_other_mass": masked_sum(q_o, weight_P) / n,
        }
    return LossOutput(loss, metrics)


@dataclass
class OPDTopK:
    """Objective ``opd_topk``: ``L = L_opd + topk_weight · L_topk`` (``opd=None``: ``topk_weight · L_topk``).

    ``L_opd`` is normalised by the global token count, ``L_topk`` by the global count of dense positions
    (dense_mask_B_T · mask_B_T). Needs the student's support logprobs (``needs_support``).
    """

    topk_weight: float = 1.0
    direction: str = "forward"
    min_target_prob: float = 1e-8
    opd: OPD | None = field(default_factory=OPD)
    name: str = "opd_topk"
    needs_support: bool = True
    needs_reference: bool = False

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ValueError(
                f"opd_topk direction (config key kl_direction) must be one of {DIRECTIONS}, "
                f"got {self.direction!r}"
            )
        if self.topk_weight < 0:
            raise ValueError(f"topk_weight must be >= 0, got {self.topk_weight}")
        if not 0 < self.min_target_prob < 1:
            raise ValueError(f"min_target_prob must be in (0, 1), got {self.min_target_prob}")

    def __call__(
        self, student: TokenLogprobs | torch.Tensor, batch: LossInputs, counts: LossCounts | None = None
    ) -> LossOutput:
        batch.require(
            self.name, "dense_mask_B_T", "support_ids_B_T_S", "support_probs_B_T_S", "other_prob_B_T"
        )
        student = as_token_logprobs(student)
        if student.support_logprobs_B_T_S is None:
            raise ValueError(
                "opd_topk needs student support logprobs: call chunked_token_logprobs(..., "
                "support_ids_B_T_S=batch.support_ids_B_T_S)"
            )
        counts = counts or LossCounts.of(batch)
        S = batch.support_ids_B_T_S.shape[-1]  # type: ignore[union-attr]
        topk = topk_kl_loss(
            student.support_logprobs_B_T_S.reshape(-1, S),
            batch.support_ids_B_T_S.reshape(-1, S),  # type: ignore[union-attr]
            batch.support_probs_B_T_S.reshape(-1, S),  # type: ignore[union-attr]
            batch.other_prob_B_T.reshape(-1),  # type: ignore[union-attr]
            batch.effective_dense_mask().reshape(-1),
            counts.dense_positions,
            direction=self.direction,
            min_target_prob=self.min_target_prob,
        )
        loss = self.topk_weight * topk.loss
        metrics = dict(topk.metrics)
        if self.opd is not None:
            opd = self.opd(student, batch, counts)
            loss = loss + opd.loss
            metrics.update(opd.metrics)
        return LossOutput(loss, metrics)
