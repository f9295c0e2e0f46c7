"""Why is sampled-token on-policy distillation noisy? Two measurements on the zoo's arithmetic task.

    python benchmarks/opd_diagnostics.py [--samples 256] [--sizes 8,32,128] [--repeats 3]
        [--class-samples 64] [--seed 0] [--student zoo:student-llama3] [--teacher zoo:teacher-llama3]
        [--cross-teacher zoo:teacher-qwen] [--out results/opd_diagnostics.json] [--quick]

The math
--------
On-policy distillation (OPD; Thinking Machines, "On-Policy Distillation", 2025) samples responses
``y ~ π_θ`` from the student and gives every sampled token the advantage

    A_t = log p_T(y_t | y_<t) − log π_θ(y_t | y_<t)          (detached, optionally clamped to ±c)

and descends the policy-gradient loss ``L_N = −(1/n) Σ_t A_t log π_θ(y_t | y_<t)`` (``n`` = number of
tokens; this is ``framework.algo.opd_loss`` at importance ratio 1 without clipping). Its gradient is

    g_N = −(1/n) Σ_t A_t ∇ log π_θ(y_t | y_<t).

Hold the prefixes ``y_<t`` fixed. Averaging over the token drawn at position t,

    E_{v~π_θ}[ −A(v) ∇ log π_θ(v) ] = Σ_v π_θ(v) (log π_θ(v) − log p_T(v)) ∇ log π_θ(v)
                                    = ∇ KL(π_θ(·|y_<t) || p_T(·|y_<t)),

(the term Σ_v π_θ ∇ log π_θ = ∇ Σ_v π_θ = 0 drops out), so ``g_N`` is an unbiased one-sample estimate of

    g_exact = ∇ (1/n) Σ_t KL(π_θ(·|y_<t) || p_T(·|y_<t)),

the full-vocabulary per-position reverse KL on the same sampled prefixes (the prefix distribution is
not differentiated: this is OPD's "discount 0" objective). Both ``g_N`` and ``g_exact`` are gradients of a
loss, so ``−g`` is the descent direction of the reverse KL for both and a positive cosine means
agreement. Clamping ``A_t`` (``framework.algo.opd``'s ``adv_clamp``) makes the estimate biased.

With a different teacher tokenizer the advantage is a chunk quantity: student and teacher tokens are
aligned by bytes into chunks c, ``A_c = log p_T(c) − log p_S(c)`` (sums over the chunk's tokens), and
``A_c`` is split over the chunk's student tokens in proportion to their logprobs (Niu et al. 2026,
"Breaking the Tokenizer Barrier", chunk credit; ``framework.mapping``). Full-vocabulary KL is not
defined across vocabularies, so the gradient part uses the same-tokenizer pair only.

What is measured
----------------
1. Gradient cosine (teacher-llama3 → student-llama3 by default, float32, CPU). A reference gradient
   ``g_exact_ref`` on ``--samples`` sampled responses (one distinct train prompt each) against
   ``g_N`` on independent sets of N responses, ``--repeats`` times per N:

   - ``cos(g_N, ref)``          the sampled-token OPD gradient (raw advantages, then clamped at ±5);
   - ``cos(exact_N, ref)``      the exact per-position KL gradient on the same N responses: what is
                                left when only the prefixes are sampled (prompt + prefix noise);
   - ``cos(g_N, exact_N)``      sampled vs exact gradient on the same prefixes: token-sampling noise
                                alone.

   The reference is itself an estimate. Its two halves' exact gradients have cosine ``c_h``; for
   independent noise this implies ``cos(ref, true) ≈ 1/sqrt(1 + (1/c_h − 1)/2)``, a ceiling on every
   cosine against the reference. For an unbiased estimate with per-sample noise-to-signal ratio k,
   ``cos ≈ 1/sqrt(1 + k/N)``; ``n_for_0.9`` = ``N (1/cos² − 1) / (1/0.81 − 1)`` turns each measured
   cosine into the number of responses that estimator would need for cosine 0.9 (against the
   reference, so an overestimate when the reference is noisy).

2. Advantage mass per token class. The same ``--class-samples`` student responses are scored by the
   same-tokenizer teacher and by the cross-tokenizer teacher (teacher-qwen, through ``TokenMapper``:
   ``teacher_requests`` → ``HFTeacher.score`` → ``map_samples``), the latter twice: with token-level
   chunks (``cross``) and byte-prefix chunks (``cross_byte_prefix``, `framework.mapping.boundary`:
   where a teacher token ends is charged to the student token that decides it). Each student token is classed by
   the response bytes it covers: ``answer`` (digits of the final "Answer: N"), ``result`` (digits right
   after "=" in a worked step), ``operand`` (any other digit), ``text`` (words, operators, spaces,
   punctuation) and ``stop`` (the stop token). Per class: share of tokens, share of Σ|A_t|, share of
   the negative mass Σ_{A_t<0} A_t, mean A_t, and the fraction with |A_t| > 5 (clamped by
   ``adv_clamp=5``). Tokens the mapping masks out (not aligned) are left out of the cross pair.

   Reading it: a class whose share of |A| mass far exceeds its share of tokens carries the signal
   (and the variance: one such token dominates a sequence's gradient); a high |A| > 5 fraction
   means clamping rewrites exactly those tokens.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from framework.algo import opd_loss
from framework.types import Prompt, Rollout

ADV_CLAMP = 5.0
TOP_K = 20  # the teacher's top-k rows (teacher.top_k's default)
CLASSES = ("answer", "result", "operand", "text", "stop")
ANSWER, RESULT, OPERAND, TEXT, STOP = range(len(CLASSES))  # lower code wins inside one token

_ANSWER_RE = re.compile(rb"Answer:\s*-?(\d+)")
_RESULT_RE = re.compile(rb"=\s*-?(\d+)")
_DIGIT_RE = re.compile(rb"\d")


# ----------------------------------------------------------------------------- pure helpers (tested)
def byte_classes(content: bytes) -> np.ndarray:
    """int8[len(content)] class code of every response byte (ANSWER, RESULT, OPERAND or TEXT)."""
    codes = np.full(len(content), TEXT, dtype=np.int8)
    for m in _DIGIT_RE.finditer(content):
        codes[m.start()] = OPERAND
    for m in _RESULT_RE.finditer(content):
        codes[m.start(1) : m.end(1)] = RESULT
    answers = list(_ANSWER_RE.finditer(content))
    if answers:
        last = answers[-1]
        codes[last.start(1) : last.end(1)] = ANSWER
    return codes


def classify_tokens(token_bytes: Sequence[bytes], is_stop: Sequence[bool]) -> np.ndarray:
    """int8[R] class code per response token: STOP for stop tokens, else the most important class
    among the bytes it covers (ANSWER > RESULT > OPERAND > TEXT); a token without bytes is TEXT."""
    codes = byte_classes(b"".join(token_bytes))
    out = np.full(len(token_bytes), TEXT, dtype=np.int8)
    pos = 0
    for i, (piece, stop) in enumerate(zip(token_bytes, is_stop)):
        if stop:
            out[i] = STOP
        elif piece:
            out[i] = codes[pos : pos + len(piece)].min()
        pos += len(piece)
    return out


def flat_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine of two gradients flattened to vectors (0 if either is zero)."""
    a, b = a.reshape(-1).double(), b.reshape(-1).double()
    den = float(a.norm() * b.norm())
    return float(a @ b) / den if den > 0 else 0.0


