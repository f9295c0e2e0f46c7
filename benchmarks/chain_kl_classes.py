"""Where does the student's reverse KL to the teacher sit on the chain task? A same-tokenizer probe.

    python benchmarks/chain_kl_classes.py [--student zoo:student-llama3-chain]
        [--teacher zoo:teacher-llama3-chain] [--samples 64] [--seed 0] [--out results/chain_kl_classes.json]

The student samples ``--samples`` answers at temperature 1 (transformers, CPU). At every response
position t the exact per-position reverse KL over the shared vocabulary,

    KL_t = Σ_v π_S(v | y_<t) (log π_S(v | y_<t) − log p_T(v | y_<t)),

is what on-policy distillation's sampled-token advantage estimates (``opd_diagnostics.py`` has the
derivation). Each position is put in a class by what it predicts: the left operand of a step (the
running value, copied), the right operand (looked up in the question), the result digits, the token
after a step's "." (where a practice-trained model says "Wait," or goes on), the final answer, and
the rest (spaces, operators, "Answer:"). The share of Σ KL per class says what OPD is asked to fix;
the mean p("Wait") of student and teacher after a "." says whether the recheck channel carries any
signal. Both models must share a tokenizer (the KL is over one vocabulary).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CLASSES = ("left operand", "right operand", "result", "after '.'", "final answer", "format")


def position_class(pieces: list[str], j: int) -> str:
    """The class of the position that predicts ``pieces[j]`` (decoded response tokens, in order)."""
    if j >= 1 and pieces[j - 1].strip() == ".":
        return "after '.'"
    if not pieces[j].strip().isdigit():
        return "format"
    # a digit token: which number it starts or continues is read off the tokens before it
    if j >= 1 and pieces[j - 1].strip().isdigit():  # a number split over tokens: its first token's class
        return position_class(pieces, j - 1)
    back = [piece.strip() for piece in pieces[max(0, j - 3) : j] if piece.strip()]
    last = back[-1] if back else ""
    if last == "=":
        return "result"
    if last in ("+", "-"):
        return "right operand"
    if last == "Answer:" or (last == ":" and len(back) > 1 and back[-2].endswith("Answer")):
        return "final answer"
    return "left operand"  # the first number of the answer, or after ". " / "Wait, "


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--student", default="zoo:student-llama3-chain")
    p.add_argument("--teacher", default="zoo:teacher-llama3-chain")
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--out", default=str(ROOT / "results" / "chain_kl_classes.json"))
    args = p.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from framework.data.arith import make_problems, verify
    from tokenbridge_zoo import resolve_model

    torch.manual_seed(args.seed)
    student_dir, teacher_dir = resolve_model(args.student), resolve_model(args.teacher)
    tok = AutoTokenizer.from_pretrained(student_dir)
    if tok.get_vocab() != AutoTokenizer.from_pretrained(teacher_dir).get_vocab():
        raise SystemExit("student and teacher must share a tokenizer (the KL is over one vocabulary)")
    tok.padding_side = "left"
    student = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32).eval()
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32).eval()
    stop_ids = list(GenerationConfig.from_pretrained(student_dir).eos_token_id)
    prompts = make_problems(args.samples, seed=args.seed, split="train", task="chain")
    texts = [tok.apply_chat_template(q.messages, add_generation_prompt=True, tokenize=False) for q in prompts]
    batch = tok(texts, add_special_tokens=False, padding=True, return_tensors="pt")
    with torch.inference_mode():
        out = student.generate(**batch, do_sample=True, temperature=1.0, max_new_tokens=args.max_new_tokens,
                               eos_token_id=stop_ids, pad_token_id=tok.pad_token_id)  # fmt: skip
        mask = torch.ones_like(out)
        mask[:, : batch["input_ids"].shape[1]] = batch["attention_mask"]
        log_s = student(out, attention_mask=mask).logits.log_softmax(-1)
        log_t = teacher(out, attention_mask=mask).logits.log_softmax(-1)
    kl = (log_s.exp() * (log_s - log_t)).sum(-1)
    wait_id = tok(" Wait", add_special_tokens=False)["input_ids"][0]  # the first token of " Wait"
    start = batch["input_ids"].shape[1]
    mass, count, right, waits = Counter(), Counter(), 0, 0
    p_wait: dict[str, list[float]] = {"student": [], "teacher": []}
    for i, prompt in enumerate(prompts):
        ids = out[i, start:].tolist()
        n = next((j + 1 for j, t in enumerate(ids) if t in stop_ids), len(ids))  # the stop included
        text = tok.decode(ids[:n], skip_special_tokens=True)
        right += verify(text, prompt.answer or "")
        waits += text.count("Wait,")
        pieces = [tok.decode([t]) for t in ids[:n]]
        for j in range(n):
            cls = position_class(pieces, j)
            mass[cls] += kl[i, start - 1 + j].item()
            count[cls] += 1
            if cls == "after '.'":
                p_wait["student"].append(log_s[i, start - 1 + j, wait_id].exp().item())
                p_wait["teacher"].append(log_t[i, start - 1 + j, wait_id].exp().item())
    total = sum(mass.values())
    report = {
        "student": args.student, "teacher": args.teacher, "samples": args.samples, "seed": args.seed,
        "student_sample_accuracy": right / len(prompts), "rechecks_per_sample": waits / len(prompts),
        "classes": {c: {"positions": count[c], "kl_share": mass[c] / total, "mean_kl": mass[c] / max(1, count[c])}
                    for c in CLASSES},
        "p_wait_after_step": {k: sum(v) / max(1, len(v)) for k, v in p_wait.items()},
    }  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"student samples: accuracy {report['student_sample_accuracy']:.3f}, "
          f"rechecks per sample {report['rechecks_per_sample']:.2f}")  # fmt: skip
    print("| position class | positions | share of Σ KL | mean KL (nats) |\n|---|---|---|---|")
    for c, v in report["classes"].items():
        print(f"| {c} | {v['positions']} | {v['kl_share']:.2f} | {v['mean_kl']:.3f} |")
    pw = report["p_wait_after_step"]
    print(f"p('Wait') after a step's '.': student {pw['student']:.3f}, teacher {pw['teacher']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
