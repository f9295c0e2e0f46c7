"""Preference pairs: the zoo's arithmetic pairs, or a local JSONL file.

A JSONL record is a prompt record of `framework.data.prompts` (``messages`` or ``prompt``, optional
``id``) plus two non-empty strings ``chosen`` and ``rejected``::

    {"id": "q1", "prompt": "Compute 3 + 4.", "chosen": "3 + 4 = 7. Answer: 7", "rejected": "... Answer: 8"}
"""

from __future__ import annotations

import json
from pathlib import Path

from framework.data.prompts import DataError, _check_record
from framework.types import PreferencePair

ZOO_PAIRS = "zoo:arith"


def read_preference_jsonl(path: str | Path) -> list[PreferencePair]:
    """All pairs of a JSONL file; the first bad record raises `DataError` naming the line and the fix."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file. Fix: point the preference data at an existing JSONL file")
    pairs: list[PreferencePair] = []
    seen: set[str] = set()
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                prompt = _check_record(record)
                for key in ("chosen", "rejected"):
                    if not isinstance(record.get(key), str) or not record[key]:
                        raise DataError(f"field {key!r} must be a non-empty string")
                pair_id = prompt.prompt_id or f"{path.stem}:{lineno}"
                if pair_id in seen:
                    raise DataError(f"duplicate id {pair_id!r}")
            except (DataError, json.JSONDecodeError) as e:
                raise DataError(
                    f"{path}:{lineno}: {e}. Fix: give each line 'messages' (or 'prompt'), 'chosen' and "
                    "'rejected', and a unique 'id' if any"
                ) from None
            seen.add(pair_id)
            pairs.append(PreferencePair(pair_id, prompt.messages, record["chosen"], record["rejected"]))
    if not pairs:
        raise DataError(f"{path}: no preference pairs. Fix: add at least one record")
    return pairs


def load_preference_pairs(
    train_source: str, eval_source: str, *, num_train: int, num_eval: int, seed: int
) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """(training pairs, held-out pairs) with no pair id in both.

    ``zoo:arith``: `framework.data.arith.make_preferences` (held-out pairs come from another seed, minus any
    problem that is also a training pair). A file: its first ``num_train`` pairs; a held-out file that is
    the same file gives the ``num_eval`` pairs after those.
    """
    if train_source == ZOO_PAIRS:
        from framework.data.arith import make_preferences

        train = make_preferences(num_train, seed)
    else:
        train = read_preference_jsonl(train_source)[:num_train]
    used = {p.pair_id for p in train}
    if eval_source == ZOO_PAIRS:
        from framework.data.arith import make_preferences

        candidates = make_preferences(num_eval + len(train), seed + 7919)
    elif eval_source == train_source:
        candidates = read_preference_jsonl(eval_source)[len(train) :]
    else:
        candidates = read_preference_jsonl(eval_source)
    held_out = [p for p in candidates if p.pair_id not in used][:num_eval]
    if not train or not held_out:
        raise DataError(
            f"need training and held-out pairs, got {len(train)} from {train_source!r} and {len(held_out)} "
            f"from {eval_source!r}. Fix: give more pairs or a separate held-out file"
        )
    return train, held_out


__all__ = ["ZOO_PAIRS", "load_preference_pairs", "read_preference_jsonl"]
