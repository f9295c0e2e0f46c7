"""Entry point: ``tokenbridge-train [hydra overrides]`` / ``python -m framework.train``.

Hydra composes ``recipes/config.yaml`` (+ overrides) → a validated typed :class:`Config` → Ray
(local on loopback, or the cluster named by ``cluster.address`` / ``RAY_ADDRESS``) → the actors →
:class:`~framework.controller.Controller`. With no arguments it runs the CPU demo: a cross-family
zoo pair (Qwen-style teacher → Llama-3-style student) on the built-in arithmetic task.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from omegaconf import DictConfig

from framework import checkpoint
from framework.config import Config, ConfigError, register_configs, to_config
from framework.data.prompts import DataError, LoadReport, load_prompts
from framework.eval import console_metrics
from framework.logging import ACTOR_LOG_ENV, open_run_log, say
from framework.types import Prompt

if TYPE_CHECKING:
    from framework.actors.pairs import PairBatches

RECIPES = str(Path(__file__).resolve().parent.parent / "recipes")
LOOPBACK = "127.0.0.1"


def _output_dir(cfg: Config) -> Path:
    if cfg.trainer.output_dir != "auto":
        return Path(cfg.trainer.output_dir)
    from hydra.core.hydra_config import HydraConfig

    try:
        return Path(HydraConfig.get().runtime.output_dir)
    except ValueError:  # called outside @hydra.main (tests, notebooks)
        return Path("outputs") / time.strftime("%Y-%m-%d/%H-%M-%S")


def _load_split(cfg: Config, split: str) -> tuple[list[Prompt], LoadReport]:
    """``data.train`` / ``data.eval``; a data problem becomes a ConfigError naming that key."""
    key = f"data.{split}"
    train = split == "train"
    try:
        return load_prompts(
            cfg.data.train if train else cfg.data.eval,
            n=cfg.data.num_train if train else cfg.data.num_eval,
            seed=cfg.trainer.seed if train else cfg.trainer.seed + 1,
            split=split,
            max_bad_lines=cfg.data.max_bad_lines,
        )
    except DataError as err:
        problem, _, fix = " ".join(str(err).split()).partition(". Fix: ")
        raise ConfigError(
            key, problem, fix.rstrip(".") or f"point {key} at a JSONL or Parquet file"
        ) from None


def _check_answers_for_reward(cfg: Config, train: list[Prompt]) -> None:
    """A task reward (``algo.reward_weight`` > 0) is verified against each prompt's ``answer``
    (framework/data/verifiers.py): every training record must carry one."""
    if not cfg.algo.uses_task_reward():
        return
    missing = [p.prompt_id for p in train if p.answer is None]
    if missing:
        raise ConfigError(
            "algo.reward_weight",
            f"a task reward checks each response against its record's answer, and {len(missing)} of "
            f"{len(train)} records of data.train={cfg.data.train} have none (e.g. {missing[0]!r})",
            "add an 'answer' field to every record, or set algo.reward_weight=0",
        )


def _check_routes(cfg: Config, train: list[Prompt], evals: list[Prompt]) -> None:
    """Multi-teacher by field: every train and eval record carries a value one teacher routes."""
    from framework.data.routing import check_routes

    if cfg.data.route_field is None:
        return
    routes = [t.route for t in cfg.teacher_list()]
    for key, prompts, source in (("data.train", train, cfg.data.train), ("data.eval", evals, cfg.data.eval)):
        try:
            check_routes(prompts, cfg.data.route_field, routes, f"{key}={source}")
        except DataError as err:
            problem, _, fix = " ".join(str(err).split()).partition(". Fix: ")
            raise ConfigError("data.route_field", problem, fix.rstrip(".")) from None


def _load_pairs(cfg: Config, student: str, teacher: str) -> PairBatches:
    """``algo=dpo|ctpd``: the training and held-out preference pairs (``data.train`` / ``data.eval``);
    a data problem becomes a ConfigError naming ``data.train``."""
    from framework.actors.pairs import PairBatches
    from framework.preference.data import load_preference_pairs

    try:
        train, held_out = load_preference_pairs(cfg.data.train, cfg.data.eval, num_train=cfg.data.num_train,
                                                num_eval=cfg.data.num_eval, seed=cfg.trainer.seed)  # fmt: skip
    except DataError as err:
        problem, _, fix = " ".join(str(err).split()).partition(". Fix: ")
        raise ConfigError(
            "data.train", problem, fix.rstrip(".") or "point data.train at a JSONL of pairs"
        ) from None
    return PairBatches(cfg, student, teacher, train, held_out)


def _init_ray(cfg: Config) -> None:
    import ray

    names = (
        "WANDB_MODE",
        "DS_ACCELERATOR",
        "OMP_NUM_THREADS",
        "TOKENBRIDGE_HOME",
        "HF_HUB_OFFLINE",
        ACTOR_LOG_ENV,
    )
    env = {k: os.environ[k] for k in names if k in os.environ}
    # the actors' own output (vLLM, DeepSpeed, transformers) goes to the run's logs/actors.log
    runtime_env = {"env_vars": env, "worker_process_setup_hook": "framework.logging.route_actor_output"}
    address = cfg.cluster.address or os.environ.get("RAY_ADDRESS")
    quiet: dict[str, Any] = dict(log_to_driver=False, logging_level=logging.WARNING)
    if os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"):
        # inside `ray job submit` / KubeRay: the job's runtime_env already carries the env; a second
        # one would make Ray refuse to merge them
        ray.init(address=address or "auto", **quiet)
    elif address:
        ray.init(address=address, runtime_env=runtime_env, **quiet)
    else:
        start_local_ray(runtime_env=runtime_env, num_cpus=max(4, os.cpu_count() or 1), **quiet)


def start_local_ray(**init_kwargs: Any) -> None:
    """A private Ray for this machine whose every server listens on 127.0.0.1 only.

    ``ray.init(_node_ip_address="127.0.0.1")`` alone is not enough: Ray replaces a loopback node
    address with the machine's routable one (``services.resolve_ip_for_localhost``) unless its
    ``ray_constants.ENABLE_RAY_CLUSTER`` switch is off (read once, at import, from
    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER``; off by default only on macOS/Windows). With the node address
    really 127.0.0.1, the GCS, the raylet (node and object manager), every worker's gRPC server and the
    dashboard / runtime-env agents bind to it; there is no dashboard. The switch is off during the
    ``ray.init`` call only (after it, Ray takes the address from the started node) and nothing is put
    in the environment, so a ``ray start`` run later from this process behaves as usual. Token
    authentication stays as Ray sets it: on for a new local cluster unless ``RAY_AUTH_MODE`` says
    otherwise. ``tests/integration/test_loopback.py`` lists the Ray processes' sockets and checks them.
    """
    import ray
    from ray._private import ray_constants

    init_kwargs.setdefault("include_dashboard", False)
    before = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        ray.init(address="local", _node_ip_address=LOOPBACK, **init_kwargs)
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before
    node_ip = ray.util.get_node_ip_address()
    if node_ip != LOOPBACK:  # a Ray version that resolves the address some other way
        ray.shutdown()
        raise RuntimeError(
            f"the local Ray node took address {node_ip}, not {LOOPBACK}: refusing to run on it"
        )


def run(cfg: Config) -> dict[str, float]:
    """Resolve models and data, start the actors, run the controller, shut down."""
    import ray

    from framework.actors.cluster import start_stages
    from framework.controller import Controller
    from framework.models import resolve_pair
    from framework.preflight import check_before_start

    # zoo:NAME, a local folder or a Hub id (downloaded here unless HF_HUB_OFFLINE is set), checked
    # before anything starts; the actors then read local folders only (HF_HUB_OFFLINE=1 below)
    student, teachers = resolve_pair(cfg)
    os.environ.setdefault(
        "WANDB_MODE", cfg.logging.wandb_mode if cfg.logging.wandb_mode != "disabled" else "offline"
    )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if cfg.cluster.device == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    pairs = _load_pairs(cfg, student, teachers[0]) if cfg.algo.trains_on_pairs else None
    train, train_report = (pairs.prompts, None) if pairs else _load_split(cfg, "train")
    _check_answers_for_reward(cfg, train)
    evals, _ = _load_split(cfg, "eval")
    _check_routes(cfg, train, evals)
    output_dir = _output_dir(cfg)
    # chat templates, prompt lengths, the output folder: refused here in one line, not in an actor later
    warnings = check_before_start(cfg, student, teachers, train, evals, output_dir)
    if cfg.trainer.resume == "none":
        # before anything is written or started: an earlier run in the folder is refused or moved aside
        checkpoint.prepare_fresh_run(output_dir, cfg.trainer.overwrite)
    open_run_log(output_dir)
    os.environ[ACTOR_LOG_ENV] = str((output_dir / "logs" / "actors.log").resolve())
    if train_report and train_report.skipped:
        say(f"[tokenbridge] skipped {train_report.skipped} bad records: {train_report.reasons}")
    for line in warnings:
        say(line)
    say(f"[tokenbridge] student={student}")
    for entry, path in zip(cfg.teacher_list(), teachers):
        route = f" (prompts with {cfg.data.route_field}={entry.route})" if cfg.data.route_field else ""
        say(f"[tokenbridge] {entry.name}={path}{route}" if cfg.teachers else f"[tokenbridge] teacher={path}")
    say(f"[tokenbridge] output={output_dir}")
    say(f"[tokenbridge] actor logs (vLLM, DeepSpeed): {os.environ[ACTOR_LOG_ENV]}")
    _init_ray(cfg)
    try:
        from framework.actors.placement import PlacementError
        from framework.resources import alive_node_resources, check_resources

        plan = check_resources(cfg, ray.cluster_resources(), alive_node_resources(ray.nodes()))
        say("[tokenbridge] " + plan.summary())
        try:
            stages = start_stages(cfg, student, teachers)
        except PlacementError as err:  # Ray says what it cannot place; the plan says what was asked
            raise ConfigError(
                "cluster", f"{err}; {plan.summary()}", "lower the actor counts or sizes, or add nodes"
            ) from None
        try:
            return Controller(cfg, stages, train, evals, output_dir, pairs).run()
        finally:
            stages.close()  # the weight-sync folder, removed on the learner's node
    finally:
        ray.shutdown()


@hydra.main(config_path=RECIPES, config_name="config", version_base=None)
def _hydra_main(raw: DictConfig) -> None:
    from framework.actors.streaming import RunStopped, StageFailure

    try:
        cfg = to_config(raw)
        final = run(cfg)
    except ConfigError as e:  # also raised by resource checks and model resolution at start-up
        print(str(e), file=sys.stderr)
        sys.exit(2)
    except DataError as e:  # a data file read after the start-up checks (e.g. preference pairs)
        print(f"data error: {' '.join(str(e).split())}", file=sys.stderr)
        sys.exit(2)
    except (RunStopped, StageFailure) as e:  # a stage failed for good: the stream already said why
        print(f"[tokenbridge] run stopped: {e}", file=sys.stderr)
        sys.exit(3)
    shown = {**console_metrics(final, cfg.algo.name), "checkpoint": final.get("checkpoint")}
    say(
        "[tokenbridge] done: "
        + "  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items())
    )


def main() -> None:
    register_configs()
    _hydra_main()


if __name__ == "__main__":
    main()