def sampled_opd_loss(
    token_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    num_tokens: float,
    adv_clamp: float | None = None,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """The OPD loss ``−(1/n) Σ w_t Â_t log π_θ(y_t)`` through ``framework.algo.opd_loss`` at ratio 1 and
    without ratio clipping (any shape; ``weights`` default 1). Its gradient is ``g_N``."""
    lp = token_logprobs.reshape(1, -1)
    adv = advantages.detach().reshape(1, -1)
    mask = torch.ones_like(lp) if weights is None else weights.detach().reshape(1, -1).to(lp.dtype)
    return opd_loss(lp, lp.detach(), adv, mask, num_tokens, clip_eps=None, adv_clamp=adv_clamp).loss


def exact_reverse_kl_loss(
    student_logprobs: torch.Tensor, teacher_logprobs: torch.Tensor, num_tokens: float
) -> torch.Tensor:
    """``(1/n) Σ_t KL(π_θ(·|t) || p_T(·|t))`` from [T, V] log-distributions (last dim = vocabulary)."""
    if student_logprobs.shape != teacher_logprobs.shape:
        raise ValueError(
            f"student {tuple(student_logprobs.shape)} and teacher {tuple(teacher_logprobs.shape)} "
            "log-distributions differ in shape: the exact KL needs one shared vocabulary"
        )
    diff = student_logprobs - teacher_logprobs.detach().to(student_logprobs.dtype)
    return (student_logprobs.exp() * diff).sum() / num_tokens


def flat_grad(loss: torch.Tensor, params: Sequence[torch.Tensor], retain_graph: bool = False) -> torch.Tensor:
    """∇ loss w.r.t. ``params``, flattened and concatenated in float64."""
    grads = torch.autograd.grad(loss, list(params), retain_graph=retain_graph, allow_unused=True)
    return torch.cat(
        [
            (torch.zeros_like(p) if g is None else g).reshape(-1).to(torch.float64)
            for g, p in zip(grads, params)
        ]
    )


def class_stats(codes: np.ndarray, advantages: np.ndarray, clamp: float = ADV_CLAMP) -> dict[str, dict]:
    """Per class (and ``all``): token count and share, share of Σ|A|, share of Σ_{A<0} A, mean A and the
    fraction of tokens with |A| > clamp."""
    codes = np.asarray(codes)
    adv = np.asarray(advantages, dtype=np.float64)
    total_n = max(len(adv), 1)
    total_abs = float(np.abs(adv).sum()) or 1.0
    total_neg = float(adv[adv < 0].sum()) or -1.0
    out: dict[str, dict] = {}
    for name, sel in [*((c, codes == k) for k, c in enumerate(CLASSES)), ("all", np.ones(len(adv), bool))]:
        a = adv[sel]
        out[name] = {
            "tokens": int(sel.sum()),
            "token_share": float(sel.sum()) / total_n,
            "abs_mass_share": float(np.abs(a).sum()) / total_abs,
            "neg_mass_share": float(a[a < 0].sum()) / total_neg,
            "mean_adv": float(a.mean()) if a.size else float("nan"),
            "clamp_frac": float((np.abs(a) > clamp).mean()) if a.size else float("nan"),
        }
    return out


def samples_for_cosine(n: int, cos: float, target: float = 0.9) -> float:
    """Responses an unbiased estimator with cosine ``cos`` at ``n`` would need for cosine ``target``."""
    if cos <= 0:
        return float("inf")
    return n * (1.0 / cos**2 - 1.0) / (1.0 / target**2 - 1.0)


# ----------------------------------------------------------------------------- models and samples
def _progress(iterable, desc: str, total: int | None = None):
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, total=total, leave=False, file=sys.stderr, dynamic_ncols=True)


