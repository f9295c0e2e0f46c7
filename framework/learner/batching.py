"""Token-budget micro-batches, data-parallel sharding and collation for the learner.

Cost model: a micro-batch of ``B`` sequences right-padded to the longest one (``L_max`` tokens, prompt
plus response) costs ``B · L_max`` padded tokens; packing keeps that at most ``micro_batch_tokens``
(a single sequence longer than the budget gets a micro-batch of its own).

Packing is deterministic: sequences are sorted by length (longest first, ties by ``sample_id``) and
filled greedily, so similar lengths share a micro-batch and padding stays small.

Data parallelism: every rank of a DeepSpeed step must run the SAME number of forward/backward passes
(ZeRO gathers parameters and reduces gradients collectively), so `shard_samples` hands whole
micro-batches to ranks keeping their counts within one of each other, and the engine pads every rank
to the global maximum with zero-weight `padding_micro_batch`-es. Losses are normalised by global
counts (`framework.algo.LossCounts`, summed over all micro-batches of all ranks), so the step's loss
is the token mean over the whole step no matter how the samples were split.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from framework.algo.inputs import LossInputs, collate_mapped_samples
from framework.types import DenseTarget, MappedSample


@dataclass
class MicroBatch:
    """One forward/backward pass: token tensors for the model plus `LossInputs` in response coordinates."""

    input_ids_B_L: torch.Tensor  # long [B, L], prompt + response, right-padded with pad_id
    attention_mask_B_L: torch.Tensor  # long [B, L], 1 on real tokens
    hidden_index_B_T: torch.Tensor  # long [B, T], position whose hidden state predicts response token t
    inputs: LossInputs  # response coordinates [B, T]
    sample_ids: tuple[str, ...] = ()  # empty for a padding (zero-weight) micro-batch


def padded_cost(lengths: Sequence[int]) -> int:
    """``B · L_max``: the padded token count of one micro-batch of sequences with these lengths."""
    return len(lengths) * max(lengths) if lengths else 0


def pack_micro_batches(
    lengths: Sequence[int], micro_batch_tokens: int, keys: Sequence[str] | None = None
) -> list[list[int]]:
    """Group sequence indices into micro-batches with ``B · L_max <= micro_batch_tokens``.

    Longest first (ties by ``keys`` then index); a group grows while the next (no longer) sequence still
    fits. Returns index groups in packing order; every index appears exactly once.
    """
    if micro_batch_tokens <= 0:
        raise ValueError(f"micro_batch_tokens must be positive, got {micro_batch_tokens}")
    if keys is not None and len(keys) != len(lengths):
        raise ValueError(f"keys has {len(keys)} entries, lengths has {len(lengths)}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], keys[i] if keys else "", i))
    groups: list[list[int]] = []
    for i in order:
        if groups and (len(groups[-1]) + 1) * lengths[groups[-1][0]] <= micro_batch_tokens:
            groups[-1].append(i)  # sorted longest first: the group's L_max is its first sequence
        else:
            groups.append([i])
    return groups


def shard_samples(
    samples: Sequence[MappedSample], world_size: int, micro_batch_tokens: int
) -> list[list[MappedSample]]:
    """Split one step's samples across ``world_size`` data-parallel ranks (`deal_by_length`)."""
    shares = deal_by_length(
        [len(s.input_ids) for s in samples], [s.sample_id for s in samples], world_size, micro_batch_tokens
    )
    return [[samples[i] for i in share] for share in shares]


def deal_by_length(
    lengths: Sequence[int], ids: Sequence[str], world_size: int, micro_batch_tokens: int
) -> list[list[int]]:
    """The indices of the items each of ``world_size`` data-parallel ranks trains on.

    Packs the items (sequences of ``lengths``) into micro-batches (`pack_micro_batches`), then gives
    each micro-batch, largest first, to the rank with the fewest micro-batches (ties: fewest padded
    tokens, then lowest rank). Micro-batch counts differ by at most one between ranks and the engine
    pads the rest, so ranks run in lockstep. Deterministic: the same items give the same shares.
    Preference pairs are dealt as items of their longer response's length and half the budget
    (both rows of a pair go into one micro-batch).
    """
    if world_size <= 0:
        raise ValueError(f"world_size must be positive, got {world_size}")
    groups = pack_micro_batches(list(lengths), micro_batch_tokens, list(ids))
    shares: list[list[int]] = [[] for _ in range(world_size)]
    load = [(0, 0)] * world_size  # (micro-batches, padded tokens) per rank
    for group in groups:
        rank = min(range(world_size), key=lambda r: (load[r], r))
        shares[rank].extend(group)
        count, tokens = load[rank]
        load[rank] = (count + 1, tokens + padded_cost([lengths[i] for i in group]))
    return shares


