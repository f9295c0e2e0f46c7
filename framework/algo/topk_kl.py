"""``opd_topk``: dense KL on the teacher's top-k projected onto the student vocabulary
(docs/design.md §3.6, §4.3).

At each of P positions the target is a distribution over ``support ∪ {other}``, following the
byte-prefix marginal of "Cross-Tokenizer On-Policy Distillation via Byte-Prefix Marginalization"
(arXiv 2607.22334, 2026; `framework.mapping.topk`). The mapping worker fixes two kinds of target mass:

- direct mass ``d_k`` on support id ``s_k`` (a teacher token whose student first piece is ``s_k``);
- group mass ``m_g`` on a byte-prefix group ``E_g`` (the student tokens extending a teacher token's
  bytes; collated as the support slots ``[start_g, end_g)``). It is split over the group by the
  student's own DETACHED probabilities π = π_θ (`split_group_targets`)::

      q_k = d_k + Σ_{g ∋ s_k} m_g · π(s_k) / π(E_g),        π(E_g) = Σ_{s ∈ E_g} π(s)

and ``q_o`` is the teacher mass nothing placed (outside the top-k, unmapped tokens); Σ_k q_k + q_o = 1.
The student distribution is coarsened the same way: ``p_k = π_θ(s_k)`` and ``p_o = 1 − Σ_k p_k``,
computed in log space as ``log p_o = log1mexp(logsumexp_k log p_k)`` (stable for both small and
near-total support mass).

    forward  KL(q || p) = Σ_k q_k (log q_k − log p_k) + q_o (log q_o − log p_o)
    reverse  KL(p || q) = Σ_k p_k (log p_k − log q_k) + p_o (log p_o − log q_o)

with ``0 log 0 = 0``; in the reverse direction ``log q`` is floored at ``log(min_target_prob)`` because
KL(p || q) is infinite where the target is 0 and the student is not. Being a KL between coarsenings
of the full distributions (a partition of the vocabulary), each is a lower bound on the full-vocabulary
KL (data-processing inequality) and is 0 iff the student matches the target on every bucket.

The split is a stop-gradient target: q is held fixed while differentiating. For a group that shares no
slot with another target, the loss and its gradient are then exactly those of treating E_g as one
bucket (log(q_s/p_s) = log(m_g/π(E_g)) is the same for every member): forward
Σ_{s∈E_g} q_s log(q_s/p_s) = m_g log(m_g/π(E_g)) with gradient −m_g ∇log π(E_g), reverse
π(E_g) log(π(E_g)/m_g) (while q_s stays above the floor). The teacher fixes how much mass starts with
the teacher token's bytes; the student keeps its own preference among the ways of writing it.

    L_topk = (1/P_global) Σ_p w_p KL_p
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

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


_SPLIT_CHUNK = 1 << 22  # elements of one [positions, S, G] membership block in split_group_targets


@torch.no_grad()
def split_group_targets(
    support_logprobs_P_S: torch.Tensor,
    valid_P_S: torch.Tensor,
    direct_probs_P_S: torch.Tensor,
    group_mass_P_G: torch.Tensor,
    group_start_P_G: torch.Tensor,
    group_end_P_G: torch.Tensor,
) -> torch.Tensor:
    """float64 [P, S] target ``q_k = d_k + Σ_{g ∋ k} m_g π(s_k) / π(E_g)`` (module docstring), detached.

    Group g covers slots ``[start_g, end_g)`` (padded groups: mass 0 or an empty range). The share
    π(s)/π(E_g) = exp(log π(s) − logsumexp_{E_g} log π) is formed in log space per group, so a group the
    student gives almost no mass still splits exactly; a group whose share is undefined (every member
    at −inf) is split uniformly. Groups may nest (E("1") ⊃ E("12")); positions are processed in
    blocks so the [positions, S, G] membership stays small.
    """
    P, S = support_logprobs_P_S.shape
    G = group_mass_P_G.shape[-1]
    f64 = torch.float64
    q = torch.where(valid_P_S, direct_probs_P_S.to(f64), torch.zeros((), dtype=f64, device=valid_P_S.device))
    if P == 0 or S == 0 or G == 0:
        return q
    neg_inf = torch.full((), -math.inf, dtype=f64, device=valid_P_S.device)
    lp = torch.where(valid_P_S, support_logprobs_P_S.to(f64), neg_inf)
    slots = torch.arange(S, device=lp.device)
    mass = group_mass_P_G.to(f64)
    rows = torch.nonzero((mass > 0).any(-1)).squeeze(1)  # positions with a group (the rest: q = d)
    block = max(1, _SPLIT_CHUNK // max(S * G, 1))
    for a in range(0, rows.numel(), block):
        r = rows[a : a + block]
        member = (slots[None, :, None] >= group_start_P_G[r, None, :]) & (
            slots[None, :, None] < group_end_P_G[r, None, :]
        )
        member &= valid_P_S[r, :, None] & (mass[r, None, :] > 0)
        lp_psg = torch.where(member, lp[r, :, None], neg_inf)
        lse_pg = torch.logsumexp(lp_psg, dim=1)  # log π(E_g), -inf for empty / padded groups
        share = torch.exp(lp_psg - torch.where(torch.isfinite(lse_pg), lse_pg, 0.0)[:, None, :])
        size_pg = member.sum(1).clamp(min=1).to(f64)
        uniform = member.to(f64) / size_pg[:, None, :]
        share = torch.where(torch.isfinite(lse_pg)[:, None, :], share, uniform)
        q[r] += (torch.where(member, share, 0.0) * mass[r, None, :]).sum(-1)
    return q


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
    group_mass_P_G: torch.Tensor | None = None,
    group_start_P_G: torch.Tensor | None = None,
    group_end_P_G: torch.Tensor | None = None,
) -> LossOutput:
    """Dense top-k KL (module docstring). ``support_logprobs_P_S`` are the student's log-probabilities
    at ``support_ids_P_S`` (ignored where the id is -1); ``weight_P`` is the per-position mask/weight;
    ``support_probs_P_S`` is the direct target mass. The optional ``group_*`` tensors (all three or
    none) add byte-prefix groups, split over their slots by `split_group_targets`.

    Metrics: ``topk/kl`` (the loss before any mixing weight), ``topk/student_support_mass``,
    ``topk/target_other_mass`` and ``topk/target_group_mass`` (position means, summable over shards).
    """
    groups = (group_mass_P_G, group_start_P_G, group_end_P_G)
    if any(g is not None for g in groups) and not all(g is not None for g in groups):
        raise ValueError("topk_kl_loss: pass group_mass_P_G, group_start_P_G and group_end_P_G together")
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
    group_mass_P = torch.zeros_like(other_prob_P, dtype=dtype)
    if group_mass_P_G is not None and group_start_P_G is not None and group_end_P_G is not None:
        if not (group_mass_P_G.shape == group_start_P_G.shape == group_end_P_G.shape) or (
            group_mass_P_G.shape[:1] != support_ids_P_S.shape[:1]
        ):
            raise ValueError("topk_kl_loss: group mass, start and end must share one [P, G] shape")
        q_s = split_group_targets(
            support_logprobs_P_S.detach(), valid, support_probs_P_S, group_mass_P_G, group_start_P_G,
            group_end_P_G,
        ).to(dtype)  # fmt: skip
        group_mass_P = group_mass_P_G.to(dtype).sum(-1)
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
            "topk/target_group_mass": masked_sum(group_mass_P, weight_P) / n,
        }
    return LossOutput(loss, metrics)


@dataclass
class OPDTopK(OPD):
    """Objective ``opd_topk``: ``L = L_opd + topk_weight · L_topk`` (``with_sampled=False``:
    ``topk_weight · L_topk``). It is ``opd`` plus a dense term, so it takes every ``opd`` option too.

    ``L_opd`` is normalised by the global token count, ``L_topk`` by the global count of dense positions
    (dense_mask_B_T · mask_B_T). Needs the student's support logprobs (``needs_support``).
    """

    name: str = "opd_topk"
    topk_weight: float = 1.0  # weight of the dense KL term
    kl_direction: str = "forward"  # forward | reverse
    min_target_prob: float = 1e-8  # floor of a projected target probability
    with_sampled: bool = True  # add the sampled-path opd term (False: the dense KL only)
    needs_support: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.kl_direction not in DIRECTIONS:
            raise ValueError(f"kl_direction must be one of {DIRECTIONS}, got {self.kl_direction!r}")
        if self.topk_weight < 0:
            raise ValueError(f"topk_weight must be >= 0, got {self.topk_weight}")
        if not 0 < self.min_target_prob < 1:
            raise ValueError(f"min_target_prob must be in (0, 1), got {self.min_target_prob}")
        if self.topk_weight == 0 and not self.with_sampled:
            raise ValueError("topk_weight=0 without the sampled term (with_sampled=False) trains nothing")

    @staticmethod
    def _groups(batch: LossInputs) -> dict[str, torch.Tensor]:
        """The batch's byte-prefix groups flattened to [P, G] (none: {})."""
        if batch.group_mass_B_T_G is None or batch.group_start_B_T_G is None or batch.group_end_B_T_G is None:
            return {}
        G = batch.group_mass_B_T_G.shape[-1]
        return {
            "group_mass_P_G": batch.group_mass_B_T_G.reshape(-1, G),
            "group_start_P_G": batch.group_start_B_T_G.reshape(-1, G),
            "group_end_P_G": batch.group_end_B_T_G.reshape(-1, G),
        }

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
            direction=self.kl_direction,
            min_target_prob=self.min_target_prob,
            **self._groups(batch),
        )
        loss = self.topk_weight * topk.loss
        metrics = dict(topk.metrics)
        if self.with_sampled:
            opd = super().__call__(student, batch, counts)
            loss = loss + opd.loss
            metrics.update(opd.metrics)
        return LossOutput(loss, metrics)
