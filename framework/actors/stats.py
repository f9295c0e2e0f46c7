"""Busy-time bookkeeping shared by every actor (per-stage busy/idle time in the step breakdown)."""

from __future__ import annotations

import time
from collections import Counter


class BusyClock:
    """Accumulates the seconds an actor spends inside its work methods, plus event counters."""

    def __init__(self) -> None:
        self.busy_s = 0.0
        self.calls = 0
        self.items = 0
        self.counters: Counter[str] = Counter()
        self._start = 0.0

    def __enter__(self) -> BusyClock:
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.busy_s += time.perf_counter() - self._start
        self.calls += 1

    def snapshot(self) -> dict[str, float]:
        out = {"busy_s": self.busy_s, "calls": float(self.calls), "items": float(self.items)}
        out.update({k: float(v) for k, v in self.counters.items()})
        return out
