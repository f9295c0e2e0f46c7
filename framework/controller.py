"""THE loop: prompts → vLLM student rollouts → token mapping → teacher scores → mapping → learner → sync.

One step, as the loop below reads:
1. keep ``max_staleness + 1`` batches in flight (``SampleStream``:
   engines stream samples, ready samples go mapping → teacher → mapping at once);
2. wait for the oldest batch's mapped samples (ObjectRefs only: the driver never holds bulk data);
3. one learner step on them (all DeepSpeed ranks read the same refs and take their shard);
4. sync the new weights into every vLLM engine; log; evaluate and checkpoint on their cadence.
``placement=colocated``: engines sleep over step 3, then wake weights → sync → KV cache (CPU: no-ops).

``max_staleness = 0`` is strictly on-policy: batch t+1 is launched only after the weights of step t
are in the engines. With s > 0 batch t+s is generated while the learner trains batch t, and the
importance ratio in the loss corrects for the older behaviour policy. Faults: see
``framework/actors/streaming.py`` (engines, teacher replicas, mapping workers) and
``_recover_learner`` (a learner rank: back to the last checkpoint).
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable
from functools import partial
from pathlib import Path

import ray

from framework import checkpoint
from framework.actors.cluster import Stages
from framework.actors.failures import Kind, RunStopped, classify, first_line
from framework.actors.streaming import RAY_FAILURES, EmptyBatch, FaultBook, SampleStream
from framework.config import Config
from framework.data import PromptCursor
from framework.data.verifiers import get_verifier
from framework.eval import accuracy, generation_rows, teacher_kl
from framework.ledger import Ledger
from framework.logging import RunLogger, open_run_log, plot_run, read_metrics, say, truncate_metrics_after
from framework.memory import PeakMemory
from framework.types import Prompt

# what eval, sync and checkpoint may raise and the run survives (see _outside_step_failed)
OUTSIDE_STEP_FAILURES = (*RAY_FAILURES, ray.exceptions.GetTimeoutError, OSError)


class Controller:
    def __init__(
        self, cfg: Config, stages: Stages, train: list[Prompt], evals: list[Prompt], output_dir: Path
    ):
        self.cfg, self.stages, self.output_dir = cfg, stages, output_dir
        self.train_prompts, self.eval_prompts = train, evals
        self.cursor = PromptCursor(train, seed=cfg.trainer.seed)
        self.step, self.version = 0, 0
        self.requeued: deque[list[Prompt]] = deque()  # prompts of batches in flight at a checkpoint
        self.faults = FaultBook(cfg.trainer.max_restarts)
        self.restarts_before: Counter[str] = Counter()  # replacements by earlier processes of this run
        self.stream = SampleStream(cfg, stages, self.faults, version=lambda: self.version)
        self.busy_prev: dict[str, float] = {}
        self.node_memory = PeakMemory(node=True)  # the driver's node: what an OOM kill looks at
        self.ledger = Ledger(output_dir / "ledger.jsonl")

    # ---------------------------------------------------------------- the loop
    def run(self) -> dict[str, float]:
        t = self.cfg.trainer
        open_run_log(self.output_dir)  # what the console shows also goes to OUTPUT/train.log
        self._restore()
        log = RunLogger(self.cfg, self.output_dir, total_steps=t.steps, start_step=self.step)
        final: dict[str, float] = {}
        try:
            if t.eval_at_start and self.step == 0:
                final = self._evaluate(log)
            while self.step < t.steps:
                t0 = time.perf_counter()
                pending = self.stream.pending
                while len(pending) < t.max_staleness + 1 and (self.step + len(pending) < t.steps):
                    prompts = (
                        self.requeued.popleft()
                        if self.requeued
                        else self.cursor.take(self.cfg.data.prompts_per_step)
                    )
                    self.stream.launch(self.step + len(pending), prompts)
                try:
                    refs = self.stream.collect()
                except EmptyBatch:  # every sample was skipped (the stream said why); a new batch
                    continue
                t_gen = time.perf_counter() - t0
                sleep_s = self._colocated(self.stages.sleep_rollout)  # colocated: free the GPUs
                try:
                    metrics = self.stages.learner.train_step(
                        refs, self.version, timeout_s=t.learner_timeout_s
                    )
                except (*RAY_FAILURES, ray.exceptions.GetTimeoutError):
                    self._colocated(partial(self.stages.wake_rollout, None))
                    self._recover_learner()
                    continue
                self.ledger.record(self.step, metrics.pop("sample_ids"))
                pending.popleft()
                self.version += 1
                self.step += 1
                t_learn = time.perf_counter() - t0 - t_gen - sleep_s
                wake_s = self._colocated(partial(self.stages.wake_rollout, ["weights"]))
                sync_s = self._sync() if self.step % t.sync_every == 0 or self.step == t.steps else 0.0
                wake_s += self._colocated(partial(self.stages.wake_rollout, ["kv_cache"]))
                metrics.update(
                    {"time/wait_samples_s": t_gen, "time/learner_s": t_learn, "time/sync_s": sync_s}
                )
                if self.stages.colocated:
                    metrics.update({"time/sleep_s": sleep_s, "time/wake_s": wake_s})
                metrics["time/step_s"] = time.perf_counter() - t0
                metrics.update(self._busy(metrics["time/step_s"]))
                metrics.update(self._fault_metrics())
                log.log(self.step, metrics)
                log.advance(
                    {"loss": metrics.get("loss", float("nan")), "kl": metrics.get("batch/reverse_kl", 0.0)}
                )
                if t.eval_every and self.step % t.eval_every == 0 and self.step < t.steps:
                    final = self._evaluate(log)
                if t.checkpoint_every and self.step % t.checkpoint_every == 0 and self.step < t.steps:
                    self._checkpoint()
            final = self._evaluate(log)
            final["checkpoint"] = str(self._checkpoint(last=True))  # type: ignore[assignment]
        finally:
            log.close()
        self._summary(final)
        return final

    def _summary(self, final: dict[str, float]) -> None:
        """The closing lines: first → last held-out metrics, the best evaluation kept, the plot."""
        rows = read_metrics(self.output_dir / "metrics.jsonl")
        evals = [r for r in rows if any(k.startswith("eval/") for k in r)]
        for key, name in (("eval/accuracy", "accuracy"), ("eval/teacher_kl", "teacher-KL")):
            values = [f"{r[key]:.3f}" for r in evals if key in r]
            if values:
                say(f"[tokenbridge] held-out {name} by eval (steps {evals[0]['step']}..{evals[-1]['step']}): "
                    + " → ".join(values))  # fmt: skip
        last = next((r for r in reversed(rows) if "memory/node_peak_gib" in r), {})  # peaks only grow
        peaks = {k: v for k, v in last.items() if k.startswith("memory/")}
        if peaks:
            say("[tokenbridge] peak memory GiB: " + "  ".join(
                f"{k[len('memory/'):-len('_peak_gib')]}={v:.1f}" for k, v in sorted(peaks.items())))  # fmt: skip
        best = checkpoint.best_record(self.output_dir)
        if best is not None:
            say(f"[tokenbridge] best {best['metric']}={best['value']:.4f} at step {best['step']}: "
                f"{self.output_dir / 'best' / 'student'}")  # fmt: skip
        plot = plot_run(self.output_dir, rows)  # the rows read above, not the file again
        if plot is not None:
            say(f"[tokenbridge] curves: {plot}")

    def _sync(self) -> float:
        """Weights into the engines. Engines lost on the way are replaced; a failed export (the
        learner's side) is a learner fault: new ranks, back to the last checkpoint."""
        start = time.perf_counter()
        try:
            lost = self.stages.sync_weights(self.version, timeout_s=self.cfg.trainer.sync_timeout_s)
        except OUTSIDE_STEP_FAILURES as exc:
            self._outside_step_failed("sync", exc)
            self._recover_learner()
            return time.perf_counter() - start
        for index in lost:
            self._replace_rollout(index, "lost_in_sync")
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
            self._replace_rollout(index, "lost_in_sleep_wake")
        return time.perf_counter() - start

    def _replace_rollout(self, index: int, how: str) -> None:
        # only rollout engines sync and sleep (the sft_teacher generators never do)
        if not self.stages.teacher_generators:
            self.stream.replace_engine(index, how)
        else:
            self.stages.restart("rollout", index, self.version, self.cfg.trainer.actor_start_timeout_s)

    def _restarts(self) -> Counter[str]:
        """Actor replacements per stage over the whole run: earlier processes' (from the checkpoint a
        resume loaded) plus this one's. Only the logged counter is cumulative: the
        ``trainer.max_restarts`` budget counts ``stages.restarts``, this process's replacements, so a
        resumed run gets a fresh budget instead of stopping at its first replacement after a long run
        (a run that keeps failing still stops, within one process)."""
        return self.restarts_before + self.stages.restarts

    def _fault_metrics(self) -> dict[str, float]:
        """``faults/<name>`` and ``faults/restarts_<stage>``: cumulative over resumes (see _restore)."""
        out = {f"faults/{k}": float(v) for k, v in self.faults.counts.items()}
        out.update({f"faults/restarts_{k}": float(v) for k, v in self._restarts().items()})
        return out

    def _busy(self, step_s: float) -> dict[str, float]:
        out = {}
        for stage, stats in self.stages.stats().items():
            busy = sum(s.get("busy_s", 0.0) for s in stats) / max(1, len(stats))
            items = sum(s.get("items", 0.0) for s in stats)  # tokens generated / scored / mapped / trained
            delta = max(0.0, busy - self.busy_prev.get(stage, 0.0))
            out[f"stage_s/{stage}"] = delta  # seconds of work per actor of this stage during the step
            out[f"busy/{stage}"] = min(1.0, delta / max(step_s, 1e-9))
            out[f"tokens_per_s/{stage}"] = (items - self.busy_prev.get(f"{stage}#items", 0.0)) / max(
                step_s, 1e-9
            )
            self.busy_prev[stage], self.busy_prev[f"{stage}#items"] = busy, items
            for key in {k for s in stats for k in s if k.startswith("skipped_")}:
                out[f"counts/{stage}/{key}"] = sum(s.get(key, 0.0) for s in stats)
            if stats:  # the largest actor of the stage (process tree, vLLM engine processes included)
                out[f"memory/{stage}_peak_gib"] = max(s.get("peak_mem_gib", 0.0) for s in stats)
        out["memory/node_peak_gib"] = self.node_memory.snapshot()["peak_mem_gib"]
        return out

    # ---------------------------------------------------------------- eval
    def _evaluate(self, log: RunLogger) -> dict[str, float]:
        """An evaluation that fails is skipped (counted, said); lost engines are repaired on next use."""
        try:
            return self._run_eval(log)
        except OUTSIDE_STEP_FAILURES as exc:
            self._outside_step_failed("eval", exc)
            return {}

    def _run_eval(self, log: RunLogger) -> dict[str, float]:
        """Held-out accuracy (greedy) and teacher reverse-KL on the student's own samples (T = 1, fixed seed)."""
        self.stages.await_started(self.version)  # every engine up and on the current weights
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
            chain = self.stream.chain([ray.put(s) for s in sampled_out], for_training=False)
            metrics.update(teacher_kl(ray.get(chain.out_ref, timeout=self.cfg.trainer.teacher_timeout_s)))
        log.log(self.step, metrics)
        log.log_generations(self.step, generation_rows(greedy_out, verify, self.cfg.logging.log_generations))
        say(f"[eval step {self.step}] " + "  ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
        self._keep_best(metrics)
        return metrics

    def _keep_best(self, metrics: dict[str, float]) -> None:
        """Keep the student of the best evaluation so far in ``OUTPUT/best`` (beside the last checkpoint)."""
        score = checkpoint.eval_score(metrics)
        best = checkpoint.best_record(self.output_dir)
        if score is None or (best is not None and score[1] <= best["value"]):
            return
        record = {"step": self.step, "metric": score[0], "value": score[1]}
        timeout = self.cfg.trainer.learner_timeout_s
        checkpoint.save_best(
            self.output_dir, record, partial(self.stages.learner.save_student, timeout_s=timeout)
        )

    # ---------------------------------------------------------------- checkpoints
    def _checkpoint(self, last: bool = False) -> Path | None:
        """A checkpoint that cannot be written (disk full, a learner lost while saving) leaves the
        previous ones intact and the run going; the run's last checkpoint must be written."""
        try:
            return self._write_checkpoint()
        except OUTSIDE_STEP_FAILURES as exc:
            checkpoint.remove_stale(self.output_dir)  # the half-written folder
            if last:
                raise RunStopped(f"the final checkpoint (step {self.step}): {first_line(exc)}") from None
            self._outside_step_failed("checkpoint", exc)
            if not isinstance(exc, OSError):
                self._recover_learner()
            return None

    def _write_checkpoint(self) -> Path:
        tmp = checkpoint.begin(self.output_dir, self.step)
        self.stages.learner.save(tmp, timeout_s=self.cfg.trainer.learner_timeout_s)
        state = {
            "step": self.step,
            "version": self.version,
            "cursor": self.cursor.state(),
            # batches already launched but not trained are regenerated after a resume
            "requeued_prompt_ids": [[p.prompt_id for p in b.prompts] for b in self.stream.pending],
            # the fault counters, so that a resumed run's faults/* metrics continue from here
            "faults": dict(self.faults.counts),
            "restarts": dict(self._restarts()),
        }
        final = checkpoint.commit(tmp, state)
        checkpoint.prune(self.output_dir, self.cfg.trainer.keep_checkpoints)
        return final

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
        self.cursor = PromptCursor.from_state(self.train_prompts, self.cfg.trainer.seed, state["cursor"])
        by_id = {p.prompt_id: p for p in self.train_prompts}
        self.requeued = deque([by_id[i] for i in ids] for ids in state.get("requeued_prompt_ids", []))
        self.ledger.truncate_after(self.step)  # steps trained after the checkpoint are redone
        if startup:  # (mid-run the log file is open for appending; read_metrics keeps the last row)
            truncate_metrics_after(self.output_dir / "metrics.jsonl", self.step)
            # the counters continue from the checkpoint's (an older checkpoint has none: from zero);
            # faults after it in the process that crashed are not known. Mid-run the live counts
            # stay: they already hold the checkpoint's and what happened since.
            self.faults.counts = Counter({str(k): int(v) for k, v in state.get("faults", {}).items()})
            self.restarts_before = Counter({str(k): int(v) for k, v in state.get("restarts", {}).items()})
        # a record of where this process picked up (the run's log says it too)
        checkpoint.write_json(
            self.output_dir / "resumed_from.json", {"checkpoint": str(ckpt), "step": self.step}
        )
        say(f"[tokenbridge] resumed from {ckpt} (step {self.step})")
        self._sync()

    def _recover_learner(self) -> None:
        """A learner rank died or hung: new ranks, back to the last checkpoint, batches regenerated."""
        self.faults.record("learner_failed", sum(self.stages.restarts.values()))
        self.stages.restart_learner(self.cfg.trainer.actor_start_timeout_s)
        self.stream.pending.clear()
        ckpt = checkpoint.latest_complete(self.output_dir)
        if ckpt is not None:
            self._restore(ckpt)
        else:  # no checkpoint yet: from the initial weights and the first prompt
            self.step, self.version, self.requeued = 0, 0, deque()
            self.cursor = PromptCursor(self.train_prompts, seed=self.cfg.trainer.seed)
            self.ledger.truncate_after(0)
            self._sync()
