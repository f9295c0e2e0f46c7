"""Typed configuration: one dataclass per section, registered with Hydra's ConfigStore.

Recipes under ``recipes/`` hold values only; this module holds the schema, the defaults and the
start-up validation. A config becomes a typed :class:`Config` exactly once, at the entry point
(:func:`to_config`), and every impossible value fails there with a :class:`ConfigError` that names the
key and the fix.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from framework.algo.registry import make_objective, needs_topk_support, objective_kwargs


class ConfigError(ValueError):
    """An impossible configuration value. The message names the key and how to fix it."""

    def __init__(self, key: str, problem: str, fix: str):
        super().__init__(f"config error at `{key}`: {problem}. Fix: {fix}")
        self.key = key


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


@dataclass
class MappingConfig:
    """The token-mapping worker pool (docs/design.md §3)."""

    num_workers: int = 1
    credit: str = "proportional"  # proportional | uniform | last


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
    micro_batch_tokens: int = 8192
    logprob_chunk_size: int = 256
    dtype: str = "float32"
    backend: str = "auto"  # auto = gloo on CPU, nccl on GPU
    gradient_checkpointing: bool = False


@dataclass
class AlgoConfig:
    """The objective (docs/design.md §4)."""

    name: str = "opd"  # opd | opd_topk | sft_teacher | ctpd | dpo
    # Every objective's options in one flat section; each objective takes its own
    # (framework.algo.objective_kwargs), the others are ignored. opd (and opd_topk's sampled term):
    clip_eps: float = 0.2
    clip_eps_high: float | None = None  # asymmetric clip: upper bound 1 + clip_eps_high (None: clip_eps)
    dual_clip: float | None = None  # dual clip for negative advantages (None: off; > 1 when set)
    adv_clamp: float | None = 5.0  # |advantage| bound (None: off)
    reward_weight: float = 0.0  # λ: add λ (task reward − baseline) to every token's advantage (0: off)
    reward_baseline: str = "group_mean"  # group_mean | leave_one_out | none (framework.algo.reward)
    distill_weight: float = 1.0  # weight of the teacher term (0 with reward_weight > 0: policy gradient)
    # opd_topk:
    topk_weight: float = 1.0  # weight of the dense KL term
    with_sampled: bool = True  # add the sampled-path opd term (false = dense KL only)
    kl_direction: str = "forward"  # forward | reverse
    min_target_prob: float = 1e-8  # floor of a projected target probability
    # dpo / ctpd:
    beta: float = 0.1  # temperature
    label_smoothing: float = 0.0
    # ctpd:
    mu: float = 1.0  # span-weight strength (0 = uniform weights, no reference model)
    log_ratio_clip: float = 1.0
    weight_min: float = 0.25
    weight_max: float = 4.0


@dataclass
class DataConfig:
    """Where prompts come from."""

    train: str = "zoo:arith"  # zoo:arith or a local JSONL/Parquet path
    eval: str = "zoo:arith"
    num_train: int = 4096
    num_eval: int = 64
    prompts_per_step: int = 8
    max_prompt_tokens: int = 256
    max_bad_lines: int = 0  # malformed records skipped (and counted) before failing; 0 = fail on the first


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


@dataclass
class LoggingConfig:
    wandb_mode: str = "offline"  # offline | online | disabled
    project: str = "tokenbridge"
    run_name: str | None = None
    log_generations: int = 4  # rows in the generations table per eval
    progress_bar: bool = True


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


@dataclass
class Config:
    pair: PairConfig = field(default_factory=PairConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    mapping: MappingConfig = field(default_factory=MappingConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)


ALGOS = ("opd", "opd_topk", "sft_teacher", "ctpd", "dpo")


def register_configs() -> None:
    """Register the schema with Hydra so recipes are type-checked when composed."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="tokenbridge_schema", node=Config)


def to_config(cfg: DictConfig | dict[str, Any]) -> Config:
    """Turn a composed Hydra/OmegaConf config into a validated :class:`Config`."""
    merged = OmegaConf.merge(OmegaConf.structured(Config), cfg)
    typed = OmegaConf.to_object(merged)
    assert isinstance(typed, Config)
    validate(typed)
    return typed


