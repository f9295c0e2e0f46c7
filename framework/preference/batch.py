"""Encoded preference pairs → learner `MicroBatch`-es carrying the preference fields of `LossInputs`.

Rows are responses, a pair's two rows are adjacent: row ``2n`` is pair ``n``'s chosen response, row
``2n + 1`` its rejected one (``chosen_index_N = 2n``, ``rejected_index_N = 2n + 1``). Token tensors are
in response coordinates ``[B, T]`` (right padding, ``mask_B_T = 0`` there); span tensors are ``[B, K]``
with ``K`` the most spans of any row (``span_mask_B_K = 0`` on padded spans).

One batch serves both objectives: ``dpo`` reads ``mask_B_T`` and ``reference_logprobs_B_T`` (every
response token counts, spans or not); ``ctpd`` reads the span fields (tokens without a span, e.g. a
tail the teacher tokenized differently, are left out of the span sums).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from framework.algo import LossInputs, span_logprobs
from framework.learner.batching import MicroBatch, collate_tokens, pack_micro_batches
from framework.preference.pairs import EncodedPair, responses_of


def build_preference_batch(pairs: Sequence[EncodedPair], *, pad_id: int = 0) -> MicroBatch:
    """One `MicroBatch` of ``B = 2 N`` rows for ``N`` pairs (module docstring for the layout).

    Shapes: ``input_ids_B_L``, ``attention_mask_B_L``, ``hidden_index_B_T``; in ``inputs``:
    ``mask_B_T``, ``target_ids_B_T``, ``span_index_B_T`` (-1 = no span), ``chosen_index_N``,
    ``rejected_index_N``, and when attached: ``teacher_span_logprobs_B_K`` and ``span_mask_B_K``
    (teacher scores), ``reference_logprobs_B_T`` and ``reference_span_logprobs_B_K`` (reference).
    """
    if not pairs:
        raise ValueError("build_preference_batch got no pairs")
    rows = responses_of(pairs)
    input_ids_B_L, attention_mask_B_L, hidden_index_B_T, target_ids_B_T = collate_tokens(
        [r.input_ids for r in rows], [r.response_start for r in rows], pad_id
    )
    B, T = target_ids_B_T.shape
    K = max(1, max(r.num_spans for r in rows))
    lengths_B = torch.tensor([r.num_response_tokens for r in rows])
    mask_B_T = (torch.arange(T)[None, :] < lengths_B[:, None]).float()
    span_index_B_T = torch.full((B, T), -1, dtype=torch.long)
    span_mask_B_K = (torch.arange(K)[None, :] < torch.tensor([r.num_spans for r in rows])[:, None]).float()
    for b, r in enumerate(rows):
        span_index_B_T[b, : r.num_response_tokens] = torch.tensor(r.span_index, dtype=torch.long)

    inputs = LossInputs(
        mask_B_T=mask_B_T,
        target_ids_B_T=target_ids_B_T,
        chosen_index_N=torch.arange(0, B, 2, dtype=torch.long),
        rejected_index_N=torch.arange(1, B, 2, dtype=torch.long),
        span_index_B_T=span_index_B_T,
        span_mask_B_K=span_mask_B_K,
    )
    if all(r.teacher_span_logprobs is not None for r in rows):
        teacher_B_K = torch.zeros(B, K, dtype=torch.float32)
        for b, r in enumerate(rows):
            teacher_B_K[b, : r.num_spans] = torch.tensor(r.teacher_span_logprobs, dtype=torch.float32)
        inputs.teacher_span_logprobs_B_K = teacher_B_K
    if all(r.reference_logprobs is not None for r in rows):
        reference_B_T = torch.zeros(B, T, dtype=torch.float32)
        for b, r in enumerate(rows):
            reference_B_T[b, : r.num_response_tokens] = torch.tensor(r.reference_logprobs)
        inputs.reference_logprobs_B_T = reference_B_T
        inputs.reference_span_logprobs_B_K = span_logprobs(reference_B_T, span_index_B_T, mask_B_T, K)
    return MicroBatch(
        input_ids_B_L, attention_mask_B_L, hidden_index_B_T, inputs, tuple(r.sample_id for r in rows)
    )


def build_preference_micro_batches(
    pairs: Sequence[EncodedPair], micro_batch_tokens: int, *, pad_id: int = 0
) -> list[MicroBatch]:
    """Pack pairs into micro-batches of at most ``micro_batch_tokens`` padded tokens (``2 N · L_max``;
    a pair longer than the budget goes alone), keeping both rows of a pair in one micro-batch."""
    if micro_batch_tokens < 2:
        raise ValueError(f"micro_batch_tokens must be >= 2 (two rows per pair), got {micro_batch_tokens}")
    groups = pack_micro_batches(
        [p.max_length for p in pairs], micro_batch_tokens // 2, [p.pair_id for p in pairs]
    )
    return [build_preference_batch([pairs[i] for i in g], pad_id=pad_id) for g in groups]


def pad_logprobs(logprobs: Sequence[np.ndarray], width: int) -> torch.Tensor:
    """float32 [B, width]: per-row token logprobs right-padded with 0 (to match a batch's ``[B, T]``)."""
    out = torch.zeros(len(logprobs), width, dtype=torch.float32)
    for b, lp in enumerate(logprobs):
        out[b, : len(lp)] = torch.tensor(np.asarray(lp, dtype=np.float32))
    return out


__all__ = ["build_preference_batch", "build_preference_micro_batches", "pad_logprobs"]
