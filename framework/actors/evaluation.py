"""Held-out evaluation on the live actors (docs/design.md §5.4): what the controller calls on its cadence.

- ``eval/accuracy``: greedy answers of the rollout engines on the held-out prompts, checked by the
  data's verifier (absent when the data has none);
- ``eval/teacher_kl`` (and its parts): the teacher's reverse KL on the student's own samples (T = 1,
  fixed seed), through the same mapping → teacher → mapping hop as training;
- offline preference runs add the preference accuracies of `PairBatches.evaluate`;
- ``harness/<task>/<metric>`` when ``harness.tasks`` is set: lm-evaluation-harness on the same live
  engines (framework/harness), its results also in ``OUTPUT/harness/step_NNNNNN.json``.

The student of the best evaluation so far is kept in ``OUTPUT/best`` beside the last checkpoint.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

import ray

from framework import checkpoint
from framework.actors.cluster import Stages
from framework.actors.pairs import PairBatches
from framework.actors.streaming import SampleStream
from framework.config import Config
from framework.data.verifiers import get_verifier
from framework.eval import accuracy, console_metrics, generation_rows, length_cut_frac, teacher_kl
from framework.logging import RunLogger, say
from framework.types import Prompt

CUT_WARNING_FRAC = 0.05  # a larger share of held-out answers cut by the token limit is worth a warning


class Evaluator:
    def __init__(self, cfg: Config, stages: Stages, stream: SampleStream, prompts: list[Prompt],
                 output_dir: Path, pairs: PairBatches | None = None):  # fmt: skip
        self.cfg, self.stages, self.stream, self.prompts = cfg, stages, stream, prompts
        self.output_dir, self.pairs = output_dir, pairs
        self.verify = get_verifier(cfg.data.eval)
        self.harness_tasks: list[Any] = []
        self._tokenizer: Any = None  # the student's, loaded at the first harness evaluation
        self._warned_cut = False
        if cfg.harness.tasks:  # read and checked now, so a bad task file stops the run before step 1
            from framework.harness.tasks import harness_tasks

            h = cfg.harness
            # seed + 1: data.eval's held-out draw (train.py), so `harness.tasks=[zoo:arith]` with
            # harness.limit = data.num_eval scores the very problems behind eval/accuracy
            self.harness_tasks = harness_tasks(
                list(h.tasks), limit=h.limit, seed=cfg.trainer.seed + 1, max_gen_toks=self._harness_tokens()
            )

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
        if greedy_out:
            metrics["eval/length_cut_frac"] = length_cut_frac(greedy_out)
            self._warn_if_cut(metrics["eval/length_cut_frac"])
        if sampled_out:
            mapped = self._score(sampled_out)
            metrics.update(teacher_kl([m for part in mapped.values() for m in part]))
        if len(self.stages.teacher_names) > 1:  # each teacher's domain on its own
            metrics.update(self._per_teacher(greedy_out, mapped if sampled_out else {}))
        if self.pairs:
            metrics.update(self.pairs.evaluate(self.stages))
        if self.harness_tasks:
            metrics.update(self._harness(step))
        log.log(step, metrics)
        log.log_generations(step, generation_rows(greedy_out, self.verify, cfg.logging.log_generations))
        shown = console_metrics(metrics, cfg.algo.name)
        say(f"[eval step {step}] " + "  ".join(f"{k}={v:.4f}" for k, v in shown.items()))
        self._keep_best(step, metrics)
        return metrics

    def _warn_if_cut(self, frac: float) -> None:
        """Say once when answers are cut by the length limit: accuracy then measures the limit."""
        if frac > CUT_WARNING_FRAC and not self._warned_cut:
            self._warned_cut = True
            n = self.cfg.rollout.max_new_tokens
            say(f"[tokenbridge] warning: {frac:.0%} of the held-out answers stopped at rollout.max_new_tokens={n} "
                f"before their end; raise rollout.max_new_tokens (training samples are cut the same way)")  # fmt: skip

    def _slot_of(self, rollouts: list) -> list[int]:
        return self.stream.route([r.prompt for r in rollouts])

    def _score(self, sampled: list) -> dict[int, list]:
        """The held-out samples scored by the teacher each prompt routes to (one hop per teacher)."""
        slots = self._slot_of(sampled)
        chains = {
            k: self.stream.chain(
                [ray.put(r) for r, s in zip(sampled, slots) if s == k], for_training=False, slot=k
            )
            for k in sorted(set(slots))
        }
        timeout = self.cfg.trainer.teacher_timeout_s
        return {k: ray.get(chain.out_ref, timeout=timeout) for k, chain in chains.items()}

    def _per_teacher(self, greedy: list, mapped: dict[int, list]) -> dict[str, float]:
        """``teacher/<name>/eval_accuracy`` and ``teacher/<name>/eval_teacher_kl``: the held-out
        prompts routed to each teacher, against that teacher."""
        out: dict[str, float] = {}
        slots = self._slot_of(greedy)
        for k, name in enumerate(self.stages.teacher_names):
            acc = accuracy([r for r, s in zip(greedy, slots) if s == k], self.verify)
            if acc is not None:
                out[f"teacher/{name}/eval_accuracy"] = acc
            kl = teacher_kl(mapped.get(k, []))
            if kl:
                out[f"teacher/{name}/eval_teacher_kl"] = kl["eval/teacher_kl"]
        return out

    def _harness_tokens(self) -> int:
        return self.cfg.harness.max_new_tokens or self.cfg.rollout.max_new_tokens

    def _harness(self, step: int) -> dict[str, float]:
        """lm-evaluation-harness on the rollout engines: greedy generations and continuation scores,
        dealt round-robin over the engines like the held-out prompts."""
        from transformers import AutoTokenizer

        from framework.harness.lm import EngineLM
        from framework.harness.tasks import run_harness

        cfg, engines = self.cfg, self.stages.rollout
        timeout = cfg.trainer.rollout_timeout_s

        def dealt(method: str, items: list, *args: Any) -> list:
            refs = [getattr(e, method).remote(items[i :: len(engines)], *args) for i, e in enumerate(engines)]
            out: list = [None] * len(items)
            for i, part in enumerate(ray.get(refs, timeout=timeout)):
                out[i :: len(engines)] = part
            return out

        if self._tokenizer is None:
            self._tokenizer = AutoTokenizer.from_pretrained(
                self.stages.student_path, trust_remote_code=cfg.pair.trust_remote_code
            )
        lm = EngineLM(
            self._tokenizer, partial(dealt, "greedy_ids"), partial(dealt, "score_ranked"),
            max_length=cfg.rollout.max_model_len, max_gen_toks=self._harness_tokens(),
        )  # fmt: skip
        out = run_harness(lm, self.harness_tasks, limit=cfg.harness.limit, seed=cfg.trainer.seed)
        folder = self.output_dir / "harness"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"step_{step:06d}.json").write_text(json.dumps({"step": step, **out}, indent=2))
        return out["metrics"]

    def _keep_best(self, step: int, metrics: dict[str, float]) -> None:
        score = checkpoint.eval_score(metrics)
        best = checkpoint.best_record(self.output_dir)
        if score is None or (best is not None and score[1] <= best["value"]):
            return
        record = {"step": step, "metric": score[0], "value": score[1]}
        save = partial(self.stages.learner.save_student, timeout_s=self.cfg.trainer.learner_timeout_s)
        checkpoint.save_best(self.output_dir, record, save)


__all__ = ["Evaluator"]
