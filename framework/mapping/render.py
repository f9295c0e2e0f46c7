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
import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tokenizers import AddedToken, Tokenizer

from framework.data.chat import StopTokens, generation_eos_ids, stop_tokens
from framework.mapping.token_bytes import TokenByteTable, UnsupportedTokenizerError, build_byte_table
from framework.types import Message

log = logging.getLogger(__name__)


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

    This parses the whole spec (a second copy of the vocabulary); :attr:`TokenizerInfo.continuation`
    builds the same encoder on the backend's own model (:func:`continuation_from_parts`).
    """
    encoder = Tokenizer.from_str(continuation_spec_json(backend_json))
    encoder.encode_special_tokens = True
    return encoder


def continuation_spec(backend_json: dict) -> dict:
    """The ``tokenizer.json`` of :func:`continuation_encoder` as a dict that shares the (large) model
    with ``backend_json``, which is not modified."""
    # Only the normalizer and the pre-tokenizer are edited: copy those, share the rest.
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
    return spec


def continuation_spec_json(backend_json: dict) -> str:
    """The ``tokenizer.json`` text of :func:`continuation_encoder` (``backend_json`` is not modified)."""
    return json.dumps(continuation_spec(backend_json))


def continuation_parts_json(backend_json: dict) -> str:
    """:func:`continuation_spec_json` without the model: what :func:`continuation_from_parts` adds to
    the backend's model (the form the disk cache keeps)."""
    return json.dumps({k: v for k, v in continuation_spec(backend_json).items() if k != "model"})


_NO_MODEL = {"type": "BPE", "vocab": {}, "merges": []}  # a stand-in: only the other components are read


def continuation_from_parts(backend: Tokenizer, parts_json: str) -> Tokenizer:
    """:func:`continuation_encoder` built on ``backend``'s own model (shared, read-only in both).

    Parsing the full spec would build a second copy of the vocabulary (about 2 s for Gemma-3's 262k
    tokens and 515k merges). The steps are those of ``tokenizers``' JSON deserialization, in its order:
    the components first, then the added tokens in their order (ids come from the model vocabulary, or
    follow it), each run of equal ``special`` flags in one call (one call per token gives the same
    vocabulary, only slower). The result serializes exactly like :func:`continuation_encoder`'s
    (``test_mapping_prep`` checks it on the fixture and real tokenizers).
    """
    parts = json.loads(parts_json)
    if parts.get("padding") is not None or parts.get("truncation") is not None:
        raise ValueError("a continuation encoder has no padding or truncation")
    shell = Tokenizer.from_str(json.dumps({**parts, "added_tokens": [], "model": _NO_MODEL}))
    encoder = Tokenizer(backend.model)
    # the normalizer before the added tokens: their normalized forms are computed when they are added
    encoder.normalizer = shell.normalizer
    encoder.pre_tokenizer = shell.pre_tokenizer
    encoder.post_processor = shell.post_processor
    encoder.decoder = shell.decoder
    run: list[AddedToken] = []
    for i, token in enumerate(parts.get("added_tokens") or []):
        run.append(
            AddedToken(
                token["content"],
                single_word=token["single_word"],
                lstrip=token["lstrip"],
                rstrip=token["rstrip"],
                normalized=token["normalized"],
                special=token["special"],
            )
        )
        following = parts["added_tokens"][i + 1] if i + 1 < len(parts["added_tokens"]) else None
        if following is None or following["special"] != token["special"]:
            (encoder.add_special_tokens if token["special"] else encoder.add_tokens)(run)
            run = []
    encoder.encode_special_tokens = True
    return encoder


