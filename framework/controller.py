"""THE loop: prompts → vLLM student rollouts → token mapping → teacher scores → mapping → learner → sync.

The controller never holds bulk data. It hands Ray ObjectRefs from stage to stage: each rollout
engine streams samples as vLLM finishes them, and whatever samples are ready are chained at once
into one mapping → teacher → mapping hop (dynamic micro-batching). At most
``trainer.max_inflight_batches`` batches are in flight; batch t+s may be generated while the learner
trains batch t when ``trainer.max_staleness = s > 0`` (the importance ratio in the loss corrects for
the older behaviour policy), and strictly on-policy when s = 0. Every remote wait has a timeout.
"""

from __future__ import annotations

import json
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import ray

from framework import checkpoint
from framework.actors.cluster import Stages
from framework.config import Config
from framework.data import PromptCursor
from framework.data.verifiers import get_verifier
from framework.logging import RunLogger
from framework.types import Prompt


class StageTimeout(RuntimeError):
    """A remote stage did not answer within its configured timeout."""


@dataclass
class InflightBatch:
    step: int
    prompts: list[Prompt]
    generators: list  # ObjectRefGenerator per rollout engine, None once exhausted
    launched_at: float
    last_progress: float
    out_refs: list = field(default_factory=list)  # ObjectRef[list[MappedSample]]
    num_rollouts: int = 0


