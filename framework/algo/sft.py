"""``sft_teacher``: the mainstream baseline (sequence-level knowledge distillation, Kim & Rush 2016).

The teacher generates responses offline; the student is trained with token-level cross-entropy on
the STUDENT's tokenization of the teacher's text (the baseline OPD is compared against in Niu et al.
2026, "Breaking the Tokenizer Barrier"):

    L = −(1/N_global) Σ_t m_t log π_θ(y_t)

with ``m_t = 1`` on response tokens only (prompt and padding masked).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from framework.algo.inputs import (
    LossCounts,
    LossInputs,
    LossOutput,
    ObjectiveConfig,
    TokenLogprobs,
    as_token_logprobs,
    denominator,
    masked_sum,
)


def sft_loss(
    logprobs_B_T: torch.Tensor, mask_B_T: torch.Tensor, num_tokens_global: float | torch.Tensor
) -> LossOutput:
    """Token-mean negative log-likelihood over the global batch. Metric ``sft/nll`` (= the loss)."""
    if logprobs_B_T.shape != mask_B_T.shape:
        raise ValueError(
            f"sft_loss: logprobs {tuple(logprobs_B_T.shape)} and mask {tuple(mask_B_T.shape)} must match"
        )
    loss = -masked_sum(logprobs_B_T, mask_B_T) / denominator(num_tokens_global)
    return LossOutput(loss, {"sft/nll": loss.detach()})


@dataclass
class SFTTeacher(ObjectiveConfig):
    """Objective ``sft_teacher`` (see `sft_loss`): needs only the mask and the student logprobs."""

    name: str = "sft_teacher"
    teacher_generates: ClassVar[bool] = True  # the generator pool is built on the teacher model
    needs_reference: ClassVar[bool] = False

    def __call__(
        self, student: TokenLogprobs | torch.Tensor, batch: LossInputs, counts: LossCounts | None = None
    ) -> LossOutput:
        counts = counts or LossCounts.of(batch)
        return sft_loss(as_token_logprobs(student).logprobs_B_T, batch.mask_B_T, counts.tokens)
