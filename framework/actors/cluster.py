"""Start every actor of a run with its resources, and group them into the stages the controller drives."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ray

from framework.actors.failures import config_error_in
from framework.actors.learner import LearnerGroup, LearnerWorker
from framework.actors.mapping import MappingWorker
from framework.actors.placement import colocated_gpus, pack, role_options, shared_gpus
from framework.actors.pool import ActorPool, gather_stats
from framework.actors.rollout import RolloutWorker
from framework.actors.teacher import TeacherWorker
from framework.actors.weights import FileWeights, NcclWeights, choose_weight_path
from framework.config import Config, TeacherEntry
from framework.learner.lora import vllm_max_lora_rank
from framework.learner.settings import RankSettings
from framework.logging import say


@dataclass
class Stages:
    """The run's actor pools (rollout engines, teacher replicas, mapping workers, and for
    ``sft_teacher`` the generators: vLLM engines on the teacher model) and its learner group: what the
    stream and the controller drive. Pool mechanics (heartbeat, background replacement, orphan
    cleanup) live in :class:`framework.actors.pool.ActorPool`; this class adds what spans pools: the
    weight sync, sleep/wake, the restart count, the learner's replacement."""

    pools: dict[str, ActorPool]  # role -> pool; "generator" only for sft_teacher
    learner: LearnerGroup
    identity_mapping: bool = False
    colocated: bool = False  # cluster.placement=colocated: rollout engines sleep while the learner steps
    health_timeout_s: float = 10.0  # a ping unanswered this long marks an actor hung
    start_timeout_s: float = 900.0  # trainer.actor_start_timeout_s
    restarts: Counter[str] = field(default_factory=Counter)  # replacements by role, this process
    weight_path: str = "file"  # "file" | "nccl": how weights reach the engines (actors/weights.py)
    engine_workers: int = 1  # vLLM workers per rollout engine (rollout.tensor_parallel_size)
    student_path: str = ""  # the student's folder: the harness evaluation reads its tokenizer
    adapters: bool = False  # a LoRA student: the file path syncs adapter folders (learner/lora.py)
    teacher_names: list[str] = field(default_factory=lambda: ["teacher"])  # metric labels, by teacher
    # the teacher pool's members of each teacher (None: one teacher, every member)
    teacher_slots: list[list[int]] | None = None
    weights: FileWeights | NcclWeights = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.weights = NcclWeights(self) if self.weight_path == "nccl" else FileWeights(self)

    @property
    def rollout(self) -> list:
        return self.pool("rollout")

    @property
    def teacher(self) -> list:
        return self.pool("teacher")

    @property
    def mapping(self) -> list:
        return self.pool("mapping")

    @property
    def teacher_generators(self) -> list:
        return self.pool("generator")

    def pool(self, role: str) -> list:
        """The members of ``role`` (an empty list for a role this run does not have)."""
        return self.pools[role].members if role in self.pools else []

    def _owner(self, actor) -> ActorPool | None:
        return next((p for p in self.pools.values() if p.index(actor) is not None), None)

    def record_trees(self) -> None:
        for pool in self.pools.values():
            pool.record_trees()

    def sync_weights(self, version: int, timeout_s: float, engines: list | None = None) -> list[int]:
        """The learner's weights into the rollout engines that are up (``engines``: only those, e.g. a
        replacement), by this run's weight path (``actors/weights.py``). Returns the indexes of
        engines that died or hung during the sync (the caller replaces them); a learner failure
        raises."""
        up = self.usable("rollout")  # a replacement still starting is synced by poll_started once up
        targets = [self.rollout[i] for i in up] if engines is None else engines
        failed = self.weights.sync(version, targets, timeout_s)
        if engines is not None and failed:
            raise RuntimeError(f"a freshly started engine failed its first weight sync: {failed}")
        return failed if engines is not None else [up[i] for i in failed]

    def close(self, timeout_s: float = 60.0) -> None:
        """What the weight path left behind (the file path's folder); call before killing the actors."""
        self.weights.close(timeout_s)

    def sleep_rollout(self, timeout_s: float) -> list[int]:
        """Colocated: free every rollout engine's GPU for the learner step (vLLM sleep level 1: weights
        offloaded to CPU memory, KV cache dropped). Returns the engines that died or hung."""
        refs = [engine.sleep.remote(1) for engine in self.rollout]
        return self.pools["rollout"].failed_calls(refs, self.rollout, timeout_s)

    def wake_rollout(self, tags: list[str] | None, timeout_s: float) -> list[int]:
        """Colocated: re-allocate ``tags`` on every rollout engine (``["weights"]`` before the weight
        sync, ``["kv_cache"]`` after it; None = all). Returns the engines that died or hung."""
        refs = [engine.wake_up.remote(tags) for engine in self.rollout]
        return self.pools["rollout"].failed_calls(refs, self.rollout, timeout_s)

    def alive(self, actor, timeout_s: float) -> bool:
        """Blocking liveness of a pool member (:meth:`ActorPool.alive`)."""
        pool = self._owner(actor)
        return pool is not None and pool.alive(actor, timeout_s)

    def responsive(self, actor) -> bool:
        """The owning pool's non-blocking heartbeat (:meth:`ActorPool.responsive`)."""
        pool = self._owner(actor)
        return True if pool is None else pool.responsive(actor)

    def is_starting(self, actor) -> bool:
        pool = self._owner(actor)
        return pool is not None and pool.is_starting(actor)

    def usable(self, role: str) -> list[int]:
        """Members of ``role`` that are up (not a replacement still starting)."""
        return self.pools[role].usable() if role in self.pools else []

    def restart(self, role: str, index: int, version: int, timeout_s: float) -> None:
        """Kill member ``index`` of ``role`` (dead or hung) and start a replacement in its place,
        without waiting for it to come up (design.md §7.2): the stream routes work to the pool's
        other members meanwhile, and :meth:`poll_started` finishes the replacement once it answers
        (a new rollout engine starts from the model folder, so it is re-synced there first).
        Colocated placement waits here: an engine starting awake would hold the learner's GPU.
        """
        self.pools[role].restart(index, timeout_s)
        self.restarts[role] += 1
        if self.colocated:
            self.await_started(version)

    def poll_started(self, version: int) -> list[tuple[str, int]]:
        """Finish the replacements that came up (non-blocking): their trees are recorded, and a new
        rollout engine loads the current weights (``version``). Returns those finished; raises
        ``RunStopped`` (one line) for one that failed to start or overran
        ``trainer.actor_start_timeout_s``."""
        done = []
        for role, pool in self.pools.items():
            for index in pool.poll_started(self.start_timeout_s):
                if role == "rollout" and version > 0:
                    self.sync_weights(version, self.start_timeout_s, engines=[pool.members[index]])
                done.append((role, index))
        return done

    def await_started(self, version: int) -> None:
        """Block until every replacement is up (before an evaluation reads every engine)."""
        while any(pool.starting for pool in self.pools.values()):
            self.poll_started(version)
            time.sleep(0.05)

    def restart_learner(self, timeout_s: float) -> None:
        """Replace every rank (a process group cannot lose one member) with fresh ranks at the initial weights."""
        self.learner.replace(timeout_s)
        self.restarts["learner"] += 1
        self.weights.learner_replaced()

    def teacher_members(self, slot: int) -> list[int]:
        """The teacher pool's indexes of teacher ``slot``'s replicas (one teacher: every member)."""
        return self.teacher_slots[slot] if self.teacher_slots else list(range(len(self.teacher)))

    def stats(self) -> dict[str, list[dict[str, float]]]:
        """Busy counters by role (sft_teacher's generators count as teacher work); with several
        teachers, each one's too (``teacher/<name>``)."""
        per_teacher = {
            f"teacher/{name}": gather_stats([self.teacher[i] for i in self.teacher_members(k)])
            for k, name in enumerate(self.teacher_names)
        }
        out = {
            "rollout": gather_stats(self.rollout),
            "teacher": [s for part in per_teacher.values() for s in part]
            + gather_stats(self.teacher_generators),
            "mapping": gather_stats(self.mapping),
            "learner": gather_stats(self.learner.ranks),
        }
        return {**out, **per_teacher} if len(per_teacher) > 1 else out

    def actors(self) -> list:
        return [*self.rollout, *self.teacher, *self.teacher_generators, *self.mapping, *self.learner.ranks]


