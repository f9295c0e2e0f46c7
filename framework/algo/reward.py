"""Sequence rewards next to the distillation signal: group baselines and the per-row reward advantage.

OPD with a verifiable reward (``algo.reward_weight`` λ > 0) trains on

    A_t = w_d · clamp(log p_T − log p_S)_t + λ · (R_b − baseline_b)       for every token t of row b,

the per-token distillation advantage of `framework.algo.opd` plus the sequence reward ``R_b`` (the
task verifier's 1 / 0) minus a baseline, broadcast over the response. ``w_d`` is
``algo.distill_weight``: with ``w_d = 0`` the loss is a plain policy gradient on the task reward.

Baselines over the G samples of the same prompt in one step (the group of GRPO, Shao et al. 2024,
"DeepSeekMath"; without its division by the group's standard deviation):

- ``group_mean``:    b = (1/G) Σ_g R_g (biased by a factor (G−1)/G, the same for every sample);
- ``leave_one_out``: b = (1/(G−1)) Σ_{g≠b} R_g (RLOO, Ahmadian et al. 2024; unbiased); a group of
  one sample has no baseline and gets advantage 0;
- ``none``:          b = 0 (REINFORCE).

The group is known only when the whole step's batch is together, so `attach_reward_groups` runs
before the batch is split over ranks and micro-batches, and each sample carries its group's sum and
count (`MappedSample.group_reward_sum`, `group_reward_count`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import torch

from framework.types import MappedSample

REWARD_BASELINES = ("group_mean", "leave_one_out", "none")


def prompt_of(sample_id: str) -> str:
    """The prompt id of a sample id ``"<prompt_id>#<index>"`` (`framework.types.Prompt.sample_id`)."""
    return sample_id.rsplit("#", 1)[0]


def attach_reward_groups(samples: Sequence[MappedSample]) -> None:
    """Set every sample's group reward sum and count (samples of the same prompt that have a reward)."""
    total: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    for s in samples:
        if s.reward is not None:
            total[prompt_of(s.sample_id)] += float(s.reward)
            count[prompt_of(s.sample_id)] += 1
    for s in samples:
        key = prompt_of(s.sample_id)
        s.group_reward_sum, s.group_reward_count = total.get(key, 0.0), count.get(key, 0)


def sequence_advantages(
    reward_B: torch.Tensor,
    reward_valid_B: torch.Tensor,
    group_sum_B: torch.Tensor,
    group_count_B: torch.Tensor,
    baseline: str,
) -> torch.Tensor:
    """float [B]: ``R_b − baseline_b`` (module docstring); 0 for rows without a reward."""
    if baseline not in REWARD_BASELINES:
        raise ValueError(f"reward_baseline must be one of {REWARD_BASELINES}, got {baseline!r}")
    valid = reward_valid_B > 0
    if baseline == "none":
        advantage = reward_B
    elif baseline == "group_mean":
        advantage = reward_B - group_sum_B / group_count_B.clamp(min=1.0)
    else:
        others = group_count_B - 1.0
        advantage = torch.where(
            others > 0,
            reward_B - (group_sum_B - reward_B) / others.clamp(min=1.0),
            torch.zeros_like(reward_B),
        )
    return torch.where(valid, advantage, torch.zeros_like(advantage))
