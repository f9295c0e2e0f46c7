"""Engine set-up decided before vLLM starts: the dtype (vLLM's ``dtype="auto"`` would run our float32
checkpoints in bfloat16, so we resolve it first) and the engine-core process on CPU."""

from __future__ import annotations

import json

import pytest

from framework.rollout.vllm_setup import resolve_dtype


@pytest.mark.parametrize(
    ("config", "requested", "expected"),
    [
        ({"dtype": "float32"}, "auto", "float32"),
        ({"torch_dtype": "float32"}, "auto", "float32"),  # older transformers write torch_dtype
        ({"dtype": "bfloat16"}, "auto", "auto"),  # vLLM's auto keeps bfloat16
        ({}, "auto", "auto"),
        ({"dtype": "float32"}, "bfloat16", "bfloat16"),  # an explicit choice always wins
    ],
)
def test_auto_keeps_a_float32_checkpoint_in_float32(tmp_path, config, requested, expected):
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert resolve_dtype(requested, str(tmp_path)) == expected


def test_unreadable_config_leaves_the_choice_to_vllm(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    assert resolve_dtype("auto", str(tmp_path)) == "auto"
    assert resolve_dtype("auto", str(tmp_path / "missing")) == "auto"


def test_rollout_auto_follows_the_learner():
    from framework.actors.cluster import rollout_dtype
    from framework.config import Config

    cfg = Config()
    assert rollout_dtype(cfg) == "float32"
    cfg.learner.dtype = "bfloat16"
    assert rollout_dtype(cfg) == "bfloat16"
    cfg.rollout.dtype = "float16"
    assert rollout_dtype(cfg) == "float16"


def test_cpu_engines_run_the_engine_core_in_the_actor_and_gpu_engines_do_not():
    from framework.actors.cluster import vllm_runtime_env

    cpu = vllm_runtime_env(0.5, gpus=0)["env_vars"]
    assert cpu == {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    gpu = vllm_runtime_env(4, gpus=1)["env_vars"]
    assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in gpu  # vLLM's own engine-core process on GPUs
    assert gpu["VLLM_CPU_KVCACHE_SPACE"] == "4"
