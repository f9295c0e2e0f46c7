"""One DeepSpeed data-parallel rank of the learner (no Ray: `framework/actors` wraps one per actor).

Step semantics. `train_step` turns this rank's samples into token-budget micro-batches, agrees with the
other ranks on (a) the step's global normalisers (`LossCounts`: trained tokens, dense positions, pairs;
one all-reduce) and (b) the number of micro-batches (max over ranks; the short ranks add zero-weight
padding micro-batches), then runs forward/backward per micro-batch and exactly ONE optimizer step.

Gradient accumulation uses DeepSpeed's caller-owned boundary (``managed_gradient_accumulation: false``,
``gradient_accumulation_steps: 1``): gradients accumulate over every ``engine.backward`` and each
``engine.step()`` applies one update. Every micro-batch loss is already divided by the GLOBAL count,
so Σ over micro-batches and ranks of the losses is the step's token-mean loss; DeepSpeed averages
gradients over the R data-parallel ranks, so each backward is scaled by R:

    ∇θ L = (1/R) Σ_r ∇θ (R · Σ_m L_{r,m}) = Σ_{r,m} ∇θ L_{r,m}.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from framework.algo import (
    LossCounts,
    LossInputs,
    TokenLogprobs,
    distillation_metrics,
    make_objective,
)
from framework.config import LearnerConfig
from framework.learner import distributed
from framework.learner.batching import (
    MicroBatch,
    build_micro_batches,
    collate_tokens,
    pack_micro_batches,
    pad_to_count,
    padding_micro_batch,
)
from framework.learner.lora import adapter_state, add_lora, lora_scale, merge_lora, save_adapter
from framework.learner.model import LogprobLM, load_student
from framework.learner.settings import RankSettings
from framework.learner.state import load_learner_state, save_learner_state
from framework.learner.weights import (
    gather_state_dict,
    save_hf_dir,
    save_weights_file,
)
from framework.types import MappedSample

if TYPE_CHECKING:  # preference.batch imports learner.batching: imported in train_pairs
    from framework.preference.pairs import EncodedPair


ADAM_EPS = 1e-8
ZERO_BUCKETS = {"reduce_bucket_size": 50_000_000, "allgather_bucket_size": 50_000_000}


def deepspeed_config(s: LearnerConfig) -> dict[str, Any]:
    return {
        "train_micro_batch_size_per_gpu": 1,  # nominal: micro-batches are token-budgeted here
        "gradient_accumulation_steps": 1,
        "managed_gradient_accumulation": False,  # every engine.step() is one optimizer update
        "gradient_clipping": float(s.grad_clip),  # 0 = off
        # DeepSpeed's default buckets are 5e8 elements (2 GB in fp32, allocated whether the model fills
        # them or not); 5e7 keeps the reduce/all-gather calls large while bounding that buffer.
        "zero_optimization": {"stage": s.zero_stage, **ZERO_BUCKETS},
        "bf16": {"enabled": s.dtype == "bfloat16"},
        "steps_per_print": 1 << 62,
        "wall_clock_breakdown": False,
    }


def lr_factor(
    step: int, warmup_steps: int, decay: str = "none", total_steps: int = 0, floor: float = 0.1
) -> float:
    """The multiplier of ``learner.lr`` at optimizer update ``step`` (0-based).

    Linear warm-up to 1 over ``warmup_steps``; then 1 (``decay="none"``) or the cosine schedule of
    Loshchilov & Hutter (SGDR, 2017) down to ``floor``: the k-th update after the warm-up uses
    ``floor + (1 − floor) · (1 + cos(π · k / (total − warmup))) / 2``, so the run's last update
    (``step = total − 1``) runs at the floor, and any later one stays there. A constant lr at the
    end of a short run keeps Adam's steps full size when the signal is noisiest, and the student
    wanders (README, the multi-teacher recipe).
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if decay == "none" or total_steps <= warmup_steps:
        return 1.0
    progress = min(1.0, (step - warmup_steps + 1) / (total_steps - warmup_steps))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


