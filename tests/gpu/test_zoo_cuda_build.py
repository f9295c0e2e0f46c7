"""A zoo model built on CUDA (`tokenbridge-zoo --models NAME --device cuda`): how the recheck study's
8-layer teachers were built on a lent H200. Skips cleanly without CUDA."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_an_on_demand_model_builds_on_cuda_and_loads_on_the_cpu(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    import tokenbridge_zoo.build as build
    import tokenbridge_zoo.settings as settings

    monkeypatch.setenv("TOKENBRIDGE_HOME", str(tmp_path))
    short = tuple(
        replace(m, num_layers=2, min_steps=60, max_steps=60, eval_every=60) for m in settings.ON_DEMAND_MODELS
    )
    monkeypatch.setattr(settings, "ON_DEMAND_MODELS", short)
    monkeypatch.setattr(build, "ON_DEMAND_MODELS", short)
    path = build.model_path("teacher-qwen-recheck", device="cuda")
    info = json.loads((path / "zoo_info.json").read_text())
    assert info["build_device"] == "cuda" and info["train_steps"] == 60
    assert set(info["p_wait_after"]) == {"+1", "-1", "right"}
    assert all(0.0 <= p <= 1.0 for p in info["p_wait_after"].values())
    assert path.name.startswith("teacher-qwen-recheck-") and info["spec_digest"] in path.name
    model = AutoModelForCausalLM.from_pretrained(str(path))  # saved from the CPU copy
    assert next(model.parameters()).device.type == "cpu"
    assert model.config.num_hidden_layers == 2
