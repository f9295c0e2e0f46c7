"""What every objective consumes: the batch (`LossInputs`), the global normalisers (`LossCounts`),
the student's per-token outputs (`TokenLogprobs`) and what it returns (`LossOutput`).

Layout. Token-level tensors live in *response coordinates* ``[B, T]``: row ``b`` is one sequence,
column ``t`` is its ``t``-th response token (right-padded, ``mask_B_T == 0`` on padding). The learner
computes the student's logprob of ``target_ids_B_T[b, t]`` from the hidden state that predicts it (the
one at absolute position ``response_start + t - 1``) with `framework.algo.logprobs`.

Normalisation. A loss computed on one micro-batch of one data-parallel rank is divided by a GLOBAL
count (all tokens / dense positions / pairs of the optimizer step, over all micro-batches and ranks),
so summing the per-micro-batch losses over micro-batches and ranks gives exactly the token-mean loss
of the full batch. Metrics follow the same rule: every metric value is a contribution whose sum over
micro-batches and ranks is the global mean.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar, NamedTuple, Protocol

import numpy as np
import torch

from framework.types import DenseTarget, MappedSample

Metrics = dict[str, torch.Tensor]  # name -> 0-dim detached tensor (sum over shards = global mean)


class LossOutput(NamedTuple):
    loss: torch.Tensor  # 0-dim, differentiable
    metrics: Metrics


@dataclass
class TokenLogprobs:
    """The student's outputs at the batch's token positions (see `logprobs.chunked_token_logprobs`)."""

    logprobs_B_T: torch.Tensor  # float [B, T], log pi_theta(target token)
    entropy_B_T: torch.Tensor | None = None  # float [B, T], entropy of pi_theta(. | prefix)
    support_logprobs_B_T_S: torch.Tensor | None = (
        None  # float [B, T, S], log pi_theta(support id); 0 where id == -1
    )


@dataclass
class LossInputs:
    """One micro-batch. Only ``mask_B_T`` is always required; each objective checks the fields it needs.

    Sampled path (opd, sft_teacher): ``behaviour_logprobs_B_T``, ``advantages_B_T``, ``teacher_logprobs_B_T``.
    Dense top-k (opd_topk): ``dense_mask_B_T`` marks the positions carrying a projected teacher target;
    ``support_ids_B_T_S`` is -1 everywhere else (and on padded support slots); ``support_probs_B_T_S``
    is the target mass fixed by the teacher alone, the ``group_*`` fields add the byte-prefix groups.
    Preference (dpo, ctpd): rows are responses; pair ``n`` is (row ``chosen_index_N[n]``, row
    ``rejected_index_N[n]``). Spans (ctpd) are numbered per row ``0..K-1``; ``span_index_B_T`` gives each
    token's span (-1 = none).
    """

    mask_B_T: torch.Tensor  # float [B, T], 1 = train on this token (0 on prompt padding / masked tail)
    target_ids_B_T: torch.Tensor | None = None  # long [B, T], student token ids (0 on padding)
    behaviour_logprobs_B_T: torch.Tensor | None = None  # float [B, T], logprob under the sampling policy
    advantages_B_T: torch.Tensor | None = None  # float [B, T], credited (log p_T - log p_S)
    teacher_logprobs_B_T: torch.Tensor | None = None  # float [B, T], credited chunk teacher logprob
    # sequence reward (opd with algo.reward_weight > 0, framework.algo.reward); 0 where a row has none
    reward_B: torch.Tensor | None = None  # float [B], the verifier's reward of the row
    reward_valid_B: torch.Tensor | None = None  # float [B], 1 = the row has a reward
    group_reward_sum_B: torch.Tensor | None = None  # float [B], rewards of the row's prompt group
    group_reward_count_B: torch.Tensor | None = None  # float [B], rewarded samples in that group
    # dense top-k targets
    dense_mask_B_T: torch.Tensor | None = None  # float [B, T], 1 = a dense target exists here
    support_ids_B_T_S: torch.Tensor | None = None  # long [B, T, S], student ids, -1 padded
    support_probs_B_T_S: torch.Tensor | None = None  # float [B, T, S], target prob (0 where padded)
    other_prob_B_T: torch.Tensor | None = None  # float [B, T], target mass outside the support
    # byte-prefix groups (cross-tokenizer opd_topk): group g of position (b, t) carries teacher mass
    # group_mass and covers the support slots [group_start, group_end); the loss splits the mass over
    # them by the student's own probabilities (framework.algo.topk_kl.split_group_targets)
    group_mass_B_T_G: torch.Tensor | None = None  # float [B, T, G], 0 on padded groups
    group_start_B_T_G: torch.Tensor | None = None  # long [B, T, G], first slot of the group
    group_end_B_T_G: torch.Tensor | None = None  # long [B, T, G], one past its last slot (= start if padded)
    # preference pairs
    chosen_index_N: torch.Tensor | None = None  # long [N], row of the chosen response
    rejected_index_N: torch.Tensor | None = None  # long [N], row of the rejected response
    reference_logprobs_B_T: torch.Tensor | None = None  # float [B, T], frozen reference model (dpo)
    span_index_B_T: torch.Tensor | None = None  # long [B, T], span of each token, -1 = none (ctpd)
    teacher_span_logprobs_B_K: torch.Tensor | None = None  # float [B, K], teacher logprob of each span
    span_mask_B_K: torch.Tensor | None = None  # float [B, K], 1 = real span
    reference_span_logprobs_B_K: torch.Tensor | None = None  # float [B, K], reference (weights only)

    def require(self, objective: str, *names: str) -> None:
        """Raise a clear error when a field an objective needs is missing."""
        missing = [n for n in names if getattr(self, n) is None]
        if missing:
            raise ValueError(
                f"objective {objective!r} needs LossInputs fields {missing}; build the batch with them "
                f"(see framework.algo.inputs.LossInputs)"
            )

    @property
    def num_rows(self) -> int:
        return int(self.mask_B_T.shape[0])

    def effective_dense_mask(self) -> torch.Tensor:
        """float [B, T]: dense positions that are also trained tokens."""
        if self.dense_mask_B_T is None:
            return torch.zeros_like(self.mask_B_T)
        return self.dense_mask_B_T * self.mask_B_T


@dataclass
class LossCounts:
    """Global normalisers of one optimizer step (sums over all micro-batches and all ranks)."""

    tokens: float  # sum of mask_B_T
    dense_positions: float = 0.0  # sum of dense_mask_B_T * mask_B_T
    pairs: float = 0.0  # number of preference pairs

    @staticmethod
    def of(batch: LossInputs) -> LossCounts:
        """Local counts of one batch (the learner sums these over micro-batches and all-reduces them)."""
        pairs = 0 if batch.chosen_index_N is None else int(batch.chosen_index_N.numel())
        return LossCounts(
            tokens=float(batch.mask_B_T.sum()),
            dense_positions=float(batch.effective_dense_mask().sum()),
            pairs=float(pairs),
        )

    def __add__(self, other: LossCounts) -> LossCounts:
        return LossCounts(
            self.tokens + other.tokens,
            self.dense_positions + other.dense_positions,
            self.pairs + other.pairs,
        )

    def to_tensor(self) -> torch.Tensor:
        """float64 [3], for one all-reduce (sum) across ranks."""
        return torch.tensor([self.tokens, self.dense_positions, self.pairs], dtype=torch.float64)

    @staticmethod
    def from_tensor(t: torch.Tensor) -> LossCounts:
        tokens, dense, pairs = (float(x) for x in t.tolist())
        return LossCounts(tokens, dense, pairs)


@dataclass
class ObjectiveConfig:
    """Base of every objective dataclass. An objective's fields are its options: the ``algo`` config
    section is the objective itself (``algo=ctpd algo.mu=0.5``), so an option exists exactly where it
    has an effect, and what the run needs from the other services is derived from the class below,
    never set by the user (docs/design.md §4)."""

    name: str = ""  # the registry name; each objective fixes it
    # trains on the teacher's top-k projected onto the student vocabulary (the mapping's dense rows)
    needs_support: ClassVar[bool] = False
    # trains on offline preference pairs scored once, not on rollouts
    trains_on_pairs: ClassVar[bool] = False
    # the generator pool is built on the teacher model: the teacher writes the training responses
    teacher_generates: ClassVar[bool] = False

    def options(self) -> dict[str, Any]:
        """The option values (every field but ``name``), e.g. to rebuild it on a learner rank."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "name"}

    def uses_task_reward(self) -> bool:
        """Whether the samples need the task verifier's reward (framework.algo.reward)."""
        return False


