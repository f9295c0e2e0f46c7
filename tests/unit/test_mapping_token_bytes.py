"""Token bytes, tokenizer kinds, stop tokens and continuation encoding."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, models, pre_tokenizers

from framework.mapping import (
    UnsupportedTokenizerError,
    build_byte_table,
    detect_kind,
    gpt2_unicode_to_byte,
    load_tokenizer_info,
)
from tests.unit.mapping_fixtures import tokenizer_dir, tokenizer_names, unicode_text


def test_gpt2_table_is_a_bijection_onto_bytes():
    table = gpt2_unicode_to_byte()
    assert sorted(table.values()) == list(range(256))
    assert table["Ġ"] == 0x20 and table["Ċ"] == 0x0A and table["A"] == 0x41


@pytest.mark.parametrize("name", tokenizer_names())
def test_vocabulary_bytes_and_specials(name):
    info = load_tokenizer_info(tokenizer_dir(name))
    table = info.table
    assert table.kind in ("bytelevel", "metaspace")
    assert not table.undecodable
    for sid in table.special_ids:
        assert table.token_bytes[sid] == b""
    assert info.stop_ids and info.stop_ids <= table.special_ids | {info.eos_id}
    assert info.stop_token_to_append in info.stop_ids
    if table.byte_fallback:
        vocab = info.backend_json["model"]["vocab"]
        assert table.token_bytes[vocab["<0xE6>"]] == b"\xe6"
        assert len(table.fallback_ids) == 256


@pytest.mark.parametrize("name", tokenizer_names())
@settings(max_examples=40, deadline=None)
@given(text=unicode_text())
def test_continuation_bytes_equal_text_bytes(name, text):
    """The teacher-side invariant: the token bytes of an encoded continuation ARE the text bytes."""
    info = load_tokenizer_info_cached(name)
    ids = info.continuation.encode(text, add_special_tokens=False).ids
    assert info.table.join(ids) == text.encode("utf-8")


_INFO: dict = {}


def load_tokenizer_info_cached(name):
    if name not in _INFO:
        _INFO[name] = load_tokenizer_info(tokenizer_dir(name))
    return _INFO[name]


def test_stop_ids_include_end_of_turn_and_generation_config():
    info = load_tokenizer_info_cached("bl_group")  # eos <|end_of_text|>, template ends turns with <|eot_id|>
    eot = info.backend_json["model"]["vocab"].get("<|eot_id|>") or info.prompt_encoder.token_to_id(
        "<|eot_id|>"
    )
    assert info.end_of_turn_id == eot
    assert info.stop_ids == {info.eos_id, eot}
    chatml = load_tokenizer_info_cached("bl_single")  # eos <|endoftext|>, turns end with <|im_end|>
    assert chatml.end_of_turn_id == chatml.prompt_encoder.token_to_id("<|im_end|>")
    assert chatml.eos_id != chatml.end_of_turn_id


def test_dummy_prefix_is_not_added_to_continuations():
    info = load_tokenizer_info_cached("sp_prefix")
    plain = info.prompt_encoder.encode("Hello", add_special_tokens=False)
    assert info.table.join(plain.ids) == b" Hello"  # the tokenizer's own dummy prefix
    assert info.table.join(info.continuation.encode("Hello", add_special_tokens=False).ids) == b"Hello"


def test_wordpiece_is_rejected_with_a_clear_message():
    tok = Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1, "##b": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    spec = json.loads(tok.to_str())
    with pytest.raises(UnsupportedTokenizerError, match="Supported kinds"):
        build_byte_table(spec)


def test_plain_bpe_without_byte_or_space_rule_is_rejected():
    tok = Tokenizer(models.BPE({"a": 0, "b": 1, "ab": 2}, [("a", "b")]))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    with pytest.raises(UnsupportedTokenizerError, match="unsupported tokenizer"):
        detect_kind(json.loads(tok.to_str()))


@given(st.binary(min_size=1, max_size=8))
def test_bytelevel_pieces_invert(raw):
    to_unicode = {b: ch for ch, b in gpt2_unicode_to_byte().items()}
    piece = "".join(to_unicode[b] for b in raw)
    spec = {
        "model": {"type": "BPE", "vocab": {piece: 0}, "merges": []},
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False},
        "decoder": {"type": "ByteLevel"},
    }
    assert build_byte_table(spec).token_bytes[0] == raw


@pytest.mark.parametrize("name", tokenizer_names())
def test_rendered_prompt_matches_transformers(name):
    info = load_tokenizer_info_cached(name)
    messages = [{"role": "user", "content": "What is 12 + 30? Answer: "}]
    ours = info.render_prompt_ids(messages).tolist()
    theirs = info.hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if isinstance(theirs, dict) or hasattr(theirs, "keys"):
        theirs = theirs["input_ids"]
    assert ours == list(theirs)
