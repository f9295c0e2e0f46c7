"""Row shards of a ``LossInputs`` batch, as a data-parallel rank or a micro-batch would hold them:
the tests compare an objective on shards (with the step's global counts) against the whole batch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields, replace

import torch

from framework.algo.inputs import LossInputs


def select_rows(batch: LossInputs, rows: Sequence[int] | torch.Tensor) -> LossInputs:
    """A shard holding the given rows. Preference pairs are kept when both their rows are selected
    and re-indexed; selecting only one row of a pair is an error (a pair lives on one shard)."""
    rows_R = torch.as_tensor(rows, dtype=torch.long, device=batch.mask_B_T.device)
    out = {}
    for f in fields(batch):
        value = getattr(batch, f.name)
        if value is None or f.name in ("chosen_index_N", "rejected_index_N"):
            continue
        out[f.name] = value.index_select(0, rows_R)
    shard = replace(batch, **out)
    if batch.chosen_index_N is not None and batch.rejected_index_N is not None:
        new_of_old = torch.full((batch.num_rows,), -1, dtype=torch.long, device=rows_R.device)
        new_of_old[rows_R] = torch.arange(rows_R.numel(), device=rows_R.device)
        chosen, rejected = new_of_old[batch.chosen_index_N], new_of_old[batch.rejected_index_N]
        if bool(((chosen >= 0) ^ (rejected >= 0)).any()):
            raise ValueError("select_rows split a preference pair across shards; select both rows")
        keep = (chosen >= 0) & (rejected >= 0)
        shard.chosen_index_N, shard.rejected_index_N = chosen[keep], rejected[keep]
    return shard