def tokenizer_fingerprint(backend_json: dict) -> str:
    """Hash of what determines token ids of text (vocab, merges, normalizer, pre-tokenizer, added tokens)."""
    relevant = {k: backend_json.get(k) for k in ("added_tokens", "normalizer", "pre_tokenizer", "model")}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ChatTemplate:
    """A chat template with the special-token strings it is rendered with.

    Exactly what ``apply_chat_template(messages, add_generation_prompt=True, tokenize=False)`` of a
    transformers tokenizer hands to transformers' Jinja renderer, so a prompt renders the same without
    building that tokenizer (seconds for a large vocabulary); the disk cache keeps it.
    """

    template: str | None
    special_tokens: dict[str, str]  # the tokenizer's ``special_tokens_map`` (``bos_token`` ...)

    def render(self, messages: list[Message]) -> str:
        return self.render_many([messages])[0]

    def render_many(self, conversations: list[list[Message]]) -> list[str]:
        """Each conversation rendered with the generation prompt (one renderer call for all)."""
        from transformers.utils.chat_template_utils import render_jinja_template

        # (rendered conversations, generation indices); annotated ``-> str`` upstream
        result: Any = render_jinja_template(
            conversations=[list(messages) for messages in conversations],
            tools=None,
            documents=None,
            chat_template=self.template,
            return_assistant_tokens_mask=False,
            continue_final_message=False,
            add_generation_prompt=True,
            **self.special_tokens,
        )
        return list(result[0])

    @classmethod
    def of(cls, hf: Any) -> ChatTemplate | None:
        """The template of a transformers tokenizer, or None when only that tokenizer renders it right
        (a class with its own ``apply_chat_template``, several named templates)."""
        from transformers.tokenization_utils_base import PreTrainedTokenizerBase as Base

        kind = type(hf)
        if getattr(kind, "apply_chat_template", None) is not Base.apply_chat_template:
            return None
        if getattr(kind, "get_chat_template", None) is not Base.get_chat_template:
            return None
        template, tokens = getattr(hf, "chat_template", None), getattr(hf, "special_tokens_map", None)
        if not (template is None or isinstance(template, str)) or not isinstance(tokens, dict):
            return None
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in tokens.items()):
            return None
        return cls(template, dict(tokens))


