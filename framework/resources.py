"""Start-up resource check: does the configured actor layout fit the Ray cluster it is about to use?

Pure Python (no Ray import): the caller passes what Ray reports, ``ray.cluster_resources()`` and,
optionally, the alive nodes' resource dicts (:func:`alive_node_resources` of ``ray.nodes()``).
A misfit raises :class:`~framework.config.ConfigError` whose message shows the arithmetic, before a
single actor is created (otherwise Ray would wait on an unschedulable placement group until a
timeout, with no hint of which number is wrong).

GPU accounting (``cluster.device=cuda``), per role, with ``g_*`` the ``cluster.gpus_per_*`` values
(what each actor asks Ray for) and ``TP`` the role's ``tensor_parallel_size``:

* rollout engine: ``g_r`` GPUs on ONE node. ``TP > 1`` needs ``g_r == TP`` (one shard per GPU; vLLM
  runs its TP workers inside the actor's GPUs). ``TP == 1`` allows ``0 < g_r <= 1``: a fraction lets
  engines share a GPU, and then ``rollout.gpu_memory_utilization <= g_r`` so that the engines Ray puts
  on one GPU cannot ask vLLM for more than the whole GPU's memory.
* teacher replica: the same rules with ``g_t`` and ``teacher.tensor_parallel_size`` (vllm and hf
  backends); the http backend runs elsewhere and must ask for ``g_t = 0``.
* learner rank: exactly one GPU (``g_l = 1``): one DeepSpeed/NCCL rank per device.
* mapping worker: CPU only.

``placement=disaggregated``: every role has its own GPUs::

    GPUs = E * g_r + R * g_t + L * g_l

``placement=colocated``: the learner ranks and the rollout engines time-share one pool of whole GPUs
(the engine sleeps while the learner steps; the actor layer puts engine i and rank i in one
placement-group bundle of one GPU and each asks Ray for half of it), so the pool is the larger of the
two footprints, not their sum; the teacher keeps its own::

    GPUs = max(E * TP_r, L) + R * g_t          (colocated needs g_r = TP_r and g_l = 1)

with ``E`` = ``rollout.num_engines``, ``R`` = ``teacher.num_replicas``, ``L`` = ``learner.num_ranks``.
The actor layer colocates TP_r = 1 engines only. With ``cluster.device=cpu`` colocated is valid and
changes no resource: the same actors run, and the engines' sleep/wake calls are vLLM no-ops on CPU.

CPUs are checked only when ``cluster.cpus_per_actor = c > 0``: ``CPUs = (E + R + M + L) * c`` with
``M`` = ``mapping.num_workers`` (the driver reserves none).

With per-node resources, a TP group larger than the largest node is refused here too. Packing the
actors onto the nodes is Ray's: the actor layer reserves each role in a placement group
(``framework/actors/placement.py``), and a group Ray cannot place stops the start with what was
asked, what the cluster has left and the arithmetic above (``train.py``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from framework.config import Config, ConfigError

_EPS = 1e-9
_UNITS = {
    "rollout": "rollout engine",
    "teacher": "teacher replica",
    "mapping": "mapping worker",
    "learner": "learner rank",
}


@dataclass(frozen=True)
class RoleDemand:
    """What one role asks of the cluster: ``count`` actors of ``gpus_each`` GPUs and ``cpus_each`` CPUs."""

    role: str
    count: int
    gpus_each: float
    cpus_each: float
    tensor_parallel: int = 1

    @property
    def gpus(self) -> float:
        return self.count * self.gpus_each

    def term(self) -> str:
        """``"4 rollout engines × 2 GPUs (TP 2)"``: one addend of the GPU arithmetic."""
        unit = _UNITS[self.role] + ("s" if self.count != 1 else "")
        gpu_word = "GPU" if self.gpus_each == 1 else "GPUs"
        tp = f" (TP {self.tensor_parallel})" if self.role in ("rollout", "teacher") else ""
        return f"{self.count} {unit} × {_fmt(self.gpus_each)} {gpu_word}{tp}"


@dataclass
class ResourcePlan:
    """The accounting that passed, for the start-up log (``summary()``) and the run's metadata."""

    device: str
    placement: str
    roles: dict[str, RoleDemand]
    gpus_needed: float
    gpus_available: float
    gpu_arithmetic: str  # e.g. "2 rollout engines × 1 GPU (TP 1) + ... = 8 GPUs"
    cpus_needed: float
    cpus_available: float
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"resources ({self.device}, {self.placement}):"]
        if self.device == "cuda":
            lines.append(f"  GPUs: {self.gpu_arithmetic}; the cluster has {_fmt(self.gpus_available)}")
        if self.cpus_needed > 0:
            lines.append(f"  CPUs: {_fmt(self.cpus_needed)} reserved of {_fmt(self.cpus_available)}")
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)


