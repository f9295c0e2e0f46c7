"""Evaluation arithmetic (pure): task accuracy, teacher reverse-KL on the student's own samples, tables,
and the run's closing summary."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from framework.types import MappedSample, Rollout


def accuracy(rollouts: Sequence[Rollout], verify: Callable[[str, str], bool] | None) -> float | None:
    """Share of responses the verifier accepts (None when there is no verifier or no answers)."""
    if verify is None or not rollouts or any(r.prompt.answer is None for r in rollouts):
        return None
    return float(np.mean([verify(r.response_text, r.prompt.answer) for r in rollouts]))  # type: ignore[arg-type]


def length_cut_frac(rollouts: Sequence[Rollout]) -> float:
    """Share of responses that ended at the token limit (vLLM finish reason "length") instead of a
    stop token: answers cut before their end are wrong whatever the model knows."""
    return float(np.mean([r.finish_reason == "length" for r in rollouts])) if rollouts else 0.0


def sampled_reverse_kl(samples: Sequence[MappedSample]) -> dict[str, float]:
    """Per-token means over the masked tokens: ``reverse_kl`` = mean(log p_S(y) − log p_T(y)) on the
    sampled tokens, and the two log-probabilities it is made of.

    With y sampled from the student at temperature 1 this is an unbiased Monte-Carlo estimate of
    KL(student ‖ teacher) per token (the quantity on-policy distillation minimises; Agarwal et al.
    2024, "On-Policy Distillation of Language Models").
    """
    if not samples:
        return {"response_tokens": 0.0}
    mask = np.concatenate([s.mask for s in samples])
    tokens = max(float(mask.sum()), 1.0)
    behaviour = np.concatenate([s.behaviour_logprobs for s in samples])
    teacher = np.concatenate([s.teacher_logprobs for s in samples])
    return {
        "response_tokens": float(mask.sum()),
        "reverse_kl": float(((behaviour - teacher) * mask).sum() / tokens),
        "teacher_logprob_per_token": float((teacher * mask).sum() / tokens),
        "student_logprob_per_token": float((behaviour * mask).sum() / tokens),
    }


def teacher_kl(samples: Sequence[MappedSample]) -> dict[str, float]:
    """``eval/teacher_kl`` (:func:`sampled_reverse_kl` on held-out samples) and the teacher's
    log-probability per token; nothing when no token was scored."""
    kl = sampled_reverse_kl(samples)
    if not kl["response_tokens"]:
        return {}
    return {
        "eval/teacher_kl": kl["reverse_kl"],
        "eval/teacher_logprob_per_token": kl["teacher_logprob_per_token"],
    }


def generation_rows(rollouts: Sequence[Rollout], verify, limit: int) -> list[dict]:
    rows = []
    for r in rollouts[:limit]:
        ok = (
            bool(verify(r.response_text, r.prompt.answer)) if verify and r.prompt.answer is not None else None
        )
        rows.append({"prompt": r.prompt.messages[-1]["content"], "response": r.response_text,
                     "answer": r.prompt.answer, "correct": ok})  # fmt: skip
    return rows


def console_metrics(metrics: dict, objective: str) -> dict:
    """The few figures the console shows of an evaluation (every figure goes to wandb and the JSONL):
    task accuracy, teacher-KL and, offline, the preference accuracies of the trained objective."""
    shown = (
        "eval/accuracy",
        "eval/teacher_kl",
        "eval/logp_acc",
        f"eval/{objective}_acc",
        f"train_eval/{objective}_acc",
    )
    harness = sorted(k for k in metrics if k.startswith("harness/"))  # the benchmarks the user asked for
    per_teacher = sorted(k for k in metrics if k.startswith("teacher/") and k.endswith("/eval_accuracy"))
    return {k: metrics[k] for k in (*shown, *per_teacher, *harness) if k in metrics}


# the held-out figures the closing lines show, first → last evaluation
SUMMARY_KEYS = (
    ("eval/accuracy", "accuracy"),
    ("eval/teacher_kl", "teacher-KL"),
    ("eval/logp_acc", "preference accuracy"),  # offline preference runs (algo=dpo|ctpd)
)


def summarize_run(output_dir: Path) -> None:
    """The run's closing lines: first → last held-out metrics, peak memory, the best evaluation kept,
    and the plot of the curves (written to the run folder)."""
    from framework import checkpoint
    from framework.logging import plot_run, read_metrics, say

    rows = read_metrics(output_dir / "metrics.jsonl")
    evals = [r for r in rows if any(k.startswith("eval/") for k in r)]
    teachers = sorted(
        {k.split("/")[1] for r in evals for k in r if k.startswith("teacher/") and "/eval_" in k}
    )
    per_teacher = [  # a multi-teacher run: each teacher's share of the held-out prompts on its own
        (f"teacher/{t}/eval_{m}", f"{name} on teacher {t}'s prompts")
        for t in teachers for m, name in (("accuracy", "accuracy"), ("teacher_kl", "KL to its teacher"))
    ]  # fmt: skip
    for key, name in (*SUMMARY_KEYS, *per_teacher):
        values = [f"{r[key]:.3f}" for r in evals if key in r]
        if values:
            say(f"[tokenbridge] held-out {name} by eval (steps {evals[0]['step']}..{evals[-1]['step']}): "
                + " → ".join(values))  # fmt: skip
    last = next((r for r in reversed(rows) if "memory/node_peak_gib" in r), {})  # peaks only grow
    peaks = {k: v for k, v in last.items() if k.startswith("memory/")}
    if peaks:
        say("[tokenbridge] peak memory GiB: " + "  ".join(
            f"{k[len('memory/'):-len('_peak_gib')]}={v:.1f}" for k, v in sorted(peaks.items())))  # fmt: skip
    best = checkpoint.best_record(output_dir)
    if best is not None:
        say(f"[tokenbridge] best {best['metric']}={best['value']:.4f} at step {best['step']}: "
            f"{output_dir / 'best' / 'student'}")  # fmt: skip
    plot = plot_run(output_dir, rows)
    if plot is not None:
        say(f"[tokenbridge] curves: {plot}")
