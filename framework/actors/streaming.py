"""Streaming one batch of samples through the stages, and repairing it when an actor fails.

Each rollout engine streams samples as vLLM finishes them (a Ray streaming generator); whatever
samples are ready are chained at once into one mapping → teacher → mapping hop (dynamic
micro-batching). The driver holds only ObjectRefs, and reads one small integer per hop (how many
samples came out) to learn that the hop succeeded.

Repair, so that a sample is never lost nor trained twice:
- an engine that died (its stream raised) or hung (no sample for ``rollout_timeout_s`` and no answer
  to a ping) is replaced, re-synced to the current weights, and its prompts of every in-flight batch
  are regenerated under the same sample ids; its partial output is discarded;
- a hop that failed or is overdue (``teacher_timeout_s + mapping_timeout_s``) has its unresponsive
  mapping worker / teacher replica replaced and is redone from the same rollouts.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import ray

from framework.actors.cluster import Stages
from framework.config import Config
from framework.types import Prompt

RAY_FAILURES = (ray.exceptions.RayActorError, ray.exceptions.RayTaskError, ray.exceptions.ObjectLostError)


class StageFailure(RuntimeError):
    """A stage kept failing after ``trainer.max_restarts`` replacements."""


@dataclass
class Chain:  # one mapping → teacher → mapping hop
    rollout_refs: list
    mapper: int
    teacher: int
    out_ref: ray.ObjectRef  # list[MappedSample], handed to the learner unread
    count_ref: ray.ObjectRef  # how many samples survived: the only thing the driver reads
    started: float
    done: bool = False


@dataclass
class EngineChunk:  # the prompts of one batch given to one rollout engine
    engine: int
    prompts: list[Prompt]
    seed: int
    generator: object | None = None
    last_progress: float = 0.0
    chains: list[Chain] = field(default_factory=list)


@dataclass
class InflightBatch:
    step: int
    prompts: list[Prompt]
    chunks: list[EngineChunk]


@dataclass
class FaultBook:
    """Counts of detected faults and re-queued samples, with detection times (for latency checks)."""

    max_restarts: int
    counts: Counter[str] = field(default_factory=Counter)
    log: list[tuple[float, str]] = field(default_factory=list)

    def record(self, what: str, restarts_so_far: int) -> None:
        self.counts[what] += 1
        self.log.append((time.time(), what))
        if restarts_so_far >= self.max_restarts:
            raise StageFailure(f"{what}: {self.max_restarts} actor restarts (trainer.max_restarts) used up")


class SampleStream:
    """The in-flight batches of a run (oldest first) and the dataflow that fills them."""

    def __init__(self, cfg: Config, stages: Stages, faults: FaultBook, version: Callable[[], int]):
        self.cfg, self.stages, self.faults, self.version = cfg, stages, faults, version
        self.pending: deque[InflightBatch] = deque()
        self.rr = 0
        r = cfg.rollout
        self.sampling = dict(
            n=r.samples_per_prompt, temperature=r.temperature, top_p=r.top_p, max_tokens=r.max_new_tokens
        )

    def _engines(self) -> tuple[str, list]:
        """sft_teacher: the teacher's engines write the responses; otherwise the student's."""
        if self.stages.teacher_generators:
            return "generator", self.stages.teacher_generators
        return "rollout", self.stages.rollout

    def launch(self, step: int, prompts: list[Prompt]) -> None:
        n = len(self._engines()[1])
        seed0 = self.cfg.trainer.seed * 100_003 + step * n
        chunks = [EngineChunk(i, prompts[i::n], seed0 + i) for i in range(n) if prompts[i::n]]
        for chunk in chunks:
            self._start(chunk)
        self.pending.append(InflightBatch(step, prompts, chunks))

    def _start(self, chunk: EngineChunk) -> None:
        engine = self._engines()[1][chunk.engine]
        sampling = dict(self.sampling, seed=chunk.seed)
        chunk.generator = engine.generate_stream.options(num_returns="streaming").remote(
            chunk.prompts, sampling
        )
        chunk.last_progress, chunk.chains = time.time(), []

    def chain(self, rollout_refs: list, for_training: bool = True) -> Chain:
        """One mapping → teacher → mapping hop for the samples that are ready now (sft_teacher: re-tokenize)."""
        self.rr += 1
        m, t = self.rr % len(self.stages.mapping), self.rr % len(self.stages.teacher)
        mapper, teacher = self.stages.mapping[m], self.stages.teacher[t]
        if for_training and self.stages.teacher_generators:
            out, count = mapper.sft_samples.options(num_returns=2).remote(*rollout_refs)
        else:
            requests = mapper.prepare.remote(*rollout_refs)
            scores = teacher.score.remote(requests)
            out, count = mapper.finish.options(num_returns=2).remote(requests, scores, *rollout_refs)
        return Chain(rollout_refs, m, t, out, count, time.time())

    def _pump(self, chunk: EngineChunk) -> None:
        gen = chunk.generator
        if gen is None:
            return
        ready = []
        try:
            while gen.next_ready():  # type: ignore[attr-defined]
                ready.append(next(gen))  # type: ignore[call-overload]
        except StopIteration:
            pass
        except RAY_FAILURES:
            self._engine_failed(chunk, "died")
            return
        if gen.is_finished():  # type: ignore[attr-defined]
            chunk.generator = None
        if ready:
            chunk.chains.append(self.chain(ready))
            chunk.last_progress = time.time()
        elif (
            chunk.generator is not None
            and time.time() - chunk.last_progress > self.cfg.trainer.rollout_timeout_s
        ):
            if not self.stages.alive(self._engines()[1][chunk.engine], self.cfg.trainer.health_timeout_s):
                self._engine_failed(chunk, "hung")
            else:
                chunk.last_progress = time.time()  # busy but alive: keep waiting

    def _restart(self, role: str, index: int, what: str) -> None:
        self.faults.record(what, sum(self.stages.restarts.values()))
        self.stages.restart(role, index, self.version(), self.cfg.trainer.actor_start_timeout_s)

    def _engine_failed(self, chunk: EngineChunk, how: str) -> None:
        self.replace_engine(chunk.engine, how, also=chunk)

    def replace_engine(self, index: int, how: str, also: EngineChunk | None = None) -> None:
        """Replace engine ``index``, drop its partial output, regenerate its prompts of every in-flight batch."""
        role, _ = self._engines()
        self._restart(role, index, f"{role}_{how}")
        for batch in self.pending:  # every stream of that engine is gone
            for other in batch.chunks:
                if other.engine == index and (other.generator is not None or other is also):
                    self.faults.counts["requeued_samples"] += (
                        len(other.prompts) * self.cfg.rollout.samples_per_prompt
                    )
                    self._start(other)

    def _settle(self, chunk: EngineChunk) -> bool:
        """True when every hop of ``chunk`` has its mapped samples; repairs a failed or overdue hop."""
        t = self.cfg.trainer
        for k, chain in enumerate(chunk.chains):
            if chain.done:
                continue
            ready, _ = ray.wait([chain.count_ref], timeout=0)
            try:
                if ready:
                    ray.get(chain.count_ref)  # raises if any hop of the chain failed
                    chain.done = True
                    continue
            except RAY_FAILURES:
                pass
            else:
                if time.time() - chain.started < t.teacher_timeout_s + t.mapping_timeout_s:
                    return False
            # the hop failed or is overdue: find the culprit, replace it, redo the hop
            try:
                ray.get(chain.rollout_refs, timeout=t.health_timeout_s)
            except RAY_FAILURES:
                self._engine_failed(chunk, "died")
                return False
            for role, index in (("mapping", chain.mapper), ("teacher", chain.teacher)):
                if not self.stages.alive(self.stages.pool(role)[index], t.health_timeout_s):
                    self._restart(role, index, f"{role}_failed")
            self.faults.counts["requeued_samples"] += len(chain.rollout_refs)
            chunk.chains[k] = self.chain(chain.rollout_refs)
            return False
        return True

    def collect(self) -> list:
        """Drive every in-flight batch until the oldest has all its mapped samples; return their refs."""
        batch = self.pending[0]
        while True:
            live = [c.generator for b in self.pending for c in b.chunks if c.generator is not None]
            waitables = live + [ch.count_ref for c in batch.chunks for ch in c.chains if not ch.done]
            if waitables:
                ray.wait(waitables, num_returns=1, timeout=0.05)
            for b in self.pending:
                for chunk in b.chunks:
                    self._pump(chunk)
            if all(c.generator is None for c in batch.chunks) and all(self._settle(c) for c in batch.chunks):
                return [ch.out_ref for c in batch.chunks for ch in c.chains]