class Objective(Protocol):
    """What the learner calls per micro-batch: ``loss, metrics = objective(student, batch, counts)``."""

    @property
    def name(self) -> str: ...

    @property
    def needs_support(self) -> bool:
        """Compute TokenLogprobs.support_logprobs_B_T_S from batch.support_ids_B_T_S first."""
        ...

    @property
    def needs_reference(self) -> bool:
        """Fill batch.reference_logprobs_B_T with a frozen reference (student-init) model first."""
        ...

    def __call__(
        self, student: TokenLogprobs | torch.Tensor, batch: LossInputs, counts: LossCounts | None = None
    ) -> LossOutput: ...


def as_token_logprobs(student: TokenLogprobs | torch.Tensor) -> TokenLogprobs:
    return student if isinstance(student, TokenLogprobs) else TokenLogprobs(logprobs_B_T=student)


def denominator(count: float | torch.Tensor) -> float | torch.Tensor:
    """A global count as a divisor; an empty batch (count 0) contributes 0 rather than NaN."""
    if isinstance(count, torch.Tensor):
        return torch.where(count > 0, count, torch.ones_like(count))
    return count if count > 0 else 1.0


def masked_sum(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sum(x * mask) where masked-out entries of ``x`` may hold garbage (even inf/NaN)."""
    return torch.where(mask > 0, x * mask, torch.zeros_like(x)).sum()


def distillation_metrics(
    student: TokenLogprobs | torch.Tensor, batch: LossInputs, counts: LossCounts | None = None
) -> Metrics:
    """Student diagnostics, summable over shards like every metric: ``distill/student_entropy`` =
    (1/N) Σ_t m_t H_t where the objective computed entropies.

    The sampled reverse KL (1/N) Σ_t m_t (log π_behaviour(y_t) − log p_T(y_t)) is not repeated here: the
    learner group logs it once per step as ``batch/reverse_kl`` from the same arrays, for every objective
    (``framework.actors.learner.batch_statistics``).
    """
    student = as_token_logprobs(student)
    n = denominator((counts or LossCounts.of(batch)).tokens)
    out: Metrics = {}
    if student.entropy_B_T is not None:
        out["distill/student_entropy"] = (masked_sum(student.entropy_B_T, batch.mask_B_T) / n).detach()
    return out


def _pad_stack(arrays: Sequence[np.ndarray], width: int, fill: float, dtype: torch.dtype) -> torch.Tensor:
    out = torch.full((len(arrays), width, *arrays[0].shape[1:]), fill, dtype=dtype)
    for b, a in enumerate(arrays):
        out[b, : a.shape[0]] = torch.as_tensor(np.asarray(a), dtype=dtype)
    return out


def _dense_rows(d: DenseTarget) -> tuple[np.ndarray, ...]:
    """One sample's dense rows as (ids int64[P, S], probs float32[P, S], group mass float32[P, G],
    group start int64[P, G], group end int64[P, G]); without groups, the target's own arrays (G = 0).

    With groups, row p's support is its direct ids ∪ the members of its groups, each id once, ordered
    by a key that makes every group a contiguous slot range: a member of any group of the sample sorts
    by its index in ``group_members`` (byte order), any other id after them. ``probs`` keeps the direct
    mass of each id (0 for an id only reached through a group).
    """
    ids = np.asarray(d.support_ids, dtype=np.int64)
    probs = np.asarray(d.support_probs, dtype=np.float32)
    P = ids.shape[0]
    gidx = None if d.group_index is None else np.asarray(d.group_index)
    if gidx is None or d.group_members is None or d.group_bounds is None or not (gidx >= 0).any():
        empty = np.zeros((P, 0), dtype=np.int64)
        return ids, probs, empty.astype(np.float32), empty, empty
    members = np.asarray(d.group_members, dtype=np.int64)  # non-empty: every group has a member
    bounds = np.asarray(d.group_bounds, dtype=np.int64)
    M = members.shape[0]
    d_row, d_col = np.nonzero(ids >= 0)
    d_id = ids[d_row, d_col]
    by_id = np.argsort(members, kind="stable")
    at = np.minimum(np.searchsorted(members[by_id], d_id), M - 1)
    d_key = np.where(members[by_id][at] == d_id, by_id[at], M + d_id)
    g_row, g_col = np.nonzero(gidx >= 0)  # row-major: sorted by row
    lo, hi = bounds[gidx[g_row, g_col], 0], bounds[gidx[g_row, g_col], 1]
    sizes = hi - lo
    m_row = np.repeat(g_row, sizes)
    m_key = np.arange(int(sizes.sum()), dtype=np.int64) + np.repeat(lo - (np.cumsum(sizes) - sizes), sizes)
    span = M + int(d_id.max(initial=0)) + 1  # keys of one row lie in [0, span)
    keys, inverse = np.unique(
        np.concatenate([d_row * span + d_key, m_row * span + m_key]), return_inverse=True
    )
    direct = np.bincount(inverse, weights=np.concatenate([probs[d_row, d_col], np.zeros(m_key.shape[0])]))
    row, key = keys // span, keys % span
    counts = np.bincount(row, minlength=P)
    row_start = np.cumsum(counts) - counts
    slot = np.arange(keys.shape[0]) - row_start[row]
    out_ids = np.full((P, max(int(counts.max()), 1)), -1, dtype=np.int64)
    out_ids[row, slot] = np.where(key < M, members[np.minimum(key, M - 1)], key - M)
    out_probs = np.zeros(out_ids.shape, dtype=np.float32)
    out_probs[row, slot] = direct
    g_counts = np.bincount(g_row, minlength=P)
    G = int(g_counts.max(initial=0))
    g_slot = np.arange(g_row.shape[0]) - (np.cumsum(g_counts) - g_counts)[g_row]
    mass = np.zeros((P, G), dtype=np.float32)
    start = np.zeros((P, G), dtype=np.int64)
    end = np.zeros((P, G), dtype=np.int64)
    mass[g_row, g_slot] = probs[g_row, g_col]
    start[g_row, g_slot] = np.searchsorted(keys, g_row * span + lo) - row_start[g_row]
    end[g_row, g_slot] = np.searchsorted(keys, g_row * span + hi) - row_start[g_row]
    return out_ids, out_probs, mass, start, end


def collate_mapped_samples(samples: Sequence[MappedSample], pad_to: int | None = None) -> LossInputs:
    """Stack `MappedSample`s into a response-coordinate `LossInputs` (right padding, mask 0 there).

    Dense targets (`DenseTarget` at P positions) are scattered into ``[B, T, S]`` with -1 / 0 padding;
    byte-prefix groups are expanded into their member ids (`_dense_rows`) and described by
    ``group_mass/start/end_B_T_G`` (left None when no sample has a group).
    """
    if not samples:
        raise ValueError("collate_mapped_samples got no samples")
    responses = [s.input_ids[s.response_start :] for s in samples]
    lengths = [len(r) for r in responses]
    for s, n in zip(samples, lengths):
        if s.mask.shape[0] != n:
            raise ValueError(f"sample {s.sample_id}: mask has {s.mask.shape[0]} entries, response has {n}")
    width = max(lengths) if pad_to is None else pad_to
    if width < max(lengths):
        raise ValueError(f"pad_to={pad_to} is shorter than the longest response ({max(lengths)})")
    f32 = torch.float32
    batch = LossInputs(
        mask_B_T=_pad_stack([s.mask for s in samples], width, 0.0, f32),
        target_ids_B_T=_pad_stack(responses, width, 0, torch.long),
        behaviour_logprobs_B_T=_pad_stack([s.behaviour_logprobs for s in samples], width, 0.0, f32),
        advantages_B_T=_pad_stack([s.advantages for s in samples], width, 0.0, f32),
        teacher_logprobs_B_T=_pad_stack([s.teacher_logprobs for s in samples], width, 0.0, f32),
        reward_B=torch.tensor([0.0 if s.reward is None else float(s.reward) for s in samples], dtype=f32),
        reward_valid_B=torch.tensor([float(s.reward is not None) for s in samples], dtype=f32),
        group_reward_sum_B=torch.tensor([float(s.group_reward_sum) for s in samples], dtype=f32),
        group_reward_count_B=torch.tensor([float(s.group_reward_count) for s in samples], dtype=f32),
    )
    dense = [s.dense for s in samples]
    if any(d is not None for d in dense):
        rows = [_dense_rows(d) if d is not None and len(d.positions) else None for d in dense]
        S = max(
            (r[0] if r is not None else d.support_ids).shape[1] for d, r in zip(dense, rows) if d is not None
        )
        G = max([r[2].shape[1] for r in rows if r is not None], default=0)
        B = len(samples)
        batch.dense_mask_B_T = torch.zeros(B, width, dtype=f32)
        batch.support_ids_B_T_S = torch.full((B, width, S), -1, dtype=torch.long)
        batch.support_probs_B_T_S = torch.zeros(B, width, S, dtype=f32)
        batch.other_prob_B_T = torch.zeros(B, width, dtype=f32)
        if G:
            batch.group_mass_B_T_G = torch.zeros(B, width, G, dtype=f32)
            batch.group_start_B_T_G = torch.zeros(B, width, G, dtype=torch.long)
            batch.group_end_B_T_G = torch.zeros(B, width, G, dtype=torch.long)
        for b, (d, r) in enumerate(zip(dense, rows)):
            if d is None or r is None:
                continue
            ids, probs, mass, start, end = r
            pos = torch.as_tensor(np.asarray(d.positions), dtype=torch.long)
            s, g = ids.shape[1], mass.shape[1]
            batch.dense_mask_B_T[b, pos] = 1.0
            batch.support_ids_B_T_S[b, pos, :s] = torch.as_tensor(ids, dtype=torch.long)
            batch.support_probs_B_T_S[b, pos, :s] = torch.as_tensor(probs, dtype=f32)
            batch.other_prob_B_T[b, pos] = torch.as_tensor(np.asarray(d.other_prob), dtype=f32)
            if g:
                batch.group_mass_B_T_G[b, pos, :g] = torch.as_tensor(mass, dtype=f32)  # type: ignore[index]
                batch.group_start_B_T_G[b, pos, :g] = torch.as_tensor(start)  # type: ignore[index]
                batch.group_end_B_T_G[b, pos, :g] = torch.as_tensor(end)  # type: ignore[index]
    return batch
