"""The zoo tokenizers: exact round trips, chat templates, family-specific segmentation, stop ids."""

from __future__ import annotations

import json
from functools import cache

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from framework.data.arith import make_problems, reference_response
from framework.types import Prompt
from tokenbridge_zoo import FAMILIES, tokenizer_path
from tokenbridge_zoo.families import style

METASPACE_MARK = "▁"  # U+2581: SentencePiece-style tokenizers decode it as a space (inherent)


@cache
def hf_tokenizer(family: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tokenizer_path(family)))


def round_trip(family: str, text: str) -> str:
    tokenizer = hf_tokenizer(family)
    ids = tokenizer.encode(text, add_special_tokens=False)
    return tokenizer.decode(ids, skip_special_tokens=False)


# Text that stresses tokenizers: CJK, emoji (incl. ZWJ sequences), combining marks, whitespace runs
# with tabs / CR / LF, digits, code punctuation, plus arbitrary Unicode.
_PIECES = st.sampled_from(
    [
        "東京", "中文", "日本語", "한국어", "🙂", "👍🏽", "👩‍💻", "❤️", "e\u0301", "a\u0308\u0304", "Café", "naïve",
        " ", "  ", "\t", "\n", "\r\n", "\n\n", " \t ", "0", "7", "12345", "3.14", "-42", "1,000",
        "def f(x):", "    return x + 1", "{}", "[]", "==", "->", "'s", "n't", "Answer:", "Compute",
    ]
)  # fmt: skip
_TEXT = st.one_of(
    st.lists(st.one_of(_PIECES, st.text(max_size=6)), max_size=12).map("".join),
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=40),
)


@pytest.mark.parametrize("family", FAMILIES)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=_TEXT)
def test_round_trip_any_unicode(family, text):
    if style(family).kind == "metaspace":
        text = text.replace(METASPACE_MARK, "_")
    assert round_trip(family, text) == text


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(
    "text",
    [" leading space", "  two leading", "\tTab first", "trailing  ", "", " ", "12345 678", "a\r\nb\n\n\nc"],
)
def test_round_trip_edges(family, text):
    assert round_trip(family, text) == text


def test_metaspace_mark_is_the_space_symbol():
    # Documented limitation shared with real SentencePiece tokenizers: "▁" decodes as " ".
    assert round_trip("gemma", f"a{METASPACE_MARK}b") == "a b"


@pytest.mark.parametrize("family", FAMILIES)
def test_chat_template_generation_prompt_ends_with_assistant_header(family):
    tokenizer = hf_tokenizer(family)
    prompt = make_problems(1, seed=0, split="test")[0]
    text = tokenizer.apply_chat_template(prompt.messages, add_generation_prompt=True, tokenize=False)
    assert text.endswith(style(family).assistant_header)
    assert prompt.messages[-1]["content"] in text
    without = tokenizer.apply_chat_template(prompt.messages, add_generation_prompt=False, tokenize=False)
    assert text == without + style(family).assistant_header


@pytest.mark.parametrize("family", FAMILIES)
def test_chat_template_closes_turns_and_prompt_tokens_are_a_prefix(family):
    tokenizer = hf_tokenizer(family)
    family_style = style(family)
    prompt = make_problems(1, seed=1, split="test")[0]
    response = reference_response(prompt)
    prompt_text = tokenizer.apply_chat_template(prompt.messages, add_generation_prompt=True, tokenize=False)
    full_text = tokenizer.apply_chat_template(
        [*prompt.messages, {"role": "assistant", "content": response}], tokenize=False
    )
    assert full_text.startswith(prompt_text + response + family_style.eot_token)
    prompt_ids = tokenizer.encode(prompt_text, add_special_tokens=False)
    full_ids = tokenizer.encode(full_text, add_special_tokens=False)
    assert full_ids[: len(prompt_ids)] == prompt_ids
    assert tokenizer.decode(full_ids, skip_special_tokens=False) == full_text
    if family_style.bos_token is not None:
        assert prompt_ids[0] == tokenizer.convert_tokens_to_ids(family_style.bos_token)


def test_chat_template_system_message():
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Compute 1 + 2 + 3."}]
    for family in FAMILIES:
        text = hf_tokenizer(family).apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        assert "Be brief." in text and "Compute 1 + 2 + 3." in text
    with pytest.raises(Exception, match="alternate"):
        hf_tokenizer("gemma").apply_chat_template(
            [{"role": "assistant", "content": "x"}], add_generation_prompt=True, tokenize=False
        )


def _tokens(family: str, text: str) -> list[str]:
    tokenizer = hf_tokenizer(family)
    return tokenizer.convert_ids_to_tokens(tokenizer.encode(text, add_special_tokens=False))


