"""Raw bytes of every token id of a tokenizer (docs/design.md §3.1).

Token mapping works on bytes, never on per-token ``decode()`` strings: a token may hold part of a
UTF-8 character. Two tokenizer kinds are supported, detected from the backend (``tokenizer.json``):

- ``bytelevel`` (GPT-2 / Llama-3 / Qwen style): each character of a vocabulary string stands for one
  byte through GPT-2's byte→unicode table (``Ġ`` = 0x20); we invert that table.
- ``metaspace`` (SentencePiece: Llama-2 / Gemma / Mistral style): ``▁`` stands for 0x20, the rest is
  UTF-8; with byte fallback, ``<0xNN>`` is the single byte NN. The dummy-prefix space that some of
  these tokenizers prepend when encoding is a property of *encoding*, handled in :mod:`render`.

Special (control) tokens have no bytes: they are handled by rule (stop-token bridging). Non-special
added tokens contribute their literal content. Anything else fails loudly with
:class:`UnsupportedTokenizerError` — a silent wrong byte table would corrupt every alignment.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SPACE_MARK = "▁"  # U+2581, SentencePiece's visible space
_BYTE_FALLBACK_RE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


class UnsupportedTokenizerError(ValueError):
    """The tokenizer's kind is not one whose token bytes we can reconstruct exactly."""


def gpt2_unicode_to_byte() -> dict[str, int]:
    """Inverse of GPT-2's reversible byte→unicode table.

    Printable Latin-1 bytes map to themselves; the other 68 bytes map, in byte order, to code points
    256, 257, … (so 0x20 → ``Ġ`` = U+0120).
    """
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {chr(b): b for b in printable}
    extra = 0
    for b in range(256):
        if b not in printable:
            table[chr(256 + extra)] = b
            extra += 1
    return table


