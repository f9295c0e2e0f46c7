"""Prompt datasets: the built-in zoo task or local JSONL / Parquet files, validated record by record.

A record is either ``{"id": str?, "messages": [{"role", "content"}, ...], "answer": str?}`` or the
short form ``{"id": str?, "prompt": str, "answer": str?}``. A bad record either fails the start-up
with a message that names the file, the line and the fix, or, when ``max_bad_lines > 0``, is skipped
and counted (never trained on).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from framework.types import Prompt

ROLES = ("system", "user", "assistant")
ZOO_TASK = "zoo:arith"


class DataError(ValueError):
    """A dataset problem; the message names the input and the fix."""


@dataclass
class LoadReport:
    source: str
    loaded: int = 0
    skipped: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


def _check_record(record: Any) -> Prompt:
    """Turn one decoded record into a Prompt, or raise DataError(reason)."""
    if not isinstance(record, dict):
        raise DataError(f"a record must be a JSON object, got {type(record).__name__}")
    if "messages" in record:
        messages = record["messages"]
    elif "prompt" in record:
        if not isinstance(record["prompt"], str) or not record["prompt"].strip():
            raise DataError("field 'prompt' must be a non-empty string")
        messages = [{"role": "user", "content": record["prompt"]}]
    else:
        raise DataError("missing field: give 'messages' (a list of {role, content}) or 'prompt' (a string)")
    if not isinstance(messages, list) or not messages:
        raise DataError("'messages' must be a non-empty list of {role, content} objects")
    clean = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise DataError(f"messages[{i}] must be an object with 'role' and 'content'")
        if m["role"] not in ROLES:
            raise DataError(f"messages[{i}].role {m['role']!r} is unknown; use one of {list(ROLES)}")
        if not isinstance(m["content"], str):
            raise DataError(f"messages[{i}].content must be a string, got {type(m['content']).__name__}")
        clean.append({"role": m["role"], "content": m["content"]})
    if clean[-1]["role"] == "assistant":
        raise DataError("the conversation ends with an assistant turn; the last message must be the user's")
    if not any(m["role"] == "user" and m["content"].strip() for m in clean):
        raise DataError("the conversation has no non-empty user message")
    answer = record.get("answer")
    if answer is not None and not isinstance(answer, str | int | float):
        raise DataError("field 'answer' must be a string or a number")
    pid = record.get("id")
    if pid is not None and not isinstance(pid, str | int):
        raise DataError("field 'id' must be a string or an integer")
    return Prompt(
        prompt_id=str(pid) if pid is not None else "",
        messages=clean,
        answer=None if answer is None else str(answer),
    )


def _records_jsonl(path: Path):
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield lineno, DataError(f"invalid UTF-8 at byte {e.start}")
                continue
            try:
                yield lineno, json.loads(text)
            except json.JSONDecodeError as e:
                yield lineno, DataError(f"malformed JSON ({e.msg} at column {e.colno})")


def _records_parquet(path: Path):
    import pyarrow.parquet as pq

    yield from enumerate(pq.read_table(path).to_pylist(), start=1)


def load_prompt_file(path: str | Path, *, max_bad_lines: int = 0) -> tuple[list[Prompt], LoadReport]:
    """Load and validate a JSONL or Parquet prompt file."""
    path = Path(path)
    if not path.exists():
        raise DataError(
            f"{path}: no such file. Fix: point data.train / data.eval at an existing JSONL or Parquet file"
        )
    reader = _records_parquet if path.suffix == ".parquet" else _records_jsonl
    report = LoadReport(source=str(path))
    prompts: list[Prompt] = []
    seen: set[str] = set()
    for lineno, record in reader(path):
        try:
            if isinstance(record, DataError):
                raise record
            prompt = _check_record(record)
            if not prompt.prompt_id:
                prompt.prompt_id = f"{path.stem}:{lineno}"
            if prompt.prompt_id in seen:
                raise DataError(f"duplicate id {prompt.prompt_id!r}")
            seen.add(prompt.prompt_id)
            prompts.append(prompt)
        except DataError as e:
            report.skipped += 1
            reason = str(e).split(" (")[0].split(":")[0]
            report.reasons[reason] = report.reasons.get(reason, 0) + 1
            if report.skipped > max_bad_lines:
                raise DataError(
                    f"{path}:{lineno}: {e}. Fix: correct or remove the record, or raise data.max_bad_lines "
                    f"(now {max_bad_lines}) to skip and count bad records"
                ) from None
    report.loaded = len(prompts)
    if not prompts:
        raise DataError(
            f"{path}: no usable records. Fix: give at least one record with 'messages' or 'prompt'"
        )
    return prompts, report


def load_prompts(
    source: str, *, n: int, seed: int, split: str, max_bad_lines: int = 0
) -> tuple[list[Prompt], LoadReport]:
    """Prompts for ``split`` ("train" / "eval") from the zoo task or a file (at most ``n`` of them)."""
    if source == ZOO_TASK:
        from framework.zoo.task import make_problems

        prompts = make_problems(n, seed=seed, split={"eval": "test"}.get(split, split))
        return prompts, LoadReport(source=source, loaded=len(prompts))
    if source.startswith("zoo:"):
        raise DataError(f"unknown built-in dataset {source!r}. Fix: use {ZOO_TASK!r} or a file path")
    prompts, report = load_prompt_file(source, max_bad_lines=max_bad_lines)
    return prompts[:n], report


class PromptCursor:
    """An endless, reshuffled-per-epoch walk over prompts whose position survives a restart.

    State is ``(epoch, index)``: the order of epoch e is a permutation seeded by ``seed + e``, so a
    resumed run continues with exactly the prompts an uninterrupted run would have seen.
    """

    def __init__(self, prompts: list[Prompt], seed: int, epoch: int = 0, index: int = 0):
        if not prompts:
            raise DataError("no prompts to train on")
        self.prompts = prompts
        self.seed = seed
        self.epoch = epoch
        self.index = index
        self._order = self._permutation(epoch)

    def _permutation(self, epoch: int) -> list[int]:
        order = list(range(len(self.prompts)))
        random.Random(self.seed + epoch).shuffle(order)
        return order

    def take(self, k: int) -> list[Prompt]:
        out = []
        for _ in range(k):
            if self.index >= len(self._order):
                self.epoch += 1
                self.index = 0
                self._order = self._permutation(self.epoch)
            out.append(self.prompts[self._order[self.index]])
            self.index += 1
        return out

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}

    @classmethod
    def from_state(cls, prompts: list[Prompt], seed: int, state: dict[str, int]) -> PromptCursor:
        return cls(prompts, seed, epoch=int(state["epoch"]), index=int(state["index"]))
