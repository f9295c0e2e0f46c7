"""OPD with and without the task's verifiable reward on the zoo task (framework/algo/reward.py).

    python benchmarks/reward_mix.py [--variants opd,opd+reward,reward_only] [--seeds 0] [--steps 60]

Each variant is one `tokenbridge-train` run of the demo (teacher-qwen → student-llama3, 8 prompts ×
4 samples a step, greedy held-out accuracy and teacher-KL every 20 steps), in its own process, one
after the other; the variants differ only in the objective's options:

- ``opd``:          λ = 0 (the demo);
- ``opd+reward``:   λ = 1, group-mean baseline (`algo=opd_reward`);
- ``reward_only``:  λ = 1, distill_weight = 0: a plain policy gradient on the reward, teacher unused
                    for training (it is still scored, so teacher-KL stays comparable).

Writes the eval curves and the final figures to ``--out`` (JSON) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "opd": [],
    "opd+reward": ["algo=opd_reward"],
    "reward_only": ["algo=opd_reward", "algo.distill_weight=0"],
}


def run(variant: str, seed: int, steps: int, folder: Path) -> dict:
    overrides = [
        *VARIANTS[variant],
        f"trainer.seed={seed}",
        f"trainer.steps={steps}",
        f"trainer.output_dir={folder}",
        "logging.progress_bar=false",
    ]
    t0 = time.time()
    log = folder.parent / f"{folder.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        rc = subprocess.call(
            [sys.executable, "-m", "framework.train", *overrides],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    if rc != 0:
        raise SystemExit(f"{variant} seed {seed} failed (exit {rc}); see {log}")
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    evals = [
        {"step": r["step"], "accuracy": r["eval/accuracy"], "teacher_kl": r["eval/teacher_kl"]}
        for r in rows
        if "eval/accuracy" in r
    ]
    rewards = [r["batch/reward"] for r in rows if "batch/reward" in r]
    return {
        "variant": variant,
        "seed": seed,
        "overrides": overrides[: len(VARIANTS[variant])],
        "evals": evals,
        "train_reward_first_last_10": [
            sum(rewards[:10]) / max(len(rewards[:10]), 1),
            sum(rewards[-10:]) / max(len(rewards[-10:]), 1),
        ],
        "wall_s": time.time() - t0,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default="opd,opd+reward,reward_only")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--workdir", default="/tmp/tokenbridge-reward-mix")
    parser.add_argument("--out", default=str(ROOT / "results" / "reward_mix.json"))
    args = parser.parse_args(argv)
    variants = args.variants.split(",")
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {sorted(VARIANTS)}")
    out_path = Path(args.out)
    results = json.loads(out_path.read_text())["runs"] if out_path.exists() else []
    for seed in (int(s) for s in args.seeds.split(",")):
        for variant in variants:
            folder = Path(args.workdir) / f"{variant}-s{seed}"
            print(f"[reward_mix] {variant} seed {seed} ...", flush=True)
            result = run(variant, seed, args.steps, folder)
            results = [r for r in results if (r["variant"], r["seed"]) != (variant, seed)] + [result]
            out_path.parent.mkdir(parents=True, exist_ok=True)
            out_path.write_text(
                json.dumps({"benchmark": "benchmarks/reward_mix.py", "runs": results}, indent=1)
            )
            curve = " -> ".join(f"{e['accuracy']:.3f}" for e in result["evals"])
            kl = " -> ".join(f"{e['teacher_kl']:.3f}" for e in result["evals"])
            print(f"  accuracy {curve}\n  teacher-KL {kl}\n  {result['wall_s']:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
