"""Reproduction at toy scale: does cross-tokenizer on-policy distillation do what the papers claim?

From the same student initialisation (zoo student-llama3) and equal budgets (steps × prompts ×
samples), train each method on the zoo arithmetic task with the real stack (vLLM + Ray + DeepSpeed):

  opd           cross-tokenizer OPD: teacher-qwen scores the student's samples     (Niu et al. 2026)
  opd_topk      the same + dense KL on the projected teacher top-k
  sft_teacher   the mainstream baseline: teacher-qwen writes responses, student imitates them (CE)
  opd_same      same-tokenizer reference: teacher-llama3 (the student's own tokenizer)
  ctpd / dpo    offline preference pairs (scored once, then the same loop), CTPD vs plain DPO

Held-out greedy accuracy is recorded against learner tokens and estimated FLOPs (teacher scoring and
teacher generation included: 2·N·tokens per forward, 6·N·tokens per trained token). Results go to
``results/reproduce/`` as ``results.json``, ``results.md`` and ``curves.png``.

    python benchmarks/reproduce.py [--steps 60] [--seeds 0 1] [--methods opd sft_teacher ...]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

ON_POLICY = {
    "opd": ["pair=zoo_qwen_to_llama3", "algo=opd"],
    "opd_topk": ["pair=zoo_qwen_to_llama3", "algo=opd_topk"],
    "sft_teacher": ["pair=zoo_qwen_to_llama3", "algo=sft_teacher"],
    "opd_same": ["pair=zoo_llama3_same", "algo=opd"],
}
OFFLINE = ("ctpd", "dpo")


def _params(path: str) -> int:
    from safetensors import safe_open

    with safe_open(str(Path(path) / "model.safetensors"), "pt") as f:
        return sum(_prod(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118


def _prod(shape) -> int:
    out = 1
    for d in shape:
        out *= int(d)
    return out


def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from framework.config import register_configs, to_config

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "recipes"), version_base=None):
        return to_config(compose("config", overrides=overrides))


def run_on_policy(name: str, seed: int, steps: int, eval_every: int, out: Path) -> dict:
    """One training run through the real pipeline; returns the accuracy curve with token/FLOP budgets."""
    from framework.train import run
    from framework.zoo import resolve_model

    cfg = _compose([
        *ON_POLICY[name], f"trainer.steps={steps}", f"trainer.eval_every={eval_every}", f"trainer.seed={seed}",
        "logging.wandb_mode=disabled", "logging.progress_bar=false", "data.num_eval=128",
    ])  # fmt: skip
    cfg.trainer.output_dir = str(out)
    n_student, n_teacher = _params(resolve_model(cfg.pair.student)), _params(resolve_model(cfg.pair.teacher))
    if out.exists():  # a run's logs append (for resume): a redone run starts from an empty folder
        shutil.rmtree(out)
    t0 = time.time()
    run(cfg)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    curve = curve_from_rows(rows, name, n_student, n_teacher)
    return {"method": name, "seed": seed, "curve": curve, "wall_s": time.time() - t0}


def curve_from_rows(rows: list[dict], name: str, n_student: int, n_teacher: int) -> list[dict]:
    """Held-out accuracy at each eval against the learner tokens and estimated FLOPs spent so far."""
    curve, tokens, flops = [], 0.0, 0.0
    for r in rows:
        if "tokens" in r and "batch/response_tokens" in r:
            trained = r["tokens"]
            # per sample ≈ prompt + response tokens; prompts are short (~25 tokens) next to responses
            seq = r["batch/response_tokens"] + 25 * r["batch/samples"]
            tokens += trained
            generator = n_teacher if name == "sft_teacher" else n_student
            flops += 2 * generator * seq + 6 * n_student * seq
            if name != "sft_teacher":
                flops += 2 * n_teacher * seq  # teacher scoring (prefill of the whole sequence)
        if "eval/accuracy" in r:
            curve.append({"step": r["step"], "learner_tokens": tokens, "flops": flops, "accuracy": r["eval/accuracy"],
                          "teacher_kl": r.get("eval/teacher_kl")})  # fmt: skip
    return curve


def run_offline(name: str, seed: int, steps: int, eval_every: int, out: Path) -> dict:
    """One offline preference run (the same controller and learner; pairs scored once, lr from the
    recipe); ``result`` holds the first and last evaluation and the task accuracy at both."""
    from framework.train import run

    cfg = _compose([
        f"algo={name}", "pair=zoo_qwen_to_llama3", f"trainer.steps={steps}", f"trainer.eval_every={eval_every}",
        f"trainer.seed={seed}", "logging.wandb_mode=disabled", "logging.progress_bar=false", "data.num_eval=128",
    ])  # fmt: skip
    cfg.trainer.output_dir = str(out)
    if out.exists():
        shutil.rmtree(out)
    t0 = time.time()
    run(cfg)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval/logp_acc" in r]
    task = {"start/task_acc": evals[0].get("eval/accuracy"), "end/task_acc": evals[-1].get("eval/accuracy")}
    result = {"start": evals[0], "end": evals[-1], "task": task}
    return {"method": name, "seed": seed, "result": result, "wall_s": time.time() - t0}


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else float("nan")


def summarise(runs: list[dict], teacher_acc: float, student_acc: float) -> tuple[dict, str]:
    by_method: dict[str, list[dict]] = {}
    for r in runs:
        by_method.setdefault(r["method"], []).append(r)
    table = {}
    for method, rs in by_method.items():
        if method in OFFLINE:
            table[method] = {
                "seeds": len(rs),
                "pref_acc_start": _mean([r["result"]["start"]["eval/logp_acc"] for r in rs]),
                "pref_acc_end": _mean([r["result"]["end"]["eval/logp_acc"] for r in rs]),
                "task_acc_start": _mean([r["result"]["task"]["start/task_acc"] for r in rs]),
                "task_acc_end": _mean([r["result"]["task"]["end/task_acc"] for r in rs]),
            }
            continue
        final = _mean([r["curve"][-1]["accuracy"] for r in rs])
        table[method] = {"final_accuracy": final, "flops": _mean([r["curve"][-1]["flops"] for r in rs]),
                         "learner_tokens": _mean([r["curve"][-1]["learner_tokens"] for r in rs]),
                         "gap_closed": (final - student_acc) / max(1e-9, teacher_acc - student_acc), "seeds": len(rs)}  # fmt: skip
    lines = [
        "| method | seeds | final accuracy | gap closed | learner tokens | est. FLOPs |",
        "|---|---|---|---|---|---|",
    ]
    for m, v in table.items():
        if m in OFFLINE:
            continue
        lines.append(
            f"| {m} | {v['seeds']} | {v['final_accuracy']:.3f} | {v['gap_closed']:.0%} | {v['learner_tokens']:.0f} | {v['flops']:.3g} |"
        )
    if any(m in table for m in OFFLINE):
        lines += [
            "",
            "| offline method | seeds | preference accuracy (held-out pairs) | task accuracy |",
            "|---|---|---|---|",
        ]
        for m in (m for m in OFFLINE if m in table):
            v = table[m]
            lines.append(
                f"| {m} | {v['seeds']} | {v['pref_acc_start']:.3f} → {v['pref_acc_end']:.3f} "
                f"| {v['task_acc_start']:.3f} → {v['task_acc_end']:.3f} |"
            )
    return table, "\n".join(lines)


def flops_to_reach(runs: list[dict], method: str, target: float) -> float | None:
    """Mean (over seeds) FLOPs at the first eval where ``method`` reaches ``target`` accuracy."""
    hits = []
    for r in (r for r in runs if r["method"] == method):
        hit = next((p["flops"] for p in r["curve"] if p["accuracy"] >= target), None)
        if hit is None:
            return None
        hits.append(hit)
    return _mean(hits) if hits else None


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for r in runs:
        if r["method"] in OFFLINE or not r["curve"]:
            continue
        xs_f = [p["flops"] for p in r["curve"]]
        xs_t = [p["learner_tokens"] for p in r["curve"]]
        ys = [p["accuracy"] for p in r["curve"]]
        label = f"{r['method']} (seed {r['seed']})"
        axes[0].plot(xs_f, ys, marker="o", label=label)
        axes[1].plot(xs_t, ys, marker="o", label=label)
    axes[0].set_xlabel("estimated FLOPs (teacher scoring / generation included)")
    axes[1].set_xlabel("learner tokens")
    for ax in axes:
        ax.set_ylabel("held-out accuracy")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.suptitle("tokenbridge toy reproduction: zoo teacher-qwen → student-llama3")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--methods", nargs="+", default=[*ON_POLICY, *OFFLINE])
    parser.add_argument("--out", default=str(ROOT / "results" / "reproduce"))
    parser.add_argument(
        "--fresh", action="store_true", help="ignore runs already in OUT/results.json (default: keep them)"
    )
    args = parser.parse_args()
    from framework.zoo import build_zoo

    manifest = build_zoo(progress=False)
    acc = {m["name"]: m["accuracy"] for m in manifest["models"]}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = []
    previous = out / "results.json"
    if previous.exists() and not args.fresh:  # runs are long: an interrupted or extended study keeps its runs
        runs = json.loads(previous.read_text())["runs"]
        print(
            f"[reproduce] keeping {len(runs)} earlier runs from {previous} (--fresh to redo them)", flush=True
        )
    done = {(r["method"], r["seed"]) for r in runs}
    for method in args.methods:
        for seed in args.seeds:
            if (method, seed) in done:
                continue
            folder = out / "runs" / f"{method}_seed{seed}"
            if method in OFFLINE:
                runs.append(run_offline(method, seed, args.steps, args.eval_every, folder))
            else:
                runs.append(run_on_policy(method, seed, args.steps, args.eval_every, folder))
            print(
                f"[reproduce] {method} seed {seed}: {runs[-1].get('curve', [{}])[-1] if 'curve' in runs[-1] else runs[-1]['result']}",
                flush=True,
            )
            (out / "results.json").write_text(json.dumps({"zoo_accuracy": acc, "runs": runs}, indent=1))
    # the student's start, measured on the runs' own eval set (step-0 eval), not the zoo's test split
    starts = [r["curve"][0]["accuracy"] for r in runs if r.get("curve") and r["curve"][0]["step"] == 0]
    student_acc = _mean(starts) if starts else acc["student-llama3"]
    table, md = summarise(runs, acc["teacher-qwen"], student_acc)
    answers = []
    if "sft_teacher" in table and "opd" in table:
        sft_final = table["sft_teacher"]["final_accuracy"]
        opd_flops = flops_to_reach(runs, "opd", sft_final)
        ratio = None if opd_flops is None else opd_flops / table["sft_teacher"]["flops"]
        answers.append(f"- OPD reaches SFT-on-teacher's final accuracy ({sft_final:.3f}) with "
                       + ("never (within the budget)" if ratio is None else f"{ratio:.2f}× SFT's compute") + " (claim: ≤ 1/3)")  # fmt: skip
    if "opd" in table:
        answers.append(
            f"- cross-tokenizer OPD closes {table['opd']['gap_closed']:.0%} of the teacher − student-init gap (target ≥ 80%)"
        )
    if "opd" in table and "opd_same" in table:
        gain = (table["opd"]["final_accuracy"] - student_acc) / max(
            1e-9, table["opd_same"]["final_accuracy"] - student_acc
        )
        answers.append(
            f"- cross-tokenizer OPD gets {gain:.0%} of the same-tokenizer reference's gain (target ≥ 90%)"
        )
    if "opd" in table and "opd_topk" in table:
        per = {m: table[m]["final_accuracy"] / table[m]["flops"] for m in ("opd", "opd_topk")}
        answers.append(f"- accuracy per FLOP: opd_topk {per['opd_topk']:.3g} vs opd {per['opd']:.3g}")
    if "ctpd" in table and "dpo" in table:
        c, d = table["ctpd"], table["dpo"]
        answers.append(
            f"- CTPD vs DPO: preference accuracy {c['pref_acc_end']:.3f} vs {d['pref_acc_end']:.3f}, "
            f"task accuracy {c['task_acc_end']:.3f} vs {d['task_acc_end']:.3f}"
        )
    text = (f"teacher-qwen accuracy {acc['teacher-qwen']:.3f} (zoo test split), student-llama3 init "
            f"{student_acc:.3f} (step-0 eval of the runs: {len(starts)} runs × the same held-out problems)\n\n"
            + md + "\n\n" + "\n".join(answers) + "\n")  # fmt: skip
    (out / "results.md").write_text(text)
    (out / "results.json").write_text(
        json.dumps({"zoo_accuracy": acc, "runs": runs, "table": table}, indent=1)
    )
    plot(runs, out / "curves.png")
    print(text)


if __name__ == "__main__":
    main()
