"""How the parallel zoo build shares models among workers (the process side is in
tests/integration/test_zoo_parallel.py)."""

from __future__ import annotations

import dataclasses

from tokenbridge_zoo.parallel import build_cost, default_jobs, longest_first
from tokenbridge_zoo.settings import DEFAULT_MODELS


def test_teachers_start_first_then_students():
    order = longest_first(DEFAULT_MODELS)
    # the chain models may train twice as many steps; equal cost keeps the settings' order
    assert order[:5] == ["teacher-qwen-chain", "teacher-llama3-chain", "teacher-qwen", "teacher-llama3",
                         "teacher-gemma-max"]  # fmt: skip
    assert order[5] == "student-llama3-chain"
    assert sorted(order[6:]) == ["student-gemma", "student-llama3", "student-qwen", "student-qwen-mix"]


def test_cost_grows_with_steps_depth_and_width():
    spec = DEFAULT_MODELS[2]
    base = build_cost(spec)
    assert build_cost(dataclasses.replace(spec, max_steps=2 * spec.max_steps)) == 2 * base
    assert build_cost(dataclasses.replace(spec, num_layers=2 * spec.num_layers)) == 2 * base
    assert build_cost(dataclasses.replace(spec, intermediate_size=2 * spec.intermediate_size)) > base


def test_one_worker_per_core_and_never_more_than_models():
    assert default_jobs(5, cores=2) == 2
    assert default_jobs(5, cores=16) == 5
    assert default_jobs(1, cores=16) == 1
    assert default_jobs(0, cores=4) == 1