def _walk(node: Any):
    """Yield every dict inside a (nested) tokenizer.json component."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item)


def _has_type(node: Any, type_name: str) -> bool:
    return any(d.get("type") == type_name for d in _walk(node))


def _replaces(node: Any, pattern: str, content: str) -> bool:
    for d in _walk(node):
        if d.get("type") == "Replace" and d.get("content") == content:
            pat = d.get("pattern", {})
            if isinstance(pat, dict) and pat.get("String") == pattern:
                return True
    return False


def detect_kind(tokenizer_json: dict) -> str:
    """``"bytelevel"`` or ``"metaspace"`` from the backend JSON; raises for anything else."""
    model = tokenizer_json.get("model") or {}
    model_type = model.get("type")
    pre = tokenizer_json.get("pre_tokenizer")
    dec = tokenizer_json.get("decoder")
    norm = tokenizer_json.get("normalizer")
    described = (
        f"model={model_type}, normalizer={_types(norm)}, pre_tokenizer={_types(pre)}, decoder={_types(dec)}"
    )
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        raise UnsupportedTokenizerError(
            f"unsupported tokenizer ({described}): subword prefixes/suffixes (WordPiece-like '##' or "
            "'</w>') do not concatenate to the text bytes. Supported kinds: ByteLevel BPE "
            "(GPT-2/Llama-3/Qwen style) and SentencePiece/Metaspace (Llama-2/Gemma/Mistral style)."
        )
    if model_type == "BPE" and (_has_type(pre, "ByteLevel") or _has_type(dec, "ByteLevel")):
        return "bytelevel"
    metaspace = (
        _has_type(pre, "Metaspace")
        or _has_type(dec, "Metaspace")
        or _replaces(dec, SPACE_MARK, " ")
        or _replaces(norm, " ", SPACE_MARK)
    )
    if model_type in ("BPE", "Unigram") and metaspace:
        return "metaspace"
    raise UnsupportedTokenizerError(
        f"unsupported tokenizer ({described}). Supported kinds: ByteLevel BPE (GPT-2/Llama-3/Qwen "
        "style: a ByteLevel pre-tokenizer or decoder) and SentencePiece/Metaspace BPE or Unigram "
        "(Llama-2/Gemma/Mistral style: a Metaspace pre-tokenizer/decoder or a '▁' replace rule). "
        "Use a fast tokenizer (tokenizer.json) of one of these kinds."
    )


def _types(node: Any) -> str:
    if node is None:
        return "none"
    names = [d["type"] for d in _walk(node) if "type" in d and d["type"] != "Sequence"]
    return "+".join(names) or "none"


@dataclass
class TokenByteTable:
    """Bytes of every token id of one tokenizer.

    ``token_bytes[i]`` is ``b""`` for special tokens; ``byte_lengths`` is the matching int32[V] array.
    ``undecodable`` lists non-special ids whose vocabulary string could not be read as bytes.
    """

    kind: str
    token_bytes: list[bytes]
    byte_lengths: np.ndarray  # int32[V]
    special_ids: frozenset[int]
    byte_fallback: bool
    fallback_ids: frozenset[int] = frozenset()  # the <0xNN> byte-fallback pieces
    undecodable: list[int] = field(default_factory=list)

    @property
    def vocab_size(self) -> int:
        return len(self.token_bytes)

    def __post_init__(self) -> None:
        # All token bytes end to end (uint8[Σ len]) + each id's start: vectorised gathers for batches.
        self.flat_bytes = np.frombuffer(b"".join(self.token_bytes), dtype=np.uint8)
        self.byte_starts = (np.cumsum(self.byte_lengths, dtype=np.int64) - self.byte_lengths).astype(np.int64)
        self._byte_order: np.ndarray | None = None

    @classmethod
    def from_arrays(
        cls,
        kind: str,
        flat_bytes: np.ndarray,
        byte_lengths: np.ndarray,
        special_ids: np.ndarray,
        byte_fallback: bool,
        fallback_ids: np.ndarray,
        undecodable: np.ndarray,
        byte_order: np.ndarray | None = None,
    ) -> TokenByteTable:
        """Rebuild a table from its array form (`framework.mapping.cache`)."""
        lengths = np.asarray(byte_lengths, dtype=np.int32)
        ends = np.cumsum(lengths, dtype=np.int64)
        raw = np.asarray(flat_bytes, dtype=np.uint8).tobytes()
        if ends.shape[0] and int(ends[-1]) != len(raw):
            raise ValueError(f"byte lengths sum to {int(ends[-1])}, not {len(raw)} bytes")
        token_bytes = [raw[e - n : e] for e, n in zip(ends.tolist(), lengths.tolist())]
        table = cls(
            kind,
            token_bytes,
            lengths,
            frozenset(np.asarray(special_ids).tolist()),
            bool(byte_fallback),
            frozenset(np.asarray(fallback_ids).tolist()),
            np.asarray(undecodable).tolist(),
        )
        table._byte_order = None if byte_order is None else np.asarray(byte_order, dtype=np.int32)
        return table

    def sort_keys(self, ids: np.ndarray, width: int) -> np.ndarray:
        """uint8[N, width + 2]: each id's bytes, zero-padded to ``width`` (at least its length), then the
        length as two big-endian bytes.

        Compared as raw bytes (``memcmp``; a ``V{width+2}`` view of the rows), the keys sort exactly like
        the byte strings: the padding ties a string with its extensions by trailing zero bytes only, and
        the length then puts the shorter (the prefix) first.
        """
        ids = np.asarray(ids, dtype=np.int64)
        lens = self.byte_lengths[ids].astype(np.int64)
        if lens.shape[0] and int(lens.max()) > min(width, 0xFFFF):
            raise ValueError(f"a token of {int(lens.max())} bytes does not fit sort keys of width {width}")
        keys = np.zeros((ids.shape[0], width + 2), dtype=np.uint8)
        buf, _ = self.gather(ids)
        if buf.shape[0]:
            row_start = np.cumsum(lens) - lens
            cell = np.arange(buf.shape[0], dtype=np.int64) + np.repeat(
                np.arange(ids.shape[0], dtype=np.int64) * (width + 2) - row_start, lens
            )
            keys.ravel()[cell] = buf
        keys[:, width] = lens >> 8
        keys[:, width + 1] = lens & 0xFF
        return keys

    @property
    def byte_order(self) -> np.ndarray:
        """int32[N]: the ids with bytes, sorted by (bytes, id) (built once)."""
        if self._byte_order is None:
            ids = np.flatnonzero(self.byte_lengths > 0)
            width = int(self.byte_lengths[ids].max(initial=0))
            keys = self.sort_keys(ids, width)
            order = np.argsort(void_view(keys), kind="stable")  # stable: equal bytes keep id order
            self._byte_order = ids[order].astype(np.int32)
        return self._byte_order

    def join(self, ids: np.ndarray | list[int]) -> bytes:
        """Concatenated bytes of a token id sequence."""
        table = self.token_bytes
        return b"".join([table[i] for i in (ids.tolist() if isinstance(ids, np.ndarray) else ids)])

    def gather(self, ids_N: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Bytes of many tokens at once: (uint8[Σ len] concatenated bytes, int64[N] byte lengths)."""
        lens_N = self.byte_lengths[ids_N].astype(np.int64)
        total = int(lens_N.sum())
        if total == 0:
            return np.zeros(0, dtype=np.uint8), lens_N
        out_start_N = np.cumsum(lens_N) - lens_N
        index = np.repeat(self.byte_starts[ids_N] - out_start_N, lens_N) + np.arange(total, dtype=np.int64)
        return self.flat_bytes[index], lens_N

    def lengths(self, ids: np.ndarray) -> np.ndarray:
        return self.byte_lengths[ids]


