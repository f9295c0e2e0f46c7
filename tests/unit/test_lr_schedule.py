"""The learner's lr multiplier (`framework.learner.engine.lr_factor`): warm-up, then constant or
cosine decay to a floor at the run's last step; and what the learner's scheduler does with it."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from framework.learner.engine import lr_factor


def test_constant_after_a_linear_warmup():
    assert [lr_factor(s, warmup_steps=4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert lr_factor(0, warmup_steps=0) == 1.0
    assert lr_factor(10**6, warmup_steps=0, decay="none", total_steps=10) == 1.0


@pytest.mark.parametrize("warmup", [0, 5])
def test_cosine_falls_to_the_floor_at_the_last_update_and_stays(warmup):
    total, floor = 60, 0.1
    factors = [lr_factor(s, warmup, "cosine", total, floor) for s in range(total + 10)]
    if warmup:
        assert factors[warmup - 1] == 1.0  # the warm-up's end
    n = total - warmup
    for k in (1, n // 2, n):  # the k-th update after the warm-up
        want = floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * k / n))
        assert factors[warmup + k - 1] == pytest.approx(want)
    falling = factors[max(warmup - 1, 0) : warmup + n]  # from the warm-up's end to the last update
    assert all(a > b for a, b in itertools.pairwise(falling))
    assert factors[total - 1] == pytest.approx(floor) and factors[-1] == pytest.approx(floor)


def test_the_scheduler_applies_it_per_optimizer_update():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=1e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, warmup_steps=0, decay="cosine", total_steps=4, floor=0.0)
    )
    seen = []
    for _ in range(5):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([0.85355e-4, 0.5e-4, 0.14645e-4, 0.0, 0.0], abs=1e-9)
