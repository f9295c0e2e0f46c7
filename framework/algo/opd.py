"""``opd``: sampled-token on-policy distillation as a clipped policy gradient.

The student samples ``y ~ π_behaviour`` (vLLM, weights version v); the token mapping credits every
student token with an advantage ``A_t ≈ log p_T(chunk) − log p_S(chunk)`` (Niu et al. 2026, "Breaking
the Tokenizer Barrier", chunk-level credit across tokenizers). With one token per chunk this is the
per-token negative reverse KL ``A_t = log p_T(y_t) − log π_S(y_t)`` of Thinking Machines' "On-Policy
Distillation" (2025): maximising ``E[A]`` under the student's own samples minimises KL(π_S || p_T).

Per token, with ``r_t = exp(log π_θ(y_t) − log π_behaviour(y_t))`` (importance ratio correcting for a
stale behaviour policy) and ``Â_t = clamp(A_t, −c_A, c_A)`` (constant, no gradient):

    o_t = min(r_t Â_t, clip(r_t, 1 − ε_low, 1 + ε_high) Â_t)           (PPO, Schulman et al. 2017)
    o_t = max(o_t, c_dual Â_t)   if Â_t < 0 and dual clip c_dual > 1 (Ye et al. 2020)
    L   = −(1/N_global) Σ_t m_t o_t

At ``r_t = 1`` the gradient is ``−(1/N) Σ m_t Â_t ∇ log π_θ(y_t)``, the OPD policy gradient.

With a verifiable reward (``reward_weight`` λ > 0, `framework.algo.reward`) the advantage becomes
``Â_t = w_d · clamp(A_t, −c_A, c_A) + λ (R_b − baseline_b)`` for every token of row ``b``; λ = 0 and
``w_d = 1`` (the defaults) is the plain OPD above, bit for bit, and ``w_d = 0`` a plain (clipped)
policy gradient on the task reward.
``log r_t`` is clamped to [−20, 20] before ``exp`` so that a wildly off-policy (or padded) token cannot
turn the backward pass into ``0 · inf = NaN``; masked tokens never reach the loss or its gradient.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from framework.algo.inputs import (
    LossCounts,
    LossInputs,
    LossOutput,
    ObjectiveConfig,
    TokenLogprobs,
    as_token_logprobs,
    denominator,
    masked_sum,
)
from framework.algo.reward import REWARD_BASELINES, sequence_advantages

LOG_RATIO_LIMIT = 20.0


def check_opd_options(
    clip_eps: float | None,
    clip_eps_high: float | None,
    dual_clip: float | None,
    adv_clamp: float | None,
    reward_weight: float = 0.0,
    reward_baseline: str = "group_mean",
    distill_weight: float = 1.0,
) -> None:
    """Raise a clear error for out-of-range OPD options."""
    if clip_eps is not None and not 0 <= clip_eps < 1:
        raise ValueError(f"clip_eps must be in [0, 1) or None, got {clip_eps}")
    if clip_eps_high is not None and (clip_eps is None or clip_eps_high < 0):
        raise ValueError(f"clip_eps_high must be >= 0 and needs clip_eps set, got {clip_eps_high}")
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1 (e.g. 3.0) or None, got {dual_clip}")
    if adv_clamp is not None and adv_clamp <= 0:
        raise ValueError(f"adv_clamp must be > 0 or None, got {adv_clamp}")
    if not reward_weight >= 0:
        raise ValueError(f"reward_weight must be >= 0 (0 = no task reward), got {reward_weight}")
    if not distill_weight >= 0:
        raise ValueError(f"distill_weight must be >= 0 (0 = task reward only), got {distill_weight}")
    if reward_weight == 0 and distill_weight == 0:
        raise ValueError("distill_weight=0 with reward_weight=0 leaves no training signal; set one > 0")
    if reward_baseline not in REWARD_BASELINES:
        raise ValueError(f"reward_baseline must be one of {REWARD_BASELINES}, got {reward_baseline!r}")


def opd_loss(
    logprobs_B_T: torch.Tensor,
    behaviour_logprobs_B_T: torch.Tensor,
    advantages_B_T: torch.Tensor,
    mask_B_T: torch.Tensor,
    num_tokens_global: float | torch.Tensor,
    *,
    clip_eps: float | None = 0.2,
    clip_eps_high: float | None = None,
    dual_clip: float | None = None,
    adv_clamp: float | None = None,
    sequence_advantage_B: torch.Tensor | None = None,
    reward_weight: float = 0.0,
    distill_weight: float = 1.0,
) -> LossOutput:
    """Clipped OPD surrogate (module docstring). ``clip_eps=None`` disables ratio clipping;
    ``clip_eps_high`` defaults to ``clip_eps`` (set it larger for asymmetric "clip-higher").

    Metrics (sums over shards give global token means): ``opd/clip_frac`` (tokens where the clipped
    branch is active, i.e. the token gets no gradient), ``opd/dual_clip_frac``, ``opd/ratio_mean``,
    ``opd/approx_kl`` (k3 estimator (r − 1) − log r of KL(π_behaviour || π_θ) on behaviour samples),
    ``opd/adv_mean`` (after clamping and weighting), ``opd/adv_clamp_frac``, ``opd/reward_adv_mean``
    (the reward term λ (R − b) per token) and ``opd/reward_adv_abs_mean`` (its size: the mean can be
    exactly 0 when a group's right and wrong answers have the same token count). ``sequence_advantage_B`` is ``R_b − baseline_b``
    (`framework.algo.reward.sequence_advantages`), used when ``reward_weight > 0``.
    """
    if not (logprobs_B_T.shape == behaviour_logprobs_B_T.shape == advantages_B_T.shape == mask_B_T.shape):
        raise ValueError(
            "opd_loss: logprobs, behaviour_logprobs, advantages and mask must share one [B, T] shape; got "
            f"{[tuple(t.shape) for t in (logprobs_B_T, behaviour_logprobs_B_T, advantages_B_T, mask_B_T)]}"
        )
    check_opd_options(
        clip_eps,
        clip_eps_high,
        dual_clip,
        adv_clamp,
        reward_weight=reward_weight,
        distill_weight=distill_weight,
    )

    valid_B_T = mask_B_T > 0
    zeros = torch.zeros_like(logprobs_B_T)
    adv_raw = torch.where(valid_B_T, advantages_B_T.detach().to(logprobs_B_T.dtype), zeros)
    adv_distill = adv_raw if adv_clamp is None else adv_raw.clamp(-adv_clamp, adv_clamp)
    clamped_B_T = adv_distill != adv_raw
    reward_term = zeros
    if reward_weight > 0:
        if sequence_advantage_B is None or sequence_advantage_B.shape != logprobs_B_T.shape[:1]:
            raise ValueError("opd_loss: reward_weight > 0 needs sequence_advantage_B of shape [B]")
        per_row = reward_weight * sequence_advantage_B.detach().to(logprobs_B_T.dtype)
        reward_term = torch.where(valid_B_T, per_row[:, None].expand_as(logprobs_B_T), zeros)
    # the default (w_d = 1, λ = 0) keeps the plain OPD advantage untouched, bit for bit
    adv = adv_distill if distill_weight == 1.0 else distill_weight * adv_distill
    if reward_weight > 0:
        adv = adv + reward_term
    log_ratio = torch.where(
        valid_B_T, logprobs_B_T - behaviour_logprobs_B_T.detach().to(logprobs_B_T.dtype), zeros
    )
    log_ratio = log_ratio.clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT)
    ratio = torch.exp(log_ratio)

    objective = ratio * adv
    clipped = torch.zeros_like(valid_B_T)
    if clip_eps is not None:
        high = clip_eps if clip_eps_high is None else clip_eps_high
        clipped_obj = ratio.clamp(1.0 - clip_eps, 1.0 + high) * adv
        clipped = clipped_obj < objective  # min() picks the clipped branch (zero gradient)
        objective = torch.minimum(objective, clipped_obj)
    dual = torch.zeros_like(valid_B_T)
    if dual_clip is not None:
        floor = dual_clip * adv
        dual = (adv < 0) & (objective < floor)
        objective = torch.where(dual, floor, objective)

    n = denominator(num_tokens_global)
    loss = -masked_sum(objective, mask_B_T) / n
    with torch.no_grad():
        m = mask_B_T.to(logprobs_B_T.dtype)
        metrics = {
            "opd/clip_frac": masked_sum(clipped.to(m.dtype), m) / n,
            "opd/dual_clip_frac": masked_sum(dual.to(m.dtype), m) / n,
            "opd/ratio_mean": masked_sum(ratio, m) / n,
            "opd/approx_kl": masked_sum((ratio - 1.0) - log_ratio, m) / n,
            "opd/adv_mean": masked_sum(adv, m) / n,
            "opd/adv_clamp_frac": masked_sum(clamped_B_T.to(m.dtype), m) / n,
            "opd/reward_adv_mean": masked_sum(reward_term, m) / n,
            "opd/reward_adv_abs_mean": masked_sum(reward_term.abs(), m) / n,
        }
    return LossOutput(loss, metrics)


@dataclass
class OPD(ObjectiveConfig):
    """Objective ``opd`` (see `opd_loss`): needs behaviour_logprobs_B_T, advantages_B_T, mask_B_T."""

    clip_eps: float | None = 0.2
    clip_eps_high: float | None = None
    dual_clip: float | None = None
    # |advantage| bound: the wrong result digits carry teacher logprobs down to -25 (issue #12)
    adv_clamp: float | None = 5.0
    reward_weight: float = 0.0  # λ: weight of the sequence reward term (framework.algo.reward)
    reward_baseline: str = "group_mean"  # group_mean | leave_one_out | none
    distill_weight: float = 1.0  # w_d: weight of the distillation term (0 = task reward only)
    name: str = "opd"
    needs_reference: ClassVar[bool] = False

    def uses_task_reward(self) -> bool:
        return self.reward_weight > 0

    def __post_init__(self) -> None:  # fail at construction, not at the first step
        check_opd_options(
            self.clip_eps, self.clip_eps_high, self.dual_clip, self.adv_clamp,
            self.reward_weight, self.reward_baseline, self.distill_weight,
        )  # fmt: skip

    def __call__(
        self, student: TokenLogprobs | torch.Tensor, batch: LossInputs, counts: LossCounts | None = None
    ) -> LossOutput:
        batch.require(self.name, "behaviour_logprobs_B_T", "advantages_B_T")
        student = as_token_logprobs(student)
        counts = counts or LossCounts.of(batch)
        sequence_advantage_B = None
        if self.reward_weight > 0:
            batch.require(
                self.name, "reward_B", "reward_valid_B", "group_reward_sum_B", "group_reward_count_B"
            )
            sequence_advantage_B = sequence_advantages(
                batch.reward_B,  # type: ignore[arg-type]
                batch.reward_valid_B,  # type: ignore[arg-type]
                batch.group_reward_sum_B,  # type: ignore[arg-type]
                batch.group_reward_count_B,  # type: ignore[arg-type]
                self.reward_baseline,
            )
        return opd_loss(
            student.logprobs_B_T,
            batch.behaviour_logprobs_B_T,  # type: ignore[arg-type]
            batch.advantages_B_T,  # type: ignore[arg-type]
            batch.mask_B_T,
            counts.tokens,
            clip_eps=self.clip_eps,
            clip_eps_high=self.clip_eps_high,
            dual_clip=self.dual_clip,
            adv_clamp=self.adv_clamp,
            sequence_advantage_B=sequence_advantage_B,
            reward_weight=self.reward_weight,
            distill_weight=self.distill_weight,
        )
