"""Registry, global normalisation across data-parallel shards, batch plumbing, sft_teacher."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from framework.algo import (
    OBJECTIVES,
    LossCounts,
    LossInputs,
    SFTTeacher,
    TokenLogprobs,
    chunked_token_logprobs,
    collate_mapped_samples,
    distillation_metrics,
    make_objective,
    objective_options,
    sft_loss,
)
from framework.types import DenseTarget, MappedSample
from tests.unit.loss_shards import select_rows

torch.set_num_threads(1)
F64 = torch.float64
B, T, V, S, K = 6, 5, 8, 3, 3


def _full_batch(seed=0) -> LossInputs:
    """Every field filled, uneven masks per row (so per-rank means differ from the global mean)."""
    g = torch.Generator().manual_seed(seed)
    lengths = [5, 2, 4, 3, 5, 1]
    mask = torch.tensor([[1.0 if t < n else 0.0 for t in range(T)] for n in lengths], dtype=F64)
    support = torch.stack(
        [torch.stack([torch.randperm(V, generator=g)[:S] for _ in range(T)]) for _ in range(B)]
    )
    support[0, 2, -1] = -1
    probs = torch.rand(B, T, S + 1, generator=g, dtype=F64) + 0.05
    probs[..., :S] = torch.where(support >= 0, probs[..., :S], torch.zeros_like(probs[..., :S]))
    probs = probs / probs.sum(-1, keepdim=True)
    dense = (torch.rand(B, T, generator=g) > 0.4).to(F64)
    support = torch.where(dense[..., None] > 0, support, torch.full_like(support, -1))
    span_index = torch.full((B, T), -1, dtype=torch.long)
    span_mask = torch.zeros(B, K, dtype=F64)
    for b, n in enumerate(lengths):
        for t in range(n):
            span_index[b, t] = min(t // 2, K - 1)
            span_mask[b, min(t // 2, K - 1)] = 1
    return LossInputs(
        mask_B_T=mask,
        target_ids_B_T=torch.randint(0, V, (B, T), generator=g),
        behaviour_logprobs_B_T=-torch.rand(B, T, generator=g, dtype=F64) * 2 - 0.5,
        advantages_B_T=torch.randn(B, T, generator=g, dtype=F64),
        teacher_logprobs_B_T=-torch.rand(B, T, generator=g, dtype=F64) * 3,
        dense_mask_B_T=dense,
        support_ids_B_T_S=support,
        support_probs_B_T_S=torch.where(support >= 0, probs[..., :S], torch.zeros_like(probs[..., :S])),
        other_prob_B_T=probs[..., S],
        chosen_index_N=torch.tensor([0, 2, 5]),
        rejected_index_N=torch.tensor([1, 3, 4]),
        reference_logprobs_B_T=-torch.rand(B, T, generator=g, dtype=F64) * 3,
        span_index_B_T=span_index,
        teacher_span_logprobs_B_K=-torch.rand(B, K, generator=g, dtype=F64) * 4,
        span_mask_B_K=span_mask,
    )


def _student(logits_B_T_V: torch.Tensor, batch: LossInputs) -> TokenLogprobs:
    logp = torch.log_softmax(logits_B_T_V, -1)
    ids = batch.support_ids_B_T_S
    sup = logp.gather(-1, ids.clamp(min=0))
    return TokenLogprobs(
        logprobs_B_T=logp.gather(-1, batch.target_ids_B_T[..., None]).squeeze(-1),
        entropy_B_T=-(logp.exp() * logp).sum(-1),
        support_logprobs_B_T_S=torch.where(ids >= 0, sup, torch.zeros_like(sup)),
    )


CONFIGS = [
    ("opd", {"clip_eps": 0.2, "dual_clip": 3.0, "adv_clamp": 1.5}),
    ("opd_topk", {"topk_weight": 0.5, "kl_direction": "forward", "clip_eps": 0.2}),
    ("opd_topk", {"topk_weight": 2.0, "kl_direction": "reverse", "with_sampled": False, "clip_eps": 0.1}),
    ("sft_teacher", {}),
    ("dpo", {"beta": 0.2}),
    ("ctpd", {"beta": 0.2, "mu": 1.0}),
]
# shards = the rows of each (rank, micro-batch); preference pairs (0,1) (2,3) (5,4) stay together
SHARDINGS = [[[0, 1, 2, 3], [4, 5]], [[0, 1], [2, 3], [4, 5]], [[5, 4, 0, 1], [3, 2]]]


@pytest.mark.parametrize(("name", "cfg"), CONFIGS)
@pytest.mark.parametrize("shards", SHARDINGS)
def test_sharded_losses_sum_to_the_full_batch_loss(name, cfg, shards):
    batch = _full_batch()
    batch.reference_span_logprobs_B_K = batch.teacher_span_logprobs_B_K + 0.5 * torch.randn(B, K, dtype=F64)
    objective = make_objective(name, **cfg)
    logits = torch.randn(B, T, V, dtype=F64, generator=torch.Generator().manual_seed(1), requires_grad=True)

    full = objective(_student(logits, batch), batch)  # counts default to the (full) batch's own
    (grad_full,) = torch.autograd.grad(full.loss, logits)

    parts = [select_rows(batch, rows) for rows in shards]
    counts = LossCounts(0.0)
    for part in parts:
        counts = counts + LossCounts.of(part)
    assert counts == LossCounts.of(batch)
    counts = LossCounts.from_tensor(counts.to_tensor())  # what an all-reduce would hand back
    total = torch.zeros((), dtype=F64)
    metrics: dict[str, torch.Tensor] = {}
    for rows, part in zip(shards, parts):
        out = objective(_student(logits[rows], part), part, counts)
        total = total + out.loss
        for k, v in out.metrics.items():
            metrics[k] = metrics.get(k, 0.0) + v
    (grad_sharded,) = torch.autograd.grad(total, logits)
    torch.testing.assert_close(total, full.loss)
    torch.testing.assert_close(grad_sharded, grad_full)
    assert metrics.keys() == full.metrics.keys()
    for k, v in full.metrics.items():
        torch.testing.assert_close(metrics[k], v, msg=k)
    assert grad_full.abs().sum() > 0


def test_per_rank_mean_would_differ():
    """Guard that the sharding test is sensitive: averaging per-shard means is NOT the global mean."""
    batch = _full_batch()
    logits = torch.randn(B, T, V, dtype=F64, generator=torch.Generator().manual_seed(1))
    obj = make_objective("sft_teacher")
    full = obj(_student(logits, batch), batch).loss
    local = [
        obj(_student(logits[r], select_rows(batch, r)), select_rows(batch, r)).loss for r in SHARDINGS[1]
    ]
    assert abs(float(sum(local) / len(local)) - float(full)) > 1e-3


def test_registry_names_flags_and_errors():
    assert set(OBJECTIVES) == {"opd", "opd_topk", "sft_teacher", "dpo", "ctpd"}
    with pytest.raises(
        ValueError, match=r"valid objectives: \['ctpd', 'dpo', 'opd', 'opd_topk', 'sft_teacher'\]"
    ):
        make_objective("gkd")
    with pytest.raises(ValueError, match="clip_eps"):
        make_objective("opd", clip=0.2)
    with pytest.raises(ValueError, match="unknown options"):
        make_objective("opd_topk", topk_weigth=1.0)
    with pytest.raises(ValueError, match="kl_direction"):
        make_objective("opd_topk", kl_direction="sideways")
    # opd_topk is opd plus a dense term: it takes every opd option, and nothing of the pair objectives
    assert set(objective_options("opd")) < set(objective_options("opd_topk"))
    assert "beta" not in objective_options("opd_topk") and "mu" not in objective_options("dpo")
    topk = make_objective("opd_topk", clip_eps=0.1, kl_direction="reverse", topk_weight=0.5)
    assert topk.kl_direction == "reverse" and topk.clip_eps == 0.1 and topk.adv_clamp == 5.0
    rebuilt = make_objective("opd_topk", **topk.options())  # how a learner rank gets the run's objective
    assert rebuilt == topk and rebuilt is not topk
    assert make_objective("dpo", beta=0.3).beta == 0.3
    flags = {n: make_objective(n) for n in OBJECTIVES}
    assert [n for n, o in flags.items() if o.needs_support] == ["opd_topk"]
    assert flags["dpo"].needs_reference and flags["ctpd"].needs_reference
    assert not make_objective("ctpd", mu=0.0).needs_reference
    assert [n for n, o in flags.items() if o.trains_on_pairs] == ["dpo", "ctpd"]
    assert [n for n, o in flags.items() if o.teacher_generates] == ["sft_teacher"]
    assert (
        not make_objective("opd").uses_task_reward()
        and make_objective("opd", reward_weight=0.5).uses_task_reward()
    )
    for name, obj in flags.items():
        assert obj.name == name


def test_sft_matches_naive_and_ignores_masked():
    g = torch.Generator().manual_seed(0)
    logp = (-torch.rand(3, 5, generator=g, dtype=F64) * 4).requires_grad_()
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 1, 1, 0, 0]], dtype=F64)
    out = SFTTeacher()(logp, LossInputs(mask_B_T=mask))
    lp = logp.detach()
    ref = -sum(float(lp[b, t]) for b in range(3) for t in range(5) if mask[b, t]) / 10
    assert abs(float(out.loss.detach()) - ref) < 1e-12
    (grad,) = torch.autograd.grad(out.loss, logp)
    torch.testing.assert_close(grad, -mask / 10)
    dirty = torch.where(mask > 0, lp, torch.full_like(lp, float("-inf")))
    torch.testing.assert_close(sft_loss(dirty, mask, 10.0).loss, out.loss.detach())


def test_distillation_metrics():
    batch = _full_batch()
    logits = torch.randn(B, T, V, dtype=F64)
    student = _student(logits, batch)
    m = batch.mask_B_T > 0
    got = distillation_metrics(student, batch)
    assert "distill/reverse_kl" not in got  # logged once, as batch/reverse_kl (batch_statistics)
    torch.testing.assert_close(got["distill/student_entropy"], student.entropy_B_T[m].mean())


def test_chunked_logprobs_feed_the_objective_end_to_end():
    """LM head → chunked support logprobs → opd_topk gives the naive full-logits loss and gradients."""
    batch = _full_batch()
    g = torch.Generator().manual_seed(5)
    hidden = torch.randn(B, T, 4, generator=g, dtype=F64, requires_grad=True)
    weight = torch.randn(V, 4, generator=g, dtype=F64, requires_grad=True)
    obj = make_objective("opd_topk", topk_weight=0.3)
    student = chunked_token_logprobs(
        hidden,
        weight,
        batch.target_ids_B_T,
        token_mask_B_T=batch.mask_B_T,
        support_ids_B_T_S=batch.support_ids_B_T_S if obj.needs_support else None,
        chunk_size=4,
    )
    got = obj(student, batch).loss
    want = obj(_student(hidden @ weight.t(), batch), batch).loss
    torch.testing.assert_close(got, want)
    for a, b in zip(torch.autograd.grad(got, (hidden, weight)), torch.autograd.grad(want, (hidden, weight))):
        torch.testing.assert_close(a, b)


def test_select_rows_keeps_pairs_together():
    batch = _full_batch()
    shard = select_rows(batch, [5, 4])
    assert shard.chosen_index_N.tolist() == [0] and shard.rejected_index_N.tolist() == [1]
    torch.testing.assert_close(shard.mask_B_T, batch.mask_B_T[[5, 4]])
    with pytest.raises(ValueError, match="pair"):
        select_rows(batch, [0, 2])


def test_missing_field_error_names_it():
    with pytest.raises(ValueError, match="support_probs_B_T_S"):
        make_objective("opd_topk")(
            TokenLogprobs(torch.zeros(1, 2), support_logprobs_B_T_S=torch.zeros(1, 2, 1)),
            LossInputs(
                mask_B_T=torch.ones(1, 2),
                dense_mask_B_T=torch.ones(1, 2),
                support_ids_B_T_S=torch.zeros(1, 2, 1, dtype=torch.long),
            ),
        )


def test_collate_mapped_samples():
    def sample(sid, prompt, resp, dense=None):
        r = len(resp)
        return MappedSample(
            sample_id=sid,
            input_ids=np.array(prompt + resp, dtype=np.int32),
            response_start=len(prompt),
            behaviour_logprobs=-np.arange(1, r + 1, dtype=np.float32),
            teacher_logprobs=np.full(r, -2.0, np.float32),
            advantages=np.linspace(-1, 1, r).astype(np.float32),
            mask=np.ones(r, np.float32),
            weight_version=3,
            dense=dense,
        )

    dense = DenseTarget(
        positions=np.array([0, 2], np.int32),
        support_ids=np.array([[4, -1], [7, 1]], np.int32),
        support_probs=np.array([[0.9, 0.0], [0.5, 0.25]], np.float32),
        other_prob=np.array([0.1, 0.25], np.float32),
    )
    batch = collate_mapped_samples([sample("a#0", [1, 2], [5, 6, 7], dense), sample("b#0", [3], [9])])
    assert batch.mask_B_T.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch.target_ids_B_T.tolist() == [[5, 6, 7], [9, 0, 0]]
    assert batch.behaviour_logprobs_B_T[0].tolist() == [-1, -2, -3]
    assert batch.dense_mask_B_T.tolist() == [[1, 0, 1], [0, 0, 0]]
    assert batch.support_ids_B_T_S[0, 2].tolist() == [7, 1] and batch.support_ids_B_T_S[0, 1].tolist() == [
        -1,
        -1,
    ]
    assert batch.support_ids_B_T_S[1].eq(-1).all()
    torch.testing.assert_close(batch.other_prob_B_T[0], torch.tensor([0.1, 0.0, 0.25]))
    assert LossCounts.of(batch) == LossCounts(tokens=4.0, dense_positions=2.0, pairs=0.0)
    with pytest.raises(ValueError, match="pad_to"):
        collate_mapped_samples([sample("a#0", [1], [5, 6])], pad_to=1)
