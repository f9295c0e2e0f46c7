"""The four Hugging Face recipes validate, and their ids resolved offline give one clear error (issue #13)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from framework.config import ConfigError, register_configs, to_config
from framework.models import ModelPathError, parse_hub_id, resolve_pair

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "recipes"
HUB_PAIRS = (
    "llama3.1_8b_to_qwen3_1.7b",
    "qwen2.5_7b_to_gemma2_2b",
    "qwen3_8b_to_llama3.2_1b",
    "qwen3_8b_to_qwen3_1.7b",
)
register_configs()


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=str(RECIPES), version_base=None):
        return compose("config", overrides=overrides)


@pytest.mark.parametrize("pair", HUB_PAIRS)
@pytest.mark.parametrize("cluster", [None, "gpu_8x_disaggregated", "gpu_8x_colocated"])
def test_hub_recipes_pass_start_up_validation(pair, cluster):
    overrides = [f"pair={pair}"] + ([f"cluster={cluster}"] if cluster else [])
    cfg = to_config(_compose(overrides))
    for spec in (cfg.pair.student, cfg.pair.teacher):
        assert parse_hub_id(spec) == (spec, None), spec  # recognised as Hub ids, not paths
    assert cfg.pair.allow_pickle_weights is False


@pytest.mark.parametrize("pair", HUB_PAIRS)
def test_hub_recipe_ids_offline_and_not_cached_are_one_clear_error(pair, offline_cache):
    cfg = to_config(_compose([f"pair={pair}", "cluster=gpu_8x_disaggregated"]))
    with pytest.raises(ModelPathError) as info:
        resolve_pair(cfg)
    err = info.value
    assert err.key == "pair.student" and cfg.pair.student in err.problem
    assert str(offline_cache) in err.problem and "HF_HUB_OFFLINE" in err.fix
    assert "\n" not in str(err) and err.__cause__ is None


def test_train_run_refuses_before_anything_starts(offline_cache, monkeypatch):
    from framework.train import run

    cfg = to_config(_compose(["pair=qwen3_8b_to_llama3.2_1b", "cluster=gpu_8x_disaggregated"]))
    for var in ("WANDB_MODE", "DS_ACCELERATOR"):  # run() may set these; keep the test's env clean
        monkeypatch.setenv(var, os.environ.get(var, "offline" if var == "WANDB_MODE" else "cpu"))
    with pytest.raises(ConfigError, match=r"pair\.student"):
        run(cfg)


def test_tokenbridge_train_prints_one_line_and_exits_2(offline_cache, tmp_path):
    """The entry point itself: a Hub recipe offline with an empty cache → exit 2, one line, no traceback."""
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    env.pop("HF_HUB_CACHE", None)
    env.pop("HUGGINGFACE_HUB_CACHE", None)
    out = subprocess.run(
        [sys.executable, "-m", "framework.train", "pair=qwen3_8b_to_qwen3_1.7b", "cluster=gpu_8x_disaggregated",
         f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    errors = [line for line in out.stderr.splitlines() if "config error" in line]
    assert len(errors) == 1, out.stderr
    assert "Qwen/Qwen3-1.7B" in errors[0] and "HF_HUB_OFFLINE" in errors[0]
