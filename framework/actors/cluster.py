"""Start every actor of a run with its resources, and group them into the stages the controller drives."""

from __future__ import annotations

import time
from dataclasses import dataclass

import ray
from ray.util.placement_group import placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from framework.actors.learner import LearnerGroup, LearnerWorker
from framework.actors.mapping import MappingWorker
from framework.actors.rollout import RolloutWorker
from framework.actors.teacher import TeacherWorker
from framework.config import Config


@dataclass
class Stages:
    rollout: list
    teacher: list
    mapping: list
    learner: LearnerGroup
    identity_mapping: bool = False

    def sync_weights(self, version: int, timeout_s: float) -> None:
        """Learner → every rollout engine. The driver only passes the blob's ObjectRef along."""
        blob_refs = self.learner.export_refs()
        loads = [engine.load_weights.remote(blob_refs[0], version) for engine in self.rollout]
        ray.get(loads + blob_refs[1:], timeout=timeout_s)

    def stats(self) -> dict[str, list[dict[str, float]]]:
        groups = {"rollout": self.rollout, "teacher": self.teacher, "mapping": self.mapping, "learner": self.learner.ranks}
        refs = {k: [a.stats.remote() for a in v] for k, v in groups.items()}
        return {k: ray.get(v, timeout=60) for k, v in refs.items()}

    def actors(self) -> list:
        return [*self.rollout, *self.teacher, *self.mapping, *self.learner.ranks]


def _role_options(cfg: Config, gpus: float, bundle_group=None, index: int = 0) -> dict:
    opts: dict = {"num_cpus": cfg.cluster.cpus_per_actor, "num_gpus": gpus}
    if bundle_group is not None:
        opts["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
            placement_group=bundle_group, placement_group_bundle_index=index
        )
    return opts


def _pack(count: int, cpus: float, gpus: float):
    """A placement group that packs a role's actors onto as few nodes as possible (None when resourceless)."""
    if cpus == 0 and gpus == 0:
        return None
    bundle = {k: v for k, v in (("CPU", cpus), ("GPU", gpus)) if v > 0}
    group = placement_group([dict(bundle) for _ in range(count)], strategy="PACK")
    ray.get(group.ready(), timeout=600)
    return group


def start_stages(cfg: Config, student_path: str, teacher_path: str) -> Stages:
    """Create the rollout pool, teacher pool, mapping pool and learner group for one run."""
    c = cfg.cluster
    env = {"env_vars": {"VLLM_CPU_KVCACHE_SPACE": str(int(max(1, cfg.rollout.kv_cache_gib)))}}
    t0 = time.time()
    rollout_pg = _pack(cfg.rollout.num_engines, c.cpus_per_actor, c.gpus_per_rollout_engine)
    rollout = [
        RolloutWorker.options(runtime_env=env, **_role_options(cfg, c.gpus_per_rollout_engine, rollout_pg, i)).remote(
            student_path,
            dict(
                seed=cfg.trainer.seed + i, max_model_len=cfg.rollout.max_model_len,
                kv_cache_gib=cfg.rollout.kv_cache_gib, enforce_eager=cfg.rollout.enforce_eager,
                tensor_parallel_size=cfg.rollout.tensor_parallel_size,
                gpu_memory_utilization=cfg.rollout.gpu_memory_utilization, dtype=cfg.rollout.dtype,
            ),
            cfg.data.max_prompt_tokens,
            cfg.pair.trust_remote_code,
        )
        for i in range(cfg.rollout.num_engines)
    ]  # fmt: skip
    teacher_kwargs = _teacher_kwargs(cfg, teacher_path)
    teacher_env = {"env_vars": {"VLLM_CPU_KVCACHE_SPACE": str(int(max(1, cfg.teacher.kv_cache_gib)))}}
    teacher_pg = _pack(cfg.teacher.num_replicas, c.cpus_per_actor, c.gpus_per_teacher_replica)
    teacher = [
        TeacherWorker.options(runtime_env=teacher_env, **_role_options(cfg, c.gpus_per_teacher_replica, teacher_pg, i)).remote(
            cfg.teacher.backend, teacher_kwargs, cfg.teacher.top_k, cfg.teacher.max_tokens_per_batch
        )
        for i in range(cfg.teacher.num_replicas)
    ]
    verifier = cfg.data.train if cfg.data.train.startswith("zoo:") else None
    mapping = [
        MappingWorker.options(num_cpus=c.cpus_per_actor).remote(
            student_path, teacher_path, cfg.mapping.credit, cfg.mapping.dense_topk, verifier
        )
        for _ in range(cfg.mapping.num_workers)
    ]
    learner_pg = _pack(cfg.learner.num_ranks, c.cpus_per_actor, c.gpus_per_learner_rank)
    ranks = [
        LearnerWorker.options(**_role_options(cfg, c.gpus_per_learner_rank, learner_pg, r)).remote(
            student_path, r, cfg.learner.num_ranks, _learner_kwargs(cfg)
        )
        for r in range(cfg.learner.num_ranks)
    ]
    learner = LearnerGroup(ranks)
    ray.get([a.ping.remote() for a in [*rollout, *teacher, *mapping]], timeout=900)
    identity = ray.get(mapping[0].is_identity.remote())
    print(f"[tokenbridge] actors up in {time.time() - t0:.0f}s (identity mapping: {identity})", flush=True)
    return Stages(rollout, teacher, mapping, learner, identity_mapping=identity)


