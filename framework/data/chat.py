"""Render a conversation into STUDENT prompt ids with the student's own chat template, and find
where a response ends (:func:`stop_tokens`, the one place every stop decision is read from)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from framework.data.prompts import DataError
from framework.types import Message


class PromptTooLong(DataError):
    """A rendered prompt exceeds ``data.max_prompt_tokens``; the sample is skipped and counted."""


def render_prompt_ids(tokenizer, messages: list[Message], max_prompt_tokens: int) -> np.ndarray:
    """``apply_chat_template(..., add_generation_prompt=True)`` as int32 ids, length-checked."""
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', '?')} has no chat template. "
            "Fix: add a `chat_template` to its tokenizer_config.json (or use a chat/instruct model)"
        )
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "keys"):  # transformers 5 may return a BatchEncoding
        ids = ids["input_ids"]
    arr = np.asarray(ids, dtype=np.int32).reshape(-1)
    if arr.size > max_prompt_tokens:
        raise PromptTooLong(f"prompt has {arr.size} tokens > data.max_prompt_tokens={max_prompt_tokens}")
    return arr


# Assistant text no chat template rewrites; whatever the template writes right after it closes the turn.
_TURN_PROBE = "tokenbridge probe 7f3a"


@dataclass(frozen=True)
class StopTokens:
    """Where a response of one model ends.

    ``ids`` is the stop set: vLLM stops sampling on it, the mapper reads a response's last token
    against it, and the teacher's copy decides which token scores the student's stop. ``end_of_response``
    is the one token written to close an assistant turn (appended to SFT targets and bridged stops).
    """

    eos_id: int | None  # the tokenizer's eos_token
    end_of_turn_id: int | None  # the special token the chat template writes right after assistant content
    generation_eos_ids: tuple[int, ...] = ()  # generation_config.json ``eos_token_id``

    @property
    def ids(self) -> frozenset[int]:
        """EOS ∪ end-of-turn ∪ generation_config eos ids."""
        found = {i for i in (self.eos_id, self.end_of_turn_id) if i is not None}
        return frozenset(found | set(self.generation_eos_ids))

    @property
    def end_of_response(self) -> int | None:
        """The token that ends an assistant turn: end-of-turn, else EOS, else generation_config's first."""
        if self.end_of_turn_id is not None:
            return self.end_of_turn_id
        if self.eos_id is not None:
            return self.eos_id
        return self.generation_eos_ids[0] if self.generation_eos_ids else None


def _special_ids(tokenizer: Any) -> set[int]:
    """Ids of the tokenizer's special (control) tokens: named ones and added tokens marked special."""
    ids = {int(i) for i in (getattr(tokenizer, "all_special_ids", None) or [])}
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    ids.update(int(i) for i, token in added.items() if getattr(token, "special", False))
    return ids


def end_of_turn_id(tokenizer: Any) -> int | None:
    """The special token the chat template writes right after an assistant message's content.

    Renders a short conversation ending in an assistant message and returns the first special token
    of what follows the message text; ``None`` without a chat template or when the template writes
    no special token there. No per-family token names are involved.
    """
    if not getattr(tokenizer, "chat_template", None):
        return None
    conversations = (
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _TURN_PROBE}],
        [{"role": "assistant", "content": _TURN_PROBE}],  # for templates that only take this shape
    )
    text = None
    for conversation in conversations:
        try:
            text = tokenizer.apply_chat_template(conversation, add_generation_prompt=False, tokenize=False)
        except Exception:  # a template may reject a toy conversation (e.g. strict role order)
            continue
        if isinstance(text, str) and _TURN_PROBE in text:
            break
        text = None
    if text is None:
        return None
    suffix = text[text.rfind(_TURN_PROBE) + len(_TURN_PROBE) :]
    special = _special_ids(tokenizer)
    suffix_ids = tokenizer.encode(suffix, add_special_tokens=False) if suffix else []
    return next((int(i) for i in suffix_ids if int(i) in special), None)


def generation_eos_ids(model_dir: str | Path | None) -> tuple[int, ...]:
    """``eos_token_id`` of ``model_dir/generation_config.json`` (an int or a list), or ``()``."""
    if model_dir is None:
        return ()
    file = Path(model_dir) / "generation_config.json"
    if not file.is_file():
        return ()
    eos = json.loads(file.read_text(encoding="utf-8")).get("eos_token_id")
    if eos is None:
        return ()
    return tuple(int(e) for e in (eos if isinstance(eos, list) else [eos]))


def stop_tokens(tokenizer: Any, model_dir: str | Path | None = None) -> StopTokens:
    """The stop tokens of one model: EOS, the chat template's end of turn and generation_config's eos.

    The single source of stop decisions: the rollout engine's sampling, the token mapper (student
    response splitting, teacher stop bridging), the preference pairs and the SFT targets all read it.
    """
    eos = getattr(tokenizer, "eos_token_id", None)
    return StopTokens(
        eos_id=None if eos is None else int(eos),
        end_of_turn_id=end_of_turn_id(tokenizer),
        generation_eos_ids=generation_eos_ids(model_dir),
    )


def stop_token_ids(tokenizer: Any, model_dir: str | Path | None = None) -> list[int]:
    """The sorted stop set of :func:`stop_tokens` (what sampling stops on); an empty set is an error."""
    ids = stop_tokens(tokenizer, model_dir).ids
    if not ids:
        raise DataError(
            f"no stop token found for {model_dir or getattr(tokenizer, 'name_or_path', '?')}. "
            "Fix: set eos_token in tokenizer_config.json or eos_token_id in generation_config.json"
        )
    return sorted(ids)
