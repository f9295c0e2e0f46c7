"""Training objectives in pure torch (no Ray / vLLM / DeepSpeed).

Per micro-batch the learner does::

    objective = make_objective(name, **options)  # or the `algo` config section, which is one
    # hidden_B_T_H: final hidden states at positions response_start - 1 + t (they predict response token t)
    support = batch.support_ids_B_T_S if objective.needs_support else None
    student = chunked_token_logprobs(hidden_B_T_H, lm_head.weight, batch.target_ids_B_T,
                                     support_ids_B_T_S=support, token_mask_B_T=batch.mask_B_T)
    loss, metrics = objective(student, batch, global_counts)   # global_counts: LossCounts summed over
    loss.backward()                                            # all micro-batches and ranks of the step
"""

from framework.algo.inputs import (
    LossCounts,
    LossInputs,
    LossOutput,
    Objective,
    ObjectiveConfig,
    TokenLogprobs,
    collate_mapped_samples,
    distillation_metrics,
)
from framework.algo.logprobs import chunked_token_logprobs, entropy_from_logits, logprobs_from_logits
from framework.algo.opd import OPD, opd_loss
from framework.algo.preference import CTPD, DPO, ctpd_loss, ctpd_span_weights, dpo_loss, span_logprobs
from framework.algo.registry import (
    OBJECTIVES,
    PAIR_OBJECTIVES,
    make_objective,
    objective_class,
    objective_options,
)
from framework.algo.sft import SFTTeacher, sft_loss
from framework.algo.topk_kl import OPDTopK, topk_kl_loss

__all__ = [
    "CTPD",
    "DPO",
    "OBJECTIVES",
    "OPD",
    "PAIR_OBJECTIVES",
    "LossCounts",
    "LossInputs",
    "LossOutput",
    "OPDTopK",
    "Objective",
    "ObjectiveConfig",
    "SFTTeacher",
    "TokenLogprobs",
    "chunked_token_logprobs",
    "collate_mapped_samples",
    "ctpd_loss",
    "ctpd_span_weights",
    "distillation_metrics",
    "dpo_loss",
    "entropy_from_logits",
    "logprobs_from_logits",
    "make_objective",
    "objective_class",
    "objective_options",
    "opd_loss",
    "sft_loss",
    "span_logprobs",
    "topk_kl_loss",
]