def test_families_segment_digits_differently():
    digit_tokens = {
        family: [t for t in _tokens(family, "12345 678") if any(c.isdigit() for c in t)]
        for family in FAMILIES
    }
    # Llama-3 groups digits (up to 3 per pre-token, merged by BPE): some token holds 2+ digits.
    assert any(sum(c.isdigit() for c in t) >= 2 for t in digit_tokens["llama3"])
    assert all(sum(c.isdigit() for c in t) <= 3 for t in digit_tokens["llama3"])
    # Qwen and Gemma split every digit.
    for family in ("qwen", "gemma"):
        assert all(sum(c.isdigit() for c in t) == 1 for t in digit_tokens[family]), digit_tokens[family]


def test_families_mark_spaces_differently():
    text = "Compute 12 + 7. The answer is here."
    for family in ("llama3", "qwen"):
        tokens = _tokens(family, text)
        assert any(t.startswith("Ġ") for t in tokens) and not any("▁" in t for t in tokens)
    tokens = _tokens("gemma", text)
    assert any(t.startswith("▁") for t in tokens) and not any("Ġ" in t for t in tokens)
    assert tokens[0].startswith("▁")  # the dummy prefix space


def test_segmentations_differ_across_families():
    text = "Compute 1234 + 56.  Café 東京 🙂\n\tx = [1, 22, 333]"
    segmentations = {family: tuple(hf_tokenizer(family).tokenize(text)) for family in FAMILIES}
    assert len(set(segmentations.values())) == len(FAMILIES)
    counts = {family: len(tokens) for family, tokens in segmentations.items()}
    assert len(set(counts.values())) > 1, counts


def test_gemma_has_all_byte_fallback_tokens_and_uses_them():
    tokenizer = hf_tokenizer("gemma")
    vocab = tokenizer.get_vocab()
    byte_ids = [vocab.get(f"<0x{b:02X}>") for b in range(256)]
    assert None not in byte_ids and len(set(byte_ids)) == 256
    rare = "Ꙭ"  # not in the training corpus: must fall back to its UTF-8 bytes
    tokens = _tokens("gemma", rare)
    assert [t for t in tokens if t.startswith("<0x")] == [f"<0x{b:02X}>" for b in rare.encode()]


def test_non_ascii_uses_learned_merges_sometimes_and_bytes_otherwise():
    frequent = _tokens("llama3", " 東京")  # in the corpus: merged into one token
    rare = _tokens("llama3", " Ꙭ")
    assert len(frequent) < len(" 東京".encode())
    assert len(rare) >= 2


def test_vocab_sizes_differ():
    sizes = {family: len(hf_tokenizer(family)) for family in FAMILIES}
    assert len(set(sizes.values())) == len(FAMILIES), sizes


@pytest.mark.parametrize("family", FAMILIES)
def test_stop_ids_are_the_end_of_turn_and_eos_tokens(family):
    tokenizer = hf_tokenizer(family)
    family_style = style(family)
    generation = json.loads((tokenizer_path(family) / "generation_config.json").read_text())
    stop_ids = generation["eos_token_id"]
    assert tokenizer.convert_ids_to_tokens(stop_ids) == [family_style.eot_token, family_style.eos_token]
    assert all(0 <= i < len(tokenizer) for i in stop_ids)
    assert tokenizer.eos_token == family_style.eos_token
    assert tokenizer.convert_tokens_to_ids(tokenizer.pad_token) == generation["pad_token_id"]
    # Each special token encodes to exactly its own id inside text.
    for token, token_id in zip([family_style.eot_token, family_style.eos_token], stop_ids):
        assert tokenizer.encode(f"a{token}b", add_special_tokens=False).count(token_id) == 1


@pytest.mark.parametrize("family", FAMILIES)
def test_tokenizer_config_is_hugging_face_style(family):
    config = json.loads((tokenizer_path(family) / "tokenizer_config.json").read_text())
    assert config["chat_template"] == style(family).chat_template
    assert "{%" in config["chat_template"] and "add_generation_prompt" in config["chat_template"]
    assert config["eos_token"] == style(family).eos_token
    assert config["clean_up_tokenization_spaces"] is False


def test_tokenizer_training_is_deterministic(tmp_path):
    from tokenbridge_zoo.corpus import generate_corpus
    from tokenbridge_zoo.tokenizer_build import train_tokenizer

    corpus = list(generate_corpus(3000, seed=5))
    first = train_tokenizer(style("qwen"), corpus, 600).to_str()
    second = train_tokenizer(style("qwen"), corpus, 600).to_str()
    assert first == second


def test_prompt_type_round_trips_through_template():
    # Prompts made by the task are plain Prompt objects (no tokenizer-specific fields).
    prompt = make_problems(1, seed=2, split="val")[0]
    assert isinstance(prompt, Prompt)
    for family in FAMILIES:
        text = hf_tokenizer(family).apply_chat_template(
            prompt.messages, add_generation_prompt=True, tokenize=False
        )
        assert round_trip(family, text) == text