class Controller:
    def __init__(self, cfg: Config, stages: Stages, train: list[Prompt], evals: list[Prompt], output_dir: Path):
        self.cfg, self.stages, self.output_dir = cfg, stages, output_dir
        self.train_prompts, self.eval_prompts = train, evals
        self.verify = get_verifier(cfg.data.eval)
        self.cursor = PromptCursor(train, seed=cfg.trainer.seed)
        self.step, self.version, self.rr = 0, 0, 0
        self.pending: deque[InflightBatch] = deque()
        self.requeued: deque[list[Prompt]] = deque()  # prompts of batches in flight at a checkpoint
        self.busy_prev: dict[str, float] = {}
        self.sampling = dict(
            n=cfg.rollout.samples_per_prompt, temperature=cfg.rollout.temperature,
            top_p=cfg.rollout.top_p, max_tokens=cfg.rollout.max_new_tokens,
        )  # fmt: skip

    # ---------------------------------------------------------------- dataflow
    def _launch(self, step: int) -> None:
        prompts = self.requeued.popleft() if self.requeued else self.cursor.take(self.cfg.data.prompts_per_step)
        engines = self.stages.rollout
        gens = []
        for i, engine in enumerate(engines):
            chunk = prompts[i :: len(engines)]
            if chunk:
                sampling = dict(self.sampling, seed=self.cfg.trainer.seed * 100_003 + step * len(engines) + i)
                gens.append(engine.generate_stream.options(num_returns="streaming").remote(chunk, sampling))
        now = time.time()
        self.pending.append(InflightBatch(step, prompts, gens, now, now))

    def _chain(self, rollout_refs: list) -> ray.ObjectRef:
        """One mapping → teacher → mapping hop for the samples that are ready now."""
        self.rr += 1
        mapper = self.stages.mapping[self.rr % len(self.stages.mapping)]
        teacher = self.stages.teacher[self.rr % len(self.stages.teacher)]
        requests = mapper.prepare.remote(*rollout_refs)
        scores = teacher.score.remote(requests)
        return mapper.finish.remote(requests, scores, *rollout_refs)

    def _pump(self, batch: InflightBatch, wait_s: float) -> None:
        live = [g for g in batch.generators if g is not None]
        if not live:
            return
        ray.wait(live, num_returns=1, timeout=wait_s)
        for k, gen in enumerate(batch.generators):
            if gen is None:
                continue
            ready = []
            while gen.next_ready():
                try:
                    ready.append(next(gen))
                except StopIteration:
                    batch.generators[k] = None
                    break
            if ready:
                batch.out_refs.append(self._chain(ready))
                batch.num_rollouts += len(ready)
                batch.last_progress = time.time()

    def _collect(self, batch: InflightBatch) -> list:
        """Drive every in-flight batch until ``batch`` has all its mapped samples; return their refs."""
        t = self.cfg.trainer
        while any(g is not None for g in batch.generators):
            for other in self.pending:
                if other is not batch:
                    self._pump(other, 0.0)
            self._pump(batch, 0.05)
            if time.time() - batch.last_progress > t.rollout_timeout_s:
                raise StageTimeout(f"rollout: no sample for {t.rollout_timeout_s:.0f}s (trainer.rollout_timeout_s)")
        _, not_ready = ray.wait(
            batch.out_refs, num_returns=len(batch.out_refs), timeout=t.teacher_timeout_s + t.mapping_timeout_s
        )
        if not_ready:
            raise StageTimeout(
                f"teacher/mapping: {len(not_ready)} sample groups not done within "
                f"{t.teacher_timeout_s + t.mapping_timeout_s:.0f}s (trainer.teacher_timeout_s + mapping_timeout_s)"
            )
        return batch.out_refs

    def _sync(self) -> float:
        start = time.perf_counter()
        self.stages.sync_weights(self.version, timeout_s=self.cfg.trainer.sync_timeout_s)
        return time.perf_counter() - start

    # ---------------------------------------------------------------- the loop
    def run(self) -> dict[str, float]:
        cfg = self.cfg.trainer
        self._restore()
        log = RunLogger(self.cfg, self.output_dir, total_steps=cfg.steps, start_step=self.step)
        final: dict[str, float] = {}
        try:
            if cfg.eval_at_start and self.step == 0:
                final = self._evaluate(log)
            while self.step < cfg.steps:
                t0 = time.perf_counter()
                staleness = cfg.max_staleness
                while len(self.pending) < min(cfg.max_inflight_batches, staleness + 1) and (
                    self.step + len(self.pending) < cfg.steps
                ):
                    self._launch(self.step + len(self.pending))
                batch = self.pending[0]
                refs = self._collect(batch)
                t_gen = time.perf_counter() - t0
                metrics = self.stages.learner.train_step(refs, self.version, timeout_s=self.cfg.trainer.learner_timeout_s)
                self.pending.popleft()
                self.version += 1
                self.step += 1
                t_learn = time.perf_counter() - t0 - t_gen
                sync_s = self._sync() if self.step % cfg.sync_every == 0 or self.step == cfg.steps else 0.0
                metrics.update({"time/wait_samples_s": t_gen, "time/learner_s": t_learn, "time/sync_s": sync_s})
                metrics["time/step_s"] = time.perf_counter() - t0
                metrics.update(self._busy(metrics["time/step_s"]))
                log.log(self.step, metrics)
                log.advance({"loss": metrics.get("loss", float("nan")), "kl": metrics.get("batch/reverse_kl", 0.0)})
                if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < cfg.steps:
                    final = self._evaluate(log)
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step < cfg.steps:
                    self._checkpoint()
            final = self._evaluate(log)
            final["checkpoint"] = str(self._checkpoint())  # type: ignore[assignment]
        finally:
            log.close()
        return final

    def _busy(self, step_s: float) -> dict[str, float]:
        out = {}
        for stage, stats in self.stages.stats().items():
            busy = sum(s.get("busy_s", 0.0) for s in stats) / max(1, len(stats))
            out[f"busy/{stage}"] = min(1.0, (busy - self.busy_prev.get(stage, 0.0)) / max(step_s, 1e-9))
            self.busy_prev[stage] = busy
            for key in {k for s in stats for k in s if k.startswith("skipped_")}:
                out[f"counts/{stage}/{key}"] = sum(s.get(key, 0.0) for s in stats)
        return out

    # ---------------------------------------------------------------- eval
    def _evaluate(self, log: RunLogger) -> dict[str, float]:
        """Held-out task accuracy (greedy) and teacher reverse-KL on the student's own samples."""
        engines, prompts = self.stages.rollout, self.eval_prompts
        greedy = dict(n=1, temperature=0.0, top_p=1.0, max_tokens=self.cfg.rollout.max_new_tokens, seed=0)
        refs = [e.generate.remote(prompts[i :: len(engines)], greedy) for i, e in enumerate(engines)]
        rollouts = [r for part in ray.get(refs, timeout=self.cfg.trainer.rollout_timeout_s) for r in part]
        metrics: dict[str, float] = {}
        if self.verify is not None and rollouts and all(r.prompt.answer is not None for r in rollouts):
            correct = [self.verify(r.response_text, r.prompt.answer) for r in rollouts]
            metrics["eval/accuracy"] = float(np.mean(correct))
        sampled = dict(greedy, temperature=1.0, seed=1234)
        gen_refs = [e.generate.remote(prompts[i :: len(engines)], sampled) for i, e in enumerate(engines)]
        samples = [s for part in ray.get(gen_refs, timeout=self.cfg.trainer.rollout_timeout_s) for s in part]
        mapped_refs = self._chain([ray.put(s) for s in samples]) if samples else None
        mapped = ray.get(mapped_refs, timeout=self.cfg.trainer.teacher_timeout_s) if mapped_refs else []
        tokens = sum(float(m.mask.sum()) for m in mapped)
        if tokens:
            metrics["eval/teacher_kl"] = sum(float(((m.behaviour_logprobs - m.teacher_logprobs) * m.mask).sum()) for m in mapped) / tokens
            metrics["eval/teacher_logprob_per_token"] = sum(float((m.teacher_logprobs * m.mask).sum()) for m in mapped) / tokens
        log.log(self.step, metrics)
        rows = [
            {"prompt": r.prompt.messages[-1]["content"], "response": r.response_text, "answer": r.prompt.answer,
             "correct": bool(self.verify(r.response_text, r.prompt.answer)) if self.verify and r.prompt.answer else None}
            for r in rollouts[: self.cfg.logging.log_generations]
        ]  # fmt: skip
        log.log_generations(self.step, rows)
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

    def _restore(self) -> None:
        resume = self.cfg.trainer.resume
        if resume == "none":
            return
        ckpt = checkpoint.latest_complete(self.output_dir) if resume == "auto" else Path(resume)
        if ckpt is None:
            return
        state = checkpoint.load_controller_state(ckpt)
        self.stages.learner.load(ckpt, timeout_s=self.cfg.trainer.learner_timeout_s)
        self.step, self.version = int(state["step"]), int(state["version"])
        self.cursor = PromptCursor.from_state(self.train_prompts, self.cfg.trainer.seed, state["cursor"])
        by_id = {p.prompt_id: p for p in self.train_prompts}
        self.requeued.extend([by_id[i] for i in ids] for ids in state.get("requeued_prompt_ids", []))
        self._sync()
        (self.output_dir / "resumed_from.json").write_text(json.dumps({"checkpoint": str(ckpt), "step": self.step}))
