"""Streaming one batch of samples through the stages, and repairing it when an actor fails.

Each rollout engine streams samples as vLLM finishes them (a Ray streaming generator); whatever
samples are ready are chained at once into one mapping → teacher → mapping hop (dynamic
micro-batching). The driver holds only ObjectRefs, and reads one small integer per hop (how many
samples came out) to learn that the hop succeeded.

Every failure is classified from the exception the actor raised (``framework.actors.failures``):
- dead or hung actor: an engine that died (its stream raised an actor error) or hung (no sample for
  ``rollout_timeout_s`` and no answer to a ping) is replaced, re-synced to the current weights, and
  its prompts of every in-flight batch are regenerated under the same sample ids (its partial output
  is discarded); a hop whose mapping worker / teacher replica died or is overdue
  (``teacher_timeout_s + mapping_timeout_s``) has the unresponsive actor replaced and is redone from
  the same rollouts;
- data error (a sample the stage cannot take): the failed unit (a hop's rollouts, an engine's
  prompts) is halved and redone until the culprit is alone; it is skipped and counted
  (``faults/skipped_<reason>``), the rest of the batch goes on. A batch left with no sample raises
  :class:`EmptyBatch` (the step is skipped); ``RetryPolicy.max_empty_batches`` in a row stop the run;
- transient error from a live actor: the unit is retried after an exponential backoff, within a
  per-unit budget (``faults/<stage>_retry``);
- configuration error (HTTP 401/403/404, ...) or the same error from a live actor several times in
  a row: the run stops with :class:`RunStopped`, naming the stage and the original error.
So that a sample is never lost nor trained twice, a unit is always redone as a whole.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import ray

from framework.actors.cluster import Stages
from framework.actors.failures import Attempts, Failure, Kind, RetryPolicy, RunStopped, Supervisor, classify
from framework.config import Config
from framework.data.routing import teacher_slots
from framework.logging import say
from framework.types import Prompt

RAY_FAILURES = (ray.exceptions.RayActorError, ray.exceptions.RayTaskError, ray.exceptions.ObjectLostError)
# what evaluation, weight sync and checkpoints may raise and the run survives (design §7.4)
OUTSIDE_STEP_FAILURES = (*RAY_FAILURES, ray.exceptions.GetTimeoutError, OSError)


class StageFailure(RuntimeError):
    """A stage kept failing after ``trainer.max_restarts`` replacements."""


class EmptyBatch(RuntimeError):
    """Every sample of the oldest in-flight batch was skipped (data errors); it was dropped from the
    in-flight batches and the caller should skip the step (the next batch takes its place)."""


__all__ = ["RAY_FAILURES", "EmptyBatch", "FaultBook", "RunStopped", "SampleStream", "StageFailure"]


@dataclass
class Chain:  # one mapping → teacher → mapping hop
    rollout_refs: list
    mapper: int
    teacher: int
    out_ref: ray.ObjectRef  # list[MappedSample], handed to the learner unread
    count_ref: ray.ObjectRef  # how many samples survived: the only thing the driver reads
    started: float
    done: bool = False
    requests_ref: ray.ObjectRef | None = None  # the mapping's teacher inputs (None: sft_samples)
    scores_ref: ray.ObjectRef | None = None  # the teacher's scores (None: sft_samples)
    for_training: bool = True
    mapper_actor: object | None = None  # the handles the hop was given (to tell a replaced actor)
    teacher_actor: object | None = None
    count: int = 0  # read from count_ref once the hop succeeded
    attempts: Attempts = field(default_factory=Attempts)
    retry_at: float | None = None  # backing off after a transient failure: redo at this time
    slot: int = 0  # which teacher scores it (Config.teacher_list index; design §5.6)


@dataclass
class EngineChunk:  # the prompts of one batch given to one rollout engine, all for one teacher
    engine: int
    prompts: list[Prompt]
    seed: int
    slot: int = 0  # the teacher its prompts are routed to (framework/data/routing.py)
    generator: object | None = None
    last_progress: float = 0.0
    chains: list[Chain] = field(default_factory=list)
    attempts: Attempts = field(default_factory=Attempts)
    retry_at: float | None = None  # backing off after a transient failure: restart the stream then


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
    restarts_before: Counter[str] = field(default_factory=Counter)  # by earlier processes of the run

    def restarts(self, this_process: Counter[str]) -> Counter[str]:
        """Actor replacements per stage over the whole run: earlier processes' (from the checkpoint a
        resume loaded) plus this process's. Only this logged counter is cumulative: the
        ``trainer.max_restarts`` budget counts this process's replacements, so a resumed run gets a
        fresh budget instead of stopping at its first replacement after a long run (a run that keeps
        failing still stops, within one process)."""
        return self.restarts_before + this_process

    def state(self, this_process: Counter[str]) -> dict[str, dict[str, int]]:
        """What a checkpoint keeps, so that a resumed run's ``faults/*`` continue from there."""
        return {"faults": dict(self.counts), "restarts": dict(self.restarts(this_process))}

    def load_state(self, state: dict) -> None:
        """The counters of a checkpoint (an older checkpoint has none: from zero); faults after it in
        the process that crashed are not known."""
        self.counts = Counter({str(k): int(v) for k, v in state.get("faults", {}).items()})
        self.restarts_before = Counter({str(k): int(v) for k, v in state.get("restarts", {}).items()})

    def metrics(self, this_process: Counter[str]) -> dict[str, float]:
        """``faults/<name>`` and ``faults/restarts_<stage>``, cumulative over resumes."""
        out = {f"faults/{k}": float(v) for k, v in self.counts.items()}
        out.update({f"faults/restarts_{k}": float(v) for k, v in self.restarts(this_process).items()})
        return out

    def record(self, what: str, restarts_so_far: int) -> None:
        self.note(what)
        if restarts_so_far >= self.max_restarts:
            raise StageFailure(f"{what}: {self.max_restarts} actor restarts (trainer.max_restarts) used up")

    def note(self, what: str, n: int = 1) -> None:
        """Count a fault that needs no actor restart (a retry, a skipped sample)."""
        self.counts[what] += n
        self.log.append((time.time(), what))