def start_stages(cfg: Config, student_path: str, teacher_paths: str | list[str]) -> Stages:
    """Create the rollout pool, teacher pool, mapping pool and learner group for one run.

    ``teacher_paths``: one folder per teacher of :meth:`Config.teacher_list` (a str: the one teacher).
    The teacher pool holds every teacher's replicas, teacher 0's first (``Stages.teacher_slots``)."""
    c = cfg.cluster
    t0 = time.time()
    paths = [teacher_paths] if isinstance(teacher_paths, str) else list(teacher_paths)
    entries = cfg.teacher_list()
    shared = shared_gpus(cfg) if c.placement == "colocated" and c.device == "cuda" else None
    factories = {
        "rollout": _engine_factory(cfg, student_path, cfg.rollout.num_engines, shared),
        "teacher": _teacher_factory(cfg, entries, paths),
        "mapping": _mapping_factory(cfg, student_path, paths),
    }
    if cfg.algo.teacher_generates:  # the teacher WRITES the training responses: vLLM engines on it
        factories["generator"] = _engine_factory(cfg, paths[0], cfg.rollout.num_engines, student=False)
    sizes = {"rollout": cfg.rollout.num_engines, "teacher": sum(t.num_replicas for t in entries),
             "mapping": cfg.mapping.num_workers, "generator": cfg.rollout.num_engines}  # fmt: skip
    pools = {role: [make(i) for i in range(sizes[role])] for role, make in factories.items()}
    learner_pg = shared or pack(cfg.learner.num_ranks, c.cpus_per_actor, c.gpus_per_learner_rank)

    def make_rank(r: int):
        gpus = c.gpus_per_learner_rank if shared is None else colocated_gpus(cfg, r)
        return LearnerWorker.options(**role_options(cfg, gpus, learner_pg, r)).remote(  # type: ignore[attr-defined]  # Ray adds .options
            student_path, r, cfg.learner.num_ranks, _rank_settings(cfg)
        )

    health_s = cfg.trainer.health_timeout_s
    ranks = ActorPool("learner", [make_rank(r) for r in range(cfg.learner.num_ranks)], make_rank, health_s)
    learner = LearnerGroup(ranks, cfg.trainer.actor_start_timeout_s)
    try:
        ray.get([a.ping.remote() for members in pools.values() for a in members], timeout=900)
    except ray.exceptions.ActorDiedError as err:  # a constructor refused the config: say which key
        raise config_error_in(err) or err from None
    identity = ray.get(pools["mapping"][0].is_identity.remote())
    say(f"[tokenbridge] actors up in {time.time() - t0:.0f}s (identity mapping: {identity})")
    stages = Stages(
        {role: ActorPool(role, members, factories[role], health_s) for role, members in pools.items()},
        learner, identity_mapping=identity, colocated=c.placement == "colocated", health_timeout_s=health_s,
        start_timeout_s=cfg.trainer.actor_start_timeout_s,
        weight_path=choose_weight_path(cfg), engine_workers=cfg.rollout.tensor_parallel_size,
        student_path=student_path, adapters=cfg.learner.lora_rank > 0,
        teacher_names=[t.name for t in entries], teacher_slots=_replica_slots(entries),
    )  # fmt: skip
    stages.record_trees()
    return stages