def alive_node_resources(ray_nodes: Iterable[Mapping]) -> list[dict[str, float]]:
    """The ``Resources`` dict of every alive node in ``ray.nodes()`` output (the per-node input here)."""
    return [dict(n.get("Resources", {})) for n in ray_nodes if n.get("Alive", False)]


def role_demands(cfg: Config) -> dict[str, RoleDemand]:
    """Each role's actor count and per-actor request, exactly as ``framework/actors`` asks Ray."""
    c = cfg.cluster
    return {
        "rollout": RoleDemand(
            "rollout",
            cfg.rollout.num_engines,
            c.gpus_per_rollout_engine,
            c.cpus_per_actor,
            cfg.rollout.tensor_parallel_size,
        ),
        "teacher": RoleDemand(  # every teacher's replicas (one pool, design §5.6)
            "teacher",
            sum(t.num_replicas for t in cfg.teacher_list()),
            c.gpus_per_teacher_replica,
            c.cpus_per_actor,
            max(t.tensor_parallel_size for t in cfg.teacher_list()),
        ),
        "mapping": RoleDemand("mapping", cfg.mapping.num_workers, 0.0, c.cpus_per_actor),
        "learner": RoleDemand("learner", cfg.learner.num_ranks, c.gpus_per_learner_rank, c.cpus_per_actor),
    }


