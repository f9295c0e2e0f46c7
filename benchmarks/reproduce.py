"""A fair toy-scale reproduction: does cross-tokenizer on-policy distillation beat SFT on the teacher's
samples per unit of compute, and how much of the same-tokenizer gain does it keep?

The claims under test: on-policy distillation (OPD) reaches a target accuracy with a fraction of the
compute of continued SFT (Thinking Machines' OPD write-up reports 9-30x; the cross-tokenizer seed
paper, Niu et al. 2026, "significantly more compute-efficient than baselines"), and the
cross-tokenizer variant keeps most of the same-tokenizer gain. Every run below is one
``python -m framework.train`` process on the real stack (vLLM rollouts, the teacher's scores,
the token mapping, the DeepSpeed learner), on a zoo task (``--task``):

  arith   three-step chains; the teacher's samples are gold answers and a slip cannot be undone, so
          imitating them is all there is to learn (the setting that favours SFT).
  chain   five-step chains (a slip spoils every later value) whose models train on practice responses
          (a slip, "Wait,", the step again; the slip out of the loss, framework/data/arith.py), so a
          teacher's distribution carries a recheck its gold samples never show. Measured: the
          teachers redo a step correctly after "Wait," but say it as often after a right value as
          after a slip (README, the zoo). The 2-layer student starts further below them (32.5 %
          against 93.5-97 %); it was meant to be capacity-limited, but 400 SFT steps take it to
          the teachers' level (the plateau stage measures it).
  recheck the chain task with 8-layer teachers that did learn when to recheck (p("Wait") ~0.9 after
          a slipped value, <= 0.03 after a right one; on-demand zoo models, ``tokenbridge-zoo
          --models teacher-qwen-recheck teacher-llama3-recheck``, minutes on a GPU with ``--device
          cuda``, or ``--build-device`` here): OPD's teacher tells a student that slipped to go back,
          SFT's samples never slip, so OPD's signal was expected to say more than the samples. It
          did not: the students' own first errors are mostly operand lookups, not the value slips
          the teachers learned to catch (README; ``benchmarks/chain_errors.py``).
  recheck_1layer  the same teachers and a 1-layer student (19.5 % at the start, its SFT warm-up
          already flat): the capacity-limited setting.

Methods (each from the same student and with the same budget: steps x prompts x samples):

  opd          cross-tokenizer OPD: the Qwen-style teacher (ChatML, other tokenizer) scores the samples
  opd_same     the same-tokenizer reference: the Llama-3-style teacher (the student's own tokenizer)
  sft_teacher  the mainstream baseline: the Qwen-style teacher writes the responses, the student imitates
  rl           a sparse-reward policy gradient: reward 1 for a right answer, group-mean baseline,
               no teacher signal in the loss (``algo=opd_reward algo.distill_weight=0``)
  opd_topk     (optional) OPD plus dense KL on the teacher's projected top-k

Protocol (the stages run in this order; finished runs are kept in ``OUT/results.json`` and skipped):

  1. sweep    each method at every ``--lrs`` value, seed 0, from the zoo student (the "weak start");
              the best learning rate is the one with the highest mean of the last two evaluations.
  2. seeds    each method at its best lr on every ``--seeds`` value (seed 0 is the sweep's run).
  3. long     ``--long-methods`` at their best lr for ``--long-steps`` steps from the weak start, seed 0:
              does OPD catch up with a longer budget (240 steps: four times the weak-start one)?
  4. plateau  SFT-on-teacher at its best lr for ``--plateau-steps`` steps builds a student whose SFT
              curve has flattened (its curve is reported, so the flattening is measured, not assumed);
              then ``--plateau-methods`` continue from that last checkpoint, every seed.

Evaluation: greedy accuracy on ``--num-eval`` held-out problems (disjoint from training; the set is
drawn from the run's seed, so a seed's runs share one set) every ``--eval-every`` steps. Compute is
estimated as 2·N·tokens per forward token and 6·N·tokens per trained token, generation by the
generator (the teacher for sft_teacher), teacher scoring counted where the objective uses it;
evaluation is not counted (it is the same for every method).

    python benchmarks/reproduce.py                       # the whole protocol (hours on 2 cores)
    python benchmarks/reproduce.py --stages sweep --methods opd sft_teacher --lrs 1e-4 3e-4
    python benchmarks/reproduce.py --task chain --stages sweep seeds --methods opd opd_same sft_teacher rl opd_topk

Writes ``OUT/results.json`` (``table.<method>.{final_accuracy, gap_closed, seeds}``,
``runs[].{method, seed, curve[].{flops, accuracy}}``), ``OUT/results.md`` and ``OUT/curves.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# per task: the student, the cross-tokenizer teacher, and the recipe groups (data, cross pair, same pair)
SETUPS = {
    "arith": {"student": "zoo:student-llama3", "teacher": "zoo:teacher-qwen", "same_teacher": "zoo:teacher-llama3",
              "data": "zoo_arith", "cross": "zoo_qwen_to_llama3", "same": "zoo_llama3_same",
              "out": "reproduce"},
    "chain": {"student": "zoo:student-llama3-chain", "teacher": "zoo:teacher-qwen-chain",
              "same_teacher": "zoo:teacher-llama3-chain", "data": "zoo_chain", "cross": "zoo_chain_qwen_to_llama3",
              "same": "zoo_chain_llama3_same", "out": "reproduce_chain"},
    "recheck": {"student": "zoo:student-llama3-chain", "teacher": "zoo:teacher-qwen-recheck",
                "same_teacher": "zoo:teacher-llama3-recheck", "data": "zoo_chain",
                "cross": "zoo_recheck_qwen_to_llama3", "same": "zoo_recheck_llama3_same",
                "out": "reproduce_recheck"},
    "recheck_1layer": {"student": "zoo:student-llama3-chain-1layer", "teacher": "zoo:teacher-qwen-recheck",
                       "same_teacher": "zoo:teacher-llama3-recheck", "data": "zoo_chain",
                       "cross": "zoo_recheck_qwen_to_llama3_1layer", "same": "zoo_recheck_llama3_same_1layer",
                       "out": "reproduce_recheck_1layer"},
}  # fmt: skip
METHOD_NAMES = ("opd", "opd_same", "sft_teacher", "rl", "opd_topk")
STAGES = ("sweep", "seeds", "long", "plateau")


def methods(task: str) -> dict[str, dict]:
    """Each method's recipe overrides and the teacher its objective uses (None: no teacher)."""
    s = SETUPS[task]
    cross, data = [f"pair={s['cross']}", f"data={s['data']}"], f"data={s['data']}"
    return {
        "opd": {"overrides": [*cross, "algo=opd"], "teacher": s["teacher"]},
        "opd_same": {"overrides": [f"pair={s['same']}", data, "algo=opd"], "teacher": s["same_teacher"]},
        "sft_teacher": {"overrides": [*cross, "algo=sft_teacher"], "teacher": s["teacher"]},
        "rl": {"overrides": [*cross, "algo=opd_reward", "algo.distill_weight=0"], "teacher": None},
        "opd_topk": {"overrides": [*cross, "algo=opd_topk"], "teacher": s["teacher"]},
    }  # fmt: skip


