"""Typed configuration: one dataclass per section, registered with Hydra's ConfigStore.

Recipes under ``recipes/`` hold values only; this module holds the schema, the defaults and the
start-up checks. Each section checks its own fields (its ``check`` method, beside them); what spans
sections is checked in :func:`validate`. The ``algo`` section is the objective itself: one dataclass per
objective (framework/algo/registry.py), whose fields are exactly its options, chosen with the config
group (``algo=ctpd``). A config becomes a typed :class:`Config` exactly once, at the entry point
(:func:`to_config`), and every impossible value fails there with a :class:`ConfigError` that names the
key and the fix.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from framework.algo import OBJECTIVES, OPD, ObjectiveConfig, make_objective, objective_options


class ConfigError(ValueError):
    """An impossible configuration value. The message names the key and how to fix it."""

    def __init__(self, key: str, problem: str, fix: str):
        super().__init__(f"config error at `{key}`: {problem}. Fix: {fix}")
        self.key, self.problem, self.fix = key, problem, fix

    def __reduce__(self) -> tuple:  # rebuilt whole when it crosses a process (raised in a Ray actor)
        return (type(self), (self.key, self.problem, self.fix))


def _choice(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(
            key, f"{value!r} is not one of {list(allowed)}", f"set {key}=<one of {'|'.join(allowed)}>"
        )


def _positive(section: object, prefix: str, *names: str, allow_zero: bool = False) -> None:
    """Each ``section.<name>`` must be finite and > 0 (``allow_zero``: >= 0); ``None`` means off."""
    for name in names:
        value = getattr(section, name)
        if value is None:
            continue
        ok = value >= 0 if allow_zero else value > 0
        if not ok or (isinstance(value, float) and not math.isfinite(value)):
            key, bound = f"{prefix}.{name}", ">= 0" if allow_zero else "> 0"
            raise ConfigError(key, f"must be {bound}, got {value!r}", f"set {key} to a finite value {bound}")


_DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class PairConfig:
    """Which student is trained and which teacher scores it. ``zoo:NAME`` names a built-in tiny model."""

    name: str = "zoo-qwen-to-llama3"
    student: str = "zoo:student-llama3"
    teacher: str = "zoo:teacher-qwen"
    trust_remote_code: bool = False  # never on unless the user asks for it
    # pickle weights (*.bin / *.pt without safetensors) can run code when loaded: refused unless true
    allow_pickle_weights: bool = False


@dataclass
class RolloutConfig:
    """The vLLM student rollout pool."""

    num_engines: int = 1
    samples_per_prompt: int = 4
    max_new_tokens: int = 48
    temperature: float = 1.0
    top_p: float = 1.0
    max_model_len: int = 512
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.4
    kv_cache_gib: float = 1.0  # CPU only: VLLM_CPU_KVCACHE_SPACE
    enforce_eager: bool = True
    # auto = learner.dtype, so behaviour logprobs and the learner's come from the same numerics
    dtype: str = "auto"

    def check(self) -> None:
        _positive(self, "rollout", "num_engines", "samples_per_prompt", "max_new_tokens", "max_model_len")
        _positive(self, "rollout", "tensor_parallel_size")
        _positive(self, "rollout", "temperature", allow_zero=True)
        _choice("rollout.dtype", self.dtype, ("auto", *_DTYPES))
        if self.top_p != 1.0:
            # the learner recomputes log pi(a) / T over the whole vocabulary; a top-p-truncated
            # behaviour distribution would make the importance ratio wrong on every step
            raise ConfigError(
                "rollout.top_p",
                f"on-policy training needs the untruncated sampling distribution, got {self.top_p}",
                "set rollout.top_p=1.0 (lower rollout.temperature to sharpen sampling instead)",
            )
        if self.temperature == 0.0:
            raise ConfigError(
                "rollout.temperature",
                "on-policy distillation needs sampled responses, temperature 0 is greedy",
                "set rollout.temperature=1.0 (evaluation is greedy on its own)",
            )
        if self.max_new_tokens >= self.max_model_len:
            raise ConfigError(
                "rollout.max_new_tokens",
                f"{self.max_new_tokens} leaves no room for the prompt in rollout.max_model_len={self.max_model_len}",
                "raise rollout.max_model_len or lower rollout.max_new_tokens",
            )


@dataclass
class TeacherConfig:
    """The teacher scoring service."""

    backend: str = "vllm"  # vllm | hf | http
    num_replicas: int = 1
    top_k: int = 20
    max_tokens_per_batch: int = 16384
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.3
    kv_cache_gib: float = 1.0
    max_model_len: int = 512  # the zoo models have 512 positions; raise for real teachers
    dtype: str = "auto"  # auto = the checkpoint's dtype (vLLM's own auto runs float32 as bfloat16)
    url: str | None = None  # http backend: base URL of an OpenAI-compatible server
    http_model: str | None = None  # http backend: model name on that server
    api_key_env: str = "TOKENBRIDGE_TEACHER_API_KEY"  # the key is read from this env var, never stored
    verify_tls: bool = True
    ca_cert: str | None = None  # http backend: CA file of the server's certificate (else the system store)
    # http backend: seconds for each network step of one request (connect, send, each read)
    http_timeout_s: float = 60.0
    # http backend: tries per request on HTTP 408/425/429/500/502/503/504, timeouts and refused connections
    # (exponential backoff between them); other errors fail at the first answer
    http_max_attempts: int = 3

    def check(self, prefix: str = "teacher") -> None:
        _choice(f"{prefix}.backend", self.backend, ("vllm", "hf", "http"))
        _choice(f"{prefix}.dtype", self.dtype, ("auto", *_DTYPES))
        _positive(self, prefix, "num_replicas", "top_k", "max_tokens_per_batch", "http_timeout_s")
        _positive(self, prefix, "http_max_attempts")
        if self.backend == "http" and not self.url:
            raise ConfigError(
                f"{prefix}.url",
                f"{prefix}.backend=http needs a server URL",
                f"set {prefix}.url=https://host:port/v1",
            )


@dataclass
class TeacherEntry(TeacherConfig):
    """One teacher of a multi-teacher run (the ``teachers:`` list, docs/design.md §5.6): its model and
    its own scoring options (every ``teacher.*`` option, with the same defaults). A prompt goes to the
    teacher whose ``route`` equals the prompt record's ``data.route_field``; without a routing field,
    to one drawn by ``weight`` (a fixed mixture, stable per prompt)."""

    model: str = ""  # zoo:NAME, a local folder or a Hub id, like pair.teacher
    name: str = ""  # the label of its metrics (teacher/<name>/...); empty: teacher<index>
    route: str | None = None  # the data.route_field value of the prompts it scores
    weight: float = 1.0  # its share of the prompts when data.route_field is unset


# what a teacher's metric label may hold (it becomes part of a wandb key)
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")


@dataclass
class MappingConfig:
    """The token-mapping worker pool (docs/design.md §3)."""

    num_workers: int = 1
    credit: str = "proportional"  # proportional | uniform | last
    # byte_prefix: a chunk's teacher log-probability is the byte-level conditional of its bytes, the
    # "token ends here" factor charged to the next chunk (mapping/boundary.py); token: token sums
    boundary: str = "byte_prefix"

    def check(self) -> None:
        _positive(self, "mapping", "num_workers")
        _choice("mapping.credit", self.credit, ("proportional", "uniform", "last"))
        _choice("mapping.boundary", self.boundary, ("byte_prefix", "token"))


@dataclass
class LearnerConfig:
    """DeepSpeed learner ranks."""

    num_ranks: int = 1
    zero_stage: int = 2
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float = 1.0
    warmup_steps: int = 0
    # after the warm-up: none keeps lr; cosine decays it to lr * min_lr_ratio at trainer.steps
    lr_decay: str = "none"
    min_lr_ratio: float = 0.1
    micro_batch_tokens: int = 8192
    logprob_chunk_size: int = 256
    dtype: str = "float32"
    backend: str = "auto"  # auto = gloo on CPU, nccl on GPU
    gradient_checkpointing: bool = False
    # LoRA (framework/learner/lora.py): train rank-r adapters only and sync only them; 0 = full weights
    lora_rank: int = 0
    lora_alpha: int = 16  # the update is scaled by lora_alpha / lora_rank
    lora_targets: str = "all-linear"  # peft target modules: all-linear (not the LM head) or a,b,c names

    def check(self) -> None:
        _positive(self, "learner", "num_ranks", "lr", "micro_batch_tokens", "logprob_chunk_size")
        _positive(self, "learner", "weight_decay", "grad_clip", allow_zero=True)
        _choice("learner.backend", self.backend, ("auto", "gloo", "nccl"))
        _positive(self, "learner", "warmup_steps", "lora_rank", allow_zero=True)
        _choice("learner.lr_decay", self.lr_decay, ("none", "cosine"))
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(
                "learner.min_lr_ratio",
                f"{self.min_lr_ratio} is outside [0, 1]",
                "use a fraction of learner.lr, e.g. 0.1",
            )
        _positive(self, "learner", "lora_alpha")
        if self.lora_rank > 512:  # vLLM's largest max_lora_rank (framework/learner/lora.py)
            raise ConfigError(
                "learner.lora_rank", f"{self.lora_rank} is above vLLM's 512", "use a rank <= 512"
            )
        _choice("learner.dtype", self.dtype, ("float32", "bfloat16"))  # DeepSpeed: fp32 or bf16 (fp32 master)
        if self.zero_stage not in (0, 1, 2, 3):
            raise ConfigError(
                "learner.zero_stage", f"{self.zero_stage} is not a ZeRO stage", "use 0, 1, 2 or 3"
            )


@dataclass
class DataConfig:
    """Where prompts come from."""

    train: str = "zoo:arith"  # zoo:arith | zoo:max | zoo:chain | zoo:arith+max, or a JSONL/Parquet path
    eval: str = "zoo:arith"
    num_train: int = 4096
    num_eval: int = 64
    prompts_per_step: int = 8
    max_prompt_tokens: int = 256
    max_bad_lines: int = 0  # malformed records skipped (and counted) before failing; 0 = fail on the first
    route_field: str | None = None  # multi-teacher: the record field that picks each prompt's teacher

    def check(self) -> None:
        _positive(self, "data", "prompts_per_step", "num_train", "max_prompt_tokens")
        _positive(self, "data", "num_eval", "max_bad_lines", allow_zero=True)


@dataclass
class TrainerConfig:
    """The controller's loop."""

    steps: int = 60
    max_staleness: int = 0  # 0 = strictly on-policy
    sync_every: int = 1
    eval_every: int = 20
    eval_at_start: bool = True
    checkpoint_every: int = 0  # 0 = only at the end
    keep_checkpoints: int = 2
    output_dir: str = "auto"  # auto = the Hydra run directory (outputs/DATE/TIME_pair_algo)
    seed: int = 0
    resume: str = "none"  # none | auto | PATH
    overwrite: bool = False  # resume=none into a folder with a previous run: move it to previous-*/
    rollout_timeout_s: float = 300.0
    teacher_timeout_s: float = 300.0
    mapping_timeout_s: float = 120.0
    learner_timeout_s: float = 600.0
    sync_timeout_s: float = 300.0
    actor_start_timeout_s: float = 900.0  # a replacement vLLM engine may take minutes on a busy node
    health_timeout_s: float = 10.0  # a ping unanswered this long marks an actor hung
    max_restarts: int = 20  # actor replacements allowed per driver process (a resume starts afresh)

    def check(self) -> None:
        _positive(self, "trainer", "steps", "sync_every", "health_timeout_s", "actor_start_timeout_s")
        _positive(self, "trainer", "rollout_timeout_s", "teacher_timeout_s", "mapping_timeout_s")
        _positive(self, "trainer", "learner_timeout_s", "sync_timeout_s")
        _positive(
            self,
            "trainer",
            "max_staleness",
            "max_restarts",
            "eval_every",
            "checkpoint_every",
            allow_zero=True,
        )
        if self.resume not in ("none", "auto") and not self.resume:
            raise ConfigError("trainer.resume", "empty", "set trainer.resume=none|auto|/path/to/checkpoint")


