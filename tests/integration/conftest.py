"""Shared fixtures for the real-stack tests: one loopback Ray per session, engines per module."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
# the engine core in the engine's own process, as the trainer's CPU actors run it (cluster.vllm_runtime_env)
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def compose_config(overrides: list[str]):
    """A validated Config from the real recipes plus overrides (what tokenbridge-train would build)."""
    from hydra import compose, initialize_config_dir

    from framework.config import register_configs, to_config

    register_configs()
    with initialize_config_dir(config_dir=str(RECIPES), version_base=None):
        return to_config(compose("config", overrides=overrides))


@pytest.fixture(scope="session")
def ray_local():
    import ray

    from framework.train import start_local_ray

    # the trainer's own local mode: every Ray server on 127.0.0.1 (tests/integration/test_loopback.py)
    start_local_ray(
        num_cpus=8,
        runtime_env={
            "env_vars": {
                k: os.environ[k]
                for k in (
                    "VLLM_CPU_KVCACHE_SPACE",
                    "VLLM_ENABLE_V1_MULTIPROCESSING",
                    "DS_ACCELERATOR",
                    "WANDB_MODE",
                )
            }
        },
    )
    yield ray
    ray.shutdown()


def stop_stages(stages) -> None:
    import ray

    stages.close()  # the weight-sync folder first: learner rank 0 removes it
    for actor in stages.actors():
        ray.kill(actor)


def start_run(overrides: list[str], output_dir) -> tuple:
    """The recipes plus ``overrides``, with their actors started and prompts loaded:
    ``(cfg, stages, train prompts, eval prompts)`` (models resolved, and built if missing)."""
    from framework.actors.cluster import start_stages
    from framework.data import load_prompts
    from tokenbridge_zoo import resolve_model

    cfg = compose_config(overrides)
    cfg.trainer.output_dir = str(output_dir)
    teachers = [resolve_model(t.model) for t in cfg.teacher_list()]
    stages = start_stages(cfg, resolve_model(cfg.pair.student), teachers)
    train, _ = load_prompts(cfg.data.train, n=cfg.data.num_train, seed=0, split="train")
    evals, _ = load_prompts(cfg.data.eval, n=cfg.data.num_eval, seed=1, split="eval")
    return cfg, stages, train, evals


def greedy_logprobs(stages, prompts) -> tuple:
    """Greedy rollouts of ``prompts`` on rollout engine 0 and the logprobs of their responses from the
    learner and from that engine, for weight-sync checks: ``(rollouts, ids, starts, learner, engine)``."""
    import numpy as np
    import ray

    engine = stages.rollout[0]
    rollouts = ray.get(
        engine.generate.remote(prompts, dict(n=1, temperature=0.0, top_p=1.0, max_tokens=24, seed=0))
    )
    ids = [np.concatenate([r.prompt_ids, r.response_ids]) for r in rollouts]
    starts = [len(r.prompt_ids) for r in rollouts]
    learner_lp = stages.learner.logprobs(ids, starts)
    engine_lp = [
        ray.get(engine.score.remote(r.prompt_ids.tolist(), r.response_ids.tolist())) for r in rollouts
    ]
    return rollouts, ids, starts, learner_lp, engine_lp
