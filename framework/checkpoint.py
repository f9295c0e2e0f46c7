"""Checkpoint folders: atomic commit, latest-complete lookup, pruning, controller state as JSON.

Layout: ``OUTPUT/checkpoints/step_000040/{student/, learner/, controller.json, COMPLETE}``, and
``OUTPUT/best/{student/, best.json}``: the student of the best evaluation so far (:func:`save_best`). A
checkpoint is written under a ``.tmp-`` name and renamed only after every part (student weights,
learner state, controller state) is on disk, then marked ``COMPLETE``; a half-written folder is never
picked by :func:`latest_complete`. Nothing here unpickles anything.

Nothing of a previous run is erased: a fresh run into a folder that already holds one refuses to start
unless ``trainer.overwrite=true``, which moves the old files into ``previous-<timestamp>/``
(:func:`prepare_fresh_run`).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from framework.config import ConfigError
from framework.logging import say

COMPLETE = "COMPLETE"
# what a run writes into its folder; a fresh run with overwrite=true moves these aside
RUN_FILES = (
    "checkpoints", "best", ".tmp-best", ".old-best", "ledger.jsonl", "metrics.jsonl", "generations.jsonl",
    "resumed_from.json", "resolved_config.json", "curves.png", "train.log", "logs", "wandb",
)  # fmt: skip


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


def _complete(root: Path) -> list[Path]:
    """The ``step_N`` folders under ``root`` that carry the COMPLETE marker, oldest first."""
    if not root.is_dir():
        return []
    done = [
        p
        for p in root.iterdir()
        if p.name.startswith("step_") and p.name[5:].isdigit() and (p / COMPLETE).exists()
    ]
    return sorted(done, key=lambda p: int(p.name[5:]))


def latest_complete(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint whose ``controller.json`` reads back, if any.

    A folder marked COMPLETE whose controller state is missing or unreadable (a disk that filled up, a
    file damaged later) is skipped with a warning, and the one before it is used.
    """
    for ckpt in reversed(_complete(checkpoints_root(output_dir))):
        try:
            state = load_controller_state(ckpt)
            if not isinstance(state, dict) or "step" not in state:
                raise ValueError("no step recorded")
        except FileNotFoundError:
            say(f"[tokenbridge] warning: skipping checkpoint {ckpt}: controller.json is missing")
        except (OSError, ValueError) as e:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
            say(f"[tokenbridge] warning: skipping checkpoint {ckpt}: controller.json is unreadable ({e})")
        else:
            return ckpt
    return None


def load_controller_state(checkpoint: Path) -> dict[str, Any]:
    return json.loads((checkpoint / "controller.json").read_text())


def prune(output_dir: str | Path, keep: int) -> None:
    """Delete all but the ``keep`` newest complete checkpoints, and any stale temporary folders."""
    done = _complete(checkpoints_root(output_dir))
    for old in done[: max(0, len(done) - keep)]:
        shutil.rmtree(old, ignore_errors=True)
    _remove_tmp_steps(output_dir)


def _remove_tmp_steps(output_dir: str | Path) -> None:
    root = checkpoints_root(output_dir)
    if root.is_dir():
        for tmp in root.glob(".tmp-step_*"):
            shutil.rmtree(tmp, ignore_errors=True)


def remove_stale(output_dir: str | Path) -> None:
    """Remove what an interrupted write left behind: ``checkpoints/.tmp-step_*`` and ``.tmp-best``.

    ``.old-best`` is the previous best while a new one is being swapped in: if ``best/`` is missing
    the swap was cut short, so it is put back; otherwise it is an outdated copy and goes.
    """
    root = Path(output_dir)
    _remove_tmp_steps(root)
    shutil.rmtree(root / ".tmp-best", ignore_errors=True)
    old, best = root / ".old-best", root / "best"
    if old.is_dir() and not best.exists():
        os.replace(old, best)
    shutil.rmtree(old, ignore_errors=True)


def previous_run_files(output_dir: str | Path) -> list[str]:
    """What in ``output_dir`` shows that a run already trained there: checkpoints, a kept best
    student, or a ledger / metrics log with lines. Empty for a missing or fresh folder."""
    root = Path(output_dir)
    found = []
    ckpts = checkpoints_root(root)
    if ckpts.is_dir() and any(ckpts.iterdir()):
        found.append("checkpoints/")
    if (root / "best").is_dir():
        found.append("best/")
    for name in ("ledger.jsonl", "metrics.jsonl"):
        if (root / name).is_file() and (root / name).stat().st_size > 0:
            found.append(name)
    return found


def prepare_fresh_run(output_dir: str | Path, overwrite: bool) -> Path | None:
    """Make ``output_dir`` ready for a run from step 0 without erasing anything of an earlier run.

    A folder with no earlier run in it (see :func:`previous_run_files`) is left as it is. Otherwise,
    without ``overwrite`` it raises :class:`ConfigError` and touches nothing; with ``overwrite`` the
    earlier run's files are moved, intact, into ``output_dir/previous-<timestamp>/``, which is returned.
    """
    root = Path(output_dir)
    found = previous_run_files(root)
    if not found:
        return None
    if not overwrite:
        raise ConfigError(
            "trainer.output_dir",
            f"{root} already holds a previous run ({', '.join(found)}) and trainer.resume=none would "
            "start over in it",
            "trainer.resume=auto to continue it, trainer.overwrite=true to start over (the old files are "
            f"moved to {root}/previous-<timestamp>/, not deleted), or another trainer.output_dir",
        )
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside, n = root / f"previous-{stamp}", 1
    while aside.exists():
        n += 1
        aside = root / f"previous-{stamp}-{n}"
    aside.mkdir()
    for name in RUN_FILES:
        if (root / name).exists() or (root / name).is_symlink():
            os.replace(root / name, aside / name)
    _fsync_dir(root)
    say(f"[tokenbridge] trainer.overwrite=true: the previous run's files were moved to {aside}")
    return aside


def note_resume(output_dir: Path, ckpt: Path, step: int) -> None:
    """Say where this process picked up, in the run's log and in ``OUTPUT/resumed_from.json``."""
    write_json(output_dir / "resumed_from.json", {"checkpoint": str(ckpt), "step": step})
    say(f"[tokenbridge] resumed from {ckpt} (step {step})")


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
