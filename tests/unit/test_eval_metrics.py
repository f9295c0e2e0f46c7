"""Held-out metric arithmetic (`framework.eval`)."""

from __future__ import annotations

import numpy as np
import pytest

from framework.eval import accuracy, length_cut_frac, sampled_reverse_kl
from framework.types import MappedSample, Prompt, Rollout


def rollout(text: str, answer: str | None, finish: str) -> Rollout:
    prompt = Prompt("p", [{"role": "user", "content": "q"}], answer=answer)
    ids = np.arange(3, dtype=np.int32)
    return Rollout("p#0", prompt, ids, ids, np.zeros(3, np.float32), 0, finish, response_text=text)


def test_accuracy_and_length_cut_share():
    rows = [rollout("Answer: 19", "19", "stop"), rollout("Answer: 1", "19", "length"),
            rollout("Answer: 7", "19", "stop"), rollout("max(1", "19", "length")]  # fmt: skip
    assert accuracy(rows, lambda text, answer: text.endswith(answer)) == 0.25
    assert length_cut_frac(rows) == 0.5
    assert length_cut_frac([]) == 0.0
    assert accuracy(rows, None) is None


def test_sampled_reverse_kl_is_the_masked_token_mean():
    def sample(behaviour, teacher, mask):
        n = len(mask)
        return MappedSample("s", np.zeros(n + 1, np.int32), 1, np.asarray(behaviour, np.float32),
                            np.asarray(teacher, np.float32), np.zeros(n, np.float32),
                            np.asarray(mask, np.float32), 0)  # fmt: skip

    kl = sampled_reverse_kl([sample([-1.0, -2.0], [-1.5, -9.0], [1, 0]), sample([-0.5], [-1.0], [1])])
    assert kl["response_tokens"] == 2.0
    assert kl["reverse_kl"] == pytest.approx((0.5 + 0.5) / 2)
    assert kl["teacher_logprob_per_token"] == pytest.approx(-1.25)