def validate_sample(sample: MappedSample) -> None:
    """Raise a clear error for a sample the learner cannot train on."""
    L, start = len(sample.input_ids), sample.response_start
    if not 1 <= start <= L:
        raise ValueError(
            f"sample {sample.sample_id}: response_start={start} must be in [1, len(input_ids)={L}] "
            "(the first response token is predicted from the token before it, so the prompt is non-empty)"
        )
    R = L - start
    for name in ("behaviour_logprobs", "teacher_logprobs", "advantages", "mask"):
        n = np.asarray(getattr(sample, name)).shape[0]
        if n != R:
            raise ValueError(
                f"sample {sample.sample_id}: {name} has {n} entries, the response has {R} tokens"
            )
    if sample.dense is not None and len(sample.dense.positions):
        pos = np.asarray(sample.dense.positions)
        if pos.min() < 0 or pos.max() >= R:
            raise ValueError(f"sample {sample.sample_id}: dense positions must lie in [0, {R}), got {pos}")
        validate_groups(sample.sample_id, sample.dense)


def validate_groups(sample_id: str, dense: DenseTarget) -> None:
    """Raise unless the byte-prefix group payload of ``dense`` (if any) is consistent."""
    fields = (dense.group_index, dense.group_members, dense.group_bounds)
    if all(f is None for f in fields):
        return
    if any(f is None for f in fields):
        raise ValueError(f"sample {sample_id}: group_index, group_members and group_bounds come together")
    index, members, bounds = (np.asarray(f) for f in fields)
    if index.shape != np.asarray(dense.support_ids).shape:
        raise ValueError(f"sample {sample_id}: group_index {index.shape} must match support_ids' shape")
    G, M = bounds.shape[0], members.shape[0]
    if bounds.ndim != 2 or bounds.shape[1] != 2 or index.min(initial=-1) < -1 or index.max(initial=-1) >= G:
        raise ValueError(f"sample {sample_id}: group_index must lie in [-1, {G}) with group_bounds [G, 2]")
    if G and (bounds[:, 0].min() < 0 or bounds[:, 1].max() > M or np.any(bounds[:, 0] >= bounds[:, 1])):
        raise ValueError(f"sample {sample_id}: group_bounds must be non-empty ranges of the {M} members")
    if np.any((index >= 0) & (np.asarray(dense.support_ids) >= 0)):
        raise ValueError(f"sample {sample_id}: a slot is either a student id or a group, not both")


