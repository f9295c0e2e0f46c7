"""Per-tokenizer facts and teacher-input rendering (docs/design.md §3.2–3.3).

The teacher scores the student's response in the teacher's own format: the conversation is rendered
with the TEACHER's chat template (``add_generation_prompt=True``), and the student response *text*
(from the student's token bytes, not from a decode) is tokenized by the teacher separately, so no
merge crosses the prompt/response boundary. If the student stopped on a stop token, the teacher's
end-of-turn token is appended so that the stop decision can be scored (stop-token bridging).

Dummy prefix space (SentencePiece/Metaspace, and ByteLevel with ``add_prefix_space``): encoding a
string on its own prepends a space that is not part of the response. We tokenize responses with a
*continuation encoder*: a copy of the teacher's backend tokenizer with the prefix rules switched off
(Metaspace ``prepend_scheme="never"``, ByteLevel ``add_prefix_space=False``, ``Prepend`` normalizers
and start-of-text ``Replace`` normalizers removed), without Unicode normalization (``NFC``/``NFKC``/...,
as Qwen's tokenizers have: it would rewrite a decomposed ``e`` + U+0301 as ``é``) and with special-token
strings encoded as plain text. So the teacher token bytes of the response equal the response bytes
exactly; :mod:`mapper` verifies it per sample and, should a tokenizer still add a leading space, strips
that phantom byte from the first teacher token. (A byte that no teacher token spells, as in SmolLM2's
vocabulary, which lacks 21 byte values, is dropped by the teacher's BPE: :mod:`mapper` then flags the
sample ``map/teacher_mismatch`` and masks the response from that byte on.)

End-of-turn tokens are found from the chat template itself (render one assistant turn and take the
first special token after its content): no per-family string tables. The stop set and the end-of-turn
token come from :func:`framework.data.chat.stop_tokens`, the same function the rollout engine's stop
set and the SFT targets are read from.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from framework.data.chat import StopTokens, stop_tokens
from framework.mapping.token_bytes import TokenByteTable, UnsupportedTokenizerError, build_byte_table
from framework.types import Message


class MissingChatTemplateError(ValueError):
    """The tokenizer has no chat template, so a conversation cannot be rendered for it."""


def _anchored_at_text_start(node: dict) -> bool:
    """A Replace normalizer that only rewrites the start of the text (e.g. ``\\A `` → two spaces, the
    SentencePiece way to make the dummy prefix exact): a dummy-prefix rule, meaningless mid-text."""
    if node.get("type") != "Replace":
        return False
    pattern = node.get("pattern", {})
    regex = pattern.get("Regex") if isinstance(pattern, dict) else None
    return isinstance(regex, str) and (regex.startswith("\\A") or regex.startswith("^"))


# a dummy prefix (Prepend) and Unicode normalization forms: neither belongs in a continuation
_DROPPED_NORMALIZERS = frozenset({"Prepend", "NFC", "NFD", "NFKC", "NFKD"})


def continuation_encoder(backend_json: dict) -> Tokenizer:
    """A copy of a backend tokenizer that adds no dummy-prefix space and no special tokens.

    Text is encoded exactly as it continues an already rendered prompt: Metaspace
    ``prepend_scheme="never"``, ByteLevel ``add_prefix_space=False``, no ``Prepend`` normalizer and no
    ``Replace`` normalizer anchored at the start of the text, and special-token strings in the text
    encoded as ordinary text (``encode_special_tokens``). Unicode normalizers are dropped too: the
    response bytes are what the student wrote, normalized or not, and the teacher must score those.
    """
    return _continuation_from_json(continuation_spec_json(backend_json))


def _continuation_from_json(spec_json: str) -> Tokenizer:
    encoder = Tokenizer.from_str(spec_json)
    encoder.encode_special_tokens = True
    return encoder


def continuation_spec_json(backend_json: dict) -> str:
    """The ``tokenizer.json`` text of :func:`continuation_encoder` (``backend_json`` is not modified)."""
    # Only the normalizer and the pre-tokenizer are edited: copy those, share the (large) rest.
    spec = dict(backend_json)
    for component in ("normalizer", "pre_tokenizer"):
        spec[component] = copy.deepcopy(backend_json.get(component))

    def strip_prefix_rules(node: Any) -> Any:
        if isinstance(node, dict):
            if node.get("type") in _DROPPED_NORMALIZERS or _anchored_at_text_start(node):
                return None
            if node.get("type") == "Metaspace":
                node["prepend_scheme"] = "never"
                if "add_prefix_space" in node:
                    node["add_prefix_space"] = False
            if node.get("type") == "ByteLevel" and "add_prefix_space" in node:
                node["add_prefix_space"] = False
            for key, value in list(node.items()):
                node[key] = strip_prefix_rules(value)
            if node.get("type") == "Sequence":
                for key in ("normalizers", "pretokenizers"):
                    if key in node:
                        node[key] = [n for n in node[key] if n is not None]
            return node
        if isinstance(node, list):
            return [strip_prefix_rules(n) for n in node]
        return node

    for component in ("normalizer", "pre_tokenizer"):
        spec[component] = strip_prefix_rules(spec.get(component))
    spec["post_processor"] = None  # never add BOS/EOS to a continuation
    # a saved tokenizer.json may carry padding / truncation settings; a continuation must keep every byte
    spec["padding"], spec["truncation"] = None, None
    return json.dumps(spec)


def tokenizer_fingerprint(backend_json: dict) -> str:
    """Hash of what determines token ids of text (vocab, merges, normalizer, pre-tokenizer, added tokens)."""
    relevant = {k: backend_json.get(k) for k in ("added_tokens", "normalizer", "pre_tokenizer", "model")}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode("utf-8")).hexdigest()


@dataclass
class TokenizerInfo:
    """Everything the mapping needs to know about one tokenizer, computed once.

    ``backend_json`` and ``continuation`` are built on first use (the continuation encoder serves the
    teacher side only), the latter from the disk cache (:mod:`framework.mapping.cache`) when it has it.
    """

    path: str
    hf: Any  # transformers tokenizer (used only for the chat template)
    table: TokenByteTable
    prompt_encoder: Tokenizer  # the backend tokenizer as is (rendered prompts contain special tokens)
    eos_id: int | None
    end_of_turn_id: int | None  # what the chat template writes after an assistant turn
    stop_ids: frozenset[int]  # eos ∪ end-of-turn ∪ generation_config.json eos_token_id
    stops: StopTokens  # where the three above come from (framework.data.chat.stop_tokens)
    fingerprint: str
    warnings: list[str] = field(default_factory=list)
    cache_key: str | None = None  # this tokenizer's disk cache entry (None: not cached)
    _backend_json: dict | None = field(default=None, repr=False)
    _continuation: Tokenizer | None = field(default=None, repr=False)
    _prompt_cache: OrderedDict = field(default_factory=OrderedDict, repr=False)

    @property
    def backend_json(self) -> dict:
        """The backend tokenizer's JSON (``tokenizer.json`` as transformers built it)."""
        if self._backend_json is None:
            self._backend_json = json.loads(self.prompt_encoder.to_str())
        return self._backend_json

    @property
    def continuation(self) -> Tokenizer:
        """See :func:`continuation_encoder`."""
        if self._continuation is None:
            from framework.mapping import cache

            cached = cache.load_continuation(self.cache_key) if self.cache_key else None
            if cached is not None:
                try:
                    self._continuation = _continuation_from_json(cached)
                except Exception:  # a damaged entry is rebuilt below
                    self._continuation = None
            if self._continuation is None:
                spec_json = continuation_spec_json(self.backend_json)
                self._continuation = _continuation_from_json(spec_json)
                if self.cache_key:
                    cache.save_continuation(self.cache_key, spec_json)
        return self._continuation

    @property
    def chat_template(self) -> str | None:
        return getattr(self.hf, "chat_template", None)

    @property
    def stop_token_to_append(self) -> int | None:
        """The token that closes an assistant turn (the teacher token scored in place of the
        student's stop token; the student token appended when a response stopped)."""
        return self.stops.end_of_response

    def render_prompt_ids(self, messages: list[Message], cache_size: int = 8192) -> np.ndarray:
        """int32[L] ids of the conversation rendered with this tokenizer's chat template + generation prompt.

        Cached per conversation (the same prompt is sampled several times per step).
        """
        key = tuple((m["role"], m["content"]) for m in messages)
        cached = self._prompt_cache.get(key)
        if cached is not None:
            self._prompt_cache.move_to_end(key)
            return cached
        if not self.chat_template:
            raise MissingChatTemplateError(
                f"tokenizer at {self.path} has no chat template; add one (tokenizer_config.json "
                "'chat_template' or chat_template.jinja) so conversations can be rendered for it."
            )
        text = self.hf.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
        ids = np.asarray(self.prompt_encoder.encode(text, add_special_tokens=False).ids, dtype=np.int32)
        ids.flags.writeable = False  # shared by every sample of this conversation
        self._prompt_cache[key] = ids
        if len(self._prompt_cache) > cache_size:
            self._prompt_cache.popitem(last=False)
        return ids

    def encode_continuations(self, texts: list[str]) -> list[np.ndarray]:
        """Tokenize response texts as continuations (no dummy prefix, no special tokens)."""
        encodings = self.continuation.encode_batch_fast(texts, add_special_tokens=False)
        return [np.asarray(e.ids, dtype=np.int32) for e in encodings]


