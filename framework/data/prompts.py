"""Prompt datasets: the built-in zoo task or local JSONL / Parquet files, validated record by record.

A record is either ``{"id": str?, "messages": [{"role", "content"}, ...], "answer": str?}`` or the
short form ``{"id": str?, "prompt": str, "answer": str?}``; any other top-level string, integer or
boolean field (e.g. a domain tag for ``data.route_field``) is kept in ``Prompt.meta``. A bad record
either fails the start-up with a message that names the file, the line and the fix, or, when
``max_bad_lines > 0``, is skipped and counted (never trained on). An answer that is NaN or infinite (JSON ``NaN``, a float column's
missing value) or null in a Parquet answer column is a bad record: it is a missing value, not the
answer ``"nan"``.

A file's format is read from its first and last bytes, not from its name: Parquet starts and ends
with ``PAR1``; anything else is read as JSONL. A ``.parquet`` / ``.pq`` file that is not Parquet, a
truncated or corrupt Parquet file, and compressed or Arrow files are refused with one message naming
the file and the fix.
"""

from __future__ import annotations

import json
import math
import random
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from framework.types import Prompt

ROLES = ("system", "user", "assistant")
_RECORD_FIELDS = ("id", "messages", "prompt", "answer")
# the built-in task sources: zoo:arith, zoo:max, zoo:chain, zoo:arith+max (half of each); see data/arith.py
ZOO_SOURCES = ("zoo:arith", "zoo:max", "zoo:chain", "zoo:arith+max")
PARQUET_MAGIC = b"PAR1"
PARQUET_SUFFIXES = (".parquet", ".pq")
# leading bytes of formats that are neither JSONL nor Parquet (read as JSONL they are garbage lines)
_OTHER_FORMATS = (
    (b"\x1f\x8b", "a gzip-compressed file", "decompress it (gunzip)"),
    (b"\x28\xb5\x2f\xfd", "a zstd-compressed file", "decompress it (zstd -d)"),
    (b"BZh", "a bzip2-compressed file", "decompress it (bunzip2)"),
    (b"\xfd7zXZ\x00", "an xz-compressed file", "decompress it (unxz)"),
    (b"PK\x03\x04", "a zip archive", "extract the JSONL or Parquet file from it"),
    (b"ARROW1", "an Arrow IPC (Feather) file", "write it as Parquet or JSONL"),
)


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
    if isinstance(answer, float) and not math.isfinite(answer):
        raise DataError("field 'answer' is NaN or infinite (a missing value), not an answer")
    pid = record.get("id")
    if pid is not None and not isinstance(pid, str | int):
        raise DataError("field 'id' must be a string or an integer")
    # other top-level scalar fields (a domain tag, a source name) travel in meta: data.route_field reads them
    meta = {k: v for k, v in record.items() if k not in _RECORD_FIELDS and isinstance(v, str | int | bool)}
    return Prompt(
        prompt_id=str(pid) if pid is not None else "",
        messages=clean,
        answer=None if answer is None else str(answer),
        meta=meta,
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
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise DataError(
            f"{path}: not a readable Parquet file ({_one_line(e)}). Fix: write it again (e.g. "
            "pandas.DataFrame.to_parquet) or give the prompts as JSONL"
        ) from None
    # a column of nulls only carries no answers at all (not a missing one per record)
    answers = "answer" in table.column_names and not pa.types.is_null(table.schema.field("answer").type)
    for row, record in enumerate(table.to_pylist(), start=1):
        if answers and record.get("answer") is None:
            yield row, DataError("field 'answer' is null (a missing value) in the Parquet answer column")
        else:
            yield row, record


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= 300 else text[:297] + "..."


def _sniff(path: Path) -> str:
    """``"parquet"`` or ``"jsonl"`` from the file's bytes; DataError for what is neither."""
    try:
        with path.open("rb") as f:
            head = f.read(8)
            size = f.seek(0, 2)
            f.seek(max(0, size - 4))
            tail = f.read(4)
    except OSError as e:
        raise DataError(
            f"{path}: cannot be read ({e.strerror or _one_line(e)}). Fix: point data.train / data.eval at a "
            "readable JSONL or Parquet file"
        ) from None
    if head.startswith(PARQUET_MAGIC):
        if size < 12 or tail != PARQUET_MAGIC:
            raise DataError(
                f"{path}: a truncated or corrupt Parquet file (it starts with PAR1 but does not end with "
                "it). Fix: copy or write the file again"
            )
        return "parquet"
    for magic, what, fix in _OTHER_FORMATS:
        if head.startswith(magic):
            raise DataError(f"{path}: {what}, not JSONL or Parquet. Fix: {fix}")
    if path.suffix.lower() in PARQUET_SUFFIXES:
        raise DataError(
            f"{path}: named like a Parquet file but it is not one (no PAR1 signature). Fix: rename it "
            "to .jsonl if it holds JSON lines, or write it again as Parquet"
        )
    return "jsonl"


def load_prompt_file(path: str | Path, *, max_bad_lines: int = 0) -> tuple[list[Prompt], LoadReport]:
    """Load and validate a prompt file: Parquet or JSONL, told apart by content (see the module doc)."""
    path = Path(path)
    if not path.exists():
        raise DataError(
            f"{path}: no such file. Fix: point data.train / data.eval at an existing JSONL or Parquet file"
        )
    if path.is_dir():
        raise DataError(
            f"{path}: a folder, not a file. Fix: point data.train / data.eval at a JSONL or Parquet file"
        )
    reader = _records_parquet if _sniff(path) == "parquet" else _records_jsonl
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
    if source in ZOO_SOURCES:
        from framework.data.arith import make_problems

        task = source.removeprefix("zoo:")
        prompts = make_problems(n, seed=seed, split={"eval": "test"}.get(split, split), task=task)
        return prompts, LoadReport(source=source, loaded=len(prompts))
    if source.startswith("zoo:"):
        raise DataError(f"unknown built-in dataset {source!r}. Fix: use one of {ZOO_SOURCES} or a file path")
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


class PromptQueue:
    """What a run trains next: the prompts of batches that were in flight at the checkpoint a run
    resumed from (they are trained first, as they would have been), then the cursor's walk."""

    def __init__(self, prompts: list[Prompt], seed: int):
        self.prompts, self.seed = prompts, seed
        self.reset()

    def reset(self) -> None:
        """From the first prompt, nothing re-queued (a run restarted from its initial weights)."""
        self.cursor = PromptCursor(self.prompts, self.seed)
        self.requeued: deque[list[Prompt]] = deque()

    def next(self, k: int) -> list[Prompt]:
        return self.requeued.popleft() if self.requeued else self.cursor.take(k)

    def state(self, in_flight: list[list[Prompt]]) -> dict[str, Any]:
        """For a checkpoint: the cursor and the batches launched but not trained (redone on resume)."""
        return {
            "cursor": self.cursor.state(),
            "requeued_prompt_ids": [[p.prompt_id for p in b] for b in in_flight],
        }

    def load(self, state: dict[str, Any]) -> None:
        self.cursor = PromptCursor.from_state(self.prompts, self.seed, state["cursor"])
        by_id = {p.prompt_id: p for p in self.prompts}
        self.requeued = deque([by_id[i] for i in ids] for ids in state.get("requeued_prompt_ids", []))