def _load_model(path: str):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.eval()
    return model


def sample_rollouts(
    model, tokenizer, prompts: list[Prompt], stop_ids: list[int], *, max_new_tokens: int, seed: int,
    batch_size: int, desc: str,
) -> list[Rollout]:  # fmt: skip
    """One temperature-1 response per prompt (HF ``generate``, no top-k/top-p), with student logprobs."""
    from framework.data.chat import render_prompt_ids

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    stops = set(stop_ids)
    rollouts: list[Rollout] = []
    starts = range(0, len(prompts), batch_size)
    for start in _progress(starts, desc, total=len(starts)):
        chunk = prompts[start : start + batch_size]
        ids = [render_prompt_ids(tokenizer, p.messages, 1 << 20) for p in chunk]
        width = max(len(x) for x in ids)
        input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        attention = torch.zeros((len(chunk), width), dtype=torch.long)
        for b, x in enumerate(ids):  # left padding: generation continues every row at the same column
            input_ids[b, width - len(x) :] = torch.as_tensor(x, dtype=torch.long)
            attention[b, width - len(x) :] = 1
        torch.manual_seed(seed * 1_000_003 + start)
        with torch.no_grad():
            out = model.generate(
                input_ids=input_ids, attention_mask=attention, do_sample=True, temperature=1.0, top_k=0,
                top_p=1.0, max_new_tokens=max_new_tokens, eos_token_id=stop_ids, pad_token_id=pad,
            )  # fmt: skip
        for b, prompt in enumerate(chunk):
            row = out[b, width:].tolist()
            cut = next((i for i, t in enumerate(row) if t in stops), None)
            response = row if cut is None else row[: cut + 1]
            content = response if cut is None else response[:-1]
            rollouts.append(
                Rollout(
                    sample_id=prompt.sample_id(0),
                    prompt=prompt,
                    prompt_ids=np.asarray(ids[b], dtype=np.int32),
                    response_ids=np.asarray(response, dtype=np.int32),
                    logprobs=np.zeros(len(response), dtype=np.float32),
                    weight_version=0,
                    finish_reason="length" if cut is None else "stop",
                    response_text=tokenizer.decode(content, skip_special_tokens=True),
                )
            )
    return rollouts


