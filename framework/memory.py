"""Peak memory, sampled: of a process tree (an actor and the vLLM processes it spawned) or of the node.

A peak read only when stats are asked for would miss the top of a learner step, so a daemon thread
samples every ``interval_s`` and keeps the maximum. A tree's memory is the sum of its processes'
resident set sizes (RSS): pages shared between them (the torch libraries, a fork's copy-on-write
pages) count once per process, so the figure is an upper bound. The node figure is
``psutil.virtual_memory().used`` plus shared memory (Ray's object store lives in ``/dev/shm``), which
is what an out-of-memory kill is decided on.
"""

from __future__ import annotations

import os
import threading

import psutil

GIB = float(1 << 30)


def tree_bytes(pid: int | None = None) -> int:
    """Summed RSS of a process and all its descendants (0 for processes that vanished meanwhile)."""
    try:
        root = psutil.Process(pid or os.getpid())
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            continue  # exited between listing and reading
    return total


def node_bytes() -> int:
    """Memory in use on this node, shared memory (Ray's object store) included."""
    vm = psutil.virtual_memory()
    return int(vm.used + getattr(vm, "shared", 0))


class PeakMemory:
    """``PeakMemory(node=False)`` samples this process tree; ``node=True`` samples the whole node.

    ``snapshot()`` gives ``{"mem_gib": now, "peak_mem_gib": max since start}``.
    """

    def __init__(self, node: bool = False, interval_s: float = 0.5):
        self._read = node_bytes if node else tree_bytes
        self._interval_s = interval_s
        self.peak = self._read()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="peak-memory", daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.peak = max(self.peak, self._read())

    def snapshot(self) -> dict[str, float]:
        now = self._read()
        self.peak = max(self.peak, now)
        return {"mem_gib": now / GIB, "peak_mem_gib": self.peak / GIB}

    def close(self) -> None:
        self._stop.set()


__all__ = ["GIB", "PeakMemory", "node_bytes", "tree_bytes"]