# The teacher is scored in every run (teacher-KL is logged for all), but only counted as compute
# where the objective's loss uses it: rl's gradient never sees it, sft_teacher's teacher generates.
SCORES_WITH_TEACHER = {"opd", "opd_same", "opd_topk"}


def params(model: str) -> int:
    """Parameter count of a model folder (its safetensors headers only)."""
    from safetensors import safe_open

    from tokenbridge_zoo import resolve_model

    with safe_open(str(Path(resolve_model(model)) / "model.safetensors"), "pt") as f:
        total = 0
        for key in f.keys():  # noqa: SIM118 (safe_open is not a Mapping)
            n = 1
            for d in f.get_slice(key).get_shape():
                n *= int(d)
            total += n
        return total


def model_hash(model: str) -> str:
    """sha256 (16 hex digits) of a model's weights: the zoo's builds differ between machines."""
    from tokenbridge_zoo import resolve_model
    from tokenbridge_zoo.real_sources import _sha256

    return _sha256(Path(resolve_model(model)) / "model.safetensors")[:16]


def other_models(data: dict, hashes: dict[str, str], accuracy: dict[str, float]) -> list[str]:
    """The study's models whose build differs from the ones here (by weights hash, or, for a study
    that predates the hashes, by the zoo accuracy it recorded): its runs cannot be extended here."""
    if "model_hashes" in data:
        return sorted(m for m, h in hashes.items() if data["model_hashes"].get(m, h) != h)
    name = {m: m.removeprefix("zoo:") for m in hashes}
    recorded = data.get("zoo_accuracy", {})
    return sorted(m for m in hashes if name[m] in recorded and recorded[name[m]] != accuracy.get(name[m]))