def response_logprobs(model, rollouts: Sequence[Rollout]) -> list[torch.Tensor]:
    """float32[R, V] ``log π(·|prefix)`` at each response position of each rollout (one right-padded
    forward; gradients flow when called with grad enabled). Right padding never shifts real tokens."""
    seqs = [np.concatenate([r.prompt_ids, r.response_ids]) for r in rollouts]
    width = max(len(s) for s in seqs)
    batch = torch.zeros((len(seqs), width), dtype=torch.long)
    for b, s in enumerate(seqs):
        batch[b, : len(s)] = torch.as_tensor(s, dtype=torch.long)
    logits = model(input_ids=batch).logits
    out = []
    for b, r in enumerate(rollouts):
        start, n = len(r.prompt_ids), len(r.response_ids)
        out.append(torch.log_softmax(logits[b, start - 1 : start - 1 + n].float(), dim=-1))
    return out


def fill_student_logprobs(model, rollouts: list[Rollout], batch_size: int) -> None:
    """Set each rollout's ``logprobs`` (behaviour logprobs) from a float32 student forward."""
    for start in range(0, len(rollouts), batch_size):
        chunk = rollouts[start : start + batch_size]
        with torch.no_grad():
            rows = response_logprobs(model, chunk)
        for r, lp in zip(chunk, rows):
            idx = torch.as_tensor(r.response_ids, dtype=torch.long)[:, None]
            r.logprobs = lp.gather(1, idx)[:, 0].numpy().astype(np.float32)


# ----------------------------------------------------------------------------- part 1: gradient cosine
def _grad_sums(student, teacher, mapper, rollouts: list[Rollout], params) -> dict[str, torch.Tensor | int]:
    """Unnormalised gradient sums (sampled raw, sampled clamped, exact) and the token count of a batch."""
    requests = mapper.teacher_requests(rollouts)
    teacher_rows = [teacher.logprobs_at(np.asarray(q.input_ids), q.response_start).clone() for q in requests]
    rows = response_logprobs(student, rollouts)
    lp_full = torch.cat(rows)
    lt_full = torch.cat(teacher_rows)
    targets = torch.cat([torch.as_tensor(r.response_ids, dtype=torch.long) for r in rollouts])[:, None]
    lp_tok = lp_full.gather(1, targets)[:, 0]
    adv = (lt_full.gather(1, targets)[:, 0] - lp_tok).detach()
    losses = {
        "sampled": sampled_opd_loss(lp_tok, adv, 1.0),
        "clamped": sampled_opd_loss(lp_tok, adv, 1.0, adv_clamp=ADV_CLAMP),
        "exact": exact_reverse_kl_loss(lp_full, lt_full, 1.0),
    }
    names = list(losses)
    out: dict[str, torch.Tensor | int] = {
        k: flat_grad(losses[k], params, retain_graph=i < len(names) - 1) for i, k in enumerate(names)
    }
    out["tokens"] = int(targets.shape[0])
    return out


def _accumulate(total: dict | None, part: dict) -> dict:
    if total is None:
        return dict(part)
    return {k: total[k] + part[k] for k in total}


def _mean_std(values: list[float]) -> dict:
    arr = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(arr.mean()),
        "std": float(arr.std(ddof=1)) if arr.size > 1 else 0.0,
        "values": [float(v) for v in arr],
    }


