"""Train the zoo tokenizers with the ``tokenizers`` library and save them as Hugging Face tokenizers.

- ``llama3``: ByteLevel BPE (GPT-2 byte-to-unicode alphabet, ``Ġ`` = space), Llama-3 regex
  pre-tokenization (digits grouped by up to 3), special tokens after the learned vocabulary.
- ``qwen``: ByteLevel BPE, Qwen2 regex (single digits), ChatML special tokens.
- ``gemma``: SentencePiece-style BPE: ``▁`` = space, a dummy prefix space on the first text section
  (Metaspace ``prepend_scheme="first"``), single digits, byte fallback (``<0x00>`` … ``<0xFF>`` are all
  in the vocabulary), special tokens first.

All three round-trip any text exactly through ``encode(add_special_tokens=False)`` and
``decode(skip_special_tokens=False)`` with two SentencePiece-inherent exceptions for ``gemma``: a
literal ``▁`` (U+2581) decodes as a space, and a space right after a special token inside the
text is doubled. The dummy prefix is made exact the way SentencePiece does it: text that already
starts with a space gets one more (normalizer ``\\A `` → two spaces), so the decoder can always strip
exactly one leading space.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from tokenbridge_zoo.families import LLAMA3_SPLIT_PATTERN, QWEN_SPLIT_PATTERN, FamilyStyle

BYTE_FALLBACK_TOKENS: tuple[str, ...] = tuple(f"<0x{b:02X}>" for b in range(256))
_LIMIT_ALPHABET = 160  # SentencePiece-style alphabet cap: rarer characters go through byte fallback


def _bytelevel_tokenizer(split_pattern: str) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(split_pattern), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def _metaspace_pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True),
            pre_tokenizers.Digits(individual_digits=True),
        ]
    )


def _train_bytelevel(style: FamilyStyle, corpus: list[str], vocab_size: int) -> Tokenizer:
    pattern = LLAMA3_SPLIT_PATTERN if style.family == "llama3" else QWEN_SPLIT_PATTERN
    tokenizer = _bytelevel_tokenizer(pattern)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(style.special_tokens),
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    _check_learned_size(style, tokenizer.get_vocab_size(), vocab_size - len(style.special_tokens))
    tokenizer.add_special_tokens(list(style.special_tokens))  # appended after the learned vocabulary
    if style.bos_token is not None:
        bos_id = tokenizer.token_to_id(style.bos_token)
        tokenizer.post_processor = processors.Sequence(
            [
                processors.ByteLevel(trim_offsets=False),
                processors.TemplateProcessing(
                    single=f"{style.bos_token} $A",
                    pair=f"{style.bos_token} $A {style.bos_token} $B",
                    special_tokens=[(style.bos_token, bos_id)],
                ),
            ]
        )
    else:
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    return tokenizer


def _train_metaspace(style: FamilyStyle, corpus: list[str], vocab_size: int) -> Tokenizer:
    learned_size = vocab_size - len(style.special_tokens) - len(BYTE_FALLBACK_TOKENS)
    draft = Tokenizer(models.BPE(unk_token=None))
    draft.pre_tokenizer = _metaspace_pre_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=learned_size, min_frequency=2, show_progress=False, limit_alphabet=_LIMIT_ALPHABET
    )
    draft.train_from_iterator(corpus, trainer=trainer)
    _check_learned_size(style, draft.get_vocab_size(), learned_size)
    learned = json.loads(draft.to_str())["model"]
    # SentencePiece layout: control tokens, then the 256 byte-fallback tokens, then learned pieces.
    learned_pieces = sorted(learned["vocab"], key=learned["vocab"].__getitem__)
    pieces = [*style.special_tokens, *BYTE_FALLBACK_TOKENS, *learned_pieces]
    vocab = {piece: index for index, piece in enumerate(pieces)}
    pairs = [m.split(" ") if isinstance(m, str) else m for m in learned["merges"]]
    merges = [(str(a), str(b)) for a, b in pairs]
    tokenizer = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, unk_token=style.unk_token, byte_fallback=True, fuse_unk=True)
    )
    # SentencePiece adds the dummy prefix even when the text already starts with a space; doubling a
    # leading space reproduces that, so the decoder's single-space strip is always exact.
    tokenizer.normalizer = normalizers.Replace(Regex(r"\A "), "  ")
    tokenizer.pre_tokenizer = _metaspace_pre_tokenizer()
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tokenizer.add_special_tokens(list(style.special_tokens))  # already in the vocab: ids are kept
    if style.bos_token is not None:
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{style.bos_token} $A",
            pair=f"{style.bos_token} $A {style.bos_token} $B",
            special_tokens=[(style.bos_token, vocab[style.bos_token])],
        )
    return tokenizer


def _check_learned_size(style: FamilyStyle, got: int, wanted: int) -> None:
    if got != wanted:
        raise RuntimeError(
            f"{style.family}: BPE training produced {got} tokens, wanted {wanted}; "
            "the corpus is too small for this vocab size (raise corpus_lines or lower vocab_size)"
        )


def train_tokenizer(style: FamilyStyle, corpus: Iterable[str], vocab_size: int) -> Tokenizer:
    """A trained ``tokenizers.Tokenizer`` of ``vocab_size`` ids (special tokens included)."""
    lines = list(corpus)
    if style.kind == "bytelevel":
        tokenizer = _train_bytelevel(style, lines, vocab_size)
    elif style.kind == "metaspace":
        tokenizer = _train_metaspace(style, lines, vocab_size)
    else:
        raise ValueError(f"unknown tokenizer kind {style.kind!r}")
    if tokenizer.get_vocab_size() != vocab_size:
        raise RuntimeError(f"{style.family}: vocab size {tokenizer.get_vocab_size()} != {vocab_size}")
    return tokenizer


def save_hf_tokenizer(style: FamilyStyle, tokenizer: Tokenizer, out_dir: Path, max_length: int) -> None:
    """Write tokenizer.json, tokenizer_config.json (with chat template) and generation_config.json."""
    from transformers import PreTrainedTokenizerFast

    out_dir.mkdir(parents=True, exist_ok=True)
    named = {style.bos_token, style.eos_token, style.pad_token, style.unk_token}
    extra = [t for t in style.special_tokens if t not in named]
    hf_tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=style.bos_token,
        eos_token=style.eos_token,
        pad_token=style.pad_token,
        unk_token=style.unk_token,
        additional_special_tokens=extra,
        clean_up_tokenization_spaces=False,
        model_max_length=max_length,
        chat_template=style.chat_template,
    )
    hf_tokenizer.save_pretrained(str(out_dir))
    config_path = out_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    # Make the loaded class explicit and keep the full pipeline from tokenizer.json as trained.
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config["chat_template"] = style.chat_template
    config["clean_up_tokenization_spaces"] = False
    config["eot_token"] = style.eot_token  # informative: the token closing each chat turn
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    write_generation_config(style, tokenizer, out_dir)


def stop_token_ids(style: FamilyStyle, tokenizer: Tokenizer) -> list[int]:
    ids = [tokenizer.token_to_id(t) for t in style.stop_tokens]
    if any(i is None for i in ids):
        raise RuntimeError(f"{style.family}: stop tokens {style.stop_tokens} missing from the vocabulary")
    return [i for i in ids if i is not None]


def generation_config_dict(style: FamilyStyle, tokenizer: Tokenizer) -> dict[str, object]:
    config: dict[str, object] = {
        "eos_token_id": stop_token_ids(style, tokenizer),
        "pad_token_id": tokenizer.token_to_id(style.pad_token),
    }
    if style.bos_token is not None:
        config["bos_token_id"] = tokenizer.token_to_id(style.bos_token)
    return config


def write_generation_config(style: FamilyStyle, tokenizer: Tokenizer, out_dir: Path) -> None:
    from transformers import GenerationConfig

    GenerationConfig(**generation_config_dict(style, tokenizer)).save_pretrained(str(out_dir))


__all__ = [
    "BYTE_FALLBACK_TOKENS",
    "generation_config_dict",
    "save_hf_tokenizer",
    "stop_token_ids",
    "train_tokenizer",
    "write_generation_config",
]