def _engine_factory(
    cfg: Config, model_path: str, count: int, shared=None, student: bool = True
) -> Callable[[int], Any]:
    """``shared``: the colocated placement group of :func:`placement.shared_gpus` (engines that sleep);
    ``student``: engines that take the learner's weights (sft_teacher's generators do not)."""
    c = cfg.cluster
    env = vllm_runtime_env(cfg.rollout.kv_cache_gib, c.gpus_per_rollout_engine)
    group = shared or pack(count, c.cpus_per_actor, c.gpus_per_rollout_engine)
    engine_kwargs = rollout_engine_kwargs(cfg, sleeps=shared is not None, student=student)

    def make(i: int):
        gpus = c.gpus_per_rollout_engine if shared is None else colocated_gpus(cfg, i)
        return RolloutWorker.options(runtime_env=env, **role_options(cfg, gpus, group, i)).remote(  # type: ignore[attr-defined]  # Ray adds .options
            model_path, dict(engine_kwargs, seed=cfg.trainer.seed + i), cfg.data.max_prompt_tokens,
            cfg.pair.trust_remote_code,
        )  # fmt: skip

    return make


def rollout_engine_kwargs(cfg: Config, sleeps: bool, student: bool) -> dict[str, Any]:
    """`StudentEngine` options of a rollout engine (``sleeps``: colocated; ``student``: it takes the
    learner's weights, and on the NCCL weight path joins the learner's transfer group)."""
    r = cfg.rollout
    kwargs: dict[str, Any] = dict(
        max_model_len=r.max_model_len, kv_cache_gib=r.kv_cache_gib, enforce_eager=r.enforce_eager,
        tensor_parallel_size=r.tensor_parallel_size, gpu_memory_utilization=r.gpu_memory_utilization,
        dtype=rollout_dtype(cfg), enable_sleep_mode=sleeps,
    )  # fmt: skip
    if student and choose_weight_path(cfg) == "nccl":
        kwargs["weight_transfer_backend"] = "nccl"
    if student and cfg.learner.lora_rank > 0:  # the syncs bring LoRA adapters, not weights
        kwargs["max_lora_rank"] = vllm_max_lora_rank(cfg.learner.lora_rank)
    return kwargs


