"""Token-mapping cost on ONE CPU core (docs/design.md §3): pair preparation and per-token throughput.

    python benchmarks/mapping.py [--student DIR --teacher DIR] [--tokens 1000000] [--gold-fraction 1.0]
    python benchmarks/mapping.py --pairs real [--tokens 200000] [--out results/mapping_real.json]

Pairs: by default the zoo's llama3 student with its qwen teacher (or ``--student/--teacher``);
``--pairs real`` runs the real tier's vendor tokenizers (``tokenbridge-zoo --real-tokenizers``), written
teacher → student: Gemma-3 → Llama-3 and Qwen3 → Llama-3.

Preparation (per pair, each in a fresh Python process, imports excluded): ``TokenMapper.from_paths``
+ the teacher's backend tokenizer + the top-k projection map + the teacher's continuation encoder,
i.e. everything before the first batch. ``cold`` starts from an empty cache (a temporary
``TOKENBRIDGE_MAPPING_CACHE``), ``warm`` reads what the cold run left there (an actor restart: byte
tables, backend tokenizers, stop tokens and chat templates, continuation parts, the projection map;
no transformers tokenizer is built, see `framework.mapping.cache`). Peak RSS is the child's high-water mark
(``VmHWM``, Rust allocations included) after preparation, with its value after the imports beside it.

Throughput rows (same inputs for all; mixed arithmetic / prose / code / CJK+emoji responses, ~8
samples/prompt, teacher top-k rows with the realised teacher token first and k-1 random ids):
  (a) teacher tokenization of the response texts alone (batched, `tokenizers`) — the floor;
  (b) our sampled path end to end: teacher input rendering (chat template, cached per conversation) +
      response bytes + teacher tokenization + alignment + chunk credit + the byte-prefix boundary term
      (from the top-k rows, as every teacher returns them) + stop bridging, given random teacher scores;
  (c) the top-k projection at k = 20 as the mapper runs it (direct ids + byte-prefix groups, packed per
      sample), in positions/s: the extra time of map_samples with top-k over (b)'s map_samples; and
      the bare grouped kernel (`project_topk_groups`) on every teacher row;
  (d) TRL's GOLD byte-offset alignment + probability merge (trl.experimental.gold, called, not copied)
      on the same responses (zoo pair only unless ``--gold``).
Targets: preparation <= 5 s per real pair (warm); (b) <= 1.5x (a); (b) >= 10x faster than (d);
(c) >= 200k positions/s. ``--pairs real`` also writes the figures to ``--out`` as JSON.
"""

from __future__ import annotations

import os

for _var, _val in (("RAYON_NUM_THREADS", "1"), ("TOKENIZERS_PARALLELISM", "false"), ("OMP_NUM_THREADS", "1")):
    os.environ[_var] = _val

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from framework.mapping import TokenMapper  # noqa: E402
from framework.mapping.cache import ENV as CACHE_ENV  # noqa: E402
from framework.mapping.topk import project_topk_groups  # noqa: E402
from framework.types import Prompt, Rollout, TeacherScores  # noqa: E402

_WORDS = [
    "the",
    "model",
    "answer",
    "first",
    "then",
    "result",
    "value",
    "number",
    "check",
    "because",
    "each",
    "step",
    "adds",
    "sum",
    "total",
    "we",
    "compute",
    "carefully",
    "so",
    "that",
    "final",
    "equals",
    "after",
    "before",
    "while",
    "which",
    "would",
    "could",
    "should",
    "other",
    "about",
    "into",
]
_CJK = ["東京", "数学", "答案", "你好世界", "日本語", "한국어", "計算する"]
_EMOJI = ["🙂", "🚀", "✨", "👍🏽", "🎉", "🤖", "✅"]
_CODE = [
    "def f(x, y):\n    return x * y + {n}\n",
    "for i in range({n}):\n\ttotal += i  # acc\n",
    "if (a <= {n}) {{ b = a - 1; }}\r\n",
]