def prompt_task(task: str) -> str:
    """The zoo task the study's prompts are drawn from (``recheck*`` studies run on ``chain``)."""
    return SETUPS[task]["data"].removeprefix("zoo_")


def mean_prompt_tokens(model: str, task: str, n: int = 64) -> float:
    """Mean chat-templated prompt length of the zoo task under ``model``'s tokenizer and template."""
    from transformers import AutoTokenizer

    from framework.data.arith import make_problems
    from framework.data.chat import render_prompt_ids
    from tokenbridge_zoo import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model(model))
    lengths = [
        render_prompt_ids(tok, p.messages, 10_000).size
        for p in make_problems(n, seed=0, split="train", task=task)
    ]
    return sum(lengths) / len(lengths)


def student_recheck(checkpoint: Path) -> dict[str, float]:
    """``tokenbridge_zoo.training.recheck_probe`` on a run's final student: p("Wait") after a first step
    stated +1 off, -1 off and right."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from tokenbridge_zoo.training import recheck_probe

    hf_logging.disable_progress_bar()  # the study's console is one line per run
    model = AutoModelForCausalLM.from_pretrained(str(checkpoint))
    return recheck_probe(model, AutoTokenizer.from_pretrained(str(checkpoint)))


def curve_from_rows(rows: list[dict], cost: dict) -> list[dict]:
    """Held-out accuracy at each evaluation against learner tokens and estimated FLOPs so far.

    Per step with S samples, R response tokens and prompt length P (per sample):
    generation 2·N_gen·(S·P + R), learner 6·N_student·(S·P + R) (the forward and backward over the
    whole sequence; only response tokens carry loss, but the prompt is recomputed), and where the
    teacher's scores enter the loss 2·N_teacher·(S·P_teacher + R)."""
    curve, tokens, flops = [], 0.0, 0.0
    for r in rows:
        if "tokens" in r and "batch/response_tokens" in r:
            samples, response = r["batch/samples"], r["batch/response_tokens"]
            tokens += r["tokens"]
            flops += 2 * cost["n_generator"] * (samples * cost["prompt_generator"] + response)
            flops += 6 * cost["n_student"] * (samples * cost["prompt_student"] + response)
            if cost["n_scorer"]:
                flops += 2 * cost["n_scorer"] * (samples * cost["prompt_scorer"] + response)
        if "eval/accuracy" in r:
            curve.append({"step": r["step"], "learner_tokens": tokens, "flops": flops,
                          "accuracy": r["eval/accuracy"], "teacher_kl": r.get("eval/teacher_kl")})  # fmt: skip
    return curve


