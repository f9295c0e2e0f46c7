"""Pipeline benchmark on the CPU demo pair (real Ray + vLLM + DeepSpeed), printed as one table.

Runs, side by side in one process and on the same machine:
  A  cross-tokenizer demo pair (zoo teacher-qwen → student-llama3), max_staleness = 0
  B  the same pair, max_staleness = 1 (generation of step t+1 overlaps learning of step t)
  C  same-tokenizer pair of the same sizes (teacher-llama3 → student-llama3), max_staleness = 0
and prints the per-stage step-time breakdown, B's wall time per step over its busiest stage's time
(target ≤ 1.25) and A's step time over C's (target ≤ 1.10).

    python benchmarks/pipeline.py [--steps 12] [--warmup 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

STAGES = ("rollout", "teacher", "mapping", "learner")


def _config(pair: list[str], staleness: int, steps: int, out: Path):
    from hydra import compose, initialize_config_dir

    from framework.config import register_configs, to_config

    register_configs()
    overrides = [
        *pair, f"trainer.steps={steps}", f"trainer.max_staleness={staleness}",
        "trainer.eval_every=0", "trainer.eval_at_start=false",
        "logging.wandb_mode=disabled", "logging.progress_bar=false", "data.num_eval=8",
    ]  # fmt: skip
    with initialize_config_dir(config_dir=str(ROOT / "recipes"), version_base=None):
        cfg = to_config(compose("config", overrides=overrides))
    cfg.trainer.output_dir = str(out)
    return cfg


def _measure(cfg, stages, warmup: int) -> dict[str, float]:
    from framework.controller import Controller
    from framework.data import load_prompts

    train, _ = load_prompts(cfg.data.train, n=cfg.data.num_train, seed=0, split="train")
    evals, _ = load_prompts(cfg.data.eval, n=cfg.data.num_eval, seed=1, split="eval")
    out = Path(cfg.trainer.output_dir)
    Controller(cfg, stages, train, evals, out).run()
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "time/step_s" in r][warmup:]
    res = {"step_s": statistics.median(r["time/step_s"] for r in rows)}
    for key in ("time/wait_samples_s", "time/learner_s", "time/sync_s"):
        res[key] = statistics.median(r[key] for r in rows)
    for stage in STAGES:
        res[stage] = statistics.median(r.get(f"stage_s/{stage}", 0.0) for r in rows)
    res["busiest"] = max(res[s] for s in STAGES)
    res["tokens"] = statistics.median(r["batch/response_tokens"] for r in rows)
    return res


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()

    import ray

    from framework.actors.cluster import start_stages
    from tokenbridge_zoo import resolve_model

    ray.init(
        address="local",
        _node_ip_address="127.0.0.1",
        include_dashboard=False,
        num_cpus=8,
        log_to_driver=False,
    )
    results: dict[str, dict[str, float]] = {}
    tmp = Path(tempfile.mkdtemp(prefix="tb-bench-"))
    runs = [
        ("A cross s=0", ["pair=zoo_qwen_to_llama3"], 0),
        ("B cross s=1", ["pair=zoo_qwen_to_llama3"], 1),
        ("C same  s=0", ["pair=zoo_llama3_same"], 0),
    ]
    stages_by_pair: dict[str, object] = {}
    try:
        for name, pair, staleness in runs:
            cfg = _config(pair, staleness, args.steps, tmp / name.split()[0])
            key = pair[0]
            if key not in stages_by_pair:
                for old in stages_by_pair.values():  # one pair's engines at a time: 2 cores, keep it fair
                    for actor in old.actors():  # type: ignore[attr-defined]
                        ray.kill(actor)
                stages_by_pair = {
                    key: start_stages(cfg, resolve_model(cfg.pair.student), resolve_model(cfg.pair.teacher))
                }
            results[name] = _measure(cfg, stages_by_pair[key], args.warmup)
            print(f"measured {name}: {results[name]['step_s']:.3f} s/step", flush=True)
    finally:
        ray.shutdown()

    cols = ["step_s", "time/wait_samples_s", "time/learner_s", "time/sync_s", *STAGES, "busiest", "tokens"]
    print("\n| run | " + " | ".join(cols) + " |")
    print("|" + "---|" * (len(cols) + 1))
    for name, res in results.items():
        print(
            f"| {name} | "
            + " | ".join(f"{res[c]:.3f}" if c != "tokens" else f"{res[c]:.0f}" for c in cols)
            + " |"
        )
    b = results["B cross s=1"]
    overlap = b["step_s"] / b["busiest"]
    cross = results["A cross s=0"]["step_s"] / results["C same  s=0"]["step_s"]
    print(
        f"\nstaleness=1 wall/busiest-stage: {overlap:.2f} (target <= 1.25) -> {'MET' if overlap <= 1.25 else 'MISSED'}"
    )
    print(
        f"cross/same-tokenizer step time: {cross:.2f} (target <= 1.10) -> {'MET' if cross <= 1.10 else 'MISSED'}"
    )
    print("stage columns: median seconds of work per actor of the stage during one step (median over steps)")


if __name__ == "__main__":
    main()