def vllm_runtime_env(kv_cache_gib: float, gpus: float) -> dict:
    """The environment of an actor that holds a vLLM engine.

    On CPU the engine core runs in the actor's own process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``):
    an engine then starts in 19-21 s instead of 49-67 s (one teacher of the demo pair, measured side
    by side on the 2-core build host) and is one process instead of four, so a killed actor leaves
    no EngineCore behind (docs/design.md §7.2). On GPU vLLM keeps its separate engine-core process,
    which overlaps scheduling with the forward pass and is what tensor parallelism needs.
    """
    env = {"VLLM_CPU_KVCACHE_SPACE": str(int(max(1, kv_cache_gib)))}
    if gpus == 0:
        env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    return {"env_vars": env}


def rollout_dtype(cfg: Config) -> str:
    """The rollout engines' dtype: ``auto`` follows the learner (the importance ratio compares the two)."""
    return cfg.learner.dtype if cfg.rollout.dtype == "auto" else cfg.rollout.dtype


def _replica_slots(entries: list[TeacherEntry]) -> list[list[int]]:
    """The teacher pool's member indexes of each teacher: teacher 0's replicas first, then teacher 1's."""
    out, start = [], 0
    for t in entries:
        out.append(list(range(start, start + t.num_replicas)))
        start += t.num_replicas
    return out


def _teacher_factory(cfg: Config, entries: list[TeacherEntry], paths: list[str]) -> Callable[[int], Any]:
    """Member ``i`` of the teacher pool: replica ``j`` of teacher ``k`` (:func:`_replica_slots`), with
    that teacher's model and options, in bundle ``j`` of that teacher's placement group."""
    c = cfg.cluster
    where = [(k, j) for k, members in enumerate(_replica_slots(entries)) for j in range(len(members))]
    groups = [pack(t.num_replicas, c.cpus_per_actor, c.gpus_per_teacher_replica) for t in entries]

    def make(i: int):
        k, j = where[i]
        t = entries[k]
        return TeacherWorker.options(  # type: ignore[attr-defined]  # Ray adds .options
            runtime_env=vllm_runtime_env(t.kv_cache_gib, c.gpus_per_teacher_replica),
            **role_options(cfg, c.gpus_per_teacher_replica, groups[k], j),
        ).remote(t.backend, _teacher_kwargs(cfg, t, paths[k]), t.top_k, t.max_tokens_per_batch)

    return make


def _mapping_factory(cfg: Config, student_path: str, teacher_paths: list[str]) -> Callable[[int], Any]:
    verifier = cfg.data.train  # its records' answers give the sequence reward (data/verifiers.py)
    names = [t.name for t in cfg.teacher_list()] if cfg.teachers else None  # one teacher: unlabelled

    def make(i: int):
        return MappingWorker.options(num_cpus=cfg.cluster.cpus_per_actor).remote(  # type: ignore[attr-defined]  # Ray adds .options
            student_path,
            teacher_paths,
            cfg.mapping.credit,
            cfg.algo.needs_support,  # the objective decides the dense projection
            verifier,
            cfg.data.max_prompt_tokens,
            names,
            cfg.mapping.boundary,
        )

    return make


def _teacher_kwargs(cfg: Config, t: TeacherEntry, teacher_path: str) -> dict:
    if t.backend == "vllm":
        return dict(
            model_path=teacher_path, max_logprobs=t.top_k, max_model_len=t.max_model_len,
            kv_cache_gib=t.kv_cache_gib, tensor_parallel_size=t.tensor_parallel_size,
            gpu_memory_utilization=t.gpu_memory_utilization, dtype=t.dtype,
            trust_remote_code=cfg.pair.trust_remote_code,
        )  # fmt: skip
    if t.backend == "hf":
        return dict(
            model_path=teacher_path, device=cfg.cluster.device, trust_remote_code=cfg.pair.trust_remote_code
        )
    return dict(
        base_url=t.url, model=t.http_model or teacher_path, api_key_env=t.api_key_env,
        verify_tls=t.verify_tls, ca_cert=t.ca_cert, timeout_s=t.http_timeout_s,
        max_attempts=t.http_max_attempts,
    )  # fmt: skip


def _rank_settings(cfg: Config) -> RankSettings:
    return RankSettings(
        learner=cfg.learner, objective=cfg.algo, seed=cfg.trainer.seed, temperature=cfg.rollout.temperature,
        trust_remote_code=cfg.pair.trust_remote_code, device=cfg.cluster.device, total_steps=cfg.trainer.steps,
    )  # fmt: skip
