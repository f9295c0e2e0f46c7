"""Evaluation arithmetic (pure): task accuracy, teacher reverse-KL on the student's own samples, tables."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from framework.types import MappedSample, Rollout


def accuracy(rollouts: Sequence[Rollout], verify: Callable[[str, str], bool] | None) -> float | None:
    """Share of responses the verifier accepts (None when there is no verifier or no answers)."""
    if verify is None or not rollouts or any(r.prompt.answer is None for r in rollouts):
        return None
    return float(np.mean([verify(r.response_text, r.prompt.answer) for r in rollouts]))  # type: ignore[arg-type]


def teacher_kl(samples: Sequence[MappedSample]) -> dict[str, float]:
    """Per-token reverse KL estimate  E_{y~student}[log p_S(y) − log p_T(y)]  over masked tokens.

    With y sampled from the student at temperature 1 this is an unbiased Monte-Carlo estimate of
    KL(student || teacher) per token (the quantity on-policy distillation minimises).
    """
    tokens = sum(float(m.mask.sum()) for m in samples)
    if not tokens:
        return {}
    kl = sum(float(((m.behaviour_logprobs - m.teacher_logprobs) * m.mask).sum()) for m in samples) / tokens
    lp = sum(float((m.teacher_logprobs * m.mask).sum()) for m in samples) / tokens
    return {"eval/teacher_kl": kl, "eval/teacher_logprob_per_token": lp}


def generation_rows(rollouts: Sequence[Rollout], verify, limit: int) -> list[dict]:
    rows = []
    for r in rollouts[:limit]:
        ok = (
            bool(verify(r.response_text, r.prompt.answer)) if verify and r.prompt.answer is not None else None
        )
        rows.append({"prompt": r.prompt.messages[-1]["content"], "response": r.response_text,
                     "answer": r.prompt.answer, "correct": ok})  # fmt: skip
    return rows
