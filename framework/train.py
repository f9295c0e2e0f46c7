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

import hydra
from omegaconf import DictConfig

from framework import checkpoint
from framework.config import Config, ConfigError, register_configs, to_config
from framework.logging import ACTOR_LOG_ENV, open_run_log, say

RECIPES = str(Path(__file__).resolve().parent.parent / "recipes")


def _output_dir(cfg: Config) -> Path:
    if cfg.trainer.output_dir != "auto":
        return Path(cfg.trainer.output_dir)
    from hydra.core.hydra_config import HydraConfig

    try:
        return Path(HydraConfig.get().runtime.output_dir)
    except ValueError:  # called outside @hydra.main (tests, notebooks)
        return Path("outputs") / time.strftime("%Y-%m-%d/%H-%M-%S")


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
    quiet = dict(log_to_driver=False, logging_level=logging.WARNING)
    if os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"):
        # inside `ray job submit` / KubeRay: the job's runtime_env already carries the env; a second
        # one would make Ray refuse to merge them
        ray.init(address=address or "auto", **quiet)
    elif address:
        ray.init(address=address, runtime_env=runtime_env, **quiet)
    else:
        # a private, loopback-only Ray for one machine (no dashboard, nothing listening outside)
        ray.init(
            address="local", _node_ip_address="127.0.0.1", include_dashboard=False, runtime_env=runtime_env,
            num_cpus=max(4, os.cpu_count() or 1), **quiet,
        )  # fmt: skip


def run(cfg: Config) -> dict[str, float]:
    """Resolve models and data, start the actors, run the controller, shut down."""
    import ray

    from framework.actors.cluster import start_stages
    from framework.controller import Controller
    from framework.data import load_prompts
    from framework.models import resolve_pair

    # zoo:NAME, a local folder or a Hub id (downloaded here unless HF_HUB_OFFLINE is set), checked
    # before anything starts; the actors then read local folders only (HF_HUB_OFFLINE=1 below)
    student, teacher = resolve_pair(cfg)
    os.environ.setdefault(
        "WANDB_MODE", cfg.logging.wandb_mode if cfg.logging.wandb_mode != "disabled" else "offline"
    )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if cfg.cluster.device == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    train, train_report = load_prompts(
        cfg.data.train,
        n=cfg.data.num_train,
        seed=cfg.trainer.seed,
        split="train",
        max_bad_lines=cfg.data.max_bad_lines,
    )
    evals, _ = load_prompts(
        cfg.data.eval,
        n=cfg.data.num_eval,
        seed=cfg.trainer.seed + 1,
        split="eval",
        max_bad_lines=cfg.data.max_bad_lines,
    )
    output_dir = _output_dir(cfg)
    preference = cfg.algo.name in ("ctpd", "dpo")  # offline preference pairs: no rollouts, one learner rank
    if cfg.trainer.resume == "none" and not preference:
        # before anything is written or started: an earlier run in the folder is refused or moved aside
        checkpoint.prepare_fresh_run(output_dir, cfg.trainer.overwrite)
    open_run_log(output_dir)
    os.environ[ACTOR_LOG_ENV] = str((output_dir / "logs" / "actors.log").resolve())
    if train_report.skipped:
        say(f"[tokenbridge] skipped {train_report.skipped} bad records: {train_report.reasons}")
    if preference:
        from framework.preference.from_config import settings_from_config
        from framework.preference.run import run_preference

        return run_preference(settings_from_config(cfg, student, teacher, str(output_dir)))
    say(
        f"[tokenbridge] student={student}\n[tokenbridge] teacher={teacher}\n[tokenbridge] output={output_dir}"
    )
    say(f"[tokenbridge] actor logs (vLLM, DeepSpeed): {os.environ[ACTOR_LOG_ENV]}")
    _init_ray(cfg)
    try:
        from framework.resources import alive_node_resources, check_resources

        plan = check_resources(cfg, ray.cluster_resources(), alive_node_resources(ray.nodes()))
        say("[tokenbridge] " + plan.summary())
        stages = start_stages(cfg, student, teacher)
        return Controller(cfg, stages, train, evals, output_dir).run()
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
    except (RunStopped, StageFailure) as e:  # a stage failed for good: the stream already said why
        print(f"[tokenbridge] run stopped: {e}", file=sys.stderr)
        sys.exit(3)
    scalars = {k: v for k, v in final.items() if isinstance(v, (int, float, str))}  # preference runs nest
    say("[tokenbridge] done: " + "  ".join(f"{k}={v}" for k, v in scalars.items()))


def main() -> None:
    register_configs()
    _hydra_main()


if __name__ == "__main__":
    main()
