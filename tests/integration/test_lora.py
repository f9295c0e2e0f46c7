"""A LoRA student on the real stack (framework/learner/lora.py): DeepSpeed trains the adapters only,
each sync ships the adapter folder into vLLM (loaded as a LoRA adapter), and the exported student is
the merged model. ``lora=r8`` is the recipe; the learning rate is raised so that 3 steps move the
student measurably."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.integration.conftest import greedy_logprobs, start_run, stop_stages

pytestmark = pytest.mark.integration


def test_lora_student_syncs_adapters_into_vllm_and_exports_the_merged_model(ray_local, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from framework.controller import Controller
    from tokenbridge_zoo import resolve_model

    out, steps = tmp_path / "run", 3
    overrides = ["lora=r8", "learner.lr=3e-3", f"trainer.steps={steps}", "trainer.eval_every=0",
                 "data.num_eval=8", "logging.progress_bar=false"]  # fmt: skip
    cfg, stages, train, evals = start_run(overrides, out)
    base_dir = resolve_model(cfg.pair.student)
    try:
        assert cfg.learner.lora_rank == 8 and stages.adapters
        final = Controller(cfg, stages, train, evals, out).run()
        _, ids, starts, learner_lp, vllm_lp = greedy_logprobs(stages, train[:4])
        folder = Path(stages.weights.sync_folder)
        synced = sorted(f.name for f in folder.iterdir())
    finally:
        stop_stages(stages)
    # the engines run the learner's student: base + the synced adapter of the last version
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(learner_lp, vllm_lp))
    assert diff < 2e-3, f"vLLM (with the adapter) and learner logprobs differ by {diff}"
    assert synced == [f"adapter-v{steps}"]  # adapter folders only, the latest kept
    # the adapter moved the student: the base model alone scores the same tokens differently
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    with torch.no_grad():
        base_lp = [
            base(torch.tensor([x])).logits[0].log_softmax(-1)[s - 1 : -1].gather(1, torch.tensor(x[s:])[:, None])[:, 0].numpy()
            for x, s in zip(ids, starts)
        ]  # fmt: skip
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(base_lp, vllm_lp)) > 1e-2
    # each sync shipped the adapter, a small fraction of the full weights
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    sent = [r["sync/bytes"] for r in rows if "sync/bytes" in r]
    full_bytes = sum(f.stat().st_size for f in Path(base_dir).glob("*.safetensors"))
    assert len(sent) == steps and max(sent) < 0.5 * full_bytes, (sent, full_bytes)
    # the exported student is merged: W' = W + (alpha / r) B A for every adapted weight, nothing else
    exported = load_file(str(Path(final["checkpoint"]) / "student" / "model.safetensors"))
    assert not any("lora" in k or "base_layer" in k for k in exported)
    base_sd = base.state_dict()
    changed = [k for k in exported if not torch.equal(exported[k], base_sd[k])]
    assert changed and all(k.endswith("proj.weight") for k in changed), changed[:5]
    merged = AutoModelForCausalLM.from_pretrained(Path(final["checkpoint"]) / "student", dtype=torch.float32)
    with torch.no_grad():
        merged_lp = [
            merged(torch.tensor([x])).logits[0].log_softmax(-1)[s - 1 : -1].gather(1, torch.tensor(x[s:])[:, None])[:, 0].numpy()
            for x, s in zip(ids, starts)
        ]  # fmt: skip
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(merged_lp, vllm_lp)) < 2e-3
