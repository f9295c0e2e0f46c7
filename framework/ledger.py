"""The ledger of trained sample ids: one JSON line per optimizer step.

It is how a run proves that nothing was lost or trained twice across faults and resumes: after a
resume from the checkpoint of step s, lines of steps > s are dropped (their updates were lost with
the process) and those steps are trained again from the same prompts.
"""

from __future__ import annotations

import json
from pathlib import Path


class Ledger:
    def __init__(self, path: Path):
        self.path = path

    def record(self, step: int, sample_ids: list[str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, "sample_ids": sorted(sample_ids)}) + "\n")
            f.flush()

    def entries(self) -> list[dict]:
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a crash mid-write
                break
        return out

    def truncate_after(self, step: int) -> None:
        """Keep only steps < ``step`` (0-based step index of the line = controller step before training)."""
        kept = [e for e in self.entries() if e["step"] < step]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(e) + "\n" for e in kept))
        tmp.replace(self.path)

    def sample_ids(self) -> list[str]:
        return [s for e in self.entries() for s in e["sample_ids"]]
