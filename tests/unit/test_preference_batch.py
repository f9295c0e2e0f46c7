"""Preference micro-batches (framework/preference/batch.py) and preference metrics (evaluate.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from framework.algo import LossCounts, TokenLogprobs, make_objective, span_logprobs
from framework.mapping import TokenMapper
from framework.preference import (
    attach_reference,
    attach_teacher_scores,
    build_preference_batch,
    build_preference_micro_batches,
    encode_pairs,
    preference_metrics,
    responses_of,
    student_sequences,
    teacher_requests,
)
from framework.types import PreferencePair, TeacherScores
from tests.unit.mapping_fixtures import tokenizer_dir

RESPONSES = [
    ("3 + 4 = 7. Answer: 7", "3 + 4 = 8. Answer: 8"),
    ("12 + 30 = 42. 42 - 9 = 33. Answer: 33", "12 + 30 = 42. 42 - 9 = 34. Answer: 34"),
    ("café", "naïve 東京 🙂 and more words here"),
]


@pytest.fixture(scope="module")
def mapper() -> TokenMapper:
    return TokenMapper.from_paths(tokenizer_dir("sp_plain"), tokenizer_dir("bl_single"), topk=False)


def encoded_pairs(mapper, seed: int = 0):
    rng = np.random.default_rng(seed)
    pairs = [
        PreferencePair(f"p{i}", [{"role": "user", "content": f"Question {i}?"}], c, r)
        for i, (c, r) in enumerate(RESPONSES)
    ]
    encoded = encode_pairs(pairs, mapper)
    scores = [
        TeacherScores(q.sample_id, np.log(rng.uniform(0.05, 1.0, len(q.input_ids) - q.response_start)))
        for q in teacher_requests(encoded)
    ]
    attach_teacher_scores(encoded, scores)
    ids, starts = student_sequences(encoded)
    attach_reference(
        encoded, [-rng.uniform(0.1, 4.0, len(x) - s).astype(np.float32) for x, s in zip(ids, starts)]
    )
    return encoded


def test_batch_has_the_shapes_loss_inputs_documents(mapper):
    encoded = encoded_pairs(mapper)
    rows = responses_of(encoded)
    mb = build_preference_batch(encoded, pad_id=0)
    x = mb.inputs
    B, N = len(rows), len(encoded)
    T = max(r.num_response_tokens for r in rows)
    K = max(r.num_spans for r in rows)
    assert mb.sample_ids == tuple(r.sample_id for r in rows)
    assert mb.input_ids_B_L.shape == (B, max(len(r.input_ids) for r in rows))
    for name, shape in {
        "mask_B_T": (B, T),
        "target_ids_B_T": (B, T),
        "span_index_B_T": (B, T),
        "reference_logprobs_B_T": (B, T),
        "teacher_span_logprobs_B_K": (B, K),
        "span_mask_B_K": (B, K),
        "reference_span_logprobs_B_K": (B, K),
        "chosen_index_N": (N,),
        "rejected_index_N": (N,),
    }.items():
        assert tuple(getattr(x, name).shape) == shape, name
    assert x.chosen_index_N.tolist() == list(range(0, B, 2))
    assert x.rejected_index_N.tolist() == list(range(1, B, 2))
    for b, r in enumerate(rows):
        R = r.num_response_tokens
        assert x.mask_B_T[b].sum() == R and x.span_mask_B_K[b].sum() == r.num_spans
        assert x.target_ids_B_T[b, :R].tolist() == r.response_ids.tolist()
        # the hidden state that predicts response token t sits right before it in the input
        assert mb.input_ids_B_L[b, mb.hidden_index_B_T[b, :R] + 1].tolist() == r.response_ids.tolist()
        assert (x.span_index_B_T[b, R:] == -1).all()
        np.testing.assert_allclose(
            x.teacher_span_logprobs_B_K[b, : r.num_spans].numpy(), r.teacher_span_logprobs, rtol=1e-6
        )
        ref_spans = np.bincount(
            r.span_index, weights=r.reference_logprobs.astype(np.float64), minlength=r.num_spans
        )
        np.testing.assert_allclose(
            x.reference_span_logprobs_B_K[b, : r.num_spans].numpy(), ref_spans, rtol=1e-5, atol=1e-5
        )
        assert (x.teacher_span_logprobs_B_K[b, r.num_spans :] == 0).all()


def test_micro_batches_keep_pairs_whole_and_respect_the_budget(mapper):
    encoded = encoded_pairs(mapper)  # three pairs of different lengths
    longest = max(p.max_length for p in encoded)
    for budget in (2, 2 * longest, 4 * longest, 100 * longest):
        batches = build_preference_micro_batches(encoded, budget)
        ids = [sid for mb in batches for sid in mb.sample_ids]
        assert sorted(ids) == sorted(r.sample_id for r in responses_of(encoded))
        for mb in batches:
            assert mb.inputs.chosen_index_N.numel() * 2 == mb.inputs.num_rows
            for c, r in zip(mb.inputs.chosen_index_N.tolist(), mb.inputs.rejected_index_N.tolist()):
                assert mb.sample_ids[c].split("/")[0] == mb.sample_ids[r].split("/")[0]
                assert mb.sample_ids[c].endswith("/chosen") and mb.sample_ids[r].endswith("/rejected")
            assert mb.input_ids_B_L.numel() <= budget or mb.inputs.num_rows == 2
    assert len(build_preference_micro_batches(encoded, 100 * longest)) == 1
    with pytest.raises(ValueError, match="micro_batch_tokens"):
        build_preference_micro_batches(encoded, 1)


def test_objectives_train_on_the_batch(mapper):
    """DPO at the reference is log 2 per pair; CTPD with μ = 0 and the reference as anchor is DPO; gradients
    flow into the student logprobs of response tokens only."""
    encoded = encoded_pairs(mapper)
    x = build_preference_batch(encoded).inputs
    counts = LossCounts.of(x)
    policy = x.reference_logprobs_B_T.clone().requires_grad_(True)
    dpo = make_objective("dpo", beta=0.5)(TokenLogprobs(policy), x, counts)
    assert float(dpo.loss.detach()) == pytest.approx(math.log(2.0), rel=1e-6)
    dpo.loss.backward()
    assert policy.grad is not None and (policy.grad[x.mask_B_T == 0] == 0).all()
    assert (policy.grad[0::2][x.mask_B_T[0::2] > 0] < 0).all()  # descending raises chosen logprobs

    shifted = x.reference_logprobs_B_T + torch.randn_like(x.reference_logprobs_B_T) * x.mask_B_T
    anchored = type(x)(**{**vars(x), "teacher_span_logprobs_B_K": x.reference_span_logprobs_B_K})
    ctpd = make_objective("ctpd", beta=0.5, mu=0.0)(TokenLogprobs(shifted), anchored, counts)
    dpo2 = make_objective("dpo", beta=0.5)(TokenLogprobs(shifted), x, counts)
    assert float(ctpd.loss) == pytest.approx(float(dpo2.loss), rel=1e-5)
    weighted = make_objective("ctpd", beta=0.5, mu=1.0)(TokenLogprobs(shifted), x, counts)
    assert math.isfinite(float(weighted.loss))
    assert (
        span_logprobs(shifted, x.span_index_B_T, x.mask_B_T, x.span_mask_B_K.shape[1]).shape
        == x.span_mask_B_K.shape
    )


def test_preference_metrics_rank_pairs(mapper):
    encoded = encoded_pairs(mapper)
    rows = responses_of(encoded)
    # chosen rows far more likely than rejected ones → every accuracy that reads the student is 1
    good = [r.reference_logprobs + (1.0 if i % 2 == 0 else -1.0) for i, r in enumerate(rows)]
    m = preference_metrics(encoded, good, beta=0.1)
    assert m["eval/pairs"] == len(encoded)
    assert m["eval/logp_acc"] == 1.0 and m["eval/dpo_acc"] == 1.0 and m["eval/dpo_margin"] > 0
    bad = [r.reference_logprobs + (-1.0 if i % 2 == 0 else 1.0) for i, r in enumerate(rows)]
    m_bad = preference_metrics(encoded, bad, beta=0.1, prefix="x")
    assert m_bad["x/dpo_acc"] == 0.0 and m_bad["x/dpo_loss"] > m["eval/dpo_loss"]
    assert m_bad["x/ctpd_loss"] > m["eval/ctpd_loss"]
    # at the reference every DPO margin is a tie (counted as wrong), and the loss is log 2
    at_ref = preference_metrics(encoded, [r.reference_logprobs for r in rows], beta=0.1)
    assert at_ref["eval/dpo_acc"] == 0.0 and at_ref["eval/dpo_loss"] == pytest.approx(math.log(2.0))
    teacher_wins = np.mean([p.chosen.teacher_logprob > p.rejected.teacher_logprob for p in encoded])
    assert at_ref["eval/teacher_acc"] == pytest.approx(teacher_wins)


def test_metrics_need_teacher_and_reference(mapper):
    pairs = [PreferencePair("a", [{"role": "user", "content": "Hi"}], "yes", "no")]
    encoded = encode_pairs(pairs, mapper)
    mb = build_preference_batch(encoded)
    assert mb.inputs.teacher_span_logprobs_B_K is None and mb.inputs.reference_logprobs_B_T is None
    with pytest.raises(ValueError, match="teacher scores and reference"):
        preference_metrics(encoded, [np.zeros(r.num_response_tokens) for r in responses_of(encoded)])
    with pytest.raises(ValueError, match="no pairs"):
        build_preference_batch([])


@pytest.mark.parametrize("objective, options", [("dpo", {}), ("ctpd", {"mu": 1.0})])
def test_pairs_dealt_over_ranks_give_the_whole_batch_loss(mapper, objective, options):
    """What a learner step with several ranks computes: each rank's share (and a pair-padding
    micro-batch for a rank with fewer micro-batches), normalised by the global pair count, sums to
    the loss and gradient of the whole batch on one rank; the padding adds nothing."""
    from framework.learner import deal_by_length, padding_micro_batch

    encoded = encoded_pairs(mapper)
    loss_fn = make_objective(objective, beta=0.5, **options)
    whole = build_preference_batch(encoded).inputs
    counts = LossCounts.of(whole)
    policy = (whole.reference_logprobs_B_T + 0.3 * torch.randn_like(whole.mask_B_T)).double()
    logprob_of = {sid: policy[b] for b, sid in enumerate(build_preference_batch(encoded).sample_ids)}

    def loss_of(pairs) -> torch.Tensor:
        mb = build_preference_batch(pairs)
        rows = torch.stack([logprob_of[sid][: mb.inputs.mask_B_T.shape[1]] for sid in mb.sample_ids])
        return loss_fn(TokenLogprobs(rows.float()), mb.inputs, counts).loss

    lengths, ids = [p.max_length for p in encoded], [p.pair_id for p in encoded]
    shares = deal_by_length(lengths, ids, 2, max(lengths))  # one pair per micro-batch
    assert sorted(i for s in shares for i in s) == [0, 1, 2] and all(shares)
    assert shares == deal_by_length(lengths, ids, 2, max(lengths))  # every rank computes the same deal
    total = sum(loss_of([encoded[i] for i in share]) for share in shares)
    assert float(total) == pytest.approx(float(loss_of(encoded)), rel=1e-5)

    pad = padding_micro_batch(pad_id=0, pairs=True)
    assert LossCounts.of(pad.inputs).pairs == 0 and LossCounts.of(pad.inputs).tokens == 0
    student = torch.zeros(1, 1, requires_grad=True)
    out = loss_fn(TokenLogprobs(student), pad.inputs, counts)
    out.loss.backward()
    assert (
        float(out.loss.detach()) == 0.0
        and student.grad is not None
        and float(student.grad.abs().sum()) == 0.0
    )
