"""Tiny causal LMs in architectures vLLM serves on CPU (Llama, Qwen2), head_dim 64 (vLLM's CPU
attention rejects smaller heads). Weights are float32; embeddings are untied so the checkpoint has an
explicit ``lm_head.weight`` like larger releases.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from tokenbridge_zoo.settings import ModelSpec

_ARCHES: dict[str, tuple[type[PretrainedConfig], type[PreTrainedModel]]] = {
    "llama": (LlamaConfig, LlamaForCausalLM),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
}


def make_config(
    spec: ModelSpec, vocab_size: int, special_ids: dict[str, int | list[int] | None], max_positions: int
) -> PretrainedConfig:
    """Model config; ``special_ids`` gives ``bos_token_id``, ``eos_token_id`` (stop ids), ``pad_token_id``."""
    if spec.arch not in _ARCHES:
        raise ValueError(f"model {spec.name!r}: unknown arch {spec.arch!r}; use one of {sorted(_ARCHES)}")
    if spec.hidden_size % spec.num_heads or spec.head_dim != 64:
        raise ValueError(
            f"model {spec.name!r}: hidden_size/num_heads must be 64 (vLLM CPU attention), "
            f"got {spec.hidden_size}/{spec.num_heads}"
        )
    config_cls, _ = _ARCHES[spec.arch]
    kwargs: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        head_dim=spec.head_dim,
        max_position_embeddings=max_positions,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        initializer_range=0.02,
        **special_ids,
    )
    if spec.arch == "qwen2":
        kwargs["use_sliding_window"] = False
    config = config_cls(**kwargs)
    config.dtype = torch.float32
    return config


def create_model(config: PretrainedConfig, seed: int) -> PreTrainedModel:
    """A freshly initialised float32 model for ``config`` (deterministic per seed)."""
    arch = "qwen2" if isinstance(config, Qwen2Config) else "llama"
    _, model_cls = _ARCHES[arch]
    torch.manual_seed(seed)
    return model_cls(config).float()


def num_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["create_model", "make_config", "num_parameters"]
