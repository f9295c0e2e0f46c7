"""Checkpoint folders: atomic commit, latest-complete lookup, pruning, controller state as JSON.

Layout: ``OUTPUT/checkpoints/step_000040/{student/, learner/, controller.json, COMPLETE}``, and
``OUTPUT/best/{student/, best.json}``: the student of the best evaluation so far (:func:`save_best`). A
checkpoint is written under a ``.tmp-`` name and renamed only after every part (student weights,
learner state, controller state) is on disk, then marked ``COMPLETE``; a half-written folder is never
picked by :func:`latest_complete`. Nothing here unpickles anything.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

COMPLETE = "COMPLETE"


def checkpoints_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def begin(output_dir: str | Path, step: int) -> Path:
    """A fresh temporary folder to write the checkpoint of ``step`` into."""
    tmp = checkpoints_root(output_dir) / f".tmp-step_{step:06d}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def commit(tmp: Path, controller_state: dict[str, Any]) -> Path:
    """Write the controller state, rename the folder into place, then mark it complete."""
    (tmp / "controller.json").write_text(json.dumps(controller_state, indent=1))
    final = tmp.parent / tmp.name.removeprefix(".tmp-")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    (final / COMPLETE).write_text(str(controller_state.get("step", "")))
    _fsync_dir(final.parent)
    return final


def latest_complete(output_dir: str | Path) -> Path | None:
    """The newest checkpoint folder that carries the COMPLETE marker, if any."""
    root = checkpoints_root(output_dir)
    if not root.is_dir():
        return None
    done = [p for p in root.iterdir() if p.name.startswith("step_") and (p / COMPLETE).exists()]
    return max(done, key=lambda p: int(p.name.split("_")[1])) if done else None


def load_controller_state(checkpoint: Path) -> dict[str, Any]:
    return json.loads((checkpoint / "controller.json").read_text())


def prune(output_dir: str | Path, keep: int) -> None:
    """Delete all but the ``keep`` newest complete checkpoints, and any stale temporary folders."""
    root = checkpoints_root(output_dir)
    if not root.is_dir():
        return
    done = sorted(
        (p for p in root.iterdir() if p.name.startswith("step_") and (p / COMPLETE).exists()),
        key=lambda p: int(p.name.split("_")[1]),
    )
    for old in done[: max(0, len(done) - keep)]:
        shutil.rmtree(old, ignore_errors=True)


def eval_score(metrics: dict[str, float]) -> tuple[str, float] | None:
    """What "best" is judged by: held-out accuracy where the task has a verifier, else the negated
    teacher reverse-KL (lower KL is better). None when the evaluation produced neither."""
    if "eval/accuracy" in metrics:
        return "eval/accuracy", float(metrics["eval/accuracy"])
    if "eval/teacher_kl" in metrics:
        return "-eval/teacher_kl", -float(metrics["eval/teacher_kl"])
    return None


def best_record(output_dir: str | Path) -> dict[str, Any] | None:
    """``OUTPUT/best/best.json`` (step, metric, value) of the best evaluation so far, if any."""
    path = Path(output_dir) / "best" / "best.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def save_best(output_dir: str | Path, record: dict[str, Any], write_student: Callable[[Path], None]) -> Path:
    """Replace ``OUTPUT/best`` with the student ``write_student`` writes and ``record`` as best.json.

    Written under a temporary name and swapped in with renames, so ``best/`` is always one whole
    (student, record) pair: an interrupted save leaves the previous best in place.
    """
    root = Path(output_dir)
    tmp, best, old = root / ".tmp-best", root / "best", root / ".old-best"
    for stale in (tmp, old):
        shutil.rmtree(stale, ignore_errors=True)
    tmp.mkdir(parents=True)
    write_student(tmp / "student")
    write_json(tmp / "best.json", record)
    if best.exists():
        os.replace(best, old)
    os.replace(tmp, best)
    shutil.rmtree(old, ignore_errors=True)
    return best


def write_json(path: Path, payload: Any) -> None:
    """Write a small JSON file atomically: a reader never sees half of it, and concurrent writers
    (one temporary name per process) never interleave."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