@dataclass
class LoggingConfig:
    wandb_mode: str = "offline"  # offline | online | disabled
    project: str = "tokenbridge"
    run_name: str | None = None
    log_generations: int = 4  # rows in the generations table per eval
    progress_bar: bool = True

    def check(self) -> None:
        _choice("logging.wandb_mode", self.wandb_mode, ("offline", "online", "disabled"))


@dataclass
class HarnessConfig:
    """Standard-benchmark evaluation with lm-evaluation-harness at every evaluation (framework/harness)."""

    # zoo:arith, JSONL/Parquet files, or harness task names (gsm8k, ...); empty = off
    tasks: list[str] = field(default_factory=list)
    limit: int | None = 128  # problems per task and evaluation (None: all)
    max_new_tokens: int | None = None  # None: rollout.max_new_tokens

    def check(self) -> None:
        _positive(self, "harness", "limit", "max_new_tokens")


@dataclass
class ClusterConfig:
    """Where actors run. ``address=None`` starts a local Ray bound to loopback."""

    address: str | None = None
    device: str = "cpu"  # cpu | cuda
    placement: str = "disaggregated"  # disaggregated | colocated
    gpus_per_rollout_engine: float = 0.0
    gpus_per_teacher_replica: float = 0.0
    gpus_per_learner_rank: float = 0.0
    cpus_per_actor: float = 0.0  # 0 lets several actors share a core (CPU demo)

    def check(self) -> None:
        _choice("cluster.device", self.device, ("cpu", "cuda"))
        _choice("cluster.placement", self.placement, ("disaggregated", "colocated"))
        if self.device == "cpu":
            for key in ("gpus_per_rollout_engine", "gpus_per_teacher_replica", "gpus_per_learner_rank"):
                if getattr(self, key) > 0:
                    raise ConfigError(
                        f"cluster.{key}",
                        "GPUs requested with cluster.device=cpu",
                        "set cluster.device=cuda or the GPUs to 0",
                    )