def load_tokenizer_info(path: str, cache: bool = True) -> TokenizerInfo:
    """Load a tokenizer directory (anything ``AutoTokenizer.from_pretrained`` accepts locally).

    With ``cache`` (and the cache not turned off, see :mod:`framework.mapping.cache`), the byte table
    and the fingerprint of a tokenizer folder come from the disk cache when it has them, and go there
    when it does not.
    """
    from transformers import AutoTokenizer

    from framework.mapping import cache as disk

    hf = AutoTokenizer.from_pretrained(str(path))
    backend = getattr(hf, "backend_tokenizer", None)
    if backend is None:
        raise UnsupportedTokenizerError(
            f"tokenizer at {path} is a slow (Python) tokenizer; a fast tokenizer (tokenizer.json) is required. "
            "Convert it once with transformers and save it with save_pretrained."
        )
    key = disk.tokenizer_key(path) if cache and disk.cache_dir() is not None else None
    cached = disk.load_tables(key) if key else None
    backend_json: dict | None = None
    if cached is not None:
        table, fingerprint = cached
    else:
        backend_json = json.loads(backend.to_str())
        table = build_byte_table(backend_json)
        fingerprint = tokenizer_fingerprint(backend_json)
        if key:
            disk.save_tables(key, table, fingerprint)
    warnings: list[str] = []
    if table.undecodable:
        warnings.append(
            f"{len(table.undecodable)} vocabulary entries could not be read as bytes (masked if sampled)"
        )
    stops = stop_tokens(hf, str(path))
    if not getattr(hf, "chat_template", None):
        warnings.append("no chat template: conversations cannot be rendered for this tokenizer")
    if not stops.ids:
        warnings.append("no stop token found (no eos_token, no end-of-turn in the chat template)")
    return TokenizerInfo(
        path=str(path),
        hf=hf,
        table=table,
        prompt_encoder=backend,
        eos_id=stops.eos_id,
        end_of_turn_id=stops.end_of_turn_id,
        stop_ids=stops.ids,
        stops=stops,
        fingerprint=fingerprint,
        warnings=warnings,
        cache_key=key,
        _backend_json=backend_json,
    )


