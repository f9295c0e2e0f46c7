"""Busy-time bookkeeping shared by every actor (per-stage busy/idle time in the step breakdown)."""

from __future__ import annotations

import os
import time
from collections import Counter

import ray

from framework.memory import PeakMemory


class BusyClock:
    """Accumulates the seconds an actor spends inside its work methods, plus event counters, and samples
    the peak memory of the actor's process tree (its vLLM engine processes included)."""

    def __init__(self) -> None:
        self.memory = PeakMemory()
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
        # runs on the health thread while a work call may add counters: iterate over a copy
        out = {"busy_s": self.busy_s, "calls": float(self.calls), "items": float(self.items)}
        out.update({k: float(v) for k, v in self.counters.copy().items()})
        out.update(self.memory.snapshot())
        return out


class Health:
    """Liveness calls every worker actor answers. Each worker declares
    ``@ray.remote(concurrency_groups={"health": 1})``, so these run beside a busy work call:
    a worker that stops answering them is hung, not busy."""

    @ray.method(concurrency_group="health")
    def ping(self) -> bool:
        return True

    @ray.method(concurrency_group="health")
    def pid(self) -> int:
        return os.getpid()

    @ray.method(concurrency_group="health")
    def process_tree(self) -> tuple[str, list[int]]:
        """(node IP, pids of this actor and its children, e.g. vLLM's engine-core process)."""
        return process_tree()


def process_tree() -> tuple[str, list[int]]:
    """This process's node IP and the pids of it and all its descendants."""
    import psutil

    me = psutil.Process(os.getpid())
    return ray.util.get_node_ip_address(), [me.pid] + [c.pid for c in me.children(recursive=True)]


def kill_local_tree(node_ip: str, pids: list[int]) -> int:
    """SIGKILL recorded processes if they run on this node (orphans of a killed actor), and every
    process they have started since the record (vLLM may spawn workers after start-up); returns
    how many were killed."""
    import psutil

    if node_ip != ray.util.get_node_ip_address():
        return 0
    found: dict[int, psutil.Process] = {}
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            found[pid] = proc
            found.update({c.pid: c for c in proc.children(recursive=True)})
        except psutil.Error:
            continue  # already gone (or never ours): nothing left to kill
    killed = 0
    for proc in found.values():
        try:
            proc.kill()
            killed += 1
        except psutil.Error:
            continue
    return killed


class StageMeter:
    """Per-step figures from the actors' cumulative `BusyClock` snapshots (``Stages.stats()``):
    ``stage_s/<stage>`` seconds of work per actor during the step, ``busy/<stage>`` that over the step
    time, ``tokens_per_s/<stage>``, ``counts/<stage>/skipped_*``, ``memory/<stage>_peak_gib`` (the largest
    actor's process tree) and ``memory/node_peak_gib`` (the driver's node: what an OOM kill looks at)."""

    def __init__(self) -> None:
        self.previous: dict[str, float] = {}
        self.node_memory = PeakMemory(node=True)

    def step(self, stats: dict[str, list[dict[str, float]]], step_s: float) -> dict[str, float]:
        out, prev, step_s = {}, self.previous, max(step_s, 1e-9)
        for stage, actors in stats.items():
            busy = sum(s.get("busy_s", 0.0) for s in actors) / max(1, len(actors))
            items = sum(s.get("items", 0.0) for s in actors)  # tokens generated / scored / mapped / trained
            delta = max(0.0, busy - prev.get(stage, 0.0))
            out[f"stage_s/{stage}"] = delta
            out[f"busy/{stage}"] = min(1.0, delta / step_s)
            out[f"tokens_per_s/{stage}"] = (items - prev.get(f"{stage}#items", 0.0)) / step_s
            prev[stage], prev[f"{stage}#items"] = busy, items
            for key in {k for s in actors for k in s if k.startswith("skipped_")}:
                out[f"counts/{stage}/{key}"] = sum(s.get(key, 0.0) for s in actors)
            if actors:
                out[f"memory/{stage}_peak_gib"] = max(s.get("peak_mem_gib", 0.0) for s in actors)
        out["memory/node_peak_gib"] = self.node_memory.snapshot()["peak_mem_gib"]
        return out