class LearnerRank:
    """One DeepSpeed rank. Every public method is collective: all ranks call it in the same order.

    ``LearnerRank(model_path, rank=r, world_size=R, master_addr=..., master_port=..., settings=RankSettings(...))``.
    """

    def __init__(
        self,
        model_path: str | Path,
        *,
        rank: int = 0,
        world_size: int = 1,
        master_addr: str = "127.0.0.1",
        master_port: int = 29500,
        settings: RankSettings | None = None,
    ):
        self.settings = s = settings or RankSettings()
        lc = s.learner
        lc.check()  # the driver checked it too; a rank built directly (tests, tools) is checked here
        self.model_path = Path(model_path)
        self.rank, self.world_size = rank, world_size
        self.objective = make_objective(s.objective.name, **s.objective.options())  # a fresh copy
        distributed.init_distributed(
            rank=rank,
            world_size=world_size,
            master_addr=master_addr,
            master_port=master_port,
            backend=s.backend,
        )
        import deepspeed

        torch.manual_seed(s.seed)
        np.random.seed(s.seed)
        self.hf_model = load_student(
            self.model_path,
            dtype="float32",  # DeepSpeed casts to bf16 itself and keeps fp32 master weights
            trust_remote_code=s.trust_remote_code,
            gradient_checkpointing=lc.gradient_checkpointing,
        )
        self.peft_model = None  # learner.lora_rank > 0: adapters only (framework/learner/lora.py)
        if lc.lora_rank > 0:
            self.peft_model = add_lora(
                self.hf_model, rank=lc.lora_rank, alpha=lc.lora_alpha, targets=lc.lora_targets
            )
        pad = s.pad_id if s.pad_id is not None else getattr(self.hf_model.config, "pad_token_id", None)
        self.pad_id = int(pad) if isinstance(pad, int) else 0
        module = LogprobLM(self.hf_model, chunk_size=lc.logprob_chunk_size, temperature=s.temperature)
        betas = (float(lc.betas[0]), float(lc.betas[1]))
        trained = [p for p in self.hf_model.parameters() if p.requires_grad]  # LoRA: the adapters
        optimizer = torch.optim.AdamW(
            trained, lr=lc.lr, betas=betas, eps=ADAM_EPS, weight_decay=lc.weight_decay
        )
        schedule = functools.partial(
            lr_factor, warmup_steps=lc.warmup_steps, decay=lc.lr_decay, total_steps=s.total_steps,
            floor=lc.min_lr_ratio,
        )  # fmt: skip
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        self.engine, _, _, _ = deepspeed.initialize(
            model=module, optimizer=optimizer, lr_scheduler=scheduler, config=deepspeed_config(lc)
        )
        if lc.zero_stage == 3:  # the chunked head reads lm_head.weight outside lm_head.forward
            for p in module.head.parameters():
                deepspeed.zero.register_external_parameter(module, p)
        self.device = self.engine.device
        self.version = 0

    # ------------------------------------------------------------------ training

    def train_step(
        self, samples: Sequence[MappedSample], num_tokens_global: int | None = None
    ) -> dict[str, float]:
        """One optimizer step on this rank's share of the step's samples (see the module docstring).

        ``num_tokens_global`` (optional, the same on every rank) is checked against the all-reduced count
        of trained tokens. Returns metrics identical on every rank: ``loss`` (global token mean),
        ``grad_norm`` (global, before clipping; NaN under ZeRO-0, where DeepSpeed does not report it),
        ``lr`` (used by this step), ``tokens``, ``dense_positions``, ``micro_batches``, ``step_seconds``
        and the objective's metrics (``opd/...``, ``topk/...``, ``distill/...``).
        """
        if self.settings.objective.trains_on_pairs:
            raise NotImplementedError(
                f"objective {self.settings.objective.name!r} trains on preference pairs (with reference logprobs), "
                "not MappedSamples: call train_pairs"
            )
        batches = build_micro_batches(
            samples,
            self.settings.learner.micro_batch_tokens,
            pad_id=self.pad_id,
            with_dense=bool(self.objective.needs_support),
        )
        return self.train_micro_batches(batches, num_tokens_global=num_tokens_global)

    def train_pairs(self, pairs: Sequence[EncodedPair]) -> dict[str, float]:
        """One optimizer step of ``dpo`` / ``ctpd`` on this rank's share of the step's preference pairs
        (teacher scores and reference attached; both rows of a pair stay in one micro-batch). The loss
        is normalised by the pairs of all ranks, so the ranks' shares may differ (even be empty)."""
        if not self.settings.objective.trains_on_pairs:
            raise ValueError(
                f"objective {self.settings.objective.name!r} trains on MappedSamples: call train_step"
            )
        from framework.preference.batch import build_preference_micro_batches

        batches = (
            build_preference_micro_batches(
                pairs, self.settings.learner.micro_batch_tokens, pad_id=self.pad_id
            )
            if pairs
            else []
        )
        return self.train_micro_batches(batches)

    def train_micro_batches(
        self, batches: list[MicroBatch], num_tokens_global: int | None = None
    ) -> dict[str, float]:
        """Forward/backward over ``batches`` (padded to the ranks' maximum), then one optimizer step."""
        t0 = time.perf_counter()
        local = LossCounts(tokens=0.0)
        for mb in batches:
            local = local + LossCounts.of(mb.inputs)
        backend = self.settings.backend
        counts = LossCounts.from_tensor(distributed.all_reduce(local.to_tensor(), "sum", backend))
        if counts.tokens <= 0 and counts.pairs <= 0:
            raise ValueError("train step has no trained tokens on any rank (empty samples or all-zero masks)")
        if num_tokens_global is not None and abs(counts.tokens - num_tokens_global) > 0.5:
            raise ValueError(
                f"num_tokens_global={num_tokens_global} but the ranks' samples hold {counts.tokens:.0f} "
                "trained tokens; pass the sum of sample.mask over all ranks' samples (the same on every rank)"
            )
        num_batches = int(distributed.all_reduce(torch.tensor([len(batches)]), "max", backend).item())
        batches = pad_to_count(
            batches,
            num_batches,
            pad_id=self.pad_id,
            with_dense=bool(self.objective.needs_support),
            pairs=self.settings.objective.trains_on_pairs,
        )

        self.engine.train()
        sums: dict[str, torch.Tensor] = {}
        for mb in batches:
            student, inputs = self._forward(mb)
            loss, metrics = self.objective(student, inputs, counts)
            metrics = {**distillation_metrics(student, inputs, counts), **metrics, "loss": loss.detach()}
            # keep every parameter in the graph even when the objective ignores this (padding) batch
            anchor = 0.0 * student.logprobs_B_T.sum()
            self.engine.backward((loss + anchor) * self.world_size)
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + v.detach().double().cpu()
        lr = float(self.engine.get_lr()[0])
        self.engine.step()
        self.version += 1
        grad_norm = self.engine.get_global_grad_norm()

        names = sorted(sums)
        totals = distributed.all_reduce(torch.stack([sums[k] for k in names]), "sum", backend)
        out = {k: float(v) for k, v in zip(names, totals)}
        out.update(
            grad_norm=float(grad_norm) if grad_norm is not None else float("nan"),
            lr=lr,
            tokens=counts.tokens,
            dense_positions=counts.dense_positions,
            micro_batches=float(num_batches),
            step_seconds=time.perf_counter() - t0,
        )
        return out

    def _forward(self, mb: MicroBatch) -> tuple[TokenLogprobs, LossInputs]:
        """The student's outputs on ``mb`` and ``mb.inputs`` moved to the engine's device."""
        dev = self.device
        inputs = dataclasses.replace(
            mb.inputs, **{f.name: _to(getattr(mb.inputs, f.name), dev) for f in dataclasses.fields(mb.inputs)}
        )
        support = inputs.support_ids_B_T_S if self.objective.needs_support else None
        logprobs_B_T, entropy_B_T, support_B_T_S = self.engine(
            mb.input_ids_B_L.to(dev),
            mb.attention_mask_B_L.to(dev),
            mb.hidden_index_B_T.to(dev),
            inputs.target_ids_B_T,
            inputs.mask_B_T,
            support,
        )
        return TokenLogprobs(logprobs_B_T, entropy_B_T, support_B_T_S), inputs

    # ------------------------------------------------------------------ inference

    @torch.no_grad()
    def compute_logprobs(
        self, input_ids_list: Sequence[np.ndarray], response_starts: Sequence[int]
    ) -> list[np.ndarray]:
        """float32[R_i] logprob of every response token of every sequence under the current weights.

        Collective (ZeRO-3 gathers weights in forward): every rank calls it, each with its own (possibly
        empty) list; ranks run the same number of forward passes.
        """
        if len(input_ids_list) != len(response_starts):
            raise ValueError(f"{len(input_ids_list)} sequences but {len(response_starts)} response_starts")
        for i, (ids, start) in enumerate(zip(input_ids_list, response_starts)):
            if not 1 <= start <= len(ids):
                raise ValueError(f"sequence {i}: response_start={start} must be in [1, {len(ids)}]")
        lengths = [len(x) for x in input_ids_list]
        groups = pack_micro_batches(lengths, self.settings.learner.micro_batch_tokens)
        backend = self.settings.backend
        n = int(distributed.all_reduce(torch.tensor([len(groups)]), "max", backend).item())
        out: list[np.ndarray] = [np.zeros(0, np.float32)] * len(input_ids_list)
        self.engine.eval()
        try:
            for g in [*groups, *[[] for _ in range(n - len(groups))]]:
                if not g:
                    self._forward(padding_micro_batch(pad_id=self.pad_id))
                    continue
                starts = [int(response_starts[i]) for i in g]
                mb = self._logprob_batch([input_ids_list[i] for i in g], starts)
                logprobs_B_T = self._forward(mb)[0].logprobs_B_T.float().cpu().numpy()
                for row, i in enumerate(g):
                    out[i] = logprobs_B_T[row, : lengths[i] - starts[row]].copy()
        finally:
            self.engine.train()
        return out

    def _logprob_batch(self, input_ids_list: Sequence[np.ndarray], starts: list[int]) -> MicroBatch:
        input_ids_B_L, attention_B_L, hidden_index_B_T, targets_B_T = collate_tokens(
            input_ids_list, starts, self.pad_id
        )
        T = targets_B_T.shape[1]
        resp_len_B = torch.tensor([len(x) - s for x, s in zip(input_ids_list, starts)])
        mask_B_T = (torch.arange(T)[None, :] < resp_len_B[:, None]).float()
        return MicroBatch(input_ids_B_L, attention_B_L, hidden_index_B_T, LossInputs(mask_B_T, targets_B_T))

    # ------------------------------------------------------------------ weights out

    @property
    def _module(self) -> torch.nn.Module:
        return self.engine.module.model

    def full_weights(self) -> dict[str, torch.Tensor]:
        """The full HF-named weights on rank 0 (``{}`` elsewhere); collective: every rank joins the
        gather (ZeRO-3 shards)."""
        return gather_state_dict(self._module, rank=self.rank, bucket_bytes=self.settings.export_bucket_bytes)

    def export_weights_file(self, path: str | Path) -> str:
        """Full weights as one safetensors file at ``path``, written by rank 0 (collective: every rank
        joins the gather). Returns ``path`` on rank 0 and ``""`` on the other ranks. A LoRA student
        writes its adapter instead: the folder ``path`` in peft's layout, which vLLM loads.

        The rollout engines reload from this file (CPU weight sync), so they must run on rank 0's node
        (same filesystem). Rank 0 writes ``path + ".tmp"`` and renames it: a reader never sees a
        partial file.
        """
        state = self.full_weights()
        if self.rank != 0:
            return ""
        if self.peft_model is not None:
            save_adapter(adapter_state(state, self.peft_model), self.peft_model, path)
            return str(path)
        return save_weights_file(state, path)

    def save_hf(self, out_dir: str | Path) -> None:
        """Write the student as a Hugging Face model directory (rank 0 writes; collective). A LoRA
        student is written merged, ``W + (α/r) B A`` (framework/learner/lora.py): a plain model."""
        state = self.full_weights()
        if self.rank == 0 and self.peft_model is not None:
            state = merge_lora(state, lora_scale(self.peft_model))
        if self.rank == 0:
            save_hf_dir(state, self.hf_model, out_dir, source_dir=self.model_path)
        distributed.barrier()

    # ------------------------------------------------------------------ resume

    def save_state(self, out_dir: str | Path) -> None:
        """DeepSpeed checkpoint (weights, optimizer, lr schedule) plus version and RNG (collective)."""
        save_learner_state(self.engine, out_dir, rank=self.rank, meta=self._state_meta())

    def load_state(self, in_dir: str | Path) -> None:
        """Restore what `save_state` wrote; the world size and ZeRO stage must match (collective)."""
        meta = load_learner_state(self.engine, in_dir, rank=self.rank, expected=self._state_meta())
        self.version = int(meta["version"])

    def _state_meta(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "world_size": self.world_size,
            "zero_stage": self.settings.learner.zero_stage,
            "lora_rank": self.settings.learner.lora_rank,
            "objective": self.settings.objective.name,
        }


def _to(value: Any, device: torch.device) -> Any:
    return value.to(device) if isinstance(value, torch.Tensor) else value


__all__ = ["LearnerRank", "RankSettings", "deepspeed_config"]
