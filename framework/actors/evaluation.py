"""Held-out evaluation on the live actors (docs/design.md §5.4): what the controller calls on its cadence.

- ``eval/accuracy``: greedy answers of the rollout engines on the held-out prompts, checked by the
  data's verifier (absent when the data has none);
- ``eval/teacher_kl`` (and its parts): the teacher's reverse KL on the student's own samples (T = 1,
  fixed seed), through the same mapping → teacher → mapping hop as training;
- offline preference runs add the preference accuracies of `PairBatches.evaluate`.

The student of the best evaluation so far is kept in ``OUTPUT/best`` beside the last checkpoint.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import ray

from framework import checkpoint
from framework.actors.cluster import Stages
from framework.actors.pairs import PairBatches
from framework.actors.streaming import SampleStream
from framework.config import Config
from framework.data.verifiers import get_verifier
from framework.eval import accuracy, console_metrics, generation_rows, teacher_kl
from framework.logging import RunLogger, say
from framework.types import Prompt


class Evaluator:
    def __init__(self, cfg: Config, stages: Stages, stream: SampleStream, prompts: list[Prompt],
                 output_dir: Path, pairs: PairBatches | None = None):  # fmt: skip
        self.cfg, self.stages, self.stream, self.prompts = cfg, stages, stream, prompts
        self.output_dir, self.pairs = output_dir, pairs
        self.verify = get_verifier(cfg.data.eval)

    def run(self, step: int, version: int, log: RunLogger) -> dict[str, float]:
        """Evaluate the engines' weights (they must hold ``version``), log, and keep the best student."""
        self.stages.await_started(version)  # every engine up and on the current weights
        cfg, engines, prompts = self.cfg, self.stages.rollout, self.prompts
        greedy = dict(n=1, temperature=0.0, top_p=1.0, max_tokens=cfg.rollout.max_new_tokens, seed=0)
        sampled = dict(greedy, temperature=1.0, seed=1234)
        runs = [
            [e.generate.remote(prompts[i :: len(engines)], s) for i, e in enumerate(engines)]
            for s in (greedy, sampled)
        ]
        greedy_out, sampled_out = (
            [r for part in ray.get(refs, timeout=cfg.trainer.rollout_timeout_s) for r in part]
            for refs in runs
        )
        metrics: dict[str, float] = {}
        acc = accuracy(greedy_out, self.verify)
        if acc is not None:
            metrics["eval/accuracy"] = acc
        if sampled_out:
            chain = self.stream.chain([ray.put(s) for s in sampled_out], for_training=False)
            metrics.update(teacher_kl(ray.get(chain.out_ref, timeout=cfg.trainer.teacher_timeout_s)))
        if self.pairs:
            metrics.update(self.pairs.evaluate(self.stages))
        log.log(step, metrics)
        log.log_generations(step, generation_rows(greedy_out, self.verify, cfg.logging.log_generations))
        shown = console_metrics(metrics, cfg.algo.name)
        say(f"[eval step {step}] " + "  ".join(f"{k}={v:.4f}" for k, v in shown.items()))
        self._keep_best(step, metrics)
        return metrics

    def _keep_best(self, step: int, metrics: dict[str, float]) -> None:
        score = checkpoint.eval_score(metrics)
        best = checkpoint.best_record(self.output_dir)
        if score is None or (best is not None and score[1] <= best["value"]):
            return
        record = {"step": step, "metric": score[0], "value": score[1]}
        save = partial(self.stages.learner.save_student, timeout_s=self.cfg.trainer.learner_timeout_s)
        checkpoint.save_best(self.output_dir, record, save)


__all__ = ["Evaluator"]
