"""THE loop (docs/design.md §5): source → generate → map → score → map → train → sync → log/eval/checkpoint.

The batch source is ``SampleStream`` online (rollouts streamed through the mapping → teacher → mapping
hop) or ``PairBatches`` offline (``algo=dpo|ctpd``: pairs scored once before step 1). ``max_staleness
+ 1`` batches are in flight; 0 is strictly on-policy. Faults: ``actors/streaming.py`` (engines, teacher
replicas, mapping workers) and ``_recover_learner`` (design §7).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import ray

from framework import checkpoint
from framework.actors import streaming
from framework.actors.cluster import Stages
from framework.actors.evaluation import Evaluator
from framework.actors.failures import Kind, RunStopped, classify, first_line
from framework.actors.pairs import PairBatches
from framework.actors.stats import StageMeter
from framework.config import Config
from framework.data import PromptQueue
from framework.eval import summarize_run
from framework.ledger import Ledger
from framework.logging import RunLogger, open_run_log, say, truncate_metrics_after
from framework.types import Prompt


class Controller:
    """``train``: the prompts the cursor walks (offline: ``pairs.prompts``, one per training pair)."""

    def __init__(self, cfg: Config, stages: Stages, train: list[Prompt], evals: list[Prompt],
                 output_dir: Path, pairs: PairBatches | None = None):  # fmt: skip
        self.cfg, self.stages, self.output_dir = cfg, stages, output_dir
        self.queue = PromptQueue(train, seed=cfg.trainer.seed)
        self.step, self.version, self.synced = 0, 0, 0  # synced: the version the engines hold
        self.faults = streaming.FaultBook(cfg.trainer.max_restarts)
        self.stream = streaming.SampleStream(cfg, stages, self.faults, version=lambda: self.version)
        self.pairs = pairs  # offline: the batch source; online, the stream is
        self.batches: streaming.SampleStream | PairBatches = pairs or self.stream
        self.meter = StageMeter()
        self.evaluator = Evaluator(cfg, stages, self.stream, evals, output_dir, pairs)
        self.ledger = Ledger(output_dir / "ledger.jsonl")

    def run(self) -> dict[str, float]:
        t = self.cfg.trainer
        open_run_log(self.output_dir)  # what the console shows also goes to OUTPUT/train.log
        prepared = self.pairs.prepare(self.stages) if self.pairs else {}  # before a checkpoint loads
        self._restore()
        log = RunLogger(self.cfg, self.output_dir, total_steps=t.steps, start_step=self.step)
        log.log(self.step, prepared)
        try:
            final = self._evaluate(log) if t.eval_at_start and self.step == 0 else {}
            while self.step < t.steps:
                metrics = self._step()
                if metrics is None:  # an empty batch (the stream said why) or a learner recovered
                    continue
                log.log(self.step, metrics)
                log.advance(metrics)
                if t.eval_every and self.step % t.eval_every == 0 and self.step < t.steps:
                    final = self._evaluate(log)
                if t.checkpoint_every and self.step % t.checkpoint_every == 0 and self.step < t.steps:
                    self._checkpoint()
            final = self._evaluate(log)
            final["checkpoint"] = str(self._checkpoint(last=True))  # type: ignore[assignment]
        finally:
            log.close()
        summarize_run(self.output_dir)
        return final

    def _step(self) -> dict[str, float] | None:
        """One step: launch batches (source → generate → map → score → map), train the oldest, sync."""
        t, start, times = self.cfg.trainer, time.perf_counter(), {}
        while len(pending := self.batches.pending) <= t.max_staleness and self.step + len(pending) < t.steps:
            self.batches.launch(self.step + len(pending), self.queue.next(self.cfg.data.prompts_per_step))
        try:
            refs = self.batches.collect()
        except streaming.EmptyBatch:
            return None
        times["wait_samples"] = time.perf_counter() - start
        times["sleep"] = self._colocated(self.stages.sleep_rollout)  # colocated: the learner's GPUs
        try:
            metrics = self.stages.learner.train_step(refs, self.version, timeout_s=t.learner_timeout_s)
        except (*streaming.RAY_FAILURES, ray.exceptions.GetTimeoutError):
            self._colocated(partial(self.stages.wake_rollout, None))
            self._recover_learner()
            return None
        self.ledger.record(self.step, metrics.pop("sample_ids"))
        self.batches.pending.popleft()
        self.version, self.step = self.version + 1, self.step + 1
        times["learner"] = time.perf_counter() - start - times["wait_samples"] - times["sleep"]
        times["wake"] = self._colocated(partial(self.stages.wake_rollout, ["weights"]))
        # offline, the engines only evaluate: synced before an evaluation instead
        due = self.pairs is None and (self.step % t.sync_every == 0 or self.step == t.steps)
        times["sync"] = self._sync() if due else 0.0
        times["wake"] += self._colocated(partial(self.stages.wake_rollout, ["kv_cache"]))
        times["step"] = time.perf_counter() - start
        skip = () if self.stages.colocated else ("sleep", "wake")
        metrics.update({f"time/{k}_s": v for k, v in times.items() if k not in skip})
        metrics.update(self.stages.weights.metrics() if due else {})  # sync/bytes
        metrics.update(self.meter.step(self.stages.stats(), times["step"]))
        return {**metrics, **self.faults.metrics(self.stages.restarts)}

    def _sync(self) -> float:
        """Weights into the engines; lost engines are replaced, a failed export is a learner fault."""
        start = time.perf_counter()
        try:
            lost = self.stages.sync_weights(self.version, timeout_s=self.cfg.trainer.sync_timeout_s)
        except streaming.OUTSIDE_STEP_FAILURES as exc:
            self._outside_step_failed("sync", exc)
            self._recover_learner()
            return time.perf_counter() - start
        self.synced = self.version
        for index in lost:
            self.stream.replace_rollout(index, "lost_in_sync")
        return time.perf_counter() - start

    def _outside_step_failed(self, what: str, exc: BaseException) -> None:
        """Eval, sync or checkpoint failed: stop on a configuration error, else count it and say it."""
        failure = classify(exc, what)
        if failure.kind is Kind.FATAL:
            raise RunStopped(f"{what} at step {self.step}: {failure.text}") from None
        self.faults.note(f"{what}_failed")
        say(f"[tokenbridge] {what} at step {self.step} failed ({failure.text}); the run goes on")

    def _colocated(self, call: Callable[[float], list[int]]) -> float:
        """Colocated placement only (else 0 s): a sleep/wake ``call`` on the engines; lost ones restart awake."""
        if not self.stages.colocated:
            return 0.0
        start = time.perf_counter()
        for index in call(self.cfg.trainer.sync_timeout_s):
            self.stream.replace_rollout(index, "lost_in_sleep_wake")
        return time.perf_counter() - start

    def _evaluate(self, log: RunLogger) -> dict[str, float]:
        """An evaluation that fails is skipped (counted, said); lost engines are repaired on next use."""
        try:
            if self.synced != self.version:  # offline runs, or a sync cadence longer than one step
                self._sync()
            return self.evaluator.run(self.step, self.version, log)
        except streaming.OUTSIDE_STEP_FAILURES as exc:
            self._outside_step_failed("eval", exc)
            return {}

    def _checkpoint(self, last: bool = False) -> Path | None:
        """A checkpoint that cannot be written (disk full, a learner lost while saving) leaves the
        previous ones intact and the run going; the run's last checkpoint must be written."""
        try:
            tmp = checkpoint.begin(self.output_dir, self.step)
            self.stages.learner.save(tmp, timeout_s=self.cfg.trainer.learner_timeout_s)
            state = {"step": self.step, "version": self.version,
                     **self.queue.state([b.prompts for b in self.batches.pending]),  # redone on resume
                     **self.faults.state(self.stages.restarts)}  # a resumed run's faults/* go on  # fmt: skip
            final = checkpoint.commit(tmp, state)
            checkpoint.prune(self.output_dir, self.cfg.trainer.keep_checkpoints)
            return final
        except streaming.OUTSIDE_STEP_FAILURES as exc:
            checkpoint.remove_stale(self.output_dir)  # the half-written folder
            if last:
                raise RunStopped(f"the final checkpoint (step {self.step}): {first_line(exc)}") from None
            self._outside_step_failed("checkpoint", exc)
            if not isinstance(exc, OSError):
                self._recover_learner()
            return None

    def _restore(self, ckpt: Path | None = None) -> None:
        resume, startup = self.cfg.trainer.resume, ckpt is None  # else: a learner recovery mid-run
        if ckpt is None and resume != "none":
            ckpt = checkpoint.latest_complete(self.output_dir) if resume == "auto" else Path(resume)
        checkpoint.remove_stale(self.output_dir)
        if ckpt is None:  # from step 0: refuse (resume=none) or move aside an earlier run, never erase it
            checkpoint.prepare_fresh_run(self.output_dir, self.cfg.trainer.overwrite or resume == "auto")
            return
        state = checkpoint.load_controller_state(ckpt)
        self.stages.learner.load(ckpt, timeout_s=self.cfg.trainer.learner_timeout_s)
        self.step, self.version = int(state["step"]), int(state["version"])
        self.queue.load(state)
        self.ledger.truncate_after(self.step)  # steps trained after the checkpoint are redone
        if startup:  # mid-run, the log is open for appending and the live counts hold the checkpoint's
            truncate_metrics_after(self.output_dir / "metrics.jsonl", self.step)
            self.faults.load_state(state)
        checkpoint.note_resume(self.output_dir, ckpt, self.step)
        self._sync()

    def _recover_learner(self) -> None:
        """A learner rank died or hung: new ranks, back to the last checkpoint, batches regenerated."""
        self.faults.record("learner_failed", sum(self.stages.restarts.values()))
        self.stages.restart_learner(self.cfg.trainer.actor_start_timeout_s)
        self.batches.pending.clear()
        if (ckpt := checkpoint.latest_complete(self.output_dir)) is not None:
            self._restore(ckpt)
        else:  # no checkpoint yet: from the initial weights and the first prompt
            self.step, self.version = 0, 0
            self.queue.reset()
            self.ledger.truncate_after(0)
            self._sync()
