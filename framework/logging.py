"""Run logging: Weights & Biases (offline by default), a console progress bar with ETA, a JSONL log.

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
from typing import Any

from framework.config import Config

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
                mode=cfg.logging.wandb_mode,
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
        self._t0 = time.time()

    def log(self, step: int, metrics: dict[str, float]) -> None:
        clean = {k: float(v) for k, v in metrics.items() if v is not None}
        self.jsonl.write(json.dumps({"step": step, "time": time.time() - self._t0, **clean}) + "\n")
        self.jsonl.flush()
        if self.wandb is not None:
            self.wandb.log(clean, step=step)

    def advance(self, summary: dict[str, float]) -> None:
        if self.bar is not None:
            self.bar.set_postfix({k: f"{v:.3g}" for k, v in summary.items()}, refresh=False)
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

            columns = list(rows[0].keys())
            table = wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in rows])
            self.wandb.log({"eval/generations": table}, step=step)

    def write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.jsonl.close()
        if self.wandb is not None:
            self.wandb.finish()


def _stable_run_id(output_dir: Path) -> str:
    """The same output folder resumes the same wandb run."""
    import hashlib

    return hashlib.sha1(str(output_dir.resolve()).encode()).hexdigest()[:12]