def check_resources(
    cfg: Config, available: Mapping[str, float], nodes: Sequence[Mapping[str, float]] | None = None
) -> ResourcePlan:
    """Raise :class:`ConfigError` (with the arithmetic) unless ``cfg``'s actors fit the cluster.

    ``available`` is ``ray.cluster_resources()`` (``{"CPU": 64, "GPU": 16, ...}``); ``nodes`` is the
    per-node list (:func:`alive_node_resources`), which adds the one-node-per-TP-group check.
    """
    roles = role_demands(cfg)
    notes: list[str] = []
    gpus_available = float(available.get("GPU", 0.0))
    cpus_available = float(available.get("CPU", 0.0))
    _check_learner_batch(cfg, roles["learner"], notes)
    if cfg.cluster.device == "cuda":
        _check_gpu_requests(cfg, roles)
        if nodes is not None:
            _check_tp_fits_a_node(cfg, nodes)
        gpus_needed, arithmetic = _gpu_arithmetic(cfg, roles)
        if gpus_needed > gpus_available + _EPS:
            hint = (
                " (Ray sees no GPU: check `ray start --num-gpus` / CUDA_VISIBLE_DEVICES)"
                if gpus_available == 0
                else ""
            )
            colocate = ", use cluster.placement=colocated" if cfg.cluster.placement != "colocated" else ""
            raise ConfigError(
                "cluster",
                f"the run needs {arithmetic}, the cluster has {_fmt(gpus_available)}{hint}",
                f"lower rollout.num_engines / teacher.num_replicas / learner.num_ranks or a TP size{colocate}, "
                "or add GPUs (recipes/cluster/ has 8- and 16-GPU layouts)",
            )
        if cfg.cluster.placement == "colocated":
            _colocated_notes(cfg, roles, notes)
    else:
        gpus_needed, arithmetic = 0.0, "no GPUs (cluster.device=cpu)"
    cpus_needed = sum(r.count * r.cpus_each for r in roles.values())
    if cpus_needed > cpus_available + _EPS:
        terms = " + ".join(f"{r.count} {r.role}" for r in roles.values())
        raise ConfigError(
            "cluster.cpus_per_actor",
            f"the run reserves ({terms}) actors × {_fmt(cfg.cluster.cpus_per_actor)} CPUs = {_fmt(cpus_needed)} CPUs, "
            f"the cluster has {_fmt(cpus_available)}",
            "lower cluster.cpus_per_actor (0 lets actors share cores) or the actor counts",
        )
    return ResourcePlan(
        device=cfg.cluster.device,
        placement=cfg.cluster.placement,
        roles=roles,
        gpus_needed=gpus_needed,
        gpus_available=gpus_available,
        gpu_arithmetic=arithmetic,
        cpus_needed=cpus_needed,
        cpus_available=cpus_available,
        notes=notes,
    )


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _gpu_arithmetic(cfg: Config, roles: dict[str, RoleDemand]) -> tuple[float, str]:
    """Total GPUs and the sum that gives it, as printed in errors and in the start-up summary."""
    rollout, teacher, learner = roles["rollout"], roles["teacher"], roles["learner"]
    if cfg.cluster.placement == "colocated":
        shared = max(rollout.gpus, learner.gpus)
        total = shared + teacher.gpus
        text = f"max({rollout.term()}, {learner.term()}) = {_fmt(shared)} shared GPUs + {teacher.term()}"
    else:
        total = rollout.gpus + teacher.gpus + learner.gpus
        text = f"{rollout.term()} + {teacher.term()} + {learner.term()}"
    return total, f"{text} = {_fmt(total)} GPUs"


def _check_gpu_requests(cfg: Config, roles: dict[str, RoleDemand]) -> None:
    """Each actor's GPU request must match what its engine will actually use (see module docstring)."""
    colocated = cfg.cluster.placement == "colocated"
    _check_engine_request(
        "rollout", roles["rollout"], cfg.rollout.gpu_memory_utilization, "gpus_per_rollout_engine", colocated
    )
    teacher, entries = roles["teacher"], cfg.teacher_list()
    backends = {t.backend == "http" for t in entries}
    if backends == {True, False}:  # one cluster.gpus_per_teacher_replica cannot fit both
        raise ConfigError(
            "teachers", "on cuda, http teachers (no GPU) and engine teachers (GPUs) cannot share "
            "cluster.gpus_per_teacher_replica", "run the http teachers' models as engines, or serve every teacher over http",
        )  # fmt: skip
    if backends == {True}:
        if teacher.gpus_each > 0:
            raise ConfigError(
                "cluster.gpus_per_teacher_replica",
                f"teacher.backend=http scores on a remote server, yet each replica asks for {_fmt(teacher.gpus_each)} GPUs",
                "set cluster.gpus_per_teacher_replica=0",
            )
    else:
        for t in entries:
            demand = RoleDemand(
                "teacher", t.num_replicas, teacher.gpus_each, teacher.cpus_each, t.tensor_parallel_size
            )
            _check_engine_request(
                "teacher", demand, t.gpu_memory_utilization, "gpus_per_teacher_replica", colocated=False
            )
    g_l = roles["learner"].gpus_each
    if g_l != 1:
        raise ConfigError(
            "cluster.gpus_per_learner_rank",
            f"each learner rank is one DeepSpeed process on one GPU, got {_fmt(g_l)} GPUs per rank",
            "set cluster.gpus_per_learner_rank=1 (more GPUs: raise learner.num_ranks)",
        )


