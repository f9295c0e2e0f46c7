"""Shared fixtures for the real-stack tests: one loopback Ray per session, engines per module."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
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

    ray.init(
        address="local",
        _node_ip_address="127.0.0.1",
        include_dashboard=False,
        num_cpus=8,
        runtime_env={
            "env_vars": {k: os.environ[k] for k in ("VLLM_CPU_KVCACHE_SPACE", "DS_ACCELERATOR", "WANDB_MODE")}
        },
    )
    yield ray
    ray.shutdown()


def stop_stages(stages) -> None:
    import ray

    for actor in stages.actors():
        ray.kill(actor)
