"""What kind of mistake does a chain-task student make first? The recheck a practice-trained teacher
knows covers one kind only.

    python benchmarks/chain_errors.py [--models zoo:student-llama3-chain DIR ...] [--problems 128]
        [--samples 4] [--seed 0] [--out results/chain_errors.json]

A chain answer states five steps "a op b = v." (framework/data/arith.py). Each model answers
``--problems`` held-out chain problems greedily and ``--samples`` times at temperature 1 (what OPD
trains on). In every answer the first step that differs from the worked answer is put in a class:

  copy     the left operand a is not the running value (the previous step's result)
  lookup   the operator or the right operand b is not the question's next one
  arith    a, op and b are right but v != a op b (a value slip)
  other    no step can be read where one is due (format, a missing step)
  clean    every step right (the final answer can be right without it: the zoo's accuracy checks
           only the answer, and a wrong chain lands on the right answer at times)

A practice response (``practice_response``) slips only in the value, so a teacher trained on them
learned to say "Wait," after an *arith* slip; a student whose own mistakes are *lookup* or *copy*
errors gets no recheck signal from it. The share of answers that recheck a step ("Wait," before the
first wrong step) is printed too.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STEP = re.compile(r"(-?\d+) ([+-]) (-?\d+) = (-?\d+)\.")
CLASSES = ("clean", "copy", "lookup", "arith", "other")


def first_error(response: str, operands: list[int], ops: list[str]) -> tuple[str, int]:
    """The class of the first wrong step of ``response`` (a step restated after "Wait," replaces the
    one before it) and how many steps up to there were followed by "Wait" (rechecks)."""
    steps = list(STEP.finditer(response))
    running, at, rechecks = operands[0], 0, 0
    for op, b in zip(ops, operands[1:], strict=True):
        while at + 1 < len(steps) and response[steps[at].end() : steps[at + 1].start()].strip().startswith(
            "Wait"
        ):
            at, rechecks = at + 1, rechecks + 1
        if at >= len(steps):
            return "other", rechecks
        m = steps[at]
        sa, sop, sb, sv = int(m[1]), m[2], int(m[3]), int(m[4])
        right = running + b if op == "+" else running - b
        if sa != running:
            return "copy", rechecks
        if sop != op or sb != b:
            return "lookup", rechecks
        if sv != right:
            return "arith", rechecks
        running, at = right, at + 1
    return "clean", rechecks


def classify(model_path: str, problems: list, samples: int, seed: int) -> dict:
    """Counts of first-error classes over greedy answers and over temperature-1 samples."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
    from transformers.utils import logging as hf_logging

    from tokenbridge_zoo.training import render_prompt

    hf_logging.disable_progress_bar()
    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path).eval()
    stop = list(GenerationConfig.from_pretrained(model_path).eos_token_id)
    tok.padding_side = "left"
    batch = tok([render_prompt(tok, p) for p in problems], add_special_tokens=False, padding=True,
                return_tensors="pt")  # fmt: skip
    out: dict[str, dict] = {}
    torch.manual_seed(seed)
    modes = (
        ("greedy", {"do_sample": False}),
        ("sampled", {"do_sample": True, "temperature": 1.0, "top_k": 0}),
    )
    for mode, kwargs in modes:
        repeats = 1 if mode == "greedy" else samples
        counts: Counter = Counter()
        rechecked = 0
        for _ in range(repeats):
            with torch.no_grad():
                ids = model.generate(**batch, max_new_tokens=128, eos_token_id=stop, pad_token_id=tok.pad_token_id,
                                     **kwargs)  # fmt: skip
            texts = tok.batch_decode(ids[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
            for text, p in zip(texts, problems, strict=True):
                kind, rechecks = first_error(text, list(p.meta["operands"]), list(p.meta["ops"]))
                counts[kind] += 1
                rechecked += rechecks > 0
        total = sum(counts.values())
        out[mode] = {
            "answers": total,
            "share": {k: round(counts[k] / total, 4) for k in CLASSES},
            "with_recheck": round(rechecked / total, 4),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    from framework.data.arith import make_problems
    from tokenbridge_zoo import resolve_model

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["zoo:student-llama3-chain"])
    p.add_argument("--problems", type=int, default=128)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    problems = make_problems(args.problems, seed=args.seed, split="test", task="chain")
    result = {}
    for name in args.models:
        result[name] = classify(resolve_model(name), problems, args.samples, args.seed)
        for mode, r in result[name].items():
            share = "  ".join(f"{k} {v:.3f}" for k, v in r["share"].items())
            print(f"{name} [{mode}, {r['answers']} answers]  {share}  "
                  f"answers with a recheck {r['with_recheck']:.3f}", flush=True)  # fmt: skip
    if args.out:
        Path(args.out).write_text(json.dumps({"protocol": vars(args), "models": result}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