def void_view(keys: np.ndarray) -> np.ndarray:
    """The rows of a C-contiguous uint8[N, W] array as N opaque items (compared with ``memcmp``)."""
    keys = np.ascontiguousarray(keys)
    return keys.view(np.dtype((np.void, keys.shape[1]))).reshape(keys.shape[0])


def build_byte_table(tokenizer_json: dict | str) -> TokenByteTable:
    """Compute the :class:`TokenByteTable` of a tokenizer from its backend JSON (``tokenizer.json``)."""
    spec: dict = json.loads(tokenizer_json) if isinstance(tokenizer_json, str) else tokenizer_json
    kind = detect_kind(spec)
    model = spec["model"]
    vocab: dict[str, int]
    if model["type"] == "Unigram":
        vocab = {piece: i for i, (piece, _score) in enumerate(model["vocab"])}
    else:
        vocab = dict(model["vocab"])
    added = {tok["id"]: tok for tok in spec.get("added_tokens") or []}
    size = max([*vocab.values(), *added.keys(), -1]) + 1
    token_bytes: list[bytes] = [b""] * size
    byte_fallback = bool(model.get("byte_fallback", False))
    undecodable: list[int] = []
    fallback: set[int] = set()
    unicode_to_byte = gpt2_unicode_to_byte() if kind == "bytelevel" else {}

    for piece, idx in vocab.items():
        if kind == "bytelevel":
            try:
                token_bytes[idx] = bytes([unicode_to_byte[ch] for ch in piece])
            except KeyError:
                undecodable.append(idx)
        else:
            match = _BYTE_FALLBACK_RE.match(piece) if byte_fallback else None
            if match:
                fallback.add(idx)
            token_bytes[idx] = (
                bytes([int(match.group(1), 16)]) if match else piece.replace(SPACE_MARK, " ").encode("utf-8")
            )
    special: set[int] = set()
    for idx, tok in added.items():
        if tok.get("special", False):
            token_bytes[idx] = b""
            special.add(idx)
        else:
            content = tok["content"]
            if kind == "metaspace":
                content = content.replace(SPACE_MARK, " ")
            token_bytes[idx] = content.encode("utf-8")
            if idx in undecodable:
                undecodable.remove(idx)
    if kind == "metaspace":
        unk = model.get("unk_token") if model["type"] == "BPE" else None
        if model["type"] == "Unigram" and model.get("unk_id") is not None:
            special.add(int(model["unk_id"]))
            token_bytes[int(model["unk_id"])] = b""
        elif unk is not None and unk in vocab:
            # <unk> stands for text the vocabulary cannot spell: it has no bytes of its own.
            special.add(vocab[unk])
            token_bytes[vocab[unk]] = b""
    lengths = np.fromiter((len(b) for b in token_bytes), dtype=np.int32, count=size)
    return TokenByteTable(
        kind,
        token_bytes,
        lengths,
        frozenset(special),
        byte_fallback,
        frozenset(fallback),
        sorted(undecodable),
    )
