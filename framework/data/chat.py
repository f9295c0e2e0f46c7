"""Render a conversation into STUDENT prompt ids with the student's own chat template."""

from __future__ import annotations

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


def stop_token_ids(tokenizer, model_dir: str | None = None) -> list[int]:
    """EOS ∪ end-of-turn ∪ generation_config eos ids: where sampling must stop."""
    import json
    from pathlib import Path

    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    if model_dir is not None:
        gen = Path(model_dir) / "generation_config.json"
        if gen.exists():
            eos = json.loads(gen.read_text()).get("eos_token_id")
            if isinstance(eos, int):
                ids.add(eos)
            elif isinstance(eos, list):
                ids.update(int(x) for x in eos)
    if not ids:
        raise DataError(
            f"no stop token found for {model_dir or tokenizer.name_or_path}. "
            "Fix: set eos_token in tokenizer_config.json or eos_token_id in generation_config.json"
        )
    return sorted(ids)