def gradient_cosine(args, student, tokenizer, stop_ids, teacher, mapper) -> dict:
    from framework.data.arith import make_problems

    if not mapper.is_identity:
        raise SystemExit("the gradient part needs a teacher with the student's tokenizer (--teacher)")
    sizes = sorted(set(args.sizes))
    chunk = sizes[-1]
    prompts = make_problems(args.samples + args.repeats * chunk, args.seed, split="train")
    rollouts = sample_rollouts(
        student, tokenizer, prompts, stop_ids, max_new_tokens=args.max_new_tokens, seed=args.seed,
        batch_size=args.gen_batch, desc="grad: sampling",
    )  # fmt: skip
    params = [p for p in student.parameters() if p.requires_grad]

    def batches(lo: int, hi: int, cuts: Sequence[int]):
        edges = sorted({*range(lo, hi, args.grad_batch), *(lo + c for c in cuts), hi})
        return list(itertools.pairwise(edges))

    ref_rollouts = rollouts[: args.samples]
    half = args.samples // 2
    halves: list[dict | None] = [None, None]
    for lo, hi in _progress(batches(0, args.samples, [half]), "grad: reference"):
        part = _grad_sums(student, teacher, mapper, ref_rollouts[lo:hi], params)
        halves[int(lo >= half)] = _accumulate(halves[int(lo >= half)], part)
    ref = _accumulate(halves[0], halves[1])  # type: ignore[arg-type]
    c_half = flat_cosine(halves[0]["exact"], halves[1]["exact"])  # type: ignore[index]
    ceiling = 1.0 / math.sqrt(1.0 + max(1.0 / c_half - 1.0, 0.0) / 2.0) if c_half > 0 else float("nan")
    g_ref = ref["exact"]

    per_n: dict[int, dict[str, list[float]]] = {n: {} for n in sizes}
    jobs = [(r, lo, hi) for r in range(args.repeats) for lo, hi in batches(0, chunk, sizes)]
    acc: dict | None = None
    for r, lo, hi in _progress(jobs, "grad: subsets"):
        base = args.samples + r * chunk
        if lo == 0:
            acc = None
        acc = _accumulate(acc, _grad_sums(student, teacher, mapper, rollouts[base + lo : base + hi], params))
        if hi in per_n:
            row = per_n[hi]
            for key, value in (
                ("cos_sampled", flat_cosine(acc["sampled"], g_ref)),
                ("cos_clamped", flat_cosine(acc["clamped"], g_ref)),
                ("cos_exact_same_prefixes", flat_cosine(acc["exact"], g_ref)),
                ("cos_sampled_vs_own_exact", flat_cosine(acc["sampled"], acc["exact"])),
                ("cos_clamped_vs_own_exact", flat_cosine(acc["clamped"], acc["exact"])),
                ("tokens", float(acc["tokens"])),
            ):
                row.setdefault(key, []).append(value)

    by_n = []
    for n in sizes:
        entry: dict = {"n": n, **{k: _mean_std(v) for k, v in per_n[n].items()}}
        for key in ("cos_sampled", "cos_clamped", "cos_exact_same_prefixes"):
            entry[key]["n_for_0.9"] = samples_for_cosine(n, entry[key]["mean"])
        by_n.append(entry)
    finished = [r.finish_reason == "stop" for r in rollouts]
    return {
        "num_params": int(sum(p.numel() for p in params)),
        "responses": len(rollouts),
        "stopped_frac": float(np.mean(finished)),
        "mean_response_tokens": float(np.mean([len(r.response_ids) for r in rollouts])),
        "reference": {
            "samples": args.samples,
            "tokens": int(ref["tokens"]),
            "split_half_cos_exact": c_half,
            "implied_cos_ref_to_truth": ceiling,
            "cos_sampled_vs_exact": flat_cosine(ref["sampled"], g_ref),
            "cos_clamped_vs_exact": flat_cosine(ref["clamped"], g_ref),
            "cos_clamped_vs_sampled": flat_cosine(ref["clamped"], ref["sampled"]),
            "reverse_kl_grad_norm": float((g_ref / ref["tokens"]).norm()),
        },
        "by_n": by_n,
    }