class Study:
    """The runs of one study folder: launched one at a time, recorded as they finish."""

    def __init__(self, out: Path, args: argparse.Namespace):
        self.out, self.args = out, args
        self.path = out / "results.json"
        self.data: dict = json.loads(self.path.read_text()) if self.path.exists() and not args.fresh else {}
        self.data.setdefault("runs", [])
        self._costs: dict[tuple, dict] = {}
        self.methods = methods(args.task)

    def find(self, method: str, start: str, seed: int, lr: float, steps: int) -> dict | None:
        for r in self.data["runs"]:
            if (r["method"], r["start"], r["seed"], r["lr"], r["steps"]) == (method, start, seed, lr, steps):
                return r
        return None

    def sft_build(self, lr: float, steps: int) -> dict | None:
        """SFT's seed-0 run of ``steps`` from the weak start, made by the long or the plateau stage: the
        two are the same run, so whichever stage comes second reuses the first one's."""
        return self.find("sft_teacher", "long", 0, lr, steps) or self.find(
            "sft_teacher", "plateau-build", 0, lr, steps
        )

    def cost(self, method: str, student: str) -> dict:
        key = (method, student)
        if key not in self._costs:
            teacher = self.methods[method]["teacher"] or SETUPS[self.args.task]["teacher"]
            generator = teacher if method == "sft_teacher" else student
            scorer = teacher if method in SCORES_WITH_TEACHER else None
            task = prompt_task(self.args.task)
            self._costs[key] = {
                "n_student": params(student), "n_generator": params(generator),
                "n_scorer": params(scorer) if scorer else 0,
                "prompt_student": mean_prompt_tokens(student, task),
                "prompt_generator": mean_prompt_tokens(generator, task),
                "prompt_scorer": mean_prompt_tokens(scorer, task) if scorer else 0.0,
            }  # fmt: skip
        return self._costs[key]

    def run(self, method: str, *, start: str, student: str, seed: int, lr: float, steps: int) -> dict:
        """One training run (kept if already done); returns its record."""
        done = self.find(method, start, seed, lr, steps)
        if done is not None:
            return done
        a = self.args
        folder = self.out / "runs" / f"{start}_{method}_lr{lr:g}_s{seed}"
        overrides = [
            *self.methods[method]["overrides"], f"pair.student={student}", f"learner.lr={lr}",
            f"trainer.seed={seed}", f"trainer.steps={steps}", f"trainer.eval_every={a.eval_every}",
            f"data.num_eval={a.num_eval}", f"trainer.output_dir={folder}",
            "logging.progress_bar=false", "logging.wandb_mode=disabled",
        ]  # fmt: skip
        print(f"[reproduce] {start} {method} lr={lr:g} seed={seed} steps={steps} ...", flush=True)
        t0 = time.time()
        log = folder.parent / f"{folder.name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        if folder.exists():  # a run's logs append (for resume): a redone run starts from an empty folder
            shutil.rmtree(folder)
        with open(log, "w") as sink:
            rc = subprocess.call([sys.executable, "-m", "framework.train", *overrides], cwd=ROOT,
                                 stdout=sink, stderr=subprocess.STDOUT)  # fmt: skip
        if rc != 0:
            raise SystemExit(f"[reproduce] {method} seed {seed} lr {lr:g} failed (exit {rc}); see {log}")
        rows = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
        if sum("eval/accuracy" in r for r in rows) < 2:  # an evaluation failed: no curve to compare
            raise SystemExit(
                f"[reproduce] {method} seed {seed}: evaluations missing; see {folder / 'train.log'}"
            )
        record = {
            "method": method, "start": start, "student": student, "seed": seed, "lr": lr, "steps": steps,
            "curve": curve_from_rows(rows, self.cost(method, student)), "wall_s": round(time.time() - t0, 1),
            "folder": str(folder.relative_to(self.out)),
        }  # fmt: skip
        if SETUPS[a.task]["data"] == "zoo_chain":  # did the student learn when to recheck?
            record["p_wait_after"] = student_recheck(folder / "checkpoints" / f"step_{steps:06d}" / "student")
        curve = " -> ".join(f"{p['accuracy']:.3f}" for p in record["curve"])
        recheck = f", p(Wait | +1, -1, right) {record['p_wait_after']}" if "p_wait_after" in record else ""
        print(f"[reproduce]   accuracy {curve} ({record['wall_s']:.0f} s){recheck}", flush=True)
        self.data["runs"].append(record)
        self.save()
        return record

    def save(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.data, indent=1))