def _teacher_kwargs(cfg: Config, teacher_path: str) -> dict:
    t = cfg.teacher
    if t.backend == "vllm":
        return dict(
            model_path=teacher_path, max_logprobs=t.top_k, max_model_len=t.max_model_len,
            kv_cache_gib=t.kv_cache_gib, tensor_parallel_size=t.tensor_parallel_size,
            gpu_memory_utilization=t.gpu_memory_utilization, dtype=t.dtype,
            trust_remote_code=cfg.pair.trust_remote_code,
        )  # fmt: skip
    if t.backend == "hf":
        return dict(model_path=teacher_path, device=cfg.cluster.device, trust_remote_code=cfg.pair.trust_remote_code)
    return dict(
        base_url=t.url, model=t.http_model or teacher_path, api_key_env=t.api_key_env,
        verify_tls=t.verify_tls, ca_cert=t.ca_cert,
    )  # fmt: skip


def _learner_kwargs(cfg: Config) -> dict:
    lc = cfg.learner
    backend = lc.backend if lc.backend != "auto" else ("nccl" if cfg.cluster.device == "cuda" else "gloo")
    return dict(
        zero_stage=lc.zero_stage, lr=lc.lr, weight_decay=lc.weight_decay, betas=tuple(lc.betas),
        grad_clip=lc.grad_clip, warmup_steps=lc.warmup_steps, micro_batch_tokens=lc.micro_batch_tokens,
        logprob_chunk_size=lc.logprob_chunk_size, backend=backend, dtype=lc.dtype, seed=cfg.trainer.seed,
        objective=_objective(cfg), gradient_checkpointing=lc.gradient_checkpointing,
    )  # fmt: skip


def _objective(cfg: Config) -> dict:
    """``{"name", "options"}`` for ``framework.algo.make_objective`` (only the keys that algo takes)."""
    a = cfg.algo
    opd = {"clip_eps": a.clip_eps, "adv_clamp": a.adv_clamp}
    options: dict = {
        "opd": opd,
        "opd_topk": {"topk_weight": a.topk_weight, "kl_direction": a.kl_direction, "with_sampled": a.with_sampled,
                     **(opd if a.with_sampled else {})},
        "sft_teacher": {},
        "dpo": {"beta": a.beta},
        "ctpd": {"beta": a.beta},
    }[a.name]  # fmt: skip
    return {"name": a.name, "options": options}