@dataclass
class StudentResponse:
    """The student response as bytes (the concatenation of its token bytes)."""

    num_content: int  # response tokens before the stop token (all of them if it did not stop on one)
    stopped: bool  # finish_reason == "stop" and the last token is a student stop id
    content: bytes
    valid_len: int  # length of the longest prefix of complete, valid UTF-8 characters
    text: str  # content[:valid_len] decoded

    @property
    def bridge_stop(self) -> bool:
        """The stop token can be scored: the student stopped and all content bytes are valid text."""
        return self.stopped and self.valid_len == len(self.content)


def check_ids(ids: np.ndarray, vocab_size: int, what: str) -> None:
    """Raise a clear error for ids outside ``[0, vocab_size)``."""
    if ids.shape[0] and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        raise ValueError(
            f"{what} contain ids outside the vocabulary [0, {vocab_size}): min {int(ids.min())}, "
            f"max {int(ids.max())}; check that the mapper was built for this model's tokenizer."
        )


def split_student_responses(
    table: TokenByteTable, stop_ids: frozenset[int], response_ids: list[np.ndarray], finish_reasons: list[str]
) -> list[StudentResponse]:
    """Student response bytes of a batch; a response cut mid-character (or with invalid UTF-8) keeps
    its valid prefix. Ids must lie in ``[0, table.vocab_size)`` (see :func:`check_ids`)."""
    if not response_ids:
        return []
    counts = np.array([ids.shape[0] for ids in response_ids], dtype=np.int64)
    buf, lens = table.gather(np.concatenate(response_ids))
    byte_off = np.concatenate(([0], np.cumsum(lens)))[np.concatenate(([0], np.cumsum(counts)))]
    out = []
    for b, (ids, finish) in enumerate(zip(response_ids, finish_reasons)):
        stopped = finish == "stop" and ids.shape[0] > 0 and int(ids[-1]) in stop_ids
        # A stop token has no bytes, so the content bytes are all the response bytes.
        content = buf[byte_off[b] : byte_off[b + 1]].tobytes()
        try:
            text = content.decode("utf-8")
            valid_len = len(content)
        except UnicodeDecodeError as err:  # incomplete last character (max_tokens) or invalid bytes
            valid_len = err.start
            text = content[:valid_len].decode("utf-8")
        out.append(StudentResponse(ids.shape[0] - int(stopped), stopped, content, valid_len, text))
    return out


def split_student_response(
    table: TokenByteTable, stop_ids: frozenset[int], response_ids: np.ndarray, finish_reason: str
) -> StudentResponse:
    """One sample of :func:`split_student_responses`."""
    return split_student_responses(table, stop_ids, [np.asarray(response_ids)], [finish_reason])[0]
