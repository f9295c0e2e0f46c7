"""Offline preference distillation end to end: ``dpo`` (baseline) or ``ctpd`` on (prompt, chosen,
rejected) pairs, one learner rank (the Ray layer may wrap `run_preference` or its pieces later).

    pairs ──encode_pairs──► student sequences + aligned spans + teacher requests
      │ teacher.score (once, token-budget batches)        → τ_k per span        (ctpd anchor, eval)
      │ learner.compute_logprobs at version 0 (once)      → frozen reference    (dpo anchor, ctpd weights)
      ▼
    steps × [pairs_per_step pairs → micro-batches → LearnerRank.train_micro_batches]  → metrics.jsonl
      ▼
    preference accuracy on held-out (and training) pairs at start / every eval_every / end,
    greedy task accuracy of the initial and the final student, final student saved as a HF folder.

The reference is exactly the student initialisation: the learner's own logprobs before the first step.
"""

from __future__ import annotations

import json
import random
import socket
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from framework.algo import objective_options
from framework.mapping import TokenMapper
from framework.preference.batch import build_preference_micro_batches
from framework.preference.data import ZOO_PAIRS, load_preference_pairs
from framework.preference.evaluate import greedy_task_accuracy, preference_metrics
from framework.preference.pairs import (
    EncodedPair,
    attach_reference,
    attach_teacher_scores,
    encode_pairs,
    student_sequences,
    teacher_requests,
)
from framework.types import PreferencePair, Prompt

PREFERENCE_OBJECTIVES = ("dpo", "ctpd")


@dataclass
class PreferenceRunSettings:
    """What `run_preference` needs. Paths may be local HF folders or ``zoo:NAME``."""

    student_path: str
    teacher_path: str
    objective: str = "ctpd"  # "dpo" | "ctpd"
    beta: float = 0.1
    objective_options: dict[str, Any] = field(default_factory=dict)  # other options, e.g. ctpd's mu
    steps: int = 100
    pairs_per_step: int = 16
    lr: float = 1e-4
    seed: int = 0
    output_dir: str = "outputs/preference"
    # data: "zoo:arith" or a JSONL file (framework/preference/data.py), unless pairs are given
    train_data: str = "zoo:arith"
    eval_data: str = "zoo:arith"
    num_train_pairs: int = 512
    num_eval_pairs: int = 128  # held-out pairs (no problem shared with the training pairs)
    num_train_eval_pairs: int = 64  # training pairs also evaluated (0 = none)
    train_pairs: list[PreferencePair] | None = None
    eval_pairs: list[PreferencePair] | None = None
    eval_every: int = 0  # 0 = at start and end only
    # task accuracy (zoo arithmetic test problems, HF greedy); 0 problems = skip
    task_eval_problems: int = 100
    task_eval_max_new_tokens: int = 40
    # teacher
    teacher_backend: str = "hf"  # "hf" | "vllm" | "http" (framework.teacher.make_teacher)
    teacher_options: dict[str, Any] = field(default_factory=dict)  # backend constructor kwargs
    teacher_batch_tokens: int = 16384
    # learner (framework.learner.engine.LearnerSettings fields)
    zero_stage: int = 2
    micro_batch_tokens: int = 8192
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0
    warmup_steps: int = 0
    dtype: str = "float32"
    backend: str = "gloo"
    master_port: int = 0  # 0 = a free port
    learner_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.objective not in PREFERENCE_OBJECTIVES:
            raise ValueError(
                f"objective={self.objective!r}: preference runs train one of {PREFERENCE_OBJECTIVES}"
            )
        allowed = set(objective_options(self.objective)) - {"beta"}
        unknown = sorted(set(self.objective_options) - allowed)
        if unknown:
            raise ValueError(
                f"objective_options {unknown} are not options of {self.objective!r}; valid: {sorted(allowed)}"
            )
        for name in ("steps", "pairs_per_step", "num_eval_pairs"):
            if getattr(self, name) <= 0 and not (name == "num_eval_pairs" and self.eval_pairs):
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.beta <= 0 or self.lr <= 0:
            raise ValueError(f"beta and lr must be positive, got beta={self.beta}, lr={self.lr}")

    @property
    def options(self) -> dict[str, Any]:
        """Keyword arguments of ``make_objective(objective, ...)``."""
        return {"beta": self.beta, **self.objective_options}