def _check_engine_request(
    role: str, demand: RoleDemand, mem_util: float, gpu_key: str, colocated: bool
) -> None:
    g, tp = demand.gpus_each, demand.tensor_parallel
    key = f"cluster.{gpu_key}"
    if g <= 0:
        raise ConfigError(
            key, f"cluster.device=cuda but each {_UNITS[role]} asks for no GPU", f"set {key}={tp}"
        )
    if tp > 1 and g != tp:
        raise ConfigError(
            key,
            f"a {_UNITS[role]} with {role}.tensor_parallel_size={tp} runs one shard per GPU on {tp} GPUs, "
            f"but asks Ray for {_fmt(g)}",
            f"set {key}={tp}",
        )
    if tp == 1 and g > 1:
        raise ConfigError(
            key,
            f"a {_UNITS[role]} with TP 1 uses one GPU, {_fmt(g)} would leave GPUs idle",
            f"set {key}=1 or raise TP",
        )
    if colocated and g < 1:
        raise ConfigError(
            key,
            "with cluster.placement=colocated the engines share the learner's whole GPUs, not a fraction",
            f"set {key}={tp}",
        )
    if g < 1 and mem_util > g + _EPS:
        raise ConfigError(
            f"{role}.gpu_memory_utilization",
            f"each {_UNITS[role]} holds {_fmt(g)} of a GPU in Ray's accounting but asks vLLM for {mem_util:g} of its "
            "memory, so the engines Ray puts on one GPU would not fit in it",
            f"set {role}.gpu_memory_utilization<={_fmt(g)} or {key}=1",
        )


def _check_tp_fits_a_node(cfg: Config, nodes: Sequence[Mapping[str, float]]) -> None:
    biggest = max((int(n.get("GPU", 0.0) + _EPS) for n in nodes), default=0)
    engine_teachers = [t.tensor_parallel_size for t in cfg.teacher_list() if t.backend != "http"]
    for role, tp in (
        ("rollout", cfg.rollout.tensor_parallel_size),
        ("teacher", max(engine_teachers, default=1)),
    ):
        if tp > biggest:
            raise ConfigError(
                f"{role}.tensor_parallel_size",
                f"a TP group cannot span nodes: TP {tp} needs {tp} GPUs on one node, the largest node has {biggest}",
                f"set {role}.tensor_parallel_size<={biggest} (and cluster.gpus_per_* to match)",
            )


def _check_learner_batch(cfg: Config, learner: RoleDemand, notes: list[str]) -> None:
    """Every rank needs at least one sample per step (a rank with none would stall ZeRO's collectives)."""
    per_prompt = 1 if cfg.algo.trains_on_pairs else cfg.rollout.samples_per_prompt
    samples = cfg.data.prompts_per_step * per_prompt
    if samples < learner.count:
        raise ConfigError(
            "learner.num_ranks",
            f"a step has data.prompts_per_step × samples = {cfg.data.prompts_per_step} × {per_prompt} = {samples} "
            f"samples, fewer than the {learner.count} learner ranks",
            f"raise data.prompts_per_step to at least {math.ceil(learner.count / per_prompt)} or lower learner.num_ranks",
        )
    if samples % learner.count:
        notes.append(f"{samples} samples per step do not split evenly over {learner.count} learner ranks")


def _colocated_notes(cfg: Config, roles: dict[str, RoleDemand], notes: list[str]) -> None:
    rollout_gpus, learner_gpus = roles["rollout"].gpus, roles["learner"].gpus
    if rollout_gpus != learner_gpus:
        notes.append(
            f"colocated: rollout spans {_fmt(rollout_gpus)} GPUs and the learner {_fmt(learner_gpus)}; "
            f"{_fmt(abs(rollout_gpus - learner_gpus))} of the shared GPUs serve only one of them"
        )
    if cfg.rollout.gpu_memory_utilization > 0.6:
        notes.append(
            f"colocated: rollout.gpu_memory_utilization={cfg.rollout.gpu_memory_utilization:g} leaves little room "
            "for the learner's weights, gradients and optimizer states on the same GPUs"
        )
