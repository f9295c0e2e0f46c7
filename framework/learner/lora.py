"""LoRA students: train low-rank adapters only (peft), sync only the adapters into vLLM, export merged.

A LoRA layer (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models") keeps the base
weight ``W`` frozen and adds a trainable low-rank update:

    y = W x + (α / r) · B A x,      A ∈ R^{r × d_in},  B ∈ R^{d_out × r},  B = 0 at the start

so the student at step 0 is exactly the base model. peft injects the layers (``add_lora``); the
learner trains only ``A`` and ``B``. A weight sync ships the adapter (``adapter_state``, peft's own
file layout, which vLLM's LoRA loader reads) instead of the full weights: a few MB instead of the
model. The exported student is the merged model ``W' = W + (α / r) B A`` (``merge_lora``), a plain
Hugging Face folder that needs neither peft nor the adapter.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

# vLLM's engine argument max_lora_rank accepts only these values (an adapter's rank may be smaller)
VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_PEFT_PREFIX = "base_model.model."  # what peft puts before the wrapped model's own parameter names


def vllm_max_lora_rank(rank: int) -> int:
    """The smallest rank vLLM accepts as ``max_lora_rank`` that holds an adapter of ``rank``."""
    fitting = [r for r in VLLM_LORA_RANKS if r >= rank]
    if not fitting:
        raise ValueError(f"LoRA rank {rank} is above vLLM's largest max_lora_rank {VLLM_LORA_RANKS[-1]}")
    return fitting[0]


def add_lora(model: torch.nn.Module, *, rank: int, alpha: int, targets: str) -> Any:
    """Inject LoRA layers into ``model`` in place and freeze everything else (peft). Returns the
    ``PeftModel`` wrapper; ``model`` itself now holds the adapters and is what the learner trains.
    ``targets``: ``all-linear`` (every linear layer but the LM head) or comma-separated module names."""
    from peft import LoraConfig, get_peft_model

    target_modules: str | list[str] = (
        targets if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()]
    )
    config = LoraConfig(
        r=rank, lora_alpha=alpha, lora_dropout=0.0, bias="none", target_modules=target_modules
    )
    return get_peft_model(model, config)


def lora_scale(peft_model: Any) -> float:
    config = peft_model.peft_config["default"]
    return float(config.lora_alpha) / float(config.r)


def adapter_state(full: Mapping[str, torch.Tensor], peft_model: Any) -> dict[str, torch.Tensor]:
    """The adapter tensors of ``full`` (the wrapped model's own names, e.g. from a ZeRO gather) under
    the names peft saves them with."""
    from peft import get_peft_model_state_dict

    wrapped = {_PEFT_PREFIX + k: v for k, v in full.items() if "lora_" in k}
    return {
        k: v.detach().contiguous().cpu() for k, v in get_peft_model_state_dict(peft_model, wrapped).items()
    }


def save_adapter(state: Mapping[str, torch.Tensor], peft_model: Any, folder: str | os.PathLike) -> int:
    """Write ``folder/adapter_model.safetensors`` and ``adapter_config.json`` (written to a temp
    folder, then renamed: a reader never sees half an adapter). Returns the bytes written."""
    final = Path(folder)
    tmp = final.with_name(final.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    save_file(dict(state), str(tmp / ADAPTER_WEIGHTS))
    config = peft_model.peft_config["default"].to_dict()
    config["target_modules"] = sorted(config["target_modules"]) if isinstance(config["target_modules"], set) else config["target_modules"]  # fmt: skip
    (tmp / ADAPTER_CONFIG).write_text(json.dumps(config, default=str))
    os.replace(tmp, final)
    return sum(f.stat().st_size for f in final.iterdir())


def merge_lora(full: Mapping[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """Plain Hugging Face weights from a state dict holding LoRA layers: for every adapted module
    ``m``, ``m.weight = m.base_layer.weight + scale · (m.lora_B.default.weight @ m.lora_A.default.weight)``
    (computed in float64, stored in the base weight's dtype) and ``m.base_layer.*`` becomes ``m.*``."""
    merged: dict[str, torch.Tensor] = {}
    for name, tensor in full.items():
        if ".lora_" in name:
            continue
        if ".base_layer." not in name:
            merged[name] = tensor
            continue
        module, _, leaf = name.partition(".base_layer.")
        if leaf == "weight":
            a = full[f"{module}.lora_A.default.weight"].double()
            b = full[f"{module}.lora_B.default.weight"].double()
            tensor = (tensor.double() + scale * (b @ a)).to(tensor.dtype)
        merged[f"{module}.{leaf}"] = tensor
    return merged