@dataclass
class TokenizerInfo:
    """Everything the mapping needs to know about one tokenizer, computed once.

    ``prompt_encoder``, ``backend_json``, ``continuation`` and ``hf`` are built on first use, from the
    disk cache (:mod:`framework.mapping.cache`) when it has them. The transformers tokenizer is not
    needed once the cache holds the backend, the stop tokens and the chat template (``chat``), so a warm
    start does not build it; the continuation encoder serves the teacher side only.
    """

    path: str
    table: TokenByteTable
    eos_id: int | None
    end_of_turn_id: int | None  # what the chat template writes after an assistant turn
    stop_ids: frozenset[int]  # eos ∪ end-of-turn ∪ generation_config.json eos_token_id
    stops: StopTokens  # where the three above come from (framework.data.chat.stop_tokens)
    fingerprint: str
    chat: ChatTemplate | None = None  # None: prompts are rendered by ``hf.apply_chat_template``
    warnings: list[str] = field(default_factory=list)
    cache_key: str | None = None  # this tokenizer's disk cache entry (None: not cached)
    _hf: Any = field(default=None, repr=False)
    _prompt_encoder: Tokenizer | None = field(default=None, repr=False)
    _backend_text: str | None = field(default=None, repr=False)  # the cached backend, until parsed
    _encode_special_tokens: bool = field(default=False, repr=False)  # the cached backend's flag
    _backend_json: dict | None = field(default=None, repr=False)
    _continuation: Tokenizer | None = field(default=None, repr=False)
    _prompt_cache: OrderedDict = field(default_factory=OrderedDict, repr=False)

    @property
    def hf(self) -> Any:
        """The transformers tokenizer of the folder (loaded on first use)."""
        if self._hf is None:
            from transformers import AutoTokenizer

            self._hf = AutoTokenizer.from_pretrained(self.path)
        return self._hf

    @property
    def prompt_encoder(self) -> Tokenizer:
        """The backend tokenizer as transformers built it (rendered prompts contain special tokens).

        From the disk cache it is parsed on first use (about 1 s for Llama-3's vocabulary): the student
        of a cross-tokenizer pair never encodes text, the teacher's continuation encoder shares its model.
        """
        if self._prompt_encoder is None:
            encoder = None
            if self._backend_text is not None:
                try:
                    encoder = Tokenizer.from_str(self._backend_text)
                    encoder.encode_special_tokens = self._encode_special_tokens  # not in the JSON
                except Exception as err:  # not expected (the entry passed its checks): ask transformers
                    log.warning(
                        "cached backend of %s does not load (%s: %s)", self.path, type(err).__name__, err
                    )
            self._prompt_encoder = encoder if encoder is not None else self.hf.backend_tokenizer
            self._backend_text = None
        return self._prompt_encoder

    @property
    def backend_json(self) -> dict:
        """The backend tokenizer's JSON (``tokenizer.json`` as transformers built it)."""
        if self._backend_json is None:
            text = self._backend_text if self._backend_text is not None else self.prompt_encoder.to_str()
            self._backend_json = json.loads(text)
        return self._backend_json

    @property
    def continuation(self) -> Tokenizer:
        """See :func:`continuation_encoder` (built with :func:`continuation_from_parts`)."""
        if self._continuation is None:
            from framework.mapping import cache

            cached = cache.load_continuation(self.cache_key) if self.cache_key else None
            if cached is not None:
                try:
                    self._continuation = continuation_from_parts(self.prompt_encoder, cached)
                except Exception:  # a damaged entry is rebuilt below
                    self._continuation = None
            if self._continuation is None:
                parts = continuation_parts_json(self.backend_json)
                shared = continuation_from_parts(self.prompt_encoder, parts)
                # Once per tokenizer (then cached): the shared-model build must serialize exactly like
                # the full parse; a tokenizer where it does not keeps the full parse, uncached.
                full = continuation_encoder(self.backend_json)
                if shared.to_str() == full.to_str():
                    self._continuation = shared
                    if self.cache_key:
                        cache.save_continuation(self.cache_key, parts)
                else:
                    log.warning(
                        "%s: continuation encoder built from its full spec (slower starts)", self.path
                    )
                    self._continuation = full
        return self._continuation

    @property
    def chat_template(self) -> str | None:
        if self.chat is not None:
            return self.chat.template
        return getattr(self.hf, "chat_template", None)

    @property
    def stop_token_to_append(self) -> int | None:
        """The token that closes an assistant turn (the teacher token scored in place of the
        student's stop token; the student token appended when a response stopped)."""
        return self.stops.end_of_response

    def render_prompt_ids(self, messages: list[Message]) -> np.ndarray:
        """int32[L] ids of the conversation rendered with this tokenizer's chat template + generation prompt."""
        return self.render_prompts_ids([messages])[0]

    def render_prompts_ids(
        self, conversations: Sequence[list[Message]], cache_size: int = 8192
    ) -> list[np.ndarray]:
        """:meth:`render_prompt_ids` of many conversations; the ones not cached are rendered and
        tokenized in one batch. Cached per conversation (the same prompt is sampled several times
        per step); the arrays are read-only because every sample of a conversation shares one."""
        keys = [tuple((m["role"], m["content"]) for m in messages) for messages in conversations]
        todo: dict[tuple, list[Message]] = {}
        for key, messages in zip(keys, conversations):
            if key in self._prompt_cache:
                self._prompt_cache.move_to_end(key)
            else:
                todo.setdefault(key, list(messages))
        if todo:
            if not self.chat_template:
                raise MissingChatTemplateError(
                    f"tokenizer at {self.path} has no chat template; add one (tokenizer_config.json "
                    "'chat_template' or chat_template.jinja) so conversations can be rendered for it."
                )
            new = list(todo.values())
            if self.chat is not None:
                texts = self.chat.render_many(new)
            else:
                texts = [
                    self.hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
                    for messages in new
                ]
            encodings = self.prompt_encoder.encode_batch_fast(texts, add_special_tokens=False)
            for key, encoding in zip(todo, encodings):
                ids = np.asarray(encoding.ids, dtype=np.int32)
                ids.flags.writeable = False
                self._prompt_cache[key] = ids
        out = [self._prompt_cache[key] for key in keys]
        while len(self._prompt_cache) > cache_size:
            self._prompt_cache.popitem(last=False)
        return out

    def encode_continuations(self, texts: list[str]) -> list[np.ndarray]:
        """Tokenize response texts as continuations (no dummy prefix, no special tokens)."""
        encodings = self.continuation.encode_batch_fast(texts, add_special_tokens=False)
        return [np.asarray(e.ids, dtype=np.int32) for e in encodings]


