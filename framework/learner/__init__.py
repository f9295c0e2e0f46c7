"""The learner: model loading, token-budget batching, one DeepSpeed rank, weight export (no Ray)."""

from framework.learner.batching import (
    MicroBatch,
    build_micro_batches,
    collate_micro_batch,
    deal_by_length,
    pack_micro_batches,
    pad_to_count,
    padding_micro_batch,
    shard_samples,
)
from framework.learner.model import LogprobLM, load_student

__all__ = [
    "LogprobLM",
    "MicroBatch",
    "build_micro_batches",
    "collate_micro_batch",
    "deal_by_length",
    "load_student",
    "pack_micro_batches",
    "pad_to_count",
    "padding_micro_batch",
    "shard_samples",
]