def _choice(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(
            key, f"{value!r} is not one of {list(allowed)}", f"set {key}=<one of {'|'.join(allowed)}>"
        )


def _positive(key: str, value: float, allow_zero: bool = False) -> None:
    ok = value >= 0 if allow_zero else value > 0
    if not ok or (isinstance(value, float) and not math.isfinite(value)):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(key, f"must be {bound}, got {value!r}", f"set {key} to a finite value {bound}")


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


def _check_objective(algo: AlgoConfig) -> None:
    """Build the objective once with its options, so a bad option stops the run here, not at step 1."""
    options = objective_kwargs(algo.name, dataclasses.asdict(algo))
    try:
        make_objective(algo.name, **options)
    except (ValueError, TypeError) as err:
        text = str(err)  # name the option the objective's message starts with, if any
        named = sorted((k for k in options if k in text), key=lambda k: (text.index(k), -len(k)))
        raise ConfigError(
            f"algo.{named[0]}" if named else "algo",
            f"algo={algo.name} refuses its options ({err})",
            "change the algo.* option named above",
        ) from None


def validate(cfg: Config) -> None:
    """Reject impossible values before any actor starts (each message names key and fix)."""
    _choice("algo.name", cfg.algo.name, ALGOS)
    _choice("algo.kl_direction", cfg.algo.kl_direction, ("forward", "reverse"))
    _choice("teacher.backend", cfg.teacher.backend, ("vllm", "hf", "http"))
    _choice("mapping.credit", cfg.mapping.credit, ("proportional", "uniform", "last"))
    _choice("logging.wandb_mode", cfg.logging.wandb_mode, ("offline", "online", "disabled"))
    _choice("cluster.device", cfg.cluster.device, ("cpu", "cuda"))
    _choice("cluster.placement", cfg.cluster.placement, ("disaggregated", "colocated"))
    _choice("learner.backend", cfg.learner.backend, ("auto", "gloo", "nccl"))
    _choice("learner.dtype", cfg.learner.dtype, ("float32", "bfloat16", "float16"))
    _choice("rollout.dtype", cfg.rollout.dtype, ("auto", "float32", "bfloat16", "float16"))
    _choice("teacher.dtype", cfg.teacher.dtype, ("auto", "float32", "bfloat16", "float16"))
    if cfg.learner.zero_stage not in (0, 1, 2, 3):
        raise ConfigError(
            "learner.zero_stage", f"{cfg.learner.zero_stage} is not a ZeRO stage", "use 0, 1, 2 or 3"
        )
    for key, value in [
        ("rollout.num_engines", cfg.rollout.num_engines),
        ("rollout.samples_per_prompt", cfg.rollout.samples_per_prompt),
        ("rollout.max_new_tokens", cfg.rollout.max_new_tokens),
        ("rollout.max_model_len", cfg.rollout.max_model_len),
        ("rollout.tensor_parallel_size", cfg.rollout.tensor_parallel_size),
        ("teacher.num_replicas", cfg.teacher.num_replicas),
        ("teacher.top_k", cfg.teacher.top_k),
        ("teacher.max_tokens_per_batch", cfg.teacher.max_tokens_per_batch),
        ("teacher.http_timeout_s", cfg.teacher.http_timeout_s),
        ("teacher.http_max_attempts", cfg.teacher.http_max_attempts),
        ("mapping.num_workers", cfg.mapping.num_workers),
        ("learner.num_ranks", cfg.learner.num_ranks),
        ("learner.lr", cfg.learner.lr),
        ("learner.micro_batch_tokens", cfg.learner.micro_batch_tokens),
        ("learner.logprob_chunk_size", cfg.learner.logprob_chunk_size),
        ("data.prompts_per_step", cfg.data.prompts_per_step),
        ("data.num_train", cfg.data.num_train),
        ("data.max_prompt_tokens", cfg.data.max_prompt_tokens),
        ("trainer.steps", cfg.trainer.steps),
        ("trainer.sync_every", cfg.trainer.sync_every),
        ("trainer.health_timeout_s", cfg.trainer.health_timeout_s),
        ("trainer.actor_start_timeout_s", cfg.trainer.actor_start_timeout_s),
        ("trainer.rollout_timeout_s", cfg.trainer.rollout_timeout_s),
        ("trainer.teacher_timeout_s", cfg.trainer.teacher_timeout_s),
        ("trainer.mapping_timeout_s", cfg.trainer.mapping_timeout_s),
        ("trainer.learner_timeout_s", cfg.trainer.learner_timeout_s),
        ("trainer.sync_timeout_s", cfg.trainer.sync_timeout_s),
        ("algo.beta", cfg.algo.beta),
    ]:
        _positive(key, value)
    for key, value in [
        ("rollout.temperature", cfg.rollout.temperature),
        ("learner.weight_decay", cfg.learner.weight_decay),
        ("learner.grad_clip", cfg.learner.grad_clip),
        ("algo.clip_eps", cfg.algo.clip_eps),
        ("algo.topk_weight", cfg.algo.topk_weight),
        ("trainer.max_staleness", cfg.trainer.max_staleness),
        ("trainer.max_restarts", cfg.trainer.max_restarts),
        ("trainer.eval_every", cfg.trainer.eval_every),
        ("trainer.checkpoint_every", cfg.trainer.checkpoint_every),
        ("data.num_eval", cfg.data.num_eval),
        ("data.max_bad_lines", cfg.data.max_bad_lines),
        *[
            (f"algo.{k}", getattr(cfg.algo, k))
            for k in ("adv_clamp", "clip_eps_high")
            if getattr(cfg.algo, k) is not None
        ],
    ]:
        _positive(key, value, allow_zero=True)
    _check_objective(cfg.algo)
    if cfg.rollout.top_p != 1.0:
        # the learner recomputes log pi(a) / T over the whole vocabulary; a top-p-truncated
        # behaviour distribution would make the importance ratio wrong on every step
        raise ConfigError(
            "rollout.top_p",
            f"on-policy training needs the untruncated sampling distribution, got {cfg.rollout.top_p}",
            "set rollout.top_p=1.0 (lower rollout.temperature to sharpen sampling instead)",
        )
    if cfg.rollout.temperature == 0.0:
        raise ConfigError(
            "rollout.temperature",
            "on-policy distillation needs sampled responses, temperature 0 is greedy",
            "set rollout.temperature=1.0 (evaluation is greedy on its own)",
        )
    if cfg.rollout.max_new_tokens >= cfg.rollout.max_model_len:
        raise ConfigError(
            "rollout.max_new_tokens",
            f"{cfg.rollout.max_new_tokens} leaves no room for the prompt in rollout.max_model_len={cfg.rollout.max_model_len}",
            "raise rollout.max_model_len or lower rollout.max_new_tokens",
        )
    if cfg.data.max_prompt_tokens + cfg.rollout.max_new_tokens > cfg.rollout.max_model_len:
        raise ConfigError(
            "data.max_prompt_tokens",
            f"max_prompt_tokens + rollout.max_new_tokens = {cfg.data.max_prompt_tokens + cfg.rollout.max_new_tokens}"
            f" exceeds rollout.max_model_len={cfg.rollout.max_model_len}",
            "lower data.max_prompt_tokens or raise rollout.max_model_len",
        )
    if needs_topk_support(cfg.algo.name) and cfg.teacher.top_k < 1:
        raise ConfigError(
            "teacher.top_k",
            f"algo={cfg.algo.name} trains on the teacher's top-k, and teacher.top_k={cfg.teacher.top_k}",
            "set teacher.top_k=20 (or any k >= 1)",
        )
    if cfg.algo.name == "opd_topk" and cfg.algo.topk_weight == 0 and not cfg.algo.with_sampled:
        raise ConfigError(
            "algo.topk_weight",
            "dense weight 0 and no sampled term: nothing to train",
            "set algo.topk_weight=1.0",
        )
    if cfg.teacher.backend == "http" and not cfg.teacher.url:
        raise ConfigError(
            "teacher.url", "teacher.backend=http needs a server URL", "set teacher.url=https://host:port/v1"
        )
    http_worst_s = cfg.teacher.http_timeout_s * cfg.teacher.http_max_attempts
    if cfg.teacher.backend == "http" and http_worst_s >= cfg.trainer.teacher_timeout_s:
        # else the driver declares the hop overdue while the client is still retrying one request
        raise ConfigError(
            "teacher.http_timeout_s",
            f"http_timeout_s × http_max_attempts = {http_worst_s:g} s does not fit in "
            f"trainer.teacher_timeout_s={cfg.trainer.teacher_timeout_s:g}",
            "lower teacher.http_timeout_s or teacher.http_max_attempts, or raise trainer.teacher_timeout_s",
        )
    if cfg.cluster.placement == "colocated":
        _validate_colocated(cfg)
    if cfg.cluster.device == "cpu":
        for key in ("gpus_per_rollout_engine", "gpus_per_teacher_replica", "gpus_per_learner_rank"):
            if getattr(cfg.cluster, key) > 0:
                raise ConfigError(
                    f"cluster.{key}",
                    "GPUs requested with cluster.device=cpu",
                    "set cluster.device=cuda or the GPUs to 0",
                )
        if cfg.learner.backend == "nccl":
            raise ConfigError("learner.backend", "nccl needs GPUs", "set learner.backend=auto (gloo on CPU)")
    if cfg.trainer.resume not in ("none", "auto") and not cfg.trainer.resume:
        raise ConfigError("trainer.resume", "empty", "set trainer.resume=none|auto|/path/to/checkpoint")