@dataclass
class Config:
    pair: PairConfig = field(default_factory=PairConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    mapping: MappingConfig = field(default_factory=MappingConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    # the objective (docs/design.md §4): one of framework.algo.OBJECTIVES, its fields its options
    algo: ObjectiveConfig = field(default_factory=OPD)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    harness: HarnessConfig = field(default_factory=HarnessConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    # several teachers (docs/design.md §5.6); empty: the one teacher of pair.teacher + teacher.*
    teachers: list[TeacherEntry] = field(default_factory=list)

    def teacher_list(self) -> list[TeacherEntry]:
        """Every teacher of the run, named: ``teachers`` when given, else ``pair.teacher`` with the
        ``teacher`` section (named ``teacher``). The one form the rest of the code reads."""
        if not self.teachers:
            one = TeacherEntry(**dataclasses.asdict(self.teacher), model=self.pair.teacher, name="teacher")
            return [one]
        return [dataclasses.replace(t, name=t.name or f"teacher{i}") for i, t in enumerate(self.teachers)]

    def teacher_key(self, index: int) -> str:
        """The config prefix of teacher ``index``'s options, for messages."""
        return f"teachers.{index}" if self.teachers else "teacher"


ALGOS = tuple(OBJECTIVES)


def register_configs() -> None:
    """Register the schema with Hydra so recipes are type-checked when composed.

    ``algo`` is registered untyped beyond ``name``; each ``recipes/algo/NAME.yaml`` puts its objective's
    own schema there (``schema/algo/NAME``), so an option of another objective fails at composition.
    """
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    store.store(name="tokenbridge_schema", node=Config(algo=ObjectiveConfig()))
    for name, objective in OBJECTIVES.items():
        store.store(group="schema/algo", name=name, node=objective)


def to_config(cfg: DictConfig | dict[str, Any]) -> Config:
    """Turn a composed Hydra/OmegaConf config (or a plain dict) into a validated :class:`Config`."""
    raw = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg)
    name = OmegaConf.select(raw, "algo.name", default="opd")
    if name not in ALGOS:
        raise ConfigError(
            "algo.name", f"{name!r} is not an objective", f"choose one with algo=<{'|'.join(ALGOS)}>"
        )
    # the schema with the chosen objective in `algo`, so its options are typed and any other is refused
    schema = OmegaConf.structured(Config(algo=OBJECTIVES[name]()))
    try:
        merged = OmegaConf.merge(schema, raw)
    except ConfigKeyError as err:
        key = str(err.full_key)
        if key.startswith("algo."):
            raise ConfigError(
                key, f"algo={name} has no option {key[5:]!r} (its options: {objective_options(name)})",
                "drop it, or choose the objective that has it with algo=NAME",
            ) from None  # fmt: skip
        raise ConfigError(
            key, "no such key in the schema", "check the spelling against framework/config.py"
        ) from None
    except ValidationError as err:
        key = str(err.full_key) or "algo.name"
        if key == "algo.name" or not err.full_key:
            raise ConfigError(
                "algo.name", f"algo.name={name!r} does not name the objective the algo group chose",
                f"choose the objective with the config group: algo={name}, not algo.name",
            ) from None  # fmt: skip
        raise ConfigError(key, str(err).splitlines()[0], f"give {key} a value of its type") from None
    _check_objective(name, OmegaConf.to_container(merged.algo))  # type: ignore[arg-type]
    typed = OmegaConf.to_object(merged)
    assert isinstance(typed, Config)
    validate(typed)
    return typed


def _check_objective(name: str, values: dict[str, Any]) -> None:
    """Build the objective with its options, so a bad option stops the run here, not at step 1."""
    options = {k: v for k, v in values.items() if k != "name"}
    try:
        make_objective(name, **options)
    except (ValueError, TypeError) as err:
        text = str(err)  # name the option the objective's message starts with, if any
        named = sorted((k for k in options if k in text), key=lambda k: (text.index(k), -len(k)))
        raise ConfigError(
            f"algo.{named[0]}" if named else "algo",
            f"algo={name} refuses its options ({err})",
            "change the algo.* option named above",
        ) from None


def _validate_colocated(cfg: Config) -> None:
    """``placement=colocated``: one rollout engine and one learner rank time-share each GPU."""
    rules = [
        (
            "trainer.max_staleness", cfg.trainer.max_staleness != 0,
            "the engines sleep while the learner steps, so generation cannot overlap learning, "
            f"got max_staleness={cfg.trainer.max_staleness}",
            "set trainer.max_staleness=0 or cluster.placement=disaggregated",
        ),
        (
            "rollout.tensor_parallel_size", cfg.rollout.tensor_parallel_size != 1,
            "an engine shares one GPU with one learner rank, "
            f"but tensor_parallel_size={cfg.rollout.tensor_parallel_size} spans several",
            "set rollout.tensor_parallel_size=1 or cluster.placement=disaggregated",
        ),
    ]  # fmt: skip
    for key, broken, why, fix in rules:
        if broken:
            raise ConfigError(key, f"cluster.placement=colocated: {why}", fix)


def validate(cfg: Config) -> None:
    """Reject impossible values before any actor starts (each message names key and fix): each
    section's own checks, then the rules that span sections."""
    sections = (
        cfg.rollout,
        cfg.teacher,
        cfg.mapping,
        cfg.learner,
        cfg.data,
        cfg.trainer,
        cfg.logging,
        cfg.harness,
    )
    for section in sections:
        section.check()
    cfg.cluster.check()
    _validate_teachers(cfg)
    _check_objective(cfg.algo.name, dataclasses.asdict(cfg.algo))
    if cfg.data.max_prompt_tokens + cfg.rollout.max_new_tokens > cfg.rollout.max_model_len:
        raise ConfigError(
            "data.max_prompt_tokens",
            f"max_prompt_tokens + rollout.max_new_tokens = {cfg.data.max_prompt_tokens + cfg.rollout.max_new_tokens}"
            f" exceeds rollout.max_model_len={cfg.rollout.max_model_len}",
            "lower data.max_prompt_tokens or raise rollout.max_model_len",
        )
    for i, t in enumerate(cfg.teacher_list()):
        key = cfg.teacher_key(i)
        if cfg.algo.needs_support and t.top_k < 1:
            raise ConfigError(
                f"{key}.top_k",
                f"algo={cfg.algo.name} trains on the teacher's top-k, and {key}.top_k={t.top_k}",
                f"set {key}.top_k=20 (or any k >= 1)",
            )
        http_worst_s = t.http_timeout_s * t.http_max_attempts
        if t.backend == "http" and http_worst_s >= cfg.trainer.teacher_timeout_s:
            # else the driver declares the hop overdue while the client is still retrying one request
            raise ConfigError(
                f"{key}.http_timeout_s",
                f"http_timeout_s × http_max_attempts = {http_worst_s:g} s does not fit in "
                f"trainer.teacher_timeout_s={cfg.trainer.teacher_timeout_s:g}",
                f"lower {key}.http_timeout_s or {key}.http_max_attempts, or raise trainer.teacher_timeout_s",
            )
    if cfg.cluster.placement == "colocated":
        _validate_colocated(cfg)
    if cfg.cluster.device == "cpu" and cfg.learner.backend == "nccl":
        raise ConfigError("learner.backend", "nccl needs GPUs", "set learner.backend=auto (gloo on CPU)")


def _validate_teachers(cfg: Config) -> None:
    """The ``teachers`` list and ``data.route_field`` agree (docs/design.md §5.6)."""
    field_name = cfg.data.route_field
    if not cfg.teachers:
        if field_name is not None:
            raise ConfigError(
                "data.route_field", f"routing by {field_name!r} needs several teachers, and `teachers` is empty",
                "list the teachers (teachers=[{model: ..., route: ...}, ...]) or drop data.route_field",
            )  # fmt: skip
        return
    if cfg.algo.trains_on_pairs or cfg.algo.teacher_generates:
        raise ConfigError(
            "teachers", f"algo={cfg.algo.name} takes one teacher, and {len(cfg.teachers)} are listed",
            "use pair.teacher (teachers=[]) with this objective, or an objective that scores samples (opd, opd_topk, opd_reward)",
        )  # fmt: skip
    names = [t.name for t in cfg.teacher_list()]
    for i, t in enumerate(cfg.teachers):
        key = f"teachers.{i}"
        t.check(key)
        if not t.model:
            raise ConfigError(
                f"{key}.model", "a teacher needs a model", f"set {key}.model=zoo:NAME, a folder or a Hub id"
            )
        if not set(names[i]) <= _NAME_CHARS or names.index(names[i]) != i:
            raise ConfigError(
                f"{key}.name", f"{names[i]!r} must be unique and made of letters, digits, '_', '-' or '.'",
                "give each teacher its own name (it labels the teacher/<name>/... metrics)",
            )  # fmt: skip
        if field_name is None and t.route is not None:
            raise ConfigError(
                f"{key}.route", f"route={t.route!r} is set, but data.route_field is not",
                "set data.route_field to the record field the routes match, or drop the routes (a mixture by weight)",
            )  # fmt: skip
        if field_name is not None and t.route is None:
            raise ConfigError(
                f"{key}.route", f"data.route_field={field_name!r} routes prompts by value, and this teacher has no route",
                f"set {key}.route to the {field_name!r} value of the prompts it scores",
            )  # fmt: skip
        if field_name is None and not (t.weight > 0 and math.isfinite(t.weight)):
            raise ConfigError(
                f"{key}.weight", f"must be > 0, got {t.weight!r}", f"set {key}.weight to its share, e.g. 1.0"
            )
    routes = [t.route for t in cfg.teachers]
    if field_name is not None and len(set(routes)) < len(routes):
        raise ConfigError(
            "teachers", f"two teachers share a route ({routes})", "give each teacher its own route value"
        )