def _resolve(path: str) -> str:
    if path.startswith("zoo:"):
        from framework.zoo import resolve_model  # type: ignore[attr-defined]  # the zoo's public API

        return str(resolve_model(path))
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def load_pairs(s: PreferenceRunSettings) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """Training and held-out pairs: ``s.train_pairs`` / ``s.eval_pairs`` when given, else loaded from
    ``s.train_data`` / ``s.eval_data`` (`framework.preference.data.load_preference_pairs`)."""
    train, held_out = s.train_pairs, s.eval_pairs
    if train is None or held_out is None:
        loaded = load_preference_pairs(
            s.train_data, s.eval_data, num_train=s.num_train_pairs, num_eval=s.num_eval_pairs, seed=s.seed
        )
        train = list(train) if train is not None else loaded[0]
        held_out = list(held_out) if held_out is not None else loaded[1]
    overlap = {p.pair_id for p in train} & {p.pair_id for p in held_out}
    if overlap:
        raise ValueError(f"{len(overlap)} held-out pairs are also training pairs, e.g. {sorted(overlap)[:3]}")
    if not train or not held_out:
        raise ValueError(f"need training and held-out pairs, got {len(train)} and {len(held_out)}")
    return list(train), list(held_out)


def _task_prompts(s: PreferenceRunSettings) -> list[Prompt]:
    if s.task_eval_problems <= 0 or s.eval_data != ZOO_PAIRS:  # task accuracy: zoo arithmetic only
        return []
    from framework.zoo.task import make_problems

    return make_problems(s.task_eval_problems, s.seed, split="test")


class _PairCursor:
    """Pairs for each step: a fresh seeded shuffle per epoch."""

    def __init__(self, pairs: list[EncodedPair], seed: int):
        self.pairs, self.seed, self.epoch = pairs, seed, 0
        self.order: list[int] = []

    def take(self, k: int) -> list[EncodedPair]:
        out: list[EncodedPair] = []
        while len(out) < k:
            if not self.order:
                self.order = list(range(len(self.pairs)))
                random.Random(self.seed * 1_000_003 + self.epoch).shuffle(self.order)
                self.epoch += 1
            out.append(self.pairs[self.order.pop()])
        return out


def make_preference_learner(student_path: str, s: PreferenceRunSettings):
    """A one-rank `LearnerRank` for ``s.objective`` (trained with ``train_micro_batches`` on pair batches)."""
    from framework.learner.engine import LearnerRank

    return LearnerRank(
        student_path,
        rank=0,
        world_size=1,
        master_port=s.master_port or _free_port(),
        objective=s.objective,
        objective_options=s.options,
        lr=s.lr,
        seed=s.seed,
        zero_stage=s.zero_stage,
        micro_batch_tokens=s.micro_batch_tokens,
        weight_decay=s.weight_decay,
        grad_clip=s.grad_clip,
        warmup_steps=s.warmup_steps,
        dtype=s.dtype,
        backend=s.backend,
        **s.learner_options,
    )


def span_stats(pairs: list[EncodedPair]) -> dict[str, float]:
    """Mean spans per response, student / teacher tokens per span, share of responses with a teacher
    byte mismatch (their tail has no spans)."""
    rows = [r for p in pairs for r in p.responses]
    spans = np.array([max(r.num_spans, 1) for r in rows], dtype=np.float64)
    student = np.array([(r.span_index >= 0).sum() for r in rows], dtype=np.float64)
    teacher = np.array([(r.teacher_span_index >= 0).sum() for r in rows], dtype=np.float64)
    return {
        "spans/per_response": float(spans.mean()),
        "spans/student_tokens_per_span": float((student / spans).mean()),
        "spans/teacher_tokens_per_span": float((teacher / spans).mean()),
        "spans/teacher_mismatch": float(np.mean([r.teacher_mismatch for r in rows])),
    }


class _MetricsLog:
    def __init__(self, path: Path):
        self.path = path
        path.write_text("")

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