def collate_tokens(
    input_ids_list: Sequence[np.ndarray], response_starts: Sequence[int], pad_id: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad sequences; returns ``input_ids_B_L``, ``attention_mask_B_L``, ``hidden_index_B_T`` and
    ``target_ids_B_T`` (response tokens, 0 on padding) with ``T`` the longest response.

    ``hidden_index_B_T[b, t] = response_starts[b] - 1 + t`` (clamped into the padded row on padding).
    """
    lengths = [len(x) for x in input_ids_list]
    B, L = len(lengths), max(lengths)
    T = max(L_b - s for L_b, s in zip(lengths, response_starts))
    input_ids_B_L = torch.full((B, L), pad_id, dtype=torch.long)
    attention_mask_B_L = torch.zeros(B, L, dtype=torch.long)
    target_ids_B_T = torch.zeros(B, T, dtype=torch.long)
    for b, (ids, start) in enumerate(zip(input_ids_list, response_starts)):
        ids_t = torch.as_tensor(np.asarray(ids, dtype=np.int64))
        input_ids_B_L[b, : len(ids_t)] = ids_t
        attention_mask_B_L[b, : len(ids_t)] = 1
        target_ids_B_T[b, : len(ids_t) - start] = ids_t[start:]
    starts_B = torch.as_tensor(list(response_starts), dtype=torch.long)
    hidden_index_B_T = (starts_B[:, None] - 1 + torch.arange(T)[None, :]).clamp(0, L - 1)
    return input_ids_B_L, attention_mask_B_L, hidden_index_B_T, target_ids_B_T


def with_empty_dense(inputs: LossInputs) -> LossInputs:
    """Add dense-target fields with no targets (S = 1, id -1) when a batch has none, for opd_topk."""
    if inputs.support_ids_B_T_S is None:
        B, T = inputs.mask_B_T.shape
        inputs.dense_mask_B_T = torch.zeros(B, T)
        inputs.support_ids_B_T_S = torch.full((B, T, 1), -1, dtype=torch.long)
        inputs.support_probs_B_T_S = torch.zeros(B, T, 1)
        inputs.other_prob_B_T = torch.zeros(B, T)
    return inputs


def collate_micro_batch(
    samples: Sequence[MappedSample], *, pad_id: int = 0, with_dense: bool = False
) -> MicroBatch:
    """Collate samples into one `MicroBatch` (LossInputs from `framework.algo.collate_mapped_samples`)."""
    for s in samples:
        validate_sample(s)
    input_ids_B_L, attention_mask_B_L, hidden_index_B_T, target_ids_B_T = collate_tokens(
        [s.input_ids for s in samples], [s.response_start for s in samples], pad_id
    )
    inputs = collate_mapped_samples(samples, pad_to=target_ids_B_T.shape[1])
    if with_dense:
        inputs = with_empty_dense(inputs)
    return MicroBatch(
        input_ids_B_L, attention_mask_B_L, hidden_index_B_T, inputs, tuple(s.sample_id for s in samples)
    )


def padding_micro_batch(*, pad_id: int = 0, with_dense: bool = False, pairs: bool = False) -> MicroBatch:
    """A zero-weight micro-batch (one 2-token sequence, mask 0): keeps ranks in lockstep, adds no signal.

    It still runs forward and backward, so every parameter gets a (zero) gradient like on the other
    ranks; all sampled-path fields are present so any `MappedSample` objective accepts it, and with
    ``pairs`` the preference fields too (no pair: ``N = 0``, one empty span), for ``dpo`` / ``ctpd``.
    """
    zeros_B_T = torch.zeros(1, 1)
    inputs = LossInputs(
        mask_B_T=zeros_B_T.clone(),
        target_ids_B_T=torch.full((1, 1), pad_id, dtype=torch.long),
        behaviour_logprobs_B_T=zeros_B_T.clone(),
        advantages_B_T=zeros_B_T.clone(),
        teacher_logprobs_B_T=zeros_B_T.clone(),
        reward_B=torch.zeros(1),
        reward_valid_B=torch.zeros(1),
        group_reward_sum_B=torch.zeros(1),
        group_reward_count_B=torch.zeros(1),
    )
    if with_dense:
        inputs = with_empty_dense(inputs)
    if pairs:
        no_pair_N = torch.zeros(0, dtype=torch.long)
        inputs = dataclasses.replace(
            inputs,
            chosen_index_N=no_pair_N,
            rejected_index_N=no_pair_N.clone(),
            span_index_B_T=torch.full((1, 1), -1, dtype=torch.long),
            span_mask_B_K=torch.zeros(1, 1),
            teacher_span_logprobs_B_K=torch.zeros(1, 1),
            reference_logprobs_B_T=torch.zeros(1, 1),
            reference_span_logprobs_B_K=torch.zeros(1, 1),
        )
    return MicroBatch(
        input_ids_B_L=torch.full((1, 2), pad_id, dtype=torch.long),
        attention_mask_B_L=torch.ones(1, 2, dtype=torch.long),
        hidden_index_B_T=torch.zeros(1, 1, dtype=torch.long),
        inputs=inputs,
    )


def build_micro_batches(
    samples: Sequence[MappedSample], micro_batch_tokens: int, *, pad_id: int = 0, with_dense: bool = False
) -> list[MicroBatch]:
    """Pack (`pack_micro_batches`) and collate one rank's samples.

    Samples without response tokens carry no signal and are dropped.
    """
    samples = [s for s in samples if len(s.input_ids) > s.response_start]
    groups = pack_micro_batches(
        [len(s.input_ids) for s in samples], micro_batch_tokens, [s.sample_id for s in samples]
    )
    return [
        collate_micro_batch([samples[i] for i in g], pad_id=pad_id, with_dense=with_dense) for g in groups
    ]


def pad_to_count(
    batches: list[MicroBatch], count: int, *, pad_id: int = 0, with_dense: bool = False, pairs: bool = False
) -> list[MicroBatch]:
    """``batches`` followed by zero-weight `padding_micro_batch`-es up to ``count`` (the max over ranks)."""
    if count < len(batches):
        raise ValueError(f"cannot pad {len(batches)} micro-batches down to {count}")
    return batches + [
        padding_micro_batch(pad_id=pad_id, with_dense=with_dense, pairs=pairs)
        for _ in range(count - len(batches))
    ]
