"""Run logging: Weights & Biases (offline by default), a console progress bar with ETA, a JSONL log.

What the user reads is split in two. The console gets the progress bar, the start-up lines, one line
per evaluation and the final summary (:func:`say`); every such line also goes to ``train.log`` in the
run folder. The actors' own output (vLLM, DeepSpeed, transformers, Ray workers) goes to
``logs/actors.log`` in the run folder (:func:`route_actor_output`, a Ray worker set-up hook), not to
the console. At the end :func:`plot_run` draws held-out accuracy and teacher-KL against steps.

Secrets never reach a log: the config holds the *name* of the env var with an API key, never the key,
and :func:`redact` masks anything that looks like a credential before a config is saved or uploaded.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

from framework.config import Config

ACTOR_LOG_ENV = "TOKENBRIDGE_ACTOR_LOG"  # the file the actors' stdout/stderr are appended to
_run_log: Path | None = None  # train.log of the current run (set by open_run_log)
_bar: Any = None  # the live progress bar, so that say() prints above it


def open_run_log(output_dir: Path) -> Path:
    """Make ``output_dir/train.log`` the file every :func:`say` line is appended to."""
    global _run_log
    output_dir.mkdir(parents=True, exist_ok=True)
    _run_log = output_dir / "train.log"
    return _run_log


def say(text: str) -> None:
    """One line for the user: on the console (above the progress bar) and in ``train.log``."""
    if _bar is not None:
        _bar.write(text)
    else:
        print(text, flush=True)
    if _run_log is not None:
        with _run_log.open("a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")


def route_actor_output() -> None:
    """Ray ``worker_process_setup_hook``: send this worker's stdout/stderr (and those of the processes
    it starts, e.g. vLLM's engine core, which inherit the descriptors) to the run's actor log.

    One file opened in append mode by every worker: each write lands whole at the end, so lines of
    different actors interleave but are never torn. Without ``$TOKENBRIDGE_ACTOR_LOG`` it does nothing.
    """
    import sys

    target = os.environ.get(ACTOR_LOG_ENV)
    if not target:
        return
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def plot_run(output_dir: Path, rows: list[dict[str, float]] | None = None) -> Path | None:
    """``curves.png`` in the run folder: held-out accuracy and teacher-KL against training steps, from
    ``rows`` (default: read back from ``metrics.jsonl``); None when nothing was evaluated or matplotlib
    is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    if rows is None:
        rows = read_metrics(output_dir / "metrics.jsonl")
    series = {
        key: [(r["step"], r[key]) for r in rows if key in r] for key in ("eval/accuracy", "eval/teacher_kl")
    }
    series = {k: v for k, v in series.items() if v}
    if not series:
        return None
    fig, axes = plt.subplots(1, len(series), figsize=(5 * len(series), 3.5), squeeze=False)
    for ax, (key, points) in zip(axes[0], series.items()):
        steps, values = zip(*points)
        ax.plot(steps, values, marker="o")
        ax.set_xlabel("step")
        ax.set_title(key.removeprefix("eval/").replace("_", " ") + " (held out)")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = output_dir / "curves.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def read_metrics(path: Path) -> list[dict[str, float]]:
    """The rows of a ``metrics.jsonl``; for a step logged twice (a resume redid it) the last wins."""
    if not path.exists():
        return []
    by_step: dict[tuple[int, frozenset[str]], dict[str, float]] = {}
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a killed run: the rest still counts
            continue
        by_step[(int(row["step"]), frozenset(k for k in row if k != "time"))] = row
    return sorted(by_step.values(), key=lambda r: r["step"])


