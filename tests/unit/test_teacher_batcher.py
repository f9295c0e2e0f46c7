"""TokenBudgetBatcher, the shared prompt-logprob conversion and the backend factory (no vLLM)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from framework.teacher import TokenBudgetBatcher, make_teacher
from framework.teacher.base import scores_from_candidates
from framework.types import TeacherRequest, TeacherScores


def _req(i: int, length: int) -> TeacherRequest:
    return TeacherRequest(sample_id=f"s{i}", input_ids=np.arange(length, dtype=np.int32), response_start=1)


@given(lengths=st.lists(st.integers(1, 50), max_size=30), budget=st.integers(1, 120))
def test_split_preserves_order_and_respects_budget(lengths, budget):
    reqs = [_req(i, n) for i, n in enumerate(lengths)]
    batches = TokenBudgetBatcher(budget).split(reqs)
    assert [r.sample_id for b in batches for r in b] == [r.sample_id for r in reqs]
    for b in batches:
        assert b, "no empty micro-batch"
        total = sum(len(r.input_ids) for r in b)
        assert total <= budget or len(b) == 1  # only a lone over-budget request may exceed it
    # Greedy: a batch is closed only when the next request would not fit.
    for b, nxt in itertools.pairwise(batches):
        assert sum(len(r.input_ids) for r in b) + len(nxt[0].input_ids) > budget


def test_over_budget_request_goes_alone():
    reqs = [_req(0, 3), _req(1, 100), _req(2, 3), _req(3, 4)]
    batches = TokenBudgetBatcher(10).split(reqs)
    assert [[r.sample_id for r in b] for b in batches] == [["s0"], ["s1"], ["s2", "s3"]]


def test_batcher_score_concatenates_in_order():
    class LengthBackend:
        def __init__(self):
            self.calls: list[int] = []

        def score(self, requests, top_k):
            self.calls.append(len(requests))
            return [TeacherScores(r.sample_id, np.full(1, len(r.input_ids), np.float32)) for r in requests]

    backend = LengthBackend()
    reqs = [_req(i, n) for i, n in enumerate([5, 5, 5, 9, 1])]
    out = TokenBudgetBatcher(10).score(backend, reqs, top_k=0)
    assert [s.sample_id for s in out] == [r.sample_id for r in reqs]
    assert [float(s.token_logprobs[0]) for s in out] == [5, 5, 5, 9, 1]
    assert backend.calls == [2, 1, 2]


def test_bad_budget_and_unknown_backend_are_clear():
    with pytest.raises(ValueError, match="max_tokens_per_batch"):
        TokenBudgetBatcher(0)
    with pytest.raises(ValueError, match=r"unknown teacher backend 'tensorrt'.*vllm, hf, http"):
        make_teacher("tensorrt")


def test_candidates_topk_is_exactly_k_best_sorted():
    # Position 2's realised token (7) is outside the top-2 and arrives as a 3rd entry, listed first.
    ids = np.array([1, 5, 7], dtype=np.int64)
    req = TeacherRequest("a", ids.astype(np.int32), response_start=1)
    positions = [
        None,
        {5: (-0.5, 1), 9: (-1.5, 2)},  # realised token 5 is the best
        {7: (-6.0, 40), 3: (-1.0, 2), 4: (-0.2, 1)},
    ]
    s = scores_from_candidates(req, ids, positions, top_k=2)
    np.testing.assert_allclose(s.token_logprobs, [-0.5, -6.0])
    assert s.topk_ids.tolist() == [[5, 9], [4, 3]]
    np.testing.assert_allclose(s.topk_logprobs, [[-0.5, -1.5], [-0.2, -1.0]])
    assert s.topk_ids.dtype == np.int32 and s.topk_logprobs.dtype == np.float32
    plain = scores_from_candidates(req, ids, positions, top_k=0)
    assert plain.topk_ids is None and plain.topk_logprobs is None
