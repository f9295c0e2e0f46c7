"""Preference accuracy of a student on encoded pairs, and greedy task accuracy on held-out problems.

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

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from framework.algo import LossCounts, TokenLogprobs, make_objective
from framework.algo.preference import sequence_logprobs
from framework.mapping.render import TokenizerInfo
from framework.preference.batch import build_preference_batch, pad_logprobs
from framework.preference.pairs import EncodedPair
from framework.types import Prompt


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


def _render_batch(prompt_ids: Sequence[np.ndarray], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ``input_ids_B_L`` and ``attention_mask_B_L`` (generation continues at the right end)."""
    L = max(len(p) for p in prompt_ids)
    input_ids_B_L = torch.full((len(prompt_ids), L), pad_id, dtype=torch.long)
    attention_mask_B_L = torch.zeros(len(prompt_ids), L, dtype=torch.long)
    for b, ids in enumerate(prompt_ids):
        input_ids_B_L[b, L - len(ids) :] = torch.as_tensor(np.asarray(ids, dtype=np.int64))
        attention_mask_B_L[b, L - len(ids) :] = 1
    return input_ids_B_L, attention_mask_B_L


@torch.inference_mode()
def greedy_task_accuracy(
    model_dir: str,
    tokenizer: TokenizerInfo,
    prompts: Sequence[Prompt],
    verify: Callable[[str, str], bool],
    *,
    max_new_tokens: int = 40,
    batch_size: int = 64,
    device: str = "cpu",
) -> dict[str, Any]:
    """Greedy accuracy of the Hugging Face model at ``model_dir`` on verifiable ``prompts``.

    Prompts are rendered with the model's own chat template (``tokenizer.render_prompt_ids``), batched
    with left padding; generation stops at any of the tokenizer's stop ids. The response text is read
    from the generated tokens' bytes (up to the first stop id), then checked by ``verify(text, answer)``.
    Returns ``{"accuracy", "n", "samples": [(question, response, correct), ...] (first 4)}``.
    """
    from transformers import AutoModelForCausalLM

    if any(p.answer is None for p in prompts):
        raise ValueError("greedy_task_accuracy needs prompts with an answer (Prompt.answer)")
    if not prompts:
        return {"accuracy": float("nan"), "n": 0, "samples": []}
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = model.to(device).eval()  # type: ignore[arg-type]  # transformers' stub types .to oddly
    pad = getattr(model.config, "pad_token_id", None)
    pad_id = int(pad) if isinstance(pad, int) else 0
    stop_ids = sorted(tokenizer.stop_ids)
    correct = 0
    samples: list[tuple[str, str, bool]] = []  # (question, response, correct)
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start : start + batch_size])
        input_ids_B_L, attention_mask_B_L = _render_batch(
            [tokenizer.render_prompt_ids(p.messages) for p in chunk], pad_id
        )
        out_B_L = model.generate(
            input_ids=input_ids_B_L.to(device),
            attention_mask=attention_mask_B_L.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=stop_ids or None,
            pad_token_id=pad_id,
        )
        new_B_N = out_B_L[:, input_ids_B_L.shape[1] :].cpu().numpy()
        for prompt, ids in zip(chunk, new_B_N):
            stops = np.flatnonzero(np.isin(ids, stop_ids))
            ids = ids[: stops[0]] if stops.shape[0] else ids
            text = tokenizer.table.join(ids).decode("utf-8", errors="replace")
            ok = bool(verify(text, str(prompt.answer)))
            correct += ok
            if len(samples) < 4:
                samples.append((prompt.messages[-1]["content"], text, ok))
    return {"accuracy": correct / len(prompts), "n": len(prompts), "samples": samples}


__all__ = ["greedy_task_accuracy", "preference_metrics"]
