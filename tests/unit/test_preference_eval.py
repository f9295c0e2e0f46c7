"""The HF teacher on encoded pairs, and batched greedy task accuracy, with tiny random models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from framework.mapping import TokenMapper
from framework.preference import (
    attach_teacher_scores,
    encode_pairs,
    greedy_task_accuracy,
    responses_of,
    teacher_requests,
)
from framework.teacher import make_teacher
from framework.types import PreferencePair, Prompt
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


def test_greedy_task_accuracy_batches_like_single_prompts(models):
    from transformers import AutoModelForCausalLM

    info = TokenMapper.from_paths(tokenizer_dir("bl_group"), tokenizer_dir("bl_group")).student
    prompts = [
        Prompt(f"q{i}", [{"role": "user", "content": q}], answer=str(i))
        for i, q in enumerate(["Compute 1 + 2.", "Hi", "Compute 12 + 30 - 4 and explain the steps.", "x"])
    ]
    texts: list[str] = []

    def record(text: str, answer: str) -> bool:
        texts.append(text)
        return answer in ("0", "2")

    result = greedy_task_accuracy(models["bl_group"], info, prompts, record, max_new_tokens=12, batch_size=3)
    assert result["n"] == 4 and result["accuracy"] == 0.5
    assert sum(len(t) > 0 for t in texts) >= 2  # the random model does generate text
    assert [ok for _, _, ok in result["samples"]] == [True, False, True, False]
    # each prompt alone (no padding) generates the same text as in the left-padded batch
    model = AutoModelForCausalLM.from_pretrained(models["bl_group"]).eval()
    stops = sorted(info.stop_ids)
    for prompt, text in zip(prompts, texts):
        ids = torch.tensor(np.array(info.render_prompt_ids(prompt.messages)), dtype=torch.long)[None]
        with torch.no_grad():
            out = model.generate(
                ids, max_new_tokens=12, do_sample=False, eos_token_id=stops, pad_token_id=stops[0]
            )
        new = out[0, ids.shape[1] :].numpy()
        cut = np.flatnonzero(np.isin(new, stops))
        new = new[: cut[0]] if cut.shape[0] else new
        assert info.table.join(new).decode("utf-8", errors="replace") == text
    with pytest.raises(ValueError, match="answer"):
        greedy_task_accuracy(
            models["bl_group"], info, [Prompt("n", [{"role": "user", "content": "x"}])], record
        )
