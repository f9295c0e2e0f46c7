"""Build several zoo models at once, in worker processes.

Why processes: a zoo model is tiny (~1M parameters, ~1,800 tokens a step), too small for one SFT step
to keep two threads busy. Measured on the 2-core build machine: 60 teacher steps take 16.6 s with two
threads and 27.4 s with one, so two one-thread workers side by side do 1.21x the work of one
two-thread process. Each worker therefore gets ``cores // workers still building`` torch threads,
re-read every step, so a worker left alone at the end takes over the idle cores.

Schedule: longest job first from a shared list (Graham's LPT list scheduling). Each worker takes the
next unbuilt model as soon as it is free, so the two teachers start first and the three students fill
in behind them. Each model is still built atomically under its own file lock (``build.py``): a failed
or interrupted build leaves only complete models behind, the next run builds the rest, and another
process that needs the same model waits for it instead of training it twice.

Workers report progress as events on a queue; the parent owns the one progress bar.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import sys
import traceback
from collections.abc import Sequence
from typing import Any

from tokenbridge_zoo.build import ZooProgressBar, ensure_model, progress_bar
from tokenbridge_zoo.settings import ModelSpec, ZooSettings


class ZooBuildError(RuntimeError):
    """A zoo model could not be built; the models already built are kept."""


def usable_cores() -> int:
    """Cores this process may run on (the affinity mask, which containers and ``taskset`` narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_jobs(num_models: int, cores: int | None = None) -> int:
    """One worker per core, never more workers than models."""
    return max(1, min(num_models, cores or usable_cores()))


def build_cost(spec: ModelSpec) -> float:
    """Relative FLOPs of a model's whole build (its step budget times its per-token layer FLOPs).

    Only the order matters (to start the longest builds first); the embedding and output head are left
    out because the tokenizer, not the spec, sets their size.
    """
    h, i = spec.hidden_size, spec.intermediate_size
    per_token = spec.num_layers * (4 * h * h + 3 * h * i)
    return float(spec.max_steps * spec.batch_size * per_token)


def longest_first(specs: Sequence[ModelSpec]) -> list[str]:
    """Model names by decreasing ``build_cost`` (ties keep the settings' order)."""
    return [spec.name for spec in sorted(specs, key=build_cost, reverse=True)]


class _WorkerProgress:
    """The ``BuildProgress`` of a worker: forwards each call to the parent as
    ``("progress", name, (method, *args))`` (when the parent shows progress), and after every step
    takes its share of the cores: ``cores // workers still building``. When the other workers have
    run out of models, the last one's model trains on every core instead of leaving them idle.
    """

    def __init__(self, events: Any, forward: bool, building: Any, cores: int) -> None:
        self._events, self._forward, self._building, self._cores = events, forward, building, cores

    def _send(self, name: str, method: str, *args: Any) -> None:
        if self._forward:
            self._events.put(("progress", name, (method, *args)))

    def start(self, name: str, max_steps: int) -> None:
        self._send(name, "start", max_steps)

    def threads(self) -> int:
        """This worker's share of the cores now."""
        return max(1, self._cores // max(1, self._building.value))

    def step(self, name: str, step: int, loss: float) -> None:
        import torch

        threads = self.threads()
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)
        self._send(name, "step", step, loss)

    def eval(self, name: str, step: int, val_accuracy: float) -> None:
        self._send(name, "eval", step, val_accuracy)

    def finish(self, name: str, steps: int, test_accuracy: float) -> None:
        self._send(name, "finish", steps, test_accuracy)


def _worker(
    names: list[str],
    next_index: Any,
    building: Any,
    events: Any,
    settings: ZooSettings,
    cores: int,
    progress: bool,
) -> None:
    """Take the next model off ``names`` until none is left; report ``failed`` (then stop) or ``exit``."""
    # SIGTERM from the parent (another worker failed) unwinds like an exception, so the half-built
    # model's temporary folder is removed by its ``finally``.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    reporter = _WorkerProgress(events, progress, building, cores)
    try:
        while True:
            with next_index.get_lock():
                index = next_index.value
                next_index.value += 1
            if index >= len(names):
                break
            name = names[index]
            try:
                ensure_model(name, settings, reporter, threads=reporter.threads())
            except KeyboardInterrupt:
                return  # Ctrl-C reaches the whole process group; the parent reports it
            except BaseException:
                events.put(("failed", name, traceback.format_exc()))
                return
    finally:
        with building.get_lock():
            building.value -= 1
    events.put(("exit", "", None))


def build_models(
    specs: Sequence[ModelSpec], settings: ZooSettings, jobs: int | None = None, progress: bool = True
) -> None:
    """Build ``specs`` (missing models) with ``jobs`` worker processes (default: one per core)."""
    if not specs:
        return
    jobs = jobs if jobs is not None else default_jobs(len(specs))
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1 (got {jobs}); use 1 to build in this process")
    names = longest_first(specs)
    if jobs == 1:
        with progress_bar(progress) as bar:
            for name in names:
                ensure_model(name, settings, bar)
        return
    # spawn, not fork: a forked child inherits the parent's torch/OpenMP thread pools in whatever state
    # they are, which can deadlock.
    context = multiprocessing.get_context("spawn")
    events = context.Queue()
    next_index = context.Value("i", 0)
    jobs = min(jobs, len(names))
    building = context.Value("i", jobs)  # workers that still have a model to build
    workers = [
        context.Process(
            target=_worker,
            args=(names, next_index, building, events, settings, usable_cores(), progress),
            name=f"tokenbridge-zoo-build-{rank}",
            daemon=True,
        )
        for rank in range(jobs)
    ]
    try:
        for worker in workers:
            worker.start()
        with progress_bar(progress) as bar:
            _follow(workers, events, bar)
        for worker in workers:  # each has reported "exit": let it flush its queue and end by itself
            worker.join(timeout=60)
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.terminate()
        for worker in workers:
            worker.join(timeout=30)
            if worker.is_alive():  # SIGTERM unwinds Python code; a worker stuck in native code needs SIGKILL
                worker.kill()
                worker.join(timeout=10)


def _follow(workers: list[Any], events: Any, bar: ZooProgressBar | None) -> None:
    """Relay the workers' events until every worker has exited; raise on the first failure."""
    running = len(workers)
    while running:
        try:
            kind, name, payload = events.get(timeout=1.0)
        except queue.Empty:
            if all(worker.exitcode is not None for worker in workers):
                raise ZooBuildError("every zoo build worker stopped before the build finished") from None
            for worker in workers:
                if worker.exitcode not in (None, 0):
                    raise ZooBuildError(
                        f"zoo build worker {worker.name} died (exit code {worker.exitcode}; -9 is usually "
                        "the out-of-memory killer). Models built so far are kept; run tokenbridge-zoo "
                        "again to build the rest, or with --jobs 1 to use less memory."
                    ) from None
            continue
        if kind == "progress":
            if bar is not None:
                method, *args = payload
                getattr(bar, method)(name, *args)
        elif kind == "failed":
            raise ZooBuildError(
                f"building zoo model {name!r} failed (models built so far are kept):\n{payload}"
            )
        elif kind == "exit":
            running -= 1


__all__ = ["ZooBuildError", "build_cost", "build_models", "default_jobs", "longest_first", "usable_cores"]