def late_accuracy(run: dict) -> float:
    """Mean accuracy of a run's last two evaluations (less noisy than the last one alone)."""
    tail = [p["accuracy"] for p in run["curve"][-2:]]
    return sum(tail) / len(tail)


def spread(xs: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def flops_to_reach(runs: list[dict], target: float) -> tuple[float | None, int]:
    """Mean FLOPs at the first evaluation reaching ``target`` over the runs that reach it, and how many do."""
    hits = [next((p["flops"] for p in r["curve"] if p["accuracy"] >= target), None) for r in runs]
    reached = [h for h in hits if h is not None]
    return (statistics.fmean(reached) if reached else None), len(reached)


def summarise(runs: list[dict], teacher_acc: float) -> dict:
    """``table[method]``: final accuracy and gap closed (mean, std over seeds) and the compute spent.

    gap closed = (final − start) / (teacher − start) per run, start = the run's own step-0 accuracy;
    None where a start is at or above the teacher (no gap to close: a plateaued student can pass it)."""
    table: dict[str, dict] = {}
    for method in sorted({r["method"] for r in runs}):
        rs = [r for r in runs if r["method"] == method]
        finals = [r["curve"][-1]["accuracy"] for r in rs]
        starts = [r["curve"][0]["accuracy"] for r in rs]
        gaps = [(f - s) / (teacher_acc - s) for f, s in zip(finals, starts, strict=True) if s < teacher_acc]
        best = [max(p["accuracy"] for p in r["curve"]) for r in rs]
        (fm, fs), (sm, _), (bm, _) = spread(finals), spread(starts), spread(best)
        gm, gs = spread(gaps) if len(gaps) == len(rs) else (None, None)
        table[method] = {
            "final_accuracy": fm, "final_accuracy_std": fs, "gap_closed": gm, "gap_closed_std": gs,
            "start_accuracy": sm, "best_accuracy": bm, "seeds": len(rs), "lr": rs[0]["lr"],
            "flops": statistics.fmean(r["curve"][-1]["flops"] for r in rs),
            "learner_tokens": statistics.fmean(r["curve"][-1]["learner_tokens"] for r in rs),
            "wall_s": statistics.fmean(r["wall_s"] for r in rs),
        }  # fmt: skip
    return table


def answers(
    table: dict,
    runs_of: dict,
    suffix: str = "",
    teacher_acc: float | None = None,
    num_eval: int | None = None,
) -> list[str]:
    """The issue's questions, answered from the table (``suffix`` selects the plateau rows). With
    ``num_eval``, a gain within 2 binomial standard errors of the start, 2·sqrt(p(1-p)/num_eval), is
    no gain (a flat curve's first noisy evaluation above SFT's final would read as "OPD reaches it")."""
    out = []
    opd, sft, same = (
        table.get("opd" + suffix),
        table.get("sft_teacher" + suffix),
        table.get("opd_same" + suffix),
    )
    if opd and teacher_acc is not None and opd["start_accuracy"] >= teacher_acc:
        out.append(f"- the start ({opd['start_accuracy']:.3f}) is at or above the teacher "
                   f"({teacher_acc:.3f}): there is no gap left for the teacher to close")  # fmt: skip
    start = opd["start_accuracy"] if opd else 0.0
    noise = 2 * math.sqrt(start * (1 - start) / num_eval) if num_eval else 0.0
    if opd and sft and max(opd["final_accuracy"], sft["final_accuracy"]) <= start + noise:
        beyond = f" beyond evaluation noise (2 SE on {num_eval} problems: {noise:.3f})" if noise else ""
        out.append(f"- neither method gains{beyond} from this start ({start:.3f}): OPD ends at "
                   f"{opd['final_accuracy']:.3f}, SFT-on-teacher at {sft['final_accuracy']:.3f}")  # fmt: skip
    elif opd and sft and sft["final_accuracy"] <= opd["start_accuracy"]:
        out.append(f"- SFT-on-teacher ends below the start ({opd['start_accuracy']:.3f} -> "
                   f"{sft['final_accuracy']:.3f}); OPD ends at {opd['final_accuracy']:.3f}")  # fmt: skip
    elif opd and sft:
        target = sft["final_accuracy"]
        hit, n = flops_to_reach(runs_of["opd" + suffix], target)
        where = "never within the budget" if hit is None else f"at {hit / sft['flops']:.2f}x SFT's compute"
        out.append(f"- OPD reaches SFT-on-teacher's final accuracy ({target:.3f}) {where} "
                   f"({n}/{opd['seeds']} seeds reach it; claim: <= 1/3)")  # fmt: skip
        hit_s, n_s = flops_to_reach(runs_of["sft_teacher" + suffix], opd["final_accuracy"])
        if hit_s is not None:
            out.append(f"- SFT-on-teacher reaches OPD's final accuracy ({opd['final_accuracy']:.3f}) at "
                       f"{hit_s / opd['flops']:.2f}x OPD's compute ({n_s}/{sft['seeds']} seeds)")  # fmt: skip
    if opd and same:
        gain_same = same["final_accuracy"] - same["start_accuracy"]
        gain = opd["final_accuracy"] - opd["start_accuracy"]
        share = (
            "undefined (the same-tokenizer run did not gain)" if gain_same <= 0 else f"{gain / gain_same:.0%}"
        )
        out.append(f"- cross-tokenizer OPD keeps {share} of the same-tokenizer gain "
                   f"({gain:+.3f} vs {gain_same:+.3f}; target >= 90%)")  # fmt: skip
    return out


def markdown(table: dict, sweep: dict, teacher_acc: float, teacher: str) -> str:
    lines = [f"{teacher.removeprefix('zoo:')} accuracy {teacher_acc:.3f} (zoo test split)", "",
             "| method | start | lr | seeds | start acc | final acc (mean ± std) | best eval | gap closed | est. FLOPs | wall s |",
             "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for key, v in table.items():
        method, _, start = key.partition("@")
        gap = "n/a" if v["gap_closed"] is None else f"{v['gap_closed']:.0%} ± {v['gap_closed_std']:.0%}"
        lines.append(
            f"| {method} | {start.split(' ')[0] or 'weak'} | {v['lr']:g} | {v['seeds']} | {v['start_accuracy']:.3f} "
            f"| {v['final_accuracy']:.3f} ± {v['final_accuracy_std']:.3f} | {v['best_accuracy']:.3f} "
            f"| {gap} | {v['flops']:.3g} | {v['wall_s']:.0f} |"
        )
    if sweep:
        lines += ["", "Learning-rate sweep (seed 0, weak start; mean of the last two evaluations):", "",
                  "| method | " + " | ".join(f"lr {lr:g}" for lr in sweep["lrs"]) + " | chosen |",
                  "|---|" + "---|" * (len(sweep["lrs"]) + 1)]  # fmt: skip
        for method, by_lr in sweep["scores"].items():
            cells = [f"{by_lr[str(lr)]:.3f}" if str(lr) in by_lr else "-" for lr in sweep["lrs"]]
            lines.append(f"| {method} | " + " | ".join(cells) + f" | {sweep['best'][method]:g} |")
    return "\n".join(lines)


def plot(groups: dict[str, list[dict]], path: Path, title: str) -> None:
    """Mean accuracy against compute per method (band: min-max over seeds), one panel per start."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def start_of(key: str) -> str:
        return key.partition("@")[2].split(" ")[0] or "weak"

    starts = sorted({start_of(k) for k in groups}, key=lambda x: x != "weak")
    fig, axes = plt.subplots(1, len(starts), figsize=(6 * len(starts), 4), squeeze=False)
    for ax, start in zip(axes[0], starts, strict=True):
        for key, rs in groups.items():
            if start_of(key) != start:
                continue
            n = min(len(r["curve"]) for r in rs)
            xs = [statistics.fmean(r["curve"][i]["flops"] for r in rs) for i in range(n)]
            ys = [[r["curve"][i]["accuracy"] for r in rs] for i in range(n)]
            line = ax.plot(
                xs,
                [statistics.fmean(y) for y in ys],
                marker="o",
                label=f"{key.partition('@')[0]} lr {rs[0]['lr']:g} ({len(rs)} seeds)",
            )
            ax.fill_between(
                xs, [min(y) for y in ys], [max(y) for y in ys], alpha=0.15, color=line[0].get_color()
            )
        ax.set_title(f"{start} start")
        ax.set_xlabel("estimated FLOPs (generation, learner, teacher scoring where used)")
        ax.set_ylabel("held-out greedy accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="arith", choices=sorted(SETUPS), help="the zoo task (see above)")
    p.add_argument(
        "--methods", nargs="+", default=["opd", "opd_same", "sft_teacher", "rl"], choices=sorted(METHOD_NAMES)
    )
    p.add_argument("--lrs", nargs="+", type=float, default=[3e-5, 1e-4, 3e-4])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--eval-every", type=int, default=20)
    p.add_argument("--num-eval", type=int, default=512)
    p.add_argument("--plateau-steps", type=int, default=240)
    p.add_argument("--plateau-lrs", nargs="+", type=float, default=[],
                   help="also run the plateau methods at these learning rates (beside their sweep's best)")  # fmt: skip
    p.add_argument(
        "--plateau-methods", nargs="+", default=["opd", "sft_teacher"], choices=sorted(METHOD_NAMES)
    )
    p.add_argument("--long-steps", type=int, default=240)
    p.add_argument("--long-methods", nargs="+", default=["opd", "sft_teacher"], choices=sorted(METHOD_NAMES))
    p.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    p.add_argument(
        "--out", default=None, help="the study folder (default: results/reproduce, results/reproduce_<task>)"
    )
    p.add_argument("--build-device", default="cpu",
                   help="torch device that builds a missing on-demand zoo model (--task recheck*)")  # fmt: skip
    p.add_argument("--fresh", action="store_true", help="ignore the runs already in OUT/results.json")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    setup = SETUPS[args.task]
    args.out = args.out or str(ROOT / "results" / setup["out"])
    student_start = setup["student"]
    from tokenbridge_zoo import build_zoo, model_path

    manifest = build_zoo(progress=False)
    zoo_acc = {m["name"]: m["accuracy"] for m in manifest["models"]}
    for model in (setup["student"], setup["teacher"], setup["same_teacher"]):  # on-demand ones too
        name = model.removeprefix("zoo:")
        if name not in zoo_acc:
            info = model_path(name, progress=True, device=args.build_device) / "zoo_info.json"
            zoo_acc[name] = json.loads(info.read_text())["accuracy"]
    study = Study(Path(args.out), args)
    hashes = {m: model_hash(m) for m in (setup["student"], setup["teacher"], setup["same_teacher"])}
    differ = other_models(study.data, hashes, zoo_acc) if study.data["runs"] else []
    if differ:  # the same zoo digest builds other weights on another machine (README, the zoo)
        raise SystemExit(f"[reproduce] the runs in {study.out} were made with other builds of {differ} "
                         "(weights or zoo accuracy differ from this machine's); extend them where they "
                         "were made, or start a new study with --out DIR or --fresh")  # fmt: skip
    study.data.update(
        zoo_accuracy=zoo_acc, zoo_digest=manifest.get("settings_digest"), model_hashes=hashes,
        protocol=vars(args) | {"out": None},
    )  # fmt: skip

    # a rerun with other --lrs extends each method's sweep (the runs already made are kept and scored)
    earlier = study.data.get("sweep", {})
    scores: dict[str, dict[str, float]] = {m: dict(v) for m, v in earlier.get("scores", {}).items()}
    for method in args.methods:
        for lr in args.lrs if "sweep" in args.stages else []:
            run = study.run(method, start="weak", student=student_start, seed=0, lr=lr, steps=args.steps)
            scores.setdefault(method, {})[str(lr)] = late_accuracy(run)
    best = earlier.get("best", {}) | {m: float(max(s, key=s.get)) for m, s in scores.items()}
    if scores:
        lrs = sorted({float(lr) for by_lr in scores.values() for lr in by_lr})
        study.data["sweep"] = {"lrs": lrs, "scores": scores, "best": best}
        study.save()
    groups: dict[str, list[dict]] = {}
    for method in args.methods if "seeds" in args.stages else []:
        lr = best.get(method, 1e-4)
        groups[method] = [
            study.run(method, start="weak", student=student_start, seed=s, lr=lr, steps=args.steps)
            for s in args.seeds
        ]
    for method in args.long_methods if "long" in args.stages else []:
        lr = best.get(method, 1e-4)
        build = study.sft_build(lr, args.long_steps) if method == "sft_teacher" else None
        groups[f"{method}@long"] = [build or study.run(method, start="long", student=student_start, seed=0,
                                                       lr=lr, steps=args.long_steps)]  # fmt: skip
    if "plateau" in args.stages:
        lr = best.get("sft_teacher", 1e-4)
        base = study.sft_build(lr, args.plateau_steps) or study.run(
            "sft_teacher",
            start="plateau-build",
            student=student_start,
            seed=0,
            lr=lr,
            steps=args.plateau_steps,
        )
        study.data["plateau"] = {"curve": base["curve"], "lr": lr, "steps": args.plateau_steps}
        student = str(
            study.out / base["folder"] / "checkpoints" / f"step_{args.plateau_steps:06d}" / "student"
        )
        for method in args.plateau_methods:
            chosen = best.get(method, 1e-4)
            for lr in [chosen, *(x for x in args.plateau_lrs if x != chosen)]:
                key = f"{method}@plateau" if lr == chosen else f"{method}@plateau lr={lr:g}"
                groups[key] = [study.run(method, start="plateau", student=student, seed=s, lr=lr, steps=args.steps)
                               for s in args.seeds]  # fmt: skip
    teacher = setup["teacher"]
    teacher_acc = zoo_acc[teacher.removeprefix("zoo:")]
    table: dict[str, dict] = {}
    for key, rs in groups.items():
        table.update(summarise([dict(r, method=key) for r in rs], teacher_acc))
    lines = answers(table, groups, teacher_acc=teacher_acc, num_eval=args.num_eval)
    for start in ("long", "plateau"):
        if any(key.endswith(f"@{start}") for key in groups):
            lines += [f"{start} runs:", *answers(table, groups, f"@{start}", teacher_acc, args.num_eval)]
    study.data.update(table=table, answers=lines)
    study.save()
    text = (
        markdown(table, study.data.get("sweep", {}), teacher_acc, teacher) + "\n\n" + "\n".join(lines) + "\n"
    )
    (study.out / "results.md").write_text(text)
    if groups:
        title = f"tokenbridge reproduction ({args.task}): {teacher} -> {student_start} (cross-tokenizer)"
        plot(groups, study.out / "curves.png", title)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
