"""``cluster.placement=colocated`` on the real CPU stack: the controller puts the rollout engines to
sleep over every learner step and wakes them weights → sync → KV cache.

On CPU vLLM has no sleep mode (``enable_sleep_mode=True`` is rejected) and its CPU worker turns
``sleep`` / ``wake_up`` into logged no-ops, but the engine core still pauses its scheduler until a
full wake-up: so this runs the same controller code and the real vLLM calls as the GPU path.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.integration.conftest import compose_config, stop_stages

pytestmark = pytest.mark.integration

STEPS = 2


def test_colocated_run_sleeps_the_engines_over_each_learner_step(ray_local, tmp_path):
    import ray

    from framework.actors.cluster import start_stages
    from framework.controller import Controller
    from framework.data import load_prompts
    from tokenbridge_zoo import resolve_model

    cfg = compose_config(
        [
            "cluster.placement=colocated",
            "data.num_eval=8",
            "data.prompts_per_step=4",
            "rollout.samples_per_prompt=2",
            "logging.progress_bar=false",
            "trainer.eval_every=0",
            f"trainer.steps={STEPS}",
        ]
    )
    cfg.trainer.output_dir = str(tmp_path)
    stages = start_stages(cfg, resolve_model(cfg.pair.student), resolve_model(cfg.pair.teacher))
    try:
        assert stages.colocated
        train, _ = load_prompts(cfg.data.train, n=cfg.data.num_train, seed=0, split="train")
        evals, _ = load_prompts(cfg.data.eval, n=cfg.data.num_eval, seed=1, split="eval")
        Controller(cfg, stages, train, evals, Path(tmp_path)).run()

        rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
        steps = [r for r in rows if "loss" in r]
        assert len(steps) == STEPS
        assert all(math.isfinite(r["loss"]) for r in steps)
        assert all(r["time/sleep_s"] >= 0 and r["time/wake_s"] >= 0 for r in steps)
        for stats in ray.get([engine.stats.remote() for engine in stages.rollout]):
            assert stats["sleep_calls"] == STEPS  # one sleep per learner step
            assert stats["wake_up_calls"] == 2 * STEPS  # weights, then kv_cache, per step
            assert stats["sleep_s"] >= 0 and stats["wake_up_s"] >= 0

        # a sleeping engine refuses work (its scheduler is paused: the request would never finish)
        engine = stages.rollout[0]
        ray.get(engine.sleep.remote(1))
        with pytest.raises(Exception, match="asleep"):
            ray.get(engine.generate.remote(evals[:1], dict(n=1, temperature=0.0, max_tokens=4, seed=0)))
        ray.get(engine.wake_up.remote(None))
        assert ray.get(engine.generate.remote(evals[:1], dict(n=1, temperature=0.0, max_tokens=4, seed=0)))
    finally:
        stop_stages(stages)
