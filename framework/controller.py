"""THE loop: prompts → vLLM student rollouts → token mapping → teacher scores → mapping → learner → sync.

The controller never holds bulk data. It hands Ray ObjectRefs from stage to stage: each rollout
engine streams samples as vLLM finishes them, and whatever samples are ready are chained at once
into one mapping → teacher → mapping hop (dynamic micro-batching). At most
``trainer.max_inflight_batches`` batches are in flight; batch t+s may be generated while the learner
trains batch t when ``trainer.max_staleness = s > 0`` (the importance ratio in the loss corrects for
the older behaviour policy), and strictly on-policy when s = 0.

Faults: every remote wait has a timeout. A dead or hung engine, teacher replica or mapping worker is
replaced (``Stages.restart``) and its work redone from the rollouts (or prompts) it was given, so a
sample is never lost nor trained twice: a restarted engine's partial output is discarded and its
prompts regenerated under the same sample ids. A learner failure restarts from the last checkpoint.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path

import ray

from framework import checkpoint
from framework.actors.cluster import Stages
from framework.config import Config
from framework.data import PromptCursor
from framework.data.verifiers import get_verifier
from framework.eval import accuracy, generation_rows, teacher_kl
from framework.ledger import Ledger
from framework.logging import RunLogger
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


class Controller:
    def __init__(
        self, cfg: Config, stages: Stages, train: list[Prompt], evals: list[Prompt], output_dir: Path
    ):
        self.cfg, self.stages, self.output_dir = cfg, stages, output_dir
        self.train_prompts, self.eval_prompts = train, evals
        self.cursor = PromptCursor(train, seed=cfg.trainer.seed)
        self.step, self.version, self.rr = 0, 0, 0
        self.pending: deque[InflightBatch] = deque()
        self.requeued: deque[list[Prompt]] = deque()  # prompts of batches in flight at a checkpoint
        self.faults: Counter[str] = Counter()
        self.fault_log: list[tuple[float, str]] = []  # (time detected, what) for detection-latency checks
        self.busy_prev: dict[str, float] = {}
        self.ledger = Ledger(output_dir / "ledger.jsonl")
        self.sampling = dict(n=cfg.rollout.samples_per_prompt, temperature=cfg.rollout.temperature,
                             top_p=cfg.rollout.top_p, max_tokens=cfg.rollout.max_new_tokens)  # fmt: skip

    # ---------------------------------------------------------------- dataflow
    def _engines(self) -> tuple[str, list]:
        return (
            ("generator", self.stages.teacher_generators)
            if self.stages.teacher_generators
            else ("rollout", self.stages.rollout)
        )

    def _launch(self, step: int) -> None:
        prompts = (
            self.requeued.popleft() if self.requeued else self.cursor.take(self.cfg.data.prompts_per_step)
        )
        n = len(self._engines()[1])
        seed0 = self.cfg.trainer.seed * 100_003 + step * n
        chunks = [EngineChunk(i, prompts[i::n], seed0 + i) for i in range(n) if prompts[i::n]]
        for chunk in chunks:
            self._start_chunk(chunk)
        self.pending.append(InflightBatch(step, prompts, chunks))

    def _start_chunk(self, chunk: EngineChunk) -> None:
        engine = self._engines()[1][chunk.engine]
        sampling = dict(self.sampling, seed=chunk.seed)
        chunk.generator = engine.generate_stream.options(num_returns="streaming").remote(
            chunk.prompts, sampling
        )
        chunk.last_progress, chunk.chains = time.time(), []

    def _chain(self, rollout_refs: list, for_training: bool = True) -> Chain:
        """One mapping → teacher → mapping hop for the samples that are ready now (sft_teacher: re-tokenize)."""
        self.rr += 1
        m, t = self.rr % len(self.stages.mapping), self.rr % len(self.stages.teacher)
        mapper, teacher = self.stages.mapping[m], self.stages.teacher[t]
        if for_training and self.stages.teacher_generators:
            out, count = mapper.sft_samples.options(num_returns=2).remote(*rollout_refs)
        else:
            requests = mapper.prepare.remote(*rollout_refs)
            out, count = mapper.finish.options(num_returns=2).remote(
                requests, teacher.score.remote(requests), *rollout_refs
            )
        return Chain(rollout_refs, m, t, out, count, time.time())

    def _pump(self, chunk: EngineChunk) -> None:
        gen = chunk.generator
        if gen is None:
            return
        ready = []
        try:
            while gen.next_ready():
                ready.append(next(gen))
        except StopIteration:
            pass
        except RAY_FAILURES:
            self._engine_failed(chunk, "died")
            return
        if gen.is_finished():
            chunk.generator = None
        if ready:
            chunk.chains.append(self._chain(ready))
            chunk.last_progress = time.time()
        elif (
            chunk.generator is not None
            and time.time() - chunk.last_progress > self.cfg.trainer.rollout_timeout_s
        ):
            if not self.stages.alive(self._engines()[1][chunk.engine], self.cfg.trainer.health_timeout_s):
                self._engine_failed(chunk, "hung")
            else:
                chunk.last_progress = time.time()  # busy but alive: keep waiting

    def _engine_failed(self, chunk: EngineChunk, how: str) -> None:
        """Replace the engine, drop its partial output for this chunk, regenerate the chunk's prompts."""
        role, _ = self._engines()
        self._count_fault(f"{role}_{how}")
        self.faults["requeued_samples"] += len(chunk.prompts) * self.cfg.rollout.samples_per_prompt
        self.stages.restart(role, chunk.engine, self.version, self.cfg.trainer.sync_timeout_s)
        for batch in self.pending:  # every chunk on that engine lost its stream
            for other in batch.chunks:
                if other.engine == chunk.engine and (other.generator is not None or other is chunk):
                    self._start_chunk(other)

    def _settle_chains(self, chunk: EngineChunk, deadline_s: float) -> bool:
        """True when every chain of ``chunk`` has its mapped samples; repairs failed chains."""
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
                if time.time() - chain.started < deadline_s:
                    return False
            # the hop failed or is overdue: find the culprit, replace it, redo the hop
            try:
                ray.get(chain.rollout_refs, timeout=t.health_timeout_s)
            except RAY_FAILURES:
                self._engine_failed(chunk, "died")
                return False
            for role, index in (("mapping", chain.mapper), ("teacher", chain.teacher)):
                if not self.stages.alive(self.stages.pool(role)[index], t.health_timeout_s):
                    self._count_fault(f"{role}_failed")
                    self.stages.restart(role, index, self.version, t.sync_timeout_s)
            self.faults["requeued_samples"] += len(chain.rollout_refs)
            chunk.chains[k] = self._chain(chain.rollout_refs)
            return False
        return True

    def _collect(self, batch: InflightBatch) -> list:
        """Drive every in-flight batch until ``batch`` has all its mapped samples; return their refs."""
        t = self.cfg.trainer
        while True:
            live = [c.generator for b in self.pending for c in b.chunks if c.generator is not None]
            waitables = live + [ch.count_ref for c in batch.chunks for ch in c.chains if not ch.done]
            if waitables:
                ray.wait(waitables, num_returns=1, timeout=0.05)
            for b in self.pending:
                for chunk in b.chunks:
                    self._pump(chunk)
            if all(c.generator is None for c in batch.chunks) and all(
                self._settle_chains(c, t.teacher_timeout_s + t.mapping_timeout_s) for c in batch.chunks
            ):
                return [ch.out_ref for c in batch.chunks for ch in c.chains]

    def _count_fault(self, what: str) -> None:
        self.faults[what] += 1
        self.fault_log.append((time.time(), what))
        if sum(self.stages.restarts.values()) >= self.cfg.trainer.max_restarts:
            raise StageFailure(
                f"{what}: {self.cfg.trainer.max_restarts} actor restarts (trainer.max_restarts) used up"
            )

    # ---------------------------------------------------------------- the loop
    def run(self) -> dict[str, float]:
        t = self.cfg.trainer
        self._restore()
        log = RunLogger(self.cfg, self.output_dir, total_steps=t.steps, start_step=self.step)
        final: dict[str, float] = {}
        try:
            if t.eval_at_start and self.step == 0:
                final = self._evaluate(log)
            while self.step < t.steps:
                t0 = time.perf_counter()
                while len(self.pending) < min(t.max_inflight_batches, t.max_staleness + 1) and (
                    self.step + len(self.pending) < t.steps
                ):
                    self._launch(self.step + len(self.pending))
                refs = self._collect(self.pending[0])
                t_gen = time.perf_counter() - t0
                try:
                    metrics = self.stages.learner.train_step(
                        refs, self.version, timeout_s=t.learner_timeout_s
                    )
                except (*RAY_FAILURES, ray.exceptions.GetTimeoutError):
                    self._recover_learner()
                    continue
                self.ledger.record(self.step, metrics.pop("sample_ids"))
                self.pending.popleft()
                self.version += 1
                self.step += 1
                t_learn = time.perf_counter() - t0 - t_gen
                sync_s = self._sync() if self.step % t.sync_every == 0 or self.step == t.steps else 0.0
                metrics.update(
                    {"time/wait_samples_s": t_gen, "time/learner_s": t_learn, "time/sync_s": sync_s}
                )
                metrics["time/step_s"] = time.perf_counter() - t0
                metrics.update(self._busy(metrics["time/step_s"]))
                metrics.update({f"faults/{k}": float(v) for k, v in self.faults.items()})
                metrics.update({f"faults/restarts_{k}": float(v) for k, v in self.stages.restarts.items()})
                log.log(self.step, metrics)
                log.advance(
                    {"loss": metrics.get("loss", float("nan")), "kl": metrics.get("batch/reverse_kl", 0.0)}
                )
                if t.eval_every and self.step % t.eval_every == 0 and self.step < t.steps:
                    final = self._evaluate(log)
                if t.checkpoint_every and self.step % t.checkpoint_every == 0 and self.step < t.steps:
                    self._checkpoint()
            final = self._evaluate(log)
            final["checkpoint"] = str(self._checkpoint())  # type: ignore[assignment]
        finally:
            log.close()
        return final

    def _sync(self) -> float:
        start = time.perf_counter()
        self.stages.sync_weights(self.version, timeout_s=self.cfg.trainer.sync_timeout_s)
        return time.perf_counter() - start

    def _busy(self, step_s: float) -> dict[str, float]:
        out = {}
        for stage, stats in self.stages.stats().items():
            busy = sum(s.get("busy_s", 0.0) for s in stats) / max(1, len(stats))
            out[f"busy/{stage}"] = min(
                1.0, max(0.0, busy - self.busy_prev.get(stage, 0.0)) / max(step_s, 1e-9)
            )
            self.busy_prev[stage] = busy
            for key in {k for s in stats for k in s if k.startswith("skipped_")}:
                out[f"counts/{stage}/{key}"] = sum(s.get(key, 0.0) for s in stats)
        return out

    # ---------------------------------------------------------------- eval
    def _evaluate(self, log: RunLogger) -> dict[str, float]:
        """Held-out accuracy (greedy) and teacher reverse-KL on the student's own samples (T = 1, fixed seed)."""
        engines, prompts, timeout = self.stages.rollout, self.eval_prompts, self.cfg.trainer.rollout_timeout_s
        verify = get_verifier(self.cfg.data.eval)
        greedy = dict(n=1, temperature=0.0, top_p=1.0, max_tokens=self.cfg.rollout.max_new_tokens, seed=0)
        sampled = dict(greedy, temperature=1.0, seed=1234)
        runs = [
            [e.generate.remote(prompts[i :: len(engines)], s) for i, e in enumerate(engines)]
            for s in (greedy, sampled)
        ]
        greedy_out, sampled_out = (
            [r for part in ray.get(refs, timeout=timeout) for r in part] for refs in runs
        )
        metrics: dict[str, float] = {}
        acc = accuracy(greedy_out, verify)
        if acc is not None:
            metrics["eval/accuracy"] = acc
        if sampled_out:
            chain = self._chain([ray.put(s) for s in sampled_out], for_training=False)
            metrics.update(teacher_kl(ray.get(chain.out_ref, timeout=self.cfg.trainer.teacher_timeout_s)))
        log.log(self.step, metrics)
        log.log_generations(self.step, generation_rows(greedy_out, verify, self.cfg.logging.log_generations))
        log.write(f"[eval step {self.step}] " + "  ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
        return metrics

    # ---------------------------------------------------------------- checkpoints
    def _checkpoint(self) -> Path:
        tmp = checkpoint.begin(self.output_dir, self.step)
        self.stages.learner.save(tmp, timeout_s=self.cfg.trainer.learner_timeout_s)
        state = {
            "step": self.step,
            "version": self.version,
            "cursor": self.cursor.state(),
            # batches already launched but not trained are regenerated after a resume
            "requeued_prompt_ids": [[p.prompt_id for p in b.prompts] for b in self.pending],
        }
        final = checkpoint.commit(tmp, state)
        checkpoint.prune(self.output_dir, self.cfg.trainer.keep_checkpoints)
        return final

    def _restore(self, ckpt: Path | None = None) -> None:
        resume = self.cfg.trainer.resume
        if ckpt is None and resume != "none":
            ckpt = checkpoint.latest_complete(self.output_dir) if resume == "auto" else Path(resume)
        if ckpt is None:
            self.ledger.truncate_after(0)  # a fresh run: nothing trained yet, whatever the folder held
            return
        state = checkpoint.load_controller_state(ckpt)
        self.stages.learner.load(ckpt, timeout_s=self.cfg.trainer.learner_timeout_s)
        self.step, self.version = int(state["step"]), int(state["version"])
        self.cursor = PromptCursor.from_state(self.train_prompts, self.cfg.trainer.seed, state["cursor"])
        by_id = {p.prompt_id: p for p in self.train_prompts}
        self.requeued = deque([by_id[i] for i in ids] for ids in state.get("requeued_prompt_ids", []))
        self.ledger.truncate_after(self.step)  # steps trained after the checkpoint are redone
        self._sync()

    def _recover_learner(self) -> None:
        """A learner rank died or hung: new ranks, back to the last checkpoint, batches regenerated."""
        self._count_fault("learner_failed")
        self.stages.restart_learner(self.cfg.trainer.learner_timeout_s)
        self.pending.clear()
        ckpt = checkpoint.latest_complete(self.output_dir)
        if ckpt is not None:
            self._restore(ckpt)
        else:  # no checkpoint yet: from the initial weights and the first prompt
            self.step, self.version, self.requeued = 0, 0, deque()
            self.cursor = PromptCursor(self.train_prompts, seed=self.cfg.trainer.seed)
            self.ledger.truncate_after(0)
            self._sync()