# ----------------------------------------------------------------------------- part 2: token classes
def advantage_classes(args, student, tokenizer, stop_ids, pairs) -> dict:
    """``pairs``: (label, teacher path, HFTeacher, TokenMapper); all score the same student responses."""
    from framework.data.arith import make_problems, verify

    prompts = make_problems(args.class_samples, args.seed + 1, split="train")
    rollouts = sample_rollouts(
        student, tokenizer, prompts, stop_ids, max_new_tokens=args.max_new_tokens, seed=args.seed + 1,
        batch_size=args.gen_batch, desc="classes: sampling",
    )  # fmt: skip
    fill_student_logprobs(student, rollouts, args.grad_batch)
    student_info = pairs[0][3].student
    codes = [
        classify_tokens(
            [student_info.table.token_bytes[int(i)] for i in r.response_ids],
            [int(i) in student_info.stop_ids for i in r.response_ids],
        )
        for r in rollouts
    ]
    out: dict = {
        "responses": len(rollouts),
        "accuracy": float(np.mean([verify(r.response_text, r.prompt.answer or "") for r in rollouts])),
        "pairs": {},
        "examples": [],
    }
    per_pair_adv = {}
    for label, teacher_path, teacher, mapper in pairs:
        requests = mapper.teacher_requests(rollouts)
        # the top-k rows feed the byte-prefix boundary term (framework/mapping/boundary.py)
        scores = [
            teacher.score([q], top_k=TOP_K)[0] for q in _progress(requests, f"classes: scoring {label}")
        ]
        mapped = mapper.map_samples(rollouts, requests, scores)
        keep = np.concatenate([m.mask > 0 for m in mapped])
        adv = np.concatenate([m.advantages for m in mapped]).astype(np.float64)
        flat_codes = np.concatenate(codes)
        out["pairs"][label] = {
            "teacher": teacher_path,
            "identity_mapping": bool(mapper.is_identity),
            "masked_frac": float(1.0 - keep.mean()),
            "mean_abs_adv": float(np.abs(adv[keep]).mean()),
            "classes": class_stats(flat_codes[keep], adv[keep]),
        }
        per_pair_adv[label] = [m.advantages * (m.mask > 0) for m in mapped]
    for idx, (r, c) in enumerate(list(zip(rollouts, codes))[:2]):
        out["examples"].append(
            {
                "prompt": r.prompt.messages[-1]["content"],
                "response": r.response_text,
                "tokens": [
                    {
                        "text": student_info.table.token_bytes[int(t)].decode("utf-8", "replace"),
                        "class": CLASSES[int(k)],
                        **{f"adv_{lab}": round(float(a[idx][j]), 3) for lab, a in per_pair_adv.items()},
                    }
                    for j, (t, k) in enumerate(zip(r.response_ids, c))
                ],
            }
        )
    return out


# ----------------------------------------------------------------------------- report
def print_report(result: dict) -> None:
    g = result["gradient"]
    ref = g["reference"]
    cfg = result["config"]
    print(
        f"\n== Gradient cosine: {cfg['teacher']} → {cfg['student']} ({g['num_params']:,} params, "
        f"{g['mean_response_tokens']:.1f} tokens/response, {g['stopped_frac']:.0%} stopped)"
    )
    print(
        f"reference: {ref['samples']} responses / {ref['tokens']} tokens; split-half cos(exact) "
        f"{ref['split_half_cos_exact']:.3f} → cos(ref, truth) ≈ {ref['implied_cos_ref_to_truth']:.3f}"
    )
    print(
        f"on the reference prefixes: cos(sampled, exact) {ref['cos_sampled_vs_exact']:.3f}, "
        f"cos(clamped, exact) {ref['cos_clamped_vs_exact']:.3f}, "
        f"cos(clamped, sampled) {ref['cos_clamped_vs_sampled']:.3f}"
    )
    head = f"{'N':>5} {'tokens':>7} | {'cos(g_N,ref)':>14} {'clamped':>14} {'exact_N':>14} | {'g_N~exact_N':>14} {'n→0.9':>7}"
    print(head)
    print("-" * len(head))
    for e in g["by_n"]:

        def ms(key: str, e=e) -> str:
            return f"{e[key]['mean']:+.3f}±{e[key]['std']:.3f}"

        print(
            f"{e['n']:>5} {e['tokens']['mean']:>7.0f} | {ms('cos_sampled'):>14} {ms('cos_clamped'):>14} "
            f"{ms('cos_exact_same_prefixes'):>14} | {ms('cos_sampled_vs_own_exact'):>14} "
            f"{e['cos_sampled']['n_for_0.9']:>7.0f}"
        )
    c = result["classes"]
    print(
        f"\n== Advantage mass by token class ({c['responses']} student responses, accuracy {c['accuracy']:.0%})"
    )
    for label, pair in c["pairs"].items():
        allc = pair["classes"]["all"]
        print(
            f"{label} ({pair['teacher']}): {allc['tokens']} tokens, masked {pair['masked_frac']:.1%}, "
            f"mean A {allc['mean_adv']:+.3f}, mean |A| {pair['mean_abs_adv']:.3f}, |A|>5 {allc['clamp_frac']:.1%}"
        )
        head = f"  {'class':<8} {'tokens':>7} {'|A| mass':>9} {'neg mass':>9} {'mean A':>8} {'|A|>5':>7}"
        print(head)
        for name in CLASSES:
            s = pair["classes"][name]
            print(
                f"  {name:<8} {s['token_share']:>7.1%} {s['abs_mass_share']:>9.1%} {s['neg_mass_share']:>9.1%} "
                f"{s['mean_adv']:>+8.3f} {s['clamp_frac']:>7.1%}"
            )