def _from_transformers(path: str) -> tuple[Any, Tokenizer, StopTokens, ChatTemplate | None]:
    """(transformers tokenizer, its backend, stop tokens, chat template) of a tokenizer folder."""
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(path)
    backend = getattr(hf, "backend_tokenizer", None)
    if backend is None:
        raise UnsupportedTokenizerError(
            f"tokenizer at {path} is a slow (Python) tokenizer; a fast tokenizer (tokenizer.json) is required. "
            "Convert it once with transformers and save it with save_pretrained."
        )
    return hf, backend, stop_tokens(hf, path), ChatTemplate.of(hf)


def _from_cache(key: str, path: str) -> tuple[str, bool, StopTokens, ChatTemplate | None] | None:
    """(backend JSON text, its ``encode_special_tokens`` flag, stop tokens, chat template) from the disk
    cache: what :func:`_from_transformers` gives, without building the transformers tokenizer."""
    from framework.mapping import cache as disk

    entry = disk.load_tokenizer(key)
    if entry is None:
        return None
    backend_text, facts = entry
    stops = StopTokens(facts["eos_id"], facts["end_of_turn_id"], generation_eos_ids(path))
    chat = facts["chat"]
    template = None if chat is None else ChatTemplate(chat["template"], dict(chat["special_tokens"]))
    return backend_text, facts["encode_special_tokens"], stops, template


def load_tokenizer_info(path: str, cache: bool = True) -> TokenizerInfo:
    """Load a tokenizer directory (anything ``AutoTokenizer.from_pretrained`` accepts locally).

    With ``cache`` (and the cache not turned off, see :mod:`framework.mapping.cache`), the backend
    tokenizer, the stop tokens, the chat template, the byte table and the fingerprint of a tokenizer
    folder come from the disk cache when it has them (then no transformers tokenizer is built), and go
    there when it does not.
    """
    from framework.mapping import cache as disk

    path = str(path)
    key = disk.tokenizer_key(path) if cache and disk.cache_dir() is not None else None
    warm = _from_cache(key, path) if key else None
    tables = disk.load_tables(key) if key else None
    if warm is not None and tables is not None:
        vocab = tables[0].vocab_size
        if any(i is not None and not 0 <= i < vocab for i in (warm[2].eos_id, warm[2].end_of_turn_id)):
            log.warning("ignoring inconsistent mapping cache entry %s: stop ids outside the vocabulary", key)
            warm = None
    hf: Any = None
    backend: Tokenizer | None = None
    if warm is not None:
        backend_text, encode_special, stops, chat = warm
    else:
        hf, backend, stops, chat = _from_transformers(path)
        backend_text, encode_special = backend.to_str(), bool(backend.encode_special_tokens)
        if key:
            chat_facts = (
                None if chat is None else {"template": chat.template, "special_tokens": chat.special_tokens}
            )
            facts = {
                "eos_id": stops.eos_id,
                "end_of_turn_id": stops.end_of_turn_id,
                "encode_special_tokens": encode_special,
                "chat": chat_facts,
            }
            disk.save_tokenizer(key, backend_text, facts)
    backend_json: dict | None = None
    if tables is not None:
        table, fingerprint = tables
    else:
        backend_json = json.loads(backend_text)
        table = build_byte_table(backend_json)
        fingerprint = tokenizer_fingerprint(backend_json)
        if key:
            disk.save_tables(key, table, fingerprint)
    info = TokenizerInfo(
        path=path,
        table=table,
        eos_id=stops.eos_id,
        end_of_turn_id=stops.end_of_turn_id,
        stop_ids=stops.ids,
        stops=stops,
        fingerprint=fingerprint,
        chat=chat,
        cache_key=key,
        _hf=hf,
        _prompt_encoder=backend,
        _backend_text=backend_text if backend is None else None,
        _encode_special_tokens=encode_special,
        _backend_json=backend_json,
    )
    if table.undecodable:
        info.warnings.append(
            f"{len(table.undecodable)} vocabulary entries could not be read as bytes (masked if sampled)"
        )
    if not info.chat_template:
        info.warnings.append("no chat template: conversations cannot be rendered for this tokenizer")
    if not stops.ids:
        info.warnings.append("no stop token found (no eos_token, no end-of-turn in the chat template)")
    return info


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
