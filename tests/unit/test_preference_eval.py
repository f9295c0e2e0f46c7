"""The HF teacher on encoded pairs, with tiny random models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from framework.mapping import TokenMapper
from framework.preference import (
    attach_teacher_scores,
    encode_pairs,
    responses_of,
    teacher_requests,
)
from framework.teacher import make_teacher
from framework.types import PreferencePair
from tests.unit.mapping_fixtures import tokenizer_dir


def tiny_model(path: Path, tokenizer: str) -> str:
    """A random 1-layer Llama over ``tokenizer``'s vocabulary (large init: well-separated logits)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        initializer_range=0.5,
        tie_word_embeddings=False,
        pad_token_id=tok.eos_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).float().save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("pref_models")
    return {name: tiny_model(root / name, tokenizer_dir(name)) for name in ("bl_group", "bl_single")}


def test_hf_teacher_span_logprobs_telescope(models):
    mapper = TokenMapper.from_paths(tokenizer_dir("bl_group"), tokenizer_dir("bl_single"), topk=False)
    pairs = [
        PreferencePair(
            "a", [{"role": "user", "content": "Compute 12 + 30."}], "12 + 30 = 42. Answer: 42", "Answer: 43"
        ),
        PreferencePair("b", [{"role": "user", "content": "Hi"}], "café 東京", "the value is 7"),
    ]
    encoded = encode_pairs(pairs, mapper)
    teacher = make_teacher("hf", model_path=models["bl_single"])
    scores = teacher.score(teacher_requests(encoded), top_k=0)
    attach_teacher_scores(encoded, scores)
    for r, s in zip(responses_of(encoded), scores):
        total = float(np.asarray(s.token_logprobs, dtype=np.float64).sum())
        assert total < 0 and r.teacher_logprob == pytest.approx(total)
        assert r.teacher_span_logprobs.sum() == pytest.approx(total, abs=1e-6)
        assert (r.teacher_span_logprobs < 0).all()  # every span holds at least one teacher token