def truncate_metrics_after(path: Path, step: int) -> None:
    """Keep only the rows of ``metrics.jsonl`` with step <= ``step`` (a resume from the checkpoint of
    ``step`` redoes the later ones, which would otherwise appear twice). Lines that do not parse (cut
    short by a killed run) are dropped. Atomic: a temporary file replaces the log."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
            if int(row["step"]) <= step:
                kept.append(line + "\n")
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text("".join(kept))
    os.replace(tmp, path)


# the config's validated choices, typed as wandb.init wants them
_WANDB_MODES: dict[str, Literal["online", "offline"]] = {"online": "online", "offline": "offline"}
_SECRET_KEY = re.compile(r"(api[_-]?key|token|secret|password)$", re.IGNORECASE)


def redact(tree: Any) -> Any:
    """A copy of a nested dict/list with values of secret-looking keys replaced by '***'.

    Keys that name *where* a secret lives (``*_env``) are kept: they are not secrets.
    """
    if isinstance(tree, dict):
        return {
            k: ("***" if _SECRET_KEY.search(str(k)) and v is not None else redact(v)) for k, v in tree.items()
        }
    if isinstance(tree, list | tuple):
        return [redact(v) for v in tree]
    return tree


class RunLogger:
    """Fans metrics out to wandb, ``metrics.jsonl`` and a tqdm bar."""

    def __init__(self, cfg: Config, output_dir: Path, total_steps: int, start_step: int = 0):
        self.output_dir = output_dir
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = (output_dir / "metrics.jsonl").open("a")
        config_dict = redact(asdict(cfg))
        (output_dir / "resolved_config.json").write_text(json.dumps(config_dict, indent=2, default=str))
        self.wandb = None
        if cfg.logging.wandb_mode != "disabled":
            import wandb

            os.environ.setdefault("WANDB_SILENT", "true")
            self.wandb = wandb.init(
                project=cfg.logging.project,
                name=cfg.logging.run_name or output_dir.name,
                dir=str(output_dir),
                mode=_WANDB_MODES[cfg.logging.wandb_mode],
                config=config_dict,
                resume="allow",
                id=_stable_run_id(output_dir),
            )
        self.bar = None
        if cfg.logging.progress_bar:
            from tqdm import tqdm

            self.bar = tqdm(
                total=total_steps, initial=start_step, desc="distil", unit="step", dynamic_ncols=True
            )
        global _bar
        _bar = self.bar
        self._t0 = time.time()

    def log(self, step: int, metrics: dict[str, float]) -> None:
        clean = {k: float(v) for k, v in metrics.items() if v is not None}
        if not clean:
            return
        self.jsonl.write(json.dumps({"step": step, "time": time.time() - self._t0, **clean}) + "\n")
        self.jsonl.flush()
        if self.wandb is not None:
            self.wandb.log(clean, step=step)

    def advance(self, metrics: dict[str, float]) -> None:
        """One step done: the bar shows its loss and, online, the batch's teacher reverse-KL."""
        if self.bar is not None:
            shown = {
                name: metrics[key]
                for name, key in (("loss", "loss"), ("kl", "batch/reverse_kl"))
                if key in metrics
            }
            self.bar.set_postfix({k: f"{v:.3g}" for k, v in shown.items()}, refresh=False)
            self.bar.update(1)

    def log_generations(self, step: int, rows: list[dict[str, Any]]) -> None:
        """A table of sample generations (prompt, response, correct, teacher logprob per token)."""
        if not rows:
            return
        with (self.output_dir / "generations.jsonl").open("a") as f:
            for row in rows:
                f.write(json.dumps({"step": step, **row}) + "\n")
        if self.wandb is not None:
            import wandb

            names = list(rows[0].keys())
            columns: list[str | int] = [*names]
            table = wandb.Table(columns=columns, data=[[r.get(c) for c in names] for r in rows])
            self.wandb.log({"eval/generations": table}, step=step)

    def close(self) -> None:
        global _bar
        if self.bar is not None:
            self.bar.close()
            _bar = None
        self.jsonl.close()
        if self.wandb is not None:
            self.wandb.finish()


def _stable_run_id(output_dir: Path) -> str:
    """The same output folder resumes the same wandb run."""
    import hashlib

    return hashlib.sha1(str(output_dir.resolve()).encode()).hexdigest()[:12]