def mixed_response(rng: random.Random, target_words: int) -> str:
    parts = []
    while len(parts) < target_words:
        roll = rng.random()
        if roll < 0.35:
            a, b = rng.randint(1, 99999), rng.randint(1, 999)
            parts.append(f"Step: {a} + {b} = {a + b}.")
        elif roll < 0.7:
            parts.append(" ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 12))).capitalize() + ".")
        elif roll < 0.85:
            parts.append(rng.choice(_CODE).format(n=rng.randint(0, 500)))
        else:
            parts.append(f"{rng.choice(_CJK)}{rng.choice(_EMOJI)} {rng.choice(_CJK)}。")
    return " ".join(parts) + f" Answer: {rng.randint(0, 9999)}"


def make_rollouts(mapper: TokenMapper, total_tokens: int, samples_per_prompt: int, seed: int = 0):
    rng, np_rng = random.Random(seed), np.random.default_rng(seed)
    student = mapper.student
    rollouts, n_tokens, p = [], 0, 0
    while n_tokens < total_tokens:
        messages = [
            {
                "role": "user",
                "content": f"Problem {p}: compute {rng.randint(1, 999)} + {rng.randint(1, 999)}.",
            }
        ]
        prompt = Prompt(f"p{p}", messages)
        prompt_ids = student.render_prompt_ids(messages)
        for k in range(samples_per_prompt):
            text = mixed_response(rng, rng.randint(10, 60))
            ids = student.continuation.encode(text, add_special_tokens=False).ids
            if rng.random() < 0.8:
                ids, finish = [*ids, student.stop_token_to_append], "stop"
            else:
                ids, finish = ids[: rng.randint(1, len(ids))], "length"  # may cut inside a character
            arr = np.asarray(ids, dtype=np.int32)
            lp = np.log(np_rng.uniform(0.05, 1.0, arr.shape[0])).astype(np.float32)
            rollouts.append(Rollout(prompt.sample_id(k), prompt, prompt_ids, arr, lp, 0, finish))
            n_tokens += arr.shape[0]
        p += 1
    return rollouts, n_tokens


def random_scores(requests, vocab: int, k: int | None, seed: int = 1):
    """Random teacher logprobs; top-k rows hold the realised teacher token first (as a real teacher's
    rows mostly do) and k-1 uniformly random ids, with descending Dirichlet probabilities."""
    rng = np.random.default_rng(seed)
    out = []
    for q in requests:
        n = q.input_ids.shape[0] - q.response_start
        lp = np.log(rng.uniform(0.05, 1.0, n)).astype(np.float32)
        ids = lps = None
        if k:
            ids = rng.integers(0, vocab, size=(n, k), dtype=np.int32)
            ids[:, 0] = q.input_ids[q.response_start :]
            probs = -np.sort(-rng.dirichlet(np.ones(k + 1), size=n)[:, :k], axis=1)
            lps = np.log(probs).astype(np.float32)
        out.append(TeacherScores(q.sample_id, lp, ids, lps))
    return out


def timed(fn, repeat: int = 1):
    best, result = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def gold_alignment(mapper: TokenMapper, rollouts, requests, scores, fraction: float):
    """TRL GOLD: byte offsets (student: piece_byte_len of sampled ids as in GOLD's on-policy path;
    teacher: encode_with_byte_offsets), ULDLoss._align_by_byte_offsets, and
    ULDLoss._merge_probabilities_with_alignment_groups on both sides."""
    import torch
    from trl.experimental.gold.gold_trainer import ULDLoss
    from trl.experimental.utils import encode_with_byte_offsets, piece_byte_len

    torch.set_num_threads(1)
    n = max(1, int(len(rollouts) * fraction))
    student_hf = mapper.student.hf
    teacher_backend = mapper.teacher.prompt_encoder
    merger = argparse.Namespace(token_merge_strategy="observed")  # the only state the merge reads
    k = 20
    texts = []
    for r in rollouts[:n]:  # GOLD decodes completions to text for the teacher side
        texts.append(student_hf.decode(r.response_ids.tolist(), skip_special_tokens=True))
    probs_s = [torch.rand(r.response_ids.shape[0], k + 1) for r in rollouts[:n]]

    def run():
        teacher_encs = encode_with_byte_offsets(teacher_backend, texts, add_special_tokens=False)
        groups = 0
        for r, (t_ids, t_offs), p_s in zip(rollouts[:n], teacher_encs, probs_s):
            s_offs, pos = [], 0
            for tok in student_hf.convert_ids_to_tokens(r.response_ids.tolist()):
                nb = piece_byte_len(tok)
                s_offs.append((pos, pos + nb))
                pos += nb
            s_groups, t_groups = ULDLoss._align_by_byte_offsets(s_offs, t_offs)
            paired = [(sg, tg) for sg, tg in zip(s_groups, t_groups) if sg and tg]
            s_groups, t_groups = [sg for sg, _ in paired], [tg for _, tg in paired]
            p_t = torch.rand(max(len(t_ids), 1), k + 1)
            zeros_s = [0] * p_s.shape[0]  # realised token = column 0 of the compact [R, k+1] rows
            zeros_t = [0] * p_t.shape[0]
            ULDLoss._merge_probabilities_with_alignment_groups(merger, p_s, s_groups, zeros_s)
            ULDLoss._merge_probabilities_with_alignment_groups(merger, p_t, t_groups, zeros_t)
            groups += len(s_groups)
        return groups

    seconds, _ = timed(run)
    tokens = sum(r.response_ids.shape[0] for r in rollouts[:n])
    return seconds, tokens


def _peak_rss_mib() -> float:
    """Peak resident set of this process image: ``VmHWM`` of /proc/self/status (``ru_maxrss`` would
    carry the parent's peak across fork + exec); ``ru_maxrss`` where /proc is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def prepare_child(student_dir: str, teacher_dir: str) -> dict:
    """(In a fresh process) prepare one pair as an actor does before its first batch, imports excluded
    (transformers and the two tokenizer classes, timed apart)."""
    start = time.perf_counter()
    from transformers.models.auto.tokenization_auto import tokenizer_class_from_name

    for folder in (student_dir, teacher_dir):
        config = Path(folder) / "tokenizer_config.json"
        name = json.loads(config.read_text()).get("tokenizer_class") if config.is_file() else None
        if name:
            tokenizer_class_from_name(name)
    imports = time.perf_counter() - start
    rss_before = _peak_rss_mib()
    wall, cpu = time.perf_counter(), time.process_time()
    mapper = TokenMapper.from_paths(student_dir, teacher_dir, topk=True)
    tables = time.perf_counter()
    _ = mapper.teacher.prompt_encoder  # parsed on first use when it comes from the cache
    backend = time.perf_counter()
    _ = mapper.projection
    projection = time.perf_counter()
    _ = mapper.teacher.continuation
    end = time.perf_counter()
    return {
        "seconds": end - wall,
        "cpu_seconds": time.process_time() - cpu,
        "tokenizers_seconds": tables - wall,
        "teacher_backend_seconds": backend - tables,
        "projection_seconds": projection - backend,
        "continuation_seconds": end - projection,
        "import_seconds": imports,
        "rss_after_imports_mib": rss_before,
        "peak_rss_mib": _peak_rss_mib(),
        "groups": mapper.projection.num_groups,
    }


def measure_preparation(student_dir: str, teacher_dir: str, cache: str) -> dict:
    """Cold (empty ``cache`` folder) then warm (the entries it left) preparation, each in a new process."""
    env = {**os.environ, CACHE_ENV: cache}
    out = {}
    for phase in ("cold", "warm"):
        cmd = [
            sys.executable,
            __file__,
            "--prepare-child",
            "--student",
            student_dir,
            "--teacher",
            teacher_dir,
        ]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"preparation child failed:\n{done.stderr[-4000:]}")
        out[phase] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


def run_pair(student_dir: str, teacher_dir: str, args, gold: bool) -> dict:
    """Throughput rows (a)-(d) of one pair (module docstring); prints them, returns the figures."""
    sampled = TokenMapper.from_paths(student_dir, teacher_dir, topk=False)
    dense = TokenMapper.from_paths(student_dir, teacher_dir, topk=True)
    _ = dense.projection  # built once per pair (reported as preparation)
    print(f"student {student_dir}\nteacher {teacher_dir}\nidentity={sampled.is_identity}")
    rollouts, n_tokens = make_rollouts(sampled, args.tokens, args.samples_per_prompt)
    batches = [rollouts[i : i + args.batch] for i in range(0, len(rollouts), args.batch)]
    texts = [s.text for s in sampled._splits(rollouts)[0]]
    print(f"{len(rollouts)} samples, {n_tokens} student tokens, {len(batches)} batches of {args.batch}")

    enc = sampled.teacher.continuation
    requests = sampled.teacher_requests(rollouts)
    req_batches = [requests[i : i + args.batch] for i in range(0, len(requests), args.batch)]
    scores_plain = random_scores(requests, sampled.teacher.table.vocab_size, None)
    scores_k = random_scores(requests, dense.teacher.table.vocab_size, 20)
    score_k_batches = [scores_k[i : i + args.batch] for i in range(0, len(scores_k), args.batch)]
    rows_ids = np.concatenate([s.topk_ids for s in scores_k])
    rows_lp = np.concatenate([s.topk_logprobs for s in scores_k])
    projection = dense.projection

    def floor():  # (a) teacher tokenization of the response texts
        for i in range(0, len(texts), args.batch):
            enc.encode_batch_fast(texts[i : i + args.batch], add_special_tokens=False)

    def requests_cold():  # (b, part 1) with an empty chat-template cache, as at the start of a step
        for info in (sampled.teacher, sampled.student):
            info._prompt_cache.clear()
        for b in batches:
            sampled.teacher_requests(b)

    def map_plain():  # (b, part 2), with the top-k rows a teacher returns (they feed the byte-prefix
        # boundary term of the sampled path, framework/mapping/boundary.py)
        return [sampled.map_samples(b, q, s) for b, q, s in zip(batches, req_batches, score_k_batches)]

    def map_dense():  # (c) the same with the grouped top-k projection
        return [dense.map_samples(b, q, s) for b, q, s in zip(batches, req_batches, score_k_batches)]

    def kernel():  # (c) the bare grouped projection on every teacher row
        for i in range(0, rows_lp.shape[0], 16384):
            project_topk_groups(rows_ids[i : i + 16384], rows_lp[i : i + 16384], projection)

    # Rounds interleave the measurements (the machine may be shared): the best of each is reported.
    # On a shared VM the floor alone swings by up to 1.5x between rounds, so the ratio (b)/(a) is also
    # taken per round (both measured back to back) and its median reported beside the ratio of bests.
    names = ("a", "req", "map", "dense", "kernel")
    rounds: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(args.rounds):
        for name, fn in zip(names, (floor, requests_cold, map_plain, map_dense, kernel)):
            seconds, _ = timed(fn)
            rounds[name].append(seconds)
    t_a, t_req, t_map, t_dense, t_kernel = (min(rounds[k]) for k in names)
    t_b = t_req + t_map
    paired = sorted((q + m) / a for a, q, m in zip(rounds["a"], rounds["req"], rounds["map"]))
    mapped, mapped_k = map_plain(), map_dense()
    teacher_tokens = sum(q.input_ids.shape[0] - q.response_start for q in requests)
    positions = sum(m.dense.positions.shape[0] for batch in mapped_k for m in batch)
    grouped = sum(
        int((m.dense.group_index >= 0).sum())
        for batch in mapped_k
        for m in batch
        if m.dense.group_index is not None
    )
    slots = sum(int((m.dense.support_probs > 0).sum()) for batch in mapped_k for m in batch)
    extra = max(t_dense - t_map, 1e-9)

    rows = [
        ("(a) teacher tokenization (floor)", t_a, n_tokens / t_a),
        ("(b) ours: sampled path end to end", t_b, n_tokens / t_b),
        ("    - teacher_requests (render+bytes+tokenize)", t_req, n_tokens / t_req),
        ("    - map_samples (align+credit+boundary+stop)", t_map, n_tokens / t_map),
        ("(c) ours: map_samples with top-k k=20", t_dense, n_tokens / t_dense),
    ]
    gold_seconds = None
    if gold:
        g_seconds, g_tokens = gold_alignment(sampled, rollouts, requests, scores_plain, args.gold_fraction)
        gold_seconds = g_seconds * n_tokens / g_tokens  # scaled to all tokens when run on a fraction
        rows.append(
            (
                f"(d) TRL GOLD align+merge ({args.gold_fraction:.0%} run, scaled)",
                gold_seconds,
                n_tokens / gold_seconds,
            )
        )
    print(f"\n{'row':52s} {'seconds':>9s} {'student tok/s':>14s}")
    for name, seconds, rate in rows:
        print(f"{name:52s} {seconds:9.3f} {rate:14,.0f}")
    print(
        f"\nteacher tokens: {teacher_tokens}; dense positions: {positions} "
        f"({positions / n_tokens:.1%} of student tokens); {grouped / max(slots, 1):.1%} of the "
        "non-empty target slots are byte-prefix groups"
    )
    rate_c = positions / extra
    print(
        f"(c) grouped top-k projection: {rate_c:,.0f} positions/s inside map_samples; "
        f"bare kernel {rows_lp.shape[0] / t_kernel:,.0f} rows/s"
    )
    masked = float(np.mean([m.diagnostics["map/masked_frac"] for batch in mapped for m in batch]))
    one = float(np.mean([m.diagnostics["map/one_to_one_frac"] for batch in mapped for m in batch]))
    print(f"mean masked fraction {masked:.3%}, mean 1:1 chunk fraction {one:.1%}")
    print("targets:")
    med = float(np.median(paired))
    print(
        f"  (b) <= 1.5x (a): {t_b / t_a:.2f}x of the bests, {med:.2f}x median of {len(paired)} paired rounds "
        f"({paired[0]:.2f}-{paired[-1]:.2f}) -> {'MET' if med <= 1.5 else 'NOT MET'} (median)"
    )
    if gold_seconds is not None:
        verdict = "MET" if gold_seconds >= 10 * t_b else "NOT MET"
        print(f"  (b) >= 10x faster than (d): {gold_seconds / t_b:.1f}x -> {verdict}")
    print(f"  (c) >= 200k positions/s: {rate_c:,.0f} -> {'MET' if rate_c >= 200_000 else 'NOT MET'}")
    return {
        "student_tokens": n_tokens,
        "teacher_tokens": teacher_tokens,
        "samples": len(rollouts),
        "seconds": {
            "a_floor": t_a,
            "b_sampled_path": t_b,
            "b_teacher_requests": t_req,
            "b_map_samples": t_map,
            "c_map_samples_topk": t_dense,
            "c_kernel": t_kernel,
            **({"d_gold_scaled": gold_seconds} if gold_seconds is not None else {}),
        },
        "b_over_a": t_b / t_a,
        "b_over_a_paired_median": float(np.median(paired)),
        "b_over_a_paired_range": [paired[0], paired[-1]],
        "dense_positions": positions,
        "group_slot_frac": grouped / max(slots, 1),
        "c_positions_per_s": rate_c,
        "c_kernel_rows_per_s": rows_lp.shape[0] / t_kernel,
        "masked_frac": masked,
        "one_to_one_chunk_frac": one,
    }


REAL_PAIRS = (("gemma3", "llama3"), ("qwen3", "llama3"))  # (teacher, student)


def _print_preparation(prep: dict) -> None:
    for phase in ("cold", "warm"):
        p = prep[phase]
        print(
            f"preparation {phase}: {p['seconds']:.2f} s wall ({p['cpu_seconds']:.2f} s CPU; tokenizers "
            f"{p['tokenizers_seconds']:.2f}, teacher backend {p['teacher_backend_seconds']:.2f}, projection "
            f"{p['projection_seconds']:.2f}, teacher continuation encoder {p['continuation_seconds']:.2f}), "
            f"peak RSS {p['peak_rss_mib']:.0f} MiB "
            f"({p['rss_after_imports_mib']:.0f} MiB after {p['import_seconds']:.1f} s of imports)"
        )
    warm = prep["warm"]["seconds"]
    print(f"  preparation <= 5 s (warm): {warm:.2f} s -> {'MET' if warm <= 5 else 'NOT MET'}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", choices=("zoo", "real"), default="zoo", help="zoo pair or the real tier")
    parser.add_argument("--student", help="student tokenizer dir (default: zoo llama3, else test fixture)")
    parser.add_argument("--teacher", help="teacher tokenizer dir (default: zoo qwen, else test fixture)")
    parser.add_argument(
        "--tokens", type=int, help="student response tokens (default 1M; real: 200k per pair)"
    )
    parser.add_argument("--samples-per-prompt", type=int, default=8)
    parser.add_argument("--batch", type=int, default=512, help="samples per map call")
    parser.add_argument("--gold-fraction", type=float, default=1.0, help="share of samples run through GOLD")
    parser.add_argument("--skip-gold", action="store_true")
    parser.add_argument("--gold", action="store_true", help="run GOLD on real pairs too (slow)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (best is kept)")
    parser.add_argument("--skip-prepare", action="store_true", help="no preparation timing")
    parser.add_argument("--out", help="JSON results (default with --pairs real: results/mapping_real.json)")
    parser.add_argument("--prepare-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.prepare_child:
        print(json.dumps(prepare_child(args.student, args.teacher)))
        return 0
    if args.tokens is None:
        args.tokens = 200_000 if args.pairs == "real" else 1_000_000

    if args.pairs == "real":
        from tokenbridge_zoo.real import real_tokenizer_path

        pairs = [
            (f"{t} -> {s}", str(real_tokenizer_path(s)), str(real_tokenizer_path(t))) for t, s in REAL_PAIRS
        ]
        gold = args.gold and not args.skip_gold
        out = args.out or "results/mapping_real.json"
    else:
        student_dir, teacher_dir = args.student, args.teacher
        if student_dir is None or teacher_dir is None:
            try:
                from tokenbridge_zoo import tokenizer_path

                student_dir, teacher_dir = str(tokenizer_path("llama3")), str(tokenizer_path("qwen"))
            except ImportError:
                from tests.unit.mapping_fixtures import fixture_tokenizer_dirs

                dirs = fixture_tokenizer_dirs()
                student_dir, teacher_dir = dirs["bl_group"], dirs["bl_single"]
        pairs = [(f"{Path(teacher_dir).name} -> {Path(student_dir).name}", student_dir, teacher_dir)]
        gold = not args.skip_gold
        out = args.out

    results = []
    with tempfile.TemporaryDirectory(prefix="tb_mapping_bench_") as scratch:
        for name, student_dir, teacher_dir in pairs:
            print(f"\n=== {name} (teacher -> student)")
            cache = str(Path(scratch) / name.replace(" ", ""))
            os.environ[CACHE_ENV] = cache  # this process reads what the preparation children cached
            prep = None
            if not args.skip_prepare:
                prep = measure_preparation(student_dir, teacher_dir, cache)
                _print_preparation(prep)
            figures = run_pair(student_dir, teacher_dir, args, gold)
            results.append(
                {"pair": name, "student": student_dir, "teacher": teacher_dir, "preparation": prep, **figures}
            )
    if out:
        args.out = out
        record = {
            "benchmark": "benchmarks/mapping.py",
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "host": {
                "cpus": os.cpu_count(),
                "load_average": os.getloadavg(),
                "python": platform.python_version(),
            },
            "args": {k: v for k, v in vars(args).items() if k != "prepare_child"},
            "pairs": results,
        }
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(record, indent=2) + "\n")
        print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
