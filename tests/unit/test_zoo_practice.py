"""The zoo's practice responses in training: the slip's tokens carry no loss, everything else does."""

from __future__ import annotations

import random

import pytest
from transformers import AutoTokenizer

from framework.data.arith import make_problems, practice_response, reference_response
from tokenbridge_zoo import FAMILIES, tokenizer_path
from tokenbridge_zoo.families import style
from tokenbridge_zoo.training import collate, encode_examples


@pytest.mark.parametrize("family", FAMILIES)
def test_only_the_slipped_values_are_kept_out_of_the_loss(family):
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_path(family)))
    stop_ids = tokenizer.convert_tokens_to_ids(list(style(family).stop_tokens))
    prompts = make_problems(40, seed=0, split="train", task="chain")
    practice = [practice_response(p, random.Random(i), 0.3) for i, p in enumerate(prompts)]
    texts, spans = [t for t, _ in practice], [s for _, s in practice]
    examples = encode_examples(tokenizer, prompts, texts, stop_ids, spans)
    plain = encode_examples(tokenizer, prompts, texts, stop_ids)
    assert any(spans) and not all(spans)
    for example, same, text, slips in zip(examples, plain, texts, spans, strict=True):
        assert example.response_ids == same.response_ids  # the mask changes the loss, not the tokens
        if not slips:
            assert example.trained is None
            continue
        assert example.trained is not None
        untrained = [t for t, keep in zip(example.response_ids, example.trained) if not keep]
        # every untrained token is part of a wrong value; together they spell the wrong values
        wrong = [text[a:b] for a, b in slips]
        assert tokenizer.decode(untrained).replace(" ", "").replace("\u2581", "") == "".join(wrong)
        assert sum(example.trained) == len(example.response_ids) - len(untrained)
    _, _, labels = collate(examples, tokenizer.pad_token_id)
    for row, example in enumerate(examples):
        start = len(example.prompt_ids)
        kept = labels[row, start : start + len(example.response_ids)].tolist()
        expected = [t if example.trained is None or k else -100 for t, k in
                    zip(example.response_ids, example.trained or [True] * len(example.response_ids))]  # fmt: skip
        assert kept == expected and (labels[row, :start] == -100).all()


def test_a_clean_response_trains_every_token():
    family = "qwen"
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_path(family)))
    stop_ids = tokenizer.convert_tokens_to_ids(list(style(family).stop_tokens))
    prompts = make_problems(8, seed=0, split="train", task="chain")
    examples = encode_examples(
        tokenizer, prompts, [reference_response(p) for p in prompts], stop_ids, [[]] * 8
    )
    assert all(e.trained is None for e in examples)