class SampleStream:
    """The in-flight batches of a run (oldest first) and the dataflow that fills them."""

    def __init__(
        self, cfg: Config, stages: Stages, faults: FaultBook, version: Callable[[], int],
        policy: RetryPolicy | None = None, emit: Callable[[str], None] = say,
    ):  # fmt: skip
        self.cfg, self.stages, self.faults, self.version = cfg, stages, faults, version
        self.supervisor = Supervisor(policy or RetryPolicy(), emit)
        self.pending: deque[InflightBatch] = deque()
        self.abandoned: list = []  # results of hops given up on, read once they are done (see _reap)
        self.rr = 0
        self.empty_in_a_row = 0
        r = cfg.rollout
        self.sampling = dict(
            n=r.samples_per_prompt, temperature=r.temperature, top_p=r.top_p, max_tokens=r.max_new_tokens
        )
        teachers = cfg.teacher_list()
        self.routes, self.weights = [t.route for t in teachers], [t.weight for t in teachers]

    def route(self, prompts: list[Prompt]) -> list[int]:
        """Each prompt's teacher (one teacher: all 0)."""
        return teacher_slots(prompts, self.cfg.data.route_field, self.routes, self.weights)

    def _engines(self) -> tuple[str, list]:
        """sft_teacher: the teacher's engines write the responses; otherwise the student's."""
        if self.stages.teacher_generators:
            return "generator", self.stages.teacher_generators
        return "rollout", self.stages.rollout

    def launch(self, step: int, prompts: list[Prompt]) -> None:
        """Deal the batch's prompts over the engines, one chunk per engine and teacher (a chunk's
        hops all go to its teacher)."""
        n = len(self._engines()[1])
        seed0 = self.cfg.trainer.seed * 100_003 + step * n
        slots = self.route(prompts)
        chunks = []
        for k in sorted(set(slots)):
            group = [p for p, slot in zip(prompts, slots) if slot == k]
            for i in range(n):
                if group[i::n]:  # teacher 0 keeps the single-teacher seeds
                    seed = seed0 + i if k == 0 else ((seed0 + i) * 1_000_003 + k) % 2**31
                    chunks.append(EngineChunk(i, group[i::n], seed, slot=k))
        for chunk in chunks:
            self._start(chunk)
        self.pending.append(InflightBatch(step, prompts, chunks))

    def _start(self, chunk: EngineChunk) -> None:
        """(Re)start ``chunk``'s stream on its engine, or on another one that is up while its own is
        being replaced; with none up, it waits (``retry_at``) for the first replacement to finish."""
        role, engines = self._engines()
        up = self.stages.usable(role)
        self._abandon(*chunk.chains)
        chunk.chains = []
        if not up:
            chunk.generator, chunk.retry_at = None, time.time() + 0.05
            return
        if chunk.engine not in up:
            chunk.engine = up[chunk.seed % len(up)]
        sampling = dict(self.sampling, seed=chunk.seed)
        chunk.generator = (
            engines[chunk.engine]
            .generate_stream.options(num_returns="streaming")
            .remote(chunk.prompts, sampling)
        )
        chunk.last_progress, chunk.retry_at = time.time(), None

    def _pick(self, role: str, among: list[int] | None = None) -> int:
        """Round-robin over the members of ``role`` (``among``: only those) that are up (all of them
        when none is: the work then waits in the replacement's queue)."""
        everyone = among if among is not None else list(range(len(self.stages.pool(role))))
        up = [i for i in self.stages.usable(role) if i in everyone] or everyone
        return up[self.rr % len(up)]

    def chain(
        self, rollout_refs: list, for_training: bool = True, attempts: Attempts | None = None, slot: int = 0
    ) -> Chain:
        """One mapping → teacher ``slot`` → mapping hop for the samples that are ready now
        (sft_teacher: re-tokenize)."""
        self.rr += 1
        m, t = self._pick("mapping"), self._pick("teacher", self.stages.teacher_members(slot))
        mapper, teacher = self.stages.mapping[m], self.stages.teacher[t]
        requests = scores = None
        if for_training and self.stages.teacher_generators:
            out, count = mapper.sft_samples.options(num_returns=2).remote(*rollout_refs)
        else:
            requests = mapper.prepare.remote(*rollout_refs, slot=slot)
            scores = teacher.score.remote(requests)
            out, count = mapper.finish.options(num_returns=2).remote(
                requests, scores, *rollout_refs, slot=slot
            )
        return Chain(
            rollout_refs, m, t, out, count, time.time(), requests_ref=requests, scores_ref=scores,
            for_training=for_training, mapper_actor=mapper, teacher_actor=teacher, attempts=attempts or Attempts(),
            slot=slot,
        )  # fmt: skip

    def _redo(self, chain: Chain, refs: list | None = None, keep_attempts: bool = True) -> Chain:
        return self.chain(
            chain.rollout_refs if refs is None else refs, chain.for_training,
            chain.attempts if keep_attempts else None, chain.slot,
        )  # fmt: skip

    # ---------------------------------------------------------------- rollout engines
    def _pump(self, batch: InflightBatch, chunk: EngineChunk) -> None:
        if chunk.retry_at is not None:  # backing off after a transient failure of this stream
            if time.time() >= chunk.retry_at:
                self._start(chunk)
            return
        gen = chunk.generator
        if gen is None:
            return
        ready = []
        try:
            while gen.next_ready():  # type: ignore[attr-defined]
                try:
                    ready.append(next(gen))  # type: ignore[call-overload]
                except StopIteration:
                    break
        except RAY_FAILURES as error:  # an error is normally carried by the stream's next ref instead
            self._stream_failed(batch, chunk, error)
            return
        if gen.is_finished():  # type: ignore[attr-defined]
            chunk.generator = None
        if ready:
            chunk.chains.append(self.chain(ready, slot=chunk.slot))
            chunk.last_progress = time.time()
        elif chunk.generator is not None and not self.stages.responsive(self._engines()[1][chunk.engine]):
            self._engine_failed(chunk, "hung")  # a stopped (or dead) process: its heartbeat went silent
        elif (
            chunk.generator is not None
            and time.time() - chunk.last_progress > self.cfg.trainer.rollout_timeout_s
        ):
            if not self.stages.alive(self._engines()[1][chunk.engine], self.cfg.trainer.health_timeout_s):
                self._engine_failed(chunk, "hung")
            else:
                chunk.last_progress = time.time()  # busy but alive: keep waiting

    def _stream_failed(self, batch: InflightBatch, chunk: EngineChunk, error: BaseException) -> None:
        """An engine's stream of ``chunk`` failed: replace the engine, halve the prompts, retry or stop."""
        role, engines = self._engines()
        failure = classify(error, role)
        if failure.kind is Kind.DATA:
            self._split_chunk(batch, chunk, failure)
            return
        if failure.kind is Kind.DEAD or not self.stages.alive(
            engines[chunk.engine], self.cfg.trainer.health_timeout_s
        ):
            self._engine_failed(chunk, "died")
            return
        delay = self.supervisor.retry(failure, chunk.attempts)  # raises RunStopped when hopeless
        self.faults.note(f"{role}_retry")
        self._discard(chunk)
        chunk.generator, chunk.retry_at = None, time.time() + delay

    def _discard(self, chunk: EngineChunk) -> None:
        """Drop a stream's partial output (its prompts are generated again, under the same sample ids)."""
        self.faults.counts["requeued_samples"] += sum(len(c.rollout_refs) for c in chunk.chains)
        self._abandon(*chunk.chains)
        chunk.chains = []

    def _split_chunk(self, batch: InflightBatch, chunk: EngineChunk, failure: Failure) -> None:
        """A prompt of ``chunk`` is bad: halve the chunk until the bad prompt is alone, then skip it."""
        self._discard(chunk)
        if len(chunk.prompts) <= 1:
            self._skip(failure, len(chunk.prompts) * self.cfg.rollout.samples_per_prompt)
            chunk.prompts, chunk.generator, chunk.retry_at = [], None, None
            return
        half = len(chunk.prompts) // 2
        other = EngineChunk(
            chunk.engine, chunk.prompts[half:], (chunk.seed * 1_000_003 + half) % 2**31, slot=chunk.slot
        )
        chunk.prompts = chunk.prompts[:half]
        batch.chunks.append(other)
        self._start(chunk)
        self._start(other)

    def _skip(self, failure: Failure, samples: int) -> None:
        key = f"skipped_{failure.reason}"
        self.faults.note(key, samples)
        self.supervisor.skipped(failure, samples, self.faults.counts[key])

    def _restart(self, role: str, index: int, what: str) -> None:
        self.faults.record(what, sum(self.stages.restarts.values()))
        say(
            f"[tokenbridge] replacing {role} actor {index} ({what.removeprefix(role + '_')}); "
            f"restart {sum(self.stages.restarts.values()) + 1} of trainer.max_restarts={self.faults.max_restarts}"
        )
        self.stages.restart(role, index, self.version(), self.cfg.trainer.actor_start_timeout_s)

    def replace_rollout(self, index: int, how: str) -> None:
        """A student engine lost in a weight sync or a sleep/wake (sft_teacher's student engines
        generate nothing: they are replaced only)."""
        if self.stages.teacher_generators:
            self._restart("rollout", index, f"rollout_{how}")
        else:
            self.replace_engine(index, how)

    def _engine_failed(self, chunk: EngineChunk, how: str) -> None:
        self.replace_engine(chunk.engine, how, also=chunk)

    def replace_engine(self, index: int, how: str, also: EngineChunk | None = None) -> None:
        """Replace engine ``index``, drop its partial output, regenerate its prompts of every in-flight batch."""
        role, _ = self._engines()
        self._restart(role, index, f"{role}_{how}")
        for batch in self.pending:  # every stream of that engine is gone
            for other in batch.chunks:
                if other.engine == index and (
                    other.generator is not None or other.retry_at is not None or other is also
                ):
                    self.faults.counts["requeued_samples"] += (
                        len(other.prompts) * self.cfg.rollout.samples_per_prompt
                    )
                    self._start(other)

    # ---------------------------------------------------------------- hops
    def _settle(self, batch: InflightBatch, chunk: EngineChunk) -> bool:
        """True when every hop of ``chunk`` has its mapped samples; repairs failed or overdue hops."""
        t = self.cfg.trainer
        kept: list[Chain] = []
        for chain in chunk.chains:
            if chain.done:
                kept.append(chain)
                continue
            if chain.retry_at is not None:  # backing off after a transient failure
                kept.append(self._redo(chain) if time.time() >= chain.retry_at else chain)
                continue
            error: BaseException | None = None
            ready, _ = ray.wait([chain.count_ref], timeout=0)
            if ready:
                try:
                    chain.count = int(ray.get(chain.count_ref))  # raises if any hop of the chain failed
                    chain.done = True
                except ray.exceptions.RayError as e:
                    error = e
            else:
                silent = self._silent(chain)
                if not silent and time.time() - chain.started < t.teacher_timeout_s + t.mapping_timeout_s:
                    kept.append(chain)
                    continue
                if silent:
                    replacement = self._repair(batch, chunk, chain, None, silent)
                    if replacement is None:
                        return False
                    kept.extend(replacement)
                    continue
            if chain.done:
                self.supervisor.succeeded(self._engines()[0], "mapping", "teacher")
                kept.append(chain)
                continue
            replacement = self._repair(batch, chunk, chain, error)
            if replacement is None:  # the engine's stream starts over: all its hops are gone
                return False
            kept.extend(replacement)
        chunk.chains = kept
        return all(c.done for c in kept)

    def _silent(self, chain: Chain) -> set[str]:
        """The hop's roles whose actor stopped answering its heartbeat. While one of them is a
        replacement still starting, the hop's timeout counts from now (it waits in that queue)."""
        silent = set()
        for role, actor in (("mapping", chain.mapper_actor), ("teacher", chain.teacher_actor)):
            if actor is None:
                continue
            if self.stages.is_starting(actor):
                chain.started = time.time()
            elif not self.stages.responsive(actor):
                silent.add(role)
        return silent

    def _repair(
        self,
        batch: InflightBatch,
        chunk: EngineChunk,
        chain: Chain,
        error: BaseException | None,
        silent: set[str] = frozenset(),  # type: ignore[assignment]
    ) -> list[Chain] | None:
        """What replaces a failed (``error``) or overdue / ``silent`` (None) hop; None when the
        chunk's stream restarts."""
        t = self.cfg.trainer
        if error is not None:
            self._drain(chain)
        try:
            ray.get(chain.rollout_refs, timeout=t.health_timeout_s)
        except (ray.exceptions.RayError, TimeoutError) as rollout_error:  # the rollouts themselves failed
            self._stream_failed(batch, chunk, rollout_error)
            return None
        if error is None:  # overdue or silent: replace whoever stopped answering, else redo within the budget
            if not self._replace_unresponsive(chain, silent=silent):
                overdue = TimeoutError(
                    f"hop not done after teacher_timeout_s + mapping_timeout_s = "
                    f"{t.teacher_timeout_s + t.mapping_timeout_s:.0f} s while its actors answer pings"
                )
                self.supervisor.retry(classify(overdue, "mapping/teacher"), chain.attempts)
                self.faults.note("hop_overdue")
            self.faults.counts["requeued_samples"] += len(chain.rollout_refs)
            self._abandon(chain)
            return [self._redo(chain)]
        failure = classify(*self._locate(chain, error))
        if failure.kind is Kind.DATA:
            if len(chain.rollout_refs) <= 1:
                self._skip(failure, len(chain.rollout_refs))
                return []
            half = len(chain.rollout_refs) // 2
            refs = chain.rollout_refs
            return [self._redo(chain, refs[:half], False), self._redo(chain, refs[half:], False)]
        if failure.kind is Kind.DEAD and self._replace_unresponsive(chain, failure):
            self.faults.counts["requeued_samples"] += len(chain.rollout_refs)
            return [self._redo(chain)]
        # a live actor raised (or nobody turned out dead): retry after a backoff, or stop
        delay = self.supervisor.retry(failure, chain.attempts)
        self.faults.note(f"{failure.stage}_retry")
        chain.retry_at = time.time() + delay
        return [chain]

    def _abandon(self, *chains: Chain) -> None:
        for chain in chains:
            if not chain.done:
                self.abandoned.extend(
                    r
                    for r in (chain.count_ref, chain.out_ref, chain.requests_ref, chain.scores_ref)
                    if r is not None
                )

    def _reap(self) -> None:
        """Read the results of abandoned hops that are done by now, so that those that failed (their
        actor was replaced) are not printed as Ray's "unhandled error" when dropped."""
        if not self.abandoned:
            return
        ready, self.abandoned = ray.wait(self.abandoned, num_returns=len(self.abandoned), timeout=0)
        for ref in ready:
            with contextlib.suppress(ray.exceptions.RayError, TimeoutError):
                ray.get(ref, timeout=0)

    def _drain(self, chain: Chain, ready_only: bool = False) -> None:
        """Read the failed results of a hop once. They hold the error already classified from the count
        (an upstream error reaches every later task); unread, Ray prints each again as an "unhandled
        error" when its ref is dropped."""
        refs = [
            r for r in (chain.count_ref, chain.out_ref, chain.requests_ref, chain.scores_ref) if r is not None
        ]
        if ready_only:
            refs, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        for ref in refs:
            with contextlib.suppress(ray.exceptions.RayError, TimeoutError):
                ray.get(ref, timeout=self.cfg.trainer.health_timeout_s)

    def _locate(self, chain: Chain, error: BaseException) -> tuple[BaseException, str]:
        """The stage of the hop that raised ``error`` (an upstream error reaches every later task)."""
        for stage, ref in (("mapping", chain.requests_ref), ("teacher", chain.scores_ref)):
            if ref is None:
                continue
            try:
                ray.get(ref, timeout=self.cfg.trainer.health_timeout_s)
            except (ray.exceptions.RayError, TimeoutError) as e:
                return e, stage
        return error, "mapping"

    def _replace_unresponsive(
        self,
        chain: Chain,
        failure: Failure | None = None,
        silent: set[str] = frozenset(),  # type: ignore[assignment]
    ) -> bool:
        """Replace the hop's mapping worker / teacher replica that does not answer a ping (or whose
        engine died inside it, or whose heartbeat went ``silent``); True when one was replaced, now
        or since the hop was submitted."""
        replaced = False
        for role, index, used in (
            ("mapping", chain.mapper, chain.mapper_actor),
            ("teacher", chain.teacher, chain.teacher_actor),
        ):
            actor = self.stages.pool(role)[index]
            if used is not None and actor is not used:  # replaced already (another hop found it dead)
                replaced = True
                continue
            broken = role in silent or (failure is not None and failure.engine_died and failure.stage == role)
            if broken or not self.stages.alive(actor, self.cfg.trainer.health_timeout_s):
                self._restart(role, index, f"{role}_failed")
                replaced = True
        return replaced

    # ---------------------------------------------------------------- the batch
    def collect(self) -> list:
        """Drive every in-flight batch until the oldest has all its mapped samples; return their refs.

        Raises :class:`EmptyBatch` (after dropping that batch) when every one of its samples was
        skipped, and :class:`RunStopped` when a failure cannot be repaired.
        """
        try:
            return self._collect()
        except RunStopped:  # quiet the other failed hops: the reason was said once, above
            for chain in [ch for b in self.pending for c in b.chunks for ch in c.chains if not ch.done]:
                self._drain(chain, ready_only=True)
            raise

    def _collect(self) -> list:
        batch = self.pending[0]
        while True:
            self.stages.poll_started(self.version())  # replacements that came up join their pool
            self._reap()
            live = [c.generator for b in self.pending for c in b.chunks if c.generator is not None]
            waitables = live + [
                ch.count_ref for c in batch.chunks for ch in c.chains if not ch.done and ch.retry_at is None
            ]
            if waitables:
                ray.wait(waitables, num_returns=1, timeout=0.05)
            else:  # only backoffs to wait for
                time.sleep(0.01)
            for b in self.pending:
                for chunk in b.chunks:  # a chunk appended while halving is pumped too
                    self._pump(b, chunk)
            if all(c.generator is None and c.retry_at is None for c in batch.chunks) and all(
                self._settle(batch, c) for c in batch.chunks
            ):
                break
        refs = [ch.out_ref for c in batch.chunks for ch in c.chains]
        if sum(ch.count for c in batch.chunks for ch in c.chains) > 0:
            self.empty_in_a_row = 0
            return refs
        self.pending.popleft()
        self.empty_in_a_row += 1
        skipped = {k: v for k, v in self.faults.counts.items() if k.startswith("skipped_")}
        line = (
            f"every sample of batch {batch.step} ({len(batch.prompts)} prompts) was skipped; skipped so "
            f"far: {skipped or 'none (every hop returned no sample)'}"
        )
        if self.empty_in_a_row >= self.supervisor.policy.max_empty_batches:
            message = f"{line}. {self.empty_in_a_row} batches in a row had no usable sample: stopping the run"
            self.supervisor.emit(f"[tokenbridge] STOPPING: {message}")
            raise RunStopped(message)
        self.supervisor.emit(f"[tokenbridge] {line}: the step is skipped")
        raise EmptyBatch(line)
