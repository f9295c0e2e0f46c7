"""Offline preference pairs as the controller's batch source (``algo=dpo|ctpd``; docs/design.md §5.5).

The online source (`SampleStream`) generates, maps and scores every batch. An offline run has that
work done once, before the first step (`PairBatches.prepare`):

    pairs ──encode_pairs (driver)──► student sequences + aligned spans + teacher requests
      │ teacher pool .score, once                → τ_k per span          (ctpd's anchor, evaluation)
      │ learner group .logprobs at version 0     → frozen reference      (dpo's anchor, ctpd's weights)

after which a batch is just the step's encoded pairs put in Ray's object store, trained by the same
learner group (`LearnerWorker.train_step` deals the pairs over the ranks). The controller's cursor
walks `PairBatches.prompts`: one `Prompt` per training pair, whose ``prompt_id`` is the pair id, so
the cursor, the ledger, checkpoints and resume work unchanged.

The reference must be the student *before* any step: `prepare` runs before the controller restores a
checkpoint, so a resumed run gets the same reference as the run it continues.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, replace

import ray

from framework.actors.cluster import Stages
from framework.algo import CTPD, DPO
from framework.config import Config
from framework.logging import say
from framework.mapping import TokenMapper
from framework.preference.evaluate import preference_metrics
from framework.preference.pairs import (
    EncodedPair,
    attach_reference,
    attach_teacher_scores,
    encode_pairs,
    span_stats,
    student_sequences,
    teacher_requests,
)
from framework.types import PreferencePair, Prompt

TRAIN_EVAL_PAIRS = 64  # training pairs also evaluated each time (how well the training set is fitted)
CHUNK = 512  # responses per teacher / learner call of the one-time pass


@dataclass
class PairBatch:  # what SampleStream's InflightBatch is for rollouts: one step's prompts and data
    step: int
    prompts: list[Prompt]
    refs: list


class PairBatches:
    """The training batches of an offline preference run (module docstring)."""

    def __init__(self, cfg: Config, student_path: str, teacher_path: str, train: list[PreferencePair],
                 held_out: list[PreferencePair]):  # fmt: skip
        self.cfg, self.student_path, self.teacher_path = cfg, student_path, teacher_path
        self.raw_train, self.raw_held_out = train, held_out
        self.prompts = [Prompt(p.pair_id, p.messages) for p in train]
        self.pending: deque[PairBatch] = deque()
        self.by_id: dict[str, EncodedPair] = {}
        self.held_out: list[EncodedPair] = []
        self.train_eval: list[EncodedPair] = []

    def prepare(self, stages: Stages) -> dict[str, float]:
        """Encode, score (teacher pool) and reference (learner at version 0) every pair, once.
        Returns the span statistics of the pairs (logged at step 0)."""
        start = time.perf_counter()
        say(f"[tokenbridge] preparing {len(self.raw_train)} training and {len(self.raw_held_out)} held-out "
            "pairs once: spans, teacher scores, reference logprobs")  # fmt: skip
        mapper = TokenMapper.from_paths(self.student_path, self.teacher_path, topk=False)
        train, self.held_out = encode_pairs(self.raw_train, mapper), encode_pairs(self.raw_held_out, mapper)
        everything = train + self.held_out
        attach_teacher_scores(everything, self._score(stages, teacher_requests(everything)))
        # evaluation copies of some training pairs: their reference comes from the same logprobs call
        # as their evaluation, so that at the start every DPO margin is exactly 0 (no batching noise)
        self.train_eval = [
            EncodedPair(p.pair_id, replace(p.chosen), replace(p.rejected)) for p in train[:TRAIN_EVAL_PAIRS]
        ]
        for pairs in (train, self.held_out, self.train_eval):
            attach_reference(pairs, self._logprobs(stages, pairs))
        self.by_id = {p.pair_id: p for p in train}
        say(f"[tokenbridge] pairs prepared in {time.perf_counter() - start:.0f}s")
        return {"pairs/train": float(len(train)), "pairs/eval": float(len(self.held_out)),
                **span_stats(everything)}  # fmt: skip

    def _score(self, stages: Stages, requests: list) -> list:
        """Every response scored once: chunks of ``CHUNK`` requests dealt round-robin over the teacher
        replicas, each chunk bounded by ``trainer.teacher_timeout_s`` (not the whole pass)."""
        teachers, chunks = stages.teacher, range(0, len(requests), CHUNK)
        parts = [
            teachers[k % len(teachers)].score.remote(requests[i : i + CHUNK]) for k, i in enumerate(chunks)
        ]
        return [s for part in parts for s in ray.get(part, timeout=self.cfg.trainer.teacher_timeout_s)]

    def _logprobs(self, stages: Stages, pairs: list[EncodedPair]) -> list:
        """The learner's logprobs of every response, ``CHUNK`` responses per call (each bounded by
        ``trainer.learner_timeout_s``): the reference at version 0 and every evaluation, batched
        alike (so that an evaluation at version 0 reproduces the reference exactly)."""
        ids, starts = student_sequences(pairs)
        timeout = self.cfg.trainer.learner_timeout_s
        return [
            lp
            for i in range(0, len(ids), CHUNK)
            for lp in stages.learner.logprobs(ids[i : i + CHUNK], starts[i : i + CHUNK], timeout_s=timeout)
        ]

    # ------------------------------------------------------------ the controller's source verbs
    def launch(self, step: int, prompts: list[Prompt]) -> None:
        pairs = [self.by_id[p.prompt_id] for p in prompts]
        self.pending.append(PairBatch(step, prompts, [ray.put(pairs)]))

    def collect(self) -> list:
        return self.pending[0].refs

    def evaluate(self, stages: Stages) -> dict[str, float]:
        """Preference accuracies and losses of the current student on the held-out pairs
        (``eval/*``) and on some training pairs (``train_eval/*``): framework.preference.evaluate."""
        a = self.cfg.algo
        assert isinstance(a, DPO | CTPD)  # PairBatches is the source of the pair objectives only
        # ctpd's numbers with the run's options when it trains ctpd, else with ctpd's defaults
        options = a.options() if isinstance(a, CTPD) else {}
        options.pop("beta", None)
        metrics: dict[str, float] = {}
        for prefix, pairs in (("eval", self.held_out), ("train_eval", self.train_eval)):
            if pairs:
                logprobs = self._logprobs(stages, pairs)
                metrics.update(
                    preference_metrics(pairs, logprobs, beta=a.beta, ctpd_options=options, prefix=prefix)
                )
        return metrics


__all__ = ["PairBatch", "PairBatches"]