def run_preference(s: PreferenceRunSettings) -> dict[str, Any]:
    """Train ``s.objective`` on offline preference pairs (module docstring); returns the summary that is
    also written to ``output_dir/summary.json``. Metrics per step and per eval go to ``metrics.jsonl``."""
    t_start = time.perf_counter()
    out_dir = Path(s.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log = _MetricsLog(out_dir / "metrics.jsonl")
    student_path, teacher_path = _resolve(s.student_path), _resolve(s.teacher_path)
    timings: dict[str, float] = {}

    t = time.perf_counter()
    train_raw, held_out_raw = load_pairs(s)
    mapper = TokenMapper.from_paths(student_path, teacher_path, topk=False)
    train, held_out = encode_pairs(train_raw, mapper), encode_pairs(held_out_raw, mapper)
    timings["encode_s"] = time.perf_counter() - t

    t = time.perf_counter()
    from framework.teacher import TokenBudgetBatcher, make_teacher

    teacher_kwargs = dict(s.teacher_options)
    if s.teacher_backend != "http":  # an HTTP teacher is named by teacher_options["model"]
        teacher_kwargs.setdefault("model_path", teacher_path)
    teacher = make_teacher(s.teacher_backend, **teacher_kwargs)
    everything = train + held_out
    scores = TokenBudgetBatcher(s.teacher_batch_tokens).score(teacher, teacher_requests(everything), top_k=0)
    attach_teacher_scores(everything, scores)
    if hasattr(teacher, "shutdown"):  # scored once: free the engine before the learner starts
        teacher.shutdown()
    del teacher
    timings["teacher_s"] = time.perf_counter() - t
    # evaluation copies: their reference comes from the same compute_logprobs call as their evaluation,
    # so that at the start every DPO margin is exactly 0 (no batching noise)
    train_eval = [
        EncodedPair(p.pair_id, replace(p.chosen), replace(p.rejected))
        for p in train[: s.num_train_eval_pairs]
    ]

    t = time.perf_counter()
    learner = make_preference_learner(student_path, s)
    timings["learner_init_s"] = time.perf_counter() - t
    t = time.perf_counter()
    for pairs in (train, held_out, train_eval):  # version 0: the frozen student initialisation
        if pairs:
            attach_reference(pairs, learner.compute_logprobs(*student_sequences(pairs)))
    timings["reference_s"] = time.perf_counter() - t

    ctpd_options = s.options if s.objective == "ctpd" else {}

    def evaluate(step: int) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for prefix, pairs in (("eval", held_out), ("train_eval", train_eval)):
            if pairs:
                logprobs = learner.compute_logprobs(*student_sequences(pairs))
                metrics.update(
                    preference_metrics(pairs, logprobs, beta=s.beta, ctpd_options=ctpd_options, prefix=prefix)
                )
        log.write({"kind": "eval", "step": step, **metrics})
        return metrics

    stats = {"pairs/train": len(train), "pairs/eval": len(held_out), **span_stats(everything)}
    start = evaluate(0)
    cursor = _PairCursor(train, s.seed)
    train_log: list[dict[str, float]] = []
    t = time.perf_counter()
    for step in range(1, s.steps + 1):
        batches = build_preference_micro_batches(
            cursor.take(s.pairs_per_step), s.micro_batch_tokens, pad_id=learner.pad_id
        )
        metrics = learner.train_micro_batches(batches)
        train_log.append(metrics)
        log.write({"kind": "train", "step": step, **metrics})
        if s.eval_every and step % s.eval_every == 0 and step != s.steps:
            evaluate(step)
    timings["train_s"] = time.perf_counter() - t
    end = evaluate(s.steps)

    final_dir = out_dir / "final"
    learner.save_hf(final_dir)
    task: dict[str, Any] = {}
    prompts = _task_prompts(s)
    if prompts:
        from framework.zoo.task import verify

        t = time.perf_counter()
        for tag, path in (("start", student_path), ("end", str(final_dir))):
            result = greedy_task_accuracy(
                path, mapper.student, prompts, verify, max_new_tokens=s.task_eval_max_new_tokens
            )
            task[f"{tag}/task_acc"] = result["accuracy"]
            task[f"{tag}/task_samples"] = result["samples"]
        task["task_problems"] = len(prompts)
        timings["task_eval_s"] = time.perf_counter() - t
        log.write({"kind": "task", "step": s.steps, **{k: v for k, v in task.items() if "samples" not in k}})

    first, last = train_log[0], train_log[-1]
    summary = {
        "objective": s.objective,
        "settings": {k: v for k, v in asdict(s).items() if k not in ("train_pairs", "eval_pairs")},
        "start": start,
        "end": end,
        "train": {
            "first_loss": first["loss"],
            "last_loss": last["loss"],
            "mean_loss_first10": float(np.mean([m["loss"] for m in train_log[:10]])),
            "mean_loss_last10": float(np.mean([m["loss"] for m in train_log[-10:]])),
            "steps": s.steps,
        },
        "task": task,
        "data": stats,
        "timings": {**timings, "total_s": time.perf_counter() - t_start},
        "final_model_dir": str(final_dir),
        "metrics_path": str(log.path),
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


__all__ = [
    "PREFERENCE_OBJECTIVES",
    "PreferenceRunSettings",
    "load_pairs",
    "make_preference_learner",
    "run_preference",
]
