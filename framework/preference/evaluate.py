"""Preference accuracy of a student on encoded pairs (task accuracy is the controller's evaluation).

Preference accuracy is the share of pairs whose chosen response a score ranks strictly above the
rejected one (ties count as wrong). Scores, for a response ``y`` with student logprobs ``log π_θ``:

- ``logp``:   log π_θ(y), the plain likelihood margin log π_θ(y_c) − log π_θ(y_r);
- ``dpo``:    DPO's implicit reward, log π_θ(y) − log π_ref(y) with π_ref the frozen student init
              (Rafailov et al. 2023) — every pair is a tie at the start;
- ``ctpd``:   CTPD's teacher-anchored reward Σ_k w_k (s_k − τ_k) over aligned spans (Nguyen et al.
              2026, arXiv 2601.11865; formula in framework/algo/preference.py);
- ``teacher``: log p_T(y) (constant during training: how often the teacher itself agrees with the labels).

The ``dpo`` and ``ctpd`` numbers, and the matching losses, come from the objectives themselves
(`framework.algo.make_objective`) evaluated on the whole set as one batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from framework.algo import LossCounts, TokenLogprobs, make_objective
from framework.algo.preference import sequence_logprobs
from framework.preference.batch import build_preference_batch, pad_logprobs
from framework.preference.pairs import EncodedPair


def preference_metrics(
    pairs: Sequence[EncodedPair],
    student_logprobs: Sequence[np.ndarray],
    *,
    beta: float = 0.1,
    ctpd_options: dict[str, Any] | None = None,
    prefix: str = "eval",
) -> dict[str, float]:
    """Preference accuracies and losses of the student (module docstring).

    ``student_logprobs``: float[R] per response, in `responses_of(pairs)` order. The pairs need teacher
    scores and reference logprobs attached. Keys: ``{prefix}/{logp,dpo,ctpd,teacher}_acc``,
    ``{prefix}/logp_margin`` (mean nats), ``{prefix}/{dpo,ctpd}_loss``, ``{prefix}/{dpo,ctpd}_margin``
    (mean β·h), ``{prefix}/pairs``.
    """
    batch = build_preference_batch(pairs).inputs
    if batch.teacher_span_logprobs_B_K is None or batch.reference_logprobs_B_T is None:
        raise ValueError(
            "preference_metrics needs teacher scores and reference logprobs attached to the pairs"
        )
    logprobs_B_T = pad_logprobs(student_logprobs, batch.mask_B_T.shape[1])
    student = TokenLogprobs(logprobs_B_T)
    counts = LossCounts.of(batch)
    out: dict[str, float] = {f"{prefix}/pairs": float(len(pairs))}
    with torch.no_grad():
        seq_B = sequence_logprobs(logprobs_B_T, batch.mask_B_T)
        margin_N = seq_B[batch.chosen_index_N] - seq_B[batch.rejected_index_N]
        out[f"{prefix}/logp_acc"] = float((margin_N > 0).float().mean())
        out[f"{prefix}/logp_margin"] = float(margin_N.mean())
        teacher = torch.tensor([[p.chosen.teacher_logprob, p.rejected.teacher_logprob] for p in pairs])
        out[f"{prefix}/teacher_acc"] = float((teacher[:, 0] > teacher[:, 1]).float().mean())
        objectives = {
            "dpo": make_objective("dpo", beta=beta),
            "ctpd": make_objective("ctpd", **{"beta": beta, **(ctpd_options or {})}),
        }
        for name, objective in objectives.items():
            loss, metrics = objective(student, batch, counts)
            out[f"{prefix}/{name}_loss"] = float(loss)
            out[f"{prefix}/{name}_acc"] = float(metrics[f"{name}/reward_acc"])
            out[f"{prefix}/{name}_margin"] = float(metrics[f"{name}/margin"])
    return out


__all__ = ["preference_metrics"]