def _json_safe(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_json_safe(v) for v in x]
    return x


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--samples", type=int, default=256, help="reference-set responses (gradient part)")
    p.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[8, 32, 128])
    p.add_argument("--repeats", type=int, default=3, help="independent response sets per N")
    p.add_argument("--class-samples", type=int, default=64, help="responses for the token-class part")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--student", default="zoo:student-llama3")
    p.add_argument("--teacher", default="zoo:teacher-llama3", help="same-tokenizer teacher")
    p.add_argument("--cross-teacher", default="zoo:teacher-qwen", help="cross-tokenizer teacher")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--gen-batch", type=int, default=64)
    p.add_argument("--grad-batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="results/opd_diagnostics.json")
    p.add_argument("--quick", action="store_true", help="tiny sizes for a smoke run")
    args = p.parse_args(argv)
    if args.quick:
        args.samples, args.sizes, args.repeats, args.class_samples = 16, [4, 8], 2, 8
    if args.samples < 2 or args.repeats < 1 or min(args.sizes) < 1 or args.class_samples < 1:
        p.error("need --samples >= 2, --repeats >= 1, sizes >= 1 and --class-samples >= 1")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from transformers import AutoTokenizer

    from framework.data.chat import stop_token_ids
    from framework.mapping import TokenMapper
    from framework.teacher.hf_teacher import HFTeacher
    from tokenbridge_zoo import resolve_model

    t0, c0 = time.time(), time.process_time()
    student_path = resolve_model(args.student)
    teacher_path = resolve_model(args.teacher)
    cross_path = resolve_model(args.cross_teacher)
    student = _load_model(student_path)
    tokenizer = AutoTokenizer.from_pretrained(student_path)
    stop_ids = stop_token_ids(tokenizer, student_path)
    same = (HFTeacher(teacher_path), TokenMapper.from_paths(student_path, teacher_path, topk=False))
    cross_teacher = HFTeacher(cross_path)
    cross = (cross_teacher, TokenMapper.from_paths(student_path, cross_path, topk=False, boundary="token"))
    cross_bp = (cross_teacher, TokenMapper.from_paths(student_path, cross_path, topk=False))
    config = {
        **{k: v for k, v in vars(args).items() if k != "out"},
        "student_path": student_path,
        "teacher_path": teacher_path,
        "cross_teacher_path": cross_path,
        "adv_clamp": ADV_CLAMP,
    }
    result: dict = {"config": config}
    result["gradient"] = gradient_cosine(args, student, tokenizer, stop_ids, *same)
    t1, c1 = time.time(), time.process_time()
    result["classes"] = advantage_classes(
        args,
        student,
        tokenizer,
        stop_ids,
        [
            ("same", args.teacher, *same),
            ("cross", args.cross_teacher, *cross),
            ("cross_byte_prefix", args.cross_teacher, *cross_bp),
        ],
    )
    t2, c2 = time.time(), time.process_time()
    result["timing"] = {
        "gradient_wall_s": t1 - t0,
        "gradient_cpu_s": c1 - c0,
        "classes_wall_s": t2 - t1,
        "classes_cpu_s": c2 - c1,
    }
    print_report(result)
    print(f"\ntime: {t2 - t0:.1f}s wall, {c2 - c0:.1f}s CPU (this process)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(_json_safe(result), indent=2) + "\n")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
