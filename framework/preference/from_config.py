"""The typed run config (`framework.config.Config`) → `PreferenceRunSettings`, for ``algo=dpo|ctpd``.

What maps where: algo.beta (+ any other dpo/ctpd option that AlgoConfig carries, e.g. mu) → objective
options; data.train / data.eval → pair sources (``zoo:arith`` or a JSONL of pairs); data.num_train /
data.num_eval → pair counts (num_eval also the number of task problems); data.prompts_per_step → pairs
per step; trainer.steps / eval_every / seed; learner.* → the learner rank; teacher.* → the scoring
backend (scored once, realised-token logprobs only); rollout.max_new_tokens → task-eval generation length.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from framework.algo import objective_kwargs
from framework.preference.run import PreferenceRunSettings

if TYPE_CHECKING:
    from framework.config import Config


def _teacher_options(cfg: Config) -> dict[str, Any]:
    t = cfg.teacher
    if t.backend == "vllm":
        return dict(
            max_logprobs=0,
            max_model_len=t.max_model_len,
            kv_cache_gib=t.kv_cache_gib,
            tensor_parallel_size=t.tensor_parallel_size,
            gpu_memory_utilization=t.gpu_memory_utilization,
            dtype=t.dtype,
            seed=cfg.trainer.seed,
            trust_remote_code=cfg.pair.trust_remote_code,
        )
    if t.backend == "hf":
        return dict(device=cfg.cluster.device, trust_remote_code=cfg.pair.trust_remote_code)
    return dict(
        base_url=t.url,
        model=t.http_model,
        api_key_env=t.api_key_env,
        verify_tls=t.verify_tls,
        ca_cert=t.ca_cert,
    )


def settings_from_config(
    cfg: Config, student_path: str, teacher_path: str, output_dir: str
) -> PreferenceRunSettings:
    """`PreferenceRunSettings` for ``cfg`` (module docstring); paths already resolved (no ``zoo:``)."""
    name = cfg.algo.name
    if name not in ("dpo", "ctpd"):
        raise ValueError(
            f"config error at `algo.name`: {name!r} is not a preference objective. Fix: dpo or ctpd"
        )
    if cfg.learner.num_ranks != 1:
        raise ValueError(
            f"config error at `learner.num_ranks`: preference runs train on one rank, got {cfg.learner.num_ranks}. "
            "Fix: set learner.num_ranks=1"
        )
    if cfg.data.num_eval <= 0:
        raise ValueError(
            "config error at `data.num_eval`: preference runs need held-out pairs. Fix: set it > 0"
        )
    lc = cfg.learner
    options = {k: v for k, v in objective_kwargs(name, dataclasses.asdict(cfg.algo)).items() if k != "beta"}
    teacher_options = _teacher_options(cfg)
    if cfg.teacher.backend == "http" and teacher_options["model"] is None:
        teacher_options["model"] = teacher_path
    return PreferenceRunSettings(
        student_path=student_path,
        teacher_path=teacher_path,
        objective=name,
        beta=cfg.algo.beta,
        objective_options=options,
        steps=cfg.trainer.steps,
        pairs_per_step=cfg.data.prompts_per_step,
        lr=lc.lr,
        seed=cfg.trainer.seed,
        output_dir=output_dir,
        train_data=cfg.data.train,
        eval_data=cfg.data.eval,
        num_train_pairs=cfg.data.num_train,
        num_eval_pairs=cfg.data.num_eval,
        eval_every=cfg.trainer.eval_every,
        task_eval_problems=cfg.data.num_eval,
        task_eval_max_new_tokens=cfg.rollout.max_new_tokens,
        teacher_backend=cfg.teacher.backend,
        teacher_options=teacher_options,
        teacher_batch_tokens=cfg.teacher.max_tokens_per_batch,
        zero_stage=lc.zero_stage,
        micro_batch_tokens=lc.micro_batch_tokens,
        weight_decay=lc.weight_decay,
        grad_clip=lc.grad_clip,
        warmup_steps=lc.warmup_steps,
        dtype=lc.dtype,
        backend=lc.backend if lc.backend != "auto" else ("nccl" if cfg.cluster.device == "cuda" else "gloo"),
        learner_options=dict(
            betas=tuple(lc.betas),
            logprob_chunk_size=lc.logprob_chunk_size,
            gradient_checkpointing=lc.gradient_checkpointing,
            trust_remote_code=cfg.pair.trust_remote_code,
        ),
    )


__all__ = ["settings_from_config"]
