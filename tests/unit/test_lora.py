"""LoRA students (framework/learner/lora.py) on a tiny random Llama: the merge against peft's own, the
adapter files peft (and vLLM) read back, and the start-up errors. The real stack (DeepSpeed training
the adapters, vLLM loading them at every sync) is tests/integration/test_lora.py."""

from __future__ import annotations

import pickle
from types import SimpleNamespace

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from framework.actors.failures import config_error_in
from framework.actors.weights import choose_weight_path
from framework.config import ConfigError, to_config
from framework.learner.lora import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    adapter_state,
    add_lora,
    lora_scale,
    merge_lora,
    save_adapter,
    vllm_max_lora_rank,
)
from framework.rollout.engine import lora_refusal


def _tiny_lora(rank: int = 4, alpha: int = 8):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)  # fmt: skip
    model = LlamaForCausalLM(config)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    peft_model = add_lora(model, rank=rank, alpha=alpha, targets="all-linear")
    for name, p in model.named_parameters():
        if "lora_B" in name:  # B starts at 0 (the base model); give the adapter an effect
            torch.nn.init.normal_(p, std=0.1)
    return model, peft_model, base


def test_only_the_adapters_train_and_the_merge_equals_peft_merge_and_unload():
    model, peft_model, base = _tiny_lora()
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trained and all("lora_" in n for n in trained)
    assert not any("lm_head" in n for n in trained)  # all-linear leaves the LM head alone
    full = dict(model.state_dict())
    merged = merge_lora(full, lora_scale(peft_model))
    assert lora_scale(peft_model) == 2.0
    reference = {k: v.clone() for k, v in peft_model.merge_and_unload().state_dict().items()}
    assert set(merged) == set(reference) == set(base)
    for k in reference:
        torch.testing.assert_close(merged[k], reference[k], rtol=0, atol=1e-6)
    # W' = W + (alpha / r) B A, by hand, for one layer
    a = full["model.layers.0.self_attn.q_proj.lora_A.default.weight"].double()
    b = full["model.layers.0.self_attn.q_proj.lora_B.default.weight"].double()
    want = base["model.layers.0.self_attn.q_proj.weight"].double() + 2.0 * (b @ a)
    torch.testing.assert_close(
        merged["model.layers.0.self_attn.q_proj.weight"].double(), want, rtol=0, atol=1e-6
    )
    torch.testing.assert_close(merged["model.embed_tokens.weight"], base["model.embed_tokens.weight"])


def test_the_saved_adapter_reloads_in_peft_with_the_same_outputs(tmp_path):
    from peft import PeftModel

    model, peft_model, base = _tiny_lora()
    ids = torch.tensor([[1, 5, 9, 17, 33, 2]])
    with torch.no_grad():
        want = model(ids).logits
    folder = tmp_path / "adapter-v3"
    size = save_adapter(adapter_state(dict(model.state_dict()), peft_model), peft_model, folder)
    assert (folder / ADAPTER_WEIGHTS).is_file() and (folder / ADAPTER_CONFIG).is_file()
    assert (
        size == sum(f.stat().st_size for f in folder.iterdir())
        and not folder.with_name("adapter-v3.tmp").exists()
    )
    fresh = LlamaForCausalLM(model.config)
    fresh.load_state_dict(base)
    reloaded = PeftModel.from_pretrained(fresh, str(folder))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, want)


def test_vllm_rank_slots_and_lora_config_checks():
    assert [vllm_max_lora_rank(r) for r in (1, 8, 9, 300, 512)] == [8, 8, 16, 320, 512]
    with pytest.raises(ValueError):
        vllm_max_lora_rank(513)
    for bad, key in (({"lora_rank": 600}, "learner.lora_rank"), ({"lora_rank": 8, "lora_alpha": 0}, "learner.lora_alpha"),
                     ({"lora_rank": -1}, "learner.lora_rank")):  # fmt: skip
        with pytest.raises(ConfigError) as info:
            to_config({"learner": bad})
        assert info.value.key == key
    gpu = {"cluster": {"device": "cuda", "placement": "disaggregated"}, "learner": {"backend": "nccl"}}
    assert choose_weight_path(to_config(gpu)) == "nccl"
    assert choose_weight_path(to_config({**gpu, "learner": {"backend": "nccl", "lora_rank": 8}})) == "file"


def test_an_engine_that_cannot_load_adapters_stops_the_start_naming_the_key():
    refusal = lora_refusal(ValueError("GPT2LMHeadModel does not support LoRA yet."))
    assert isinstance(refusal, ConfigError) and refusal.key == "learner.lora_rank"
    assert "learner.lora_rank=0" in str(refusal) and "GPT2LMHeadModel" in str(refusal)
    # raised in a rollout actor's constructor, it reaches the driver as the text of Ray's ActorDiedError
    copy = pickle.loads(pickle.dumps(refusal))  # whole across processes (Ray pickles exceptions)
    assert (copy.key, str(copy)) == (refusal.key, str(refusal))
    died = SimpleNamespace(error_msg=f"The actor died because of an error raised in its creation task\n"
                                     f"framework.config.ConfigError: {refusal}")  # fmt: skip
    rebuilt = config_error_in(died)  # type: ignore[arg-type]
    assert rebuilt is not None and rebuilt.key == "learner.lora_rank" and str(rebuilt) == str(refusal)
    assert config_error_in(SimpleNamespace(error_msg="OOM")) is None  # type: ignore[arg-type]
