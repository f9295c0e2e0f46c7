"""OPD with a verifiable reward: group baselines, λ = 0 is OPD, the teacher-free case is a policy gradient."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from framework.algo import OPD, LossInputs, collate_mapped_samples
from framework.algo.reward import attach_reward_groups, prompt_of, sequence_advantages
from framework.learner.batching import padding_micro_batch
from framework.types import MappedSample
from tests.unit.loss_shards import select_rows

torch.set_num_threads(1)
F64 = torch.float64


def _sample(sample_id: str, reward: float | None, n: int, rng: np.random.Generator) -> MappedSample:
    behaviour = -rng.random(n).astype(np.float32) * 3
    advantages = (2 * rng.standard_normal(n)).astype(np.float32)
    return MappedSample(
        sample_id=sample_id,
        input_ids=rng.integers(0, 50, 3 + n).astype(np.int32),
        response_start=3,
        behaviour_logprobs=behaviour,
        teacher_logprobs=behaviour + advantages,
        advantages=advantages,
        mask=(rng.random(n) > 0.2).astype(np.float32),
        weight_version=0,
        reward=reward,
    )


def _step(seed: int = 0) -> list[MappedSample]:
    """Three prompts: a group of 4 with mixed rewards, a group of 1, and a group without a verifier."""
    rng = np.random.default_rng(seed)
    rewards = {"a#0": 1.0, "a#1": 0.0, "a#2": 1.0, "a#3": 0.0, "b#0": 1.0, "c#0": None, "c#1": None}
    return [_sample(sid, r, int(rng.integers(2, 7)), rng) for sid, r in rewards.items()]


def _reference_advantage(samples: list[MappedSample], baseline: str) -> np.ndarray:
    """R_b − baseline_b straight from the definitions, one sample at a time."""
    out = []
    for s in samples:
        if s.reward is None:
            out.append(0.0)
            continue
        group = [o.reward for o in samples if prompt_of(o.sample_id) == prompt_of(s.sample_id)]
        others = [
            o.reward for o in samples if o is not s and prompt_of(o.sample_id) == prompt_of(s.sample_id)
        ]
        if baseline == "none":
            out.append(s.reward)
        elif baseline == "group_mean":
            out.append(s.reward - float(np.mean(group)))
        else:
            out.append(s.reward - float(np.mean(others)) if others else 0.0)
    return np.array(out)


@pytest.mark.parametrize("baseline", ["group_mean", "leave_one_out", "none"])
def test_group_baselines_match_their_definitions(baseline):
    samples = _step()
    attach_reward_groups(samples)
    batch = collate_mapped_samples(samples)
    got = sequence_advantages(
        batch.reward_B, batch.reward_valid_B, batch.group_reward_sum_B, batch.group_reward_count_B, baseline
    )
    np.testing.assert_allclose(got.numpy(), _reference_advantage(samples, baseline), atol=1e-6)
    if baseline == "leave_one_out":
        assert float(got[4]) == 0.0  # "b" is a group of one: no baseline, no signal


def test_groups_survive_sharding_into_micro_batches():
    samples = _step()
    attach_reward_groups(samples)
    whole = collate_mapped_samples(samples)
    shard = select_rows(whole, [1, 4, 6])
    assert shard.group_reward_count_B.tolist() == [4.0, 1.0, 0.0]
    assert shard.group_reward_sum_B.tolist() == [2.0, 1.0, 0.0]


def _loss_and_grad(objective: OPD, batch: LossInputs, logp: torch.Tensor):
    logp = logp.detach().clone().requires_grad_()
    out = objective(logp, batch)
    out.loss.backward()
    return out, logp.grad


def _batch(seed: int = 0) -> tuple[LossInputs, list[MappedSample]]:
    samples = _step(seed)
    attach_reward_groups(samples)
    batch = collate_mapped_samples(samples)
    return batch, samples


def test_reward_weight_zero_is_opd_bit_for_bit():
    batch, _ = _batch()
    g = torch.Generator().manual_seed(1)
    logp = batch.behaviour_logprobs_B_T + 0.3 * torch.randn(batch.mask_B_T.shape, generator=g)
    plain, grad_plain = _loss_and_grad(OPD(adv_clamp=1.5), batch, logp)
    for options in ({"reward_baseline": "leave_one_out"}, {"reward_baseline": "none", "reward_weight": 0.0}):
        same, grad_same = _loss_and_grad(OPD(adv_clamp=1.5, **options), batch, logp)
        assert torch.equal(plain.loss, same.loss)
        assert torch.equal(grad_plain, grad_same)
    assert float(plain.metrics["opd/reward_adv_mean"]) == 0.0
    assert float(plain.metrics["opd/reward_adv_abs_mean"]) == 0.0


@pytest.mark.parametrize("baseline", ["group_mean", "leave_one_out"])
def test_teacher_free_run_is_a_plain_policy_gradient(baseline):
    """distill_weight = 0: on-policy (r = 1) the gradient is REINFORCE with the group baseline,
    −(1/N) Σ_b Σ_t m_bt λ (R_b − b_b) ∇ log π(y_bt), whatever the teacher said."""
    batch, samples = _batch(3)
    lam = 0.7
    logits = torch.randn(*batch.mask_B_T.shape, 5, dtype=F64, generator=torch.Generator().manual_seed(2))
    logits.requires_grad_()
    token = torch.zeros(batch.mask_B_T.shape, dtype=torch.long)
    logp = torch.log_softmax(logits, -1).gather(-1, token[..., None])[..., 0]
    on_policy = LossInputs(
        mask_B_T=batch.mask_B_T.to(F64),
        behaviour_logprobs_B_T=logp.detach(),
        advantages_B_T=batch.advantages_B_T.to(F64),  # ignored: distill_weight = 0
        reward_B=batch.reward_B.to(F64),
        reward_valid_B=batch.reward_valid_B.to(F64),
        group_reward_sum_B=batch.group_reward_sum_B.to(F64),
        group_reward_count_B=batch.group_reward_count_B.to(F64),
    )
    out = OPD(reward_weight=lam, distill_weight=0.0, reward_baseline=baseline)(logp, on_policy)
    (grad,) = torch.autograd.grad(out.loss, logits, retain_graph=True)

    seq = torch.as_tensor(_reference_advantage(samples, baseline), dtype=F64)
    n = on_policy.mask_B_T.sum()
    reinforce = -(on_policy.mask_B_T * lam * seq[:, None] * logp).sum() / n
    (expected,) = torch.autograd.grad(reinforce, logits)
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-12)
    assert grad.abs().sum() > 0  # the mixed group carries signal


def test_mixed_advantage_is_the_weighted_sum():
    """adv_mean = mean over trained tokens of w_d · clamp(A) + λ (R − b), from numpy."""
    batch, samples = _batch(5)
    w_d, lam, c = 0.5, 0.3, 1.0
    out = OPD(adv_clamp=c, distill_weight=w_d, reward_weight=lam)(batch.behaviour_logprobs_B_T, batch)
    seq = _reference_advantage(samples, "group_mean")
    total, n = 0.0, 0.0
    for b, s in enumerate(samples):
        total += float(((w_d * np.clip(s.advantages, -c, c) + lam * seq[b]) * s.mask).sum())
        n += float(s.mask.sum())
    assert float(out.metrics["opd/adv_mean"]) == pytest.approx(total / n, abs=1e-5)
    reward_only = sum(lam * seq[b] * float(s.mask.sum()) for b, s in enumerate(samples)) / n
    assert float(out.metrics["opd/reward_adv_mean"]) == pytest.approx(reward_only, abs=1e-6)
    size = sum(abs(lam * seq[b]) * float(s.mask.sum()) for b, s in enumerate(samples)) / n
    assert float(out.metrics["opd/reward_adv_abs_mean"]) == pytest.approx(size, abs=1e-6) and size > 0


def test_padding_micro_batch_carries_no_reward_signal():
    pad = padding_micro_batch().inputs
    out = OPD(reward_weight=1.0)(torch.zeros(1, 1, requires_grad=True), pad)
    assert float(out.loss.detach()) == 0.0


@pytest.mark.parametrize(
    "options, match",
    [
        ({"reward_weight": -0.1}, "reward_weight must be >= 0"),
        ({"distill_weight": -1.0}, "distill_weight must be >= 0"),
        ({"distill_weight": 0.0}, "no training signal"),
        ({"reward_baseline": "median"}, "reward_baseline must be one of"),
    ],
)
def test_bad_reward_options_are_refused(options, match):
    with pytest.raises(ValueError, match=match):
        OPD(**options)
