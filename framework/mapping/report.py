"""``tokenbridge-pair``: how well two tokenizers map onto each other, before any training.

    tokenbridge-pair --student PATH --teacher PATH [--texts FILE] [--json]

Reports the vocabulary byte overlap, chunk statistics and masked fraction on sample texts (built-in
prose / multilingual / code / math texts, or one text per line of ``--texts``), the share of dense
(top-k) positions whose projection is exact (the teacher token's bytes are exactly a student token),
and warnings (missing chat template, stop tokens not found, unsupported tokenizer, bytes that do not
survive re-tokenization). ``--student`` / ``--teacher`` take what training takes (a local folder, a
Hugging Face id ``org/name[@revision]`` or ``zoo:NAME``), resolved by :mod:`framework.models`; only
tokenizer files are read. A zoo model that is not built is an error (run ``tokenbridge-zoo``), not a
build.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import numpy as np

from framework.mapping.align import align_flat, boundary_pairs
from framework.mapping.mapper import TokenMapper
from framework.mapping.render import TokenizerInfo, split_student_response
from framework.mapping.token_bytes import UnsupportedTokenizerError
from framework.types import Prompt, Rollout, TeacherScores

BUILTIN_TEXTS: dict[str, list[str]] = {
    "prose": [
        "The quick brown fox jumps over the lazy dog, and then it rests under the old oak tree.",
        "On-policy distillation lets a small model learn from a large one on its own answers.",
    ],
    "multilingual": [
        "東京は日本の首都です。数学の答えは四十二です。",
        "Zürich, São Paulo, naïve café — déjà vu! Привет, мир. 안녕하세요 🙂👍🏽",
        "العربية والعبرية: שלום. हिन्दी भी। Ελληνικά.",
    ],
    "code": [
        "def add(a: int, b: int) -> int:\n    return a + b\n\nprint(add(2, 3))\r\n",
        "for (int i = 0; i < n; ++i) {\n\tsum += xs[i] * 2;  // accumulate\n}",
    ],
    "math": [
        "Compute 12345 + 6789 = 19134. Then 19134 * 3 = 57402. Answer: 57402",
        "Let x = 3.14159; 2x^2 - 7x + 1 = 0 has roots (7 ± √41) / 4. Answer: 0.15",
    ],
}

_MESSAGES = [{"role": "user", "content": "Say something."}]


def resolve_path(spec: str, key: str = "model") -> str:
    """The tokenizer folder of a model argument (see :func:`framework.models.resolve_model_dir`);
    raises :class:`framework.models.ModelPathError` naming ``key`` when it cannot be used."""
    from framework.models import resolve_model_dir

    return resolve_model_dir(spec, key=key, weights=False, build=False)


def _side(info: TokenizerInfo) -> dict:
    return {
        "path": info.path,
        "kind": info.table.kind,
        "vocab_size": info.table.vocab_size,
        "byte_fallback": info.table.byte_fallback,
        "eos_id": info.eos_id,
        "end_of_turn_id": info.end_of_turn_id,
        "stop_ids": sorted(info.stop_ids),
        "chat_template": bool(info.chat_template),
    }


def _vocab_overlap(mapper: TokenMapper) -> dict:
    s_bytes = {b for i, b in enumerate(mapper.student.table.token_bytes) if b}
    t_bytes = {b for i, b in enumerate(mapper.teacher.table.token_bytes) if b}
    nonempty_t = mapper.teacher.table.byte_lengths > 0
    return {
        "student_tokens_in_teacher": len(s_bytes & t_bytes) / max(len(s_bytes), 1),
        "teacher_tokens_in_student": len(s_bytes & t_bytes) / max(len(t_bytes), 1),
        "teacher_tokens_exact_projection": float(mapper.projection.exact[nonempty_t].mean())
        if nonempty_t.any()
        else 0.0,
    }


def _text_stats(mapper: TokenMapper, texts: Sequence[str]) -> dict:
    """Chunk/mask/dense statistics of the student's own tokenization of each text (+ a stop token)."""
    student = mapper.student
    stop = student.stop_token_to_append
    rollouts = []
    for n, text in enumerate(texts):
        ids = student.continuation.encode(text, add_special_tokens=False).ids
        finish = "length"
        if stop is not None:
            ids, finish = [*ids, stop], "stop"
        prompt_ids = student.render_prompt_ids(_MESSAGES) if student.chat_template else np.zeros(0, np.int32)
        ids_arr = np.asarray(ids, dtype=np.int32)
        rollouts.append(
            Rollout(
                f"t{n}#0",
                Prompt(f"t{n}", _MESSAGES),
                prompt_ids,
                ids_arr,
                np.zeros(len(ids), np.float32),
                0,
                finish,
            )
        )
    requests = mapper.teacher_requests(rollouts)
    scores = []
    for q in requests:
        n_resp = q.input_ids.shape[0] - q.response_start
        realised = q.input_ids[q.response_start :].astype(np.int32)[:, None]
        scores.append(
            TeacherScores(q.sample_id, np.zeros(n_resp, np.float32), realised, np.zeros((n_resp, 1)))
        )
    mapped = mapper.map_samples(rollouts, requests, scores)
    n_tokens = np.array([m.mask.shape[0] for m in mapped], dtype=np.float64)

    def weighted(key: str, weights: np.ndarray) -> float:
        values = np.array([m.diagnostics[key] for m in mapped])
        return float((values * weights).sum() / max(weights.sum(), 1e-12))

    chunks = np.array([m.diagnostics["map/chunks"] for m in mapped])
    teacher_tokens = sum(q.input_ids.shape[0] - q.response_start for q in requests)
    return {
        "texts": len(texts),
        "student_tokens": int(n_tokens.sum()),
        "teacher_tokens": int(teacher_tokens),
        "chunks": int(chunks.sum()),
        "one_to_one_chunk_frac": weighted("map/one_to_one_frac", chunks),
        "chunk_student_tokens": weighted("map/chunk_student_tokens", chunks),
        "chunk_teacher_tokens": weighted("map/chunk_teacher_tokens", chunks),
        "masked_frac": weighted("map/masked_frac", n_tokens),
        "dense_position_frac": weighted("map/dense_frac", n_tokens),
        "topk_exact_frac": _dense_exactness(mapper, rollouts, requests),
        "teacher_mismatch_texts": int(sum(m.diagnostics.get("map/teacher_mismatch", 0.0) for m in mapped)),
    }


def _dense_exactness(mapper: TokenMapper, rollouts, requests) -> float:
    """Share of dense positions whose realised teacher token is exactly a student token."""
    if mapper.is_identity:
        return 1.0
    s_lens, t_lens, s_off, t_off, covered, t_ids = [], [], [0], [0], [], []
    for rollout, request in zip(rollouts, requests):
        split = split_student_response(
            mapper.student.table, mapper.student.stop_ids, rollout.response_ids, rollout.finish_reason
        )
        content = rollout.response_ids[: split.num_content]
        t_content = request.input_ids[request.response_start :]
        if split.bridge_stop and mapper.teacher.stop_token_to_append is not None:
            t_content = t_content[:-1]
        s_lens.append(mapper.student.table.byte_lengths[content])
        t_lens.append(mapper.teacher.table.byte_lengths[t_content])
        t_ids.append(t_content)
        s_off.append(s_off[-1] + content.shape[0])
        t_off.append(t_off[-1] + t_content.shape[0])
        covered.append(split.valid_len)
    s_all, t_all = np.concatenate(s_lens), np.concatenate(t_lens)
    alignment = align_flat(s_all, np.array(s_off), t_all, np.array(t_off), np.array(covered))
    _, t_idx = boundary_pairs(alignment, s_all, t_all, np.ones(t_all.shape[0], dtype=bool))
    if t_idx.shape[0] == 0:
        return 0.0
    return float(mapper.projection.exact[np.concatenate(t_ids)[t_idx]].mean())


def pair_report(student_path: str, teacher_path: str, texts: dict[str, list[str]] | None = None) -> dict:
    """Everything ``tokenbridge-pair`` prints, as a dict."""
    mapper = TokenMapper.from_paths(
        resolve_path(student_path, "--student"), resolve_path(teacher_path, "--teacher")
    )
    texts = texts or BUILTIN_TEXTS
    warnings = [f"student: {w}" for w in mapper.student.warnings] + [
        f"teacher: {w}" for w in mapper.teacher.warnings
    ]
    for side, info in (("student", mapper.student), ("teacher", mapper.teacher)):
        if info.end_of_turn_id is None and info.eos_id is not None:
            warnings.append(
                f"{side}: no end-of-turn token found in the chat template; EOS is used as the stop token"
            )
    report: dict = {
        "student": _side(mapper.student),
        "teacher": _side(mapper.teacher),
        "identity": mapper.is_identity,
        "vocab": _vocab_overlap(mapper),
        "texts": {},
        "warnings": warnings,
    }
    if not (mapper.student.chat_template and mapper.teacher.chat_template):
        warnings.append("text statistics skipped: both tokenizers need a chat template")
        return report
    for category, items in texts.items():
        report["texts"][category] = _text_stats(mapper, items)
    everything = [t for items in texts.values() for t in items]
    if len(texts) > 1:
        report["texts"]["all"] = _text_stats(mapper, everything)
    for category, stats in report["texts"].items():
        if stats["masked_frac"] > 0 and category != "all":
            warnings.append(
                f"{category}: {stats['masked_frac']:.1%} of student tokens masked "
                f"({stats['teacher_mismatch_texts']} texts where teacher bytes disagree)"
            )
    return report


def format_report(report: dict) -> str:
    """Human-readable table."""
    lines = []
    for side in ("student", "teacher"):
        s = report[side]
        lines.append(
            f"{side:8s} {s['kind']:9s} vocab={s['vocab_size']:<7d} byte_fallback={s['byte_fallback']!s:5s} "
            f"stop={s['stop_ids']} end_of_turn={s['end_of_turn_id']} chat_template={s['chat_template']}  {s['path']}"
        )
    lines.append(f"identity pair: {report['identity']}")
    v = report["vocab"]
    lines.append(
        f"vocab overlap: {v['student_tokens_in_teacher']:.1%} of student tokens are teacher tokens, "
        f"{v['teacher_tokens_in_student']:.1%} of teacher tokens are student tokens, "
        f"{v['teacher_tokens_exact_projection']:.1%} of teacher tokens project exactly"
    )
    if report["texts"]:
        header = (
            f"{'texts':13s} {'S tok':>6s} {'T tok':>6s} {'chunks':>6s} {'1:1':>6s} {'S/chunk':>7s} "
            f"{'T/chunk':>7s} {'masked':>7s} {'dense':>6s} {'exact':>6s}"
        )
        lines += ["", header, "-" * len(header)]
        for name, t in report["texts"].items():
            lines.append(
                f"{name:13s} {t['student_tokens']:6d} {t['teacher_tokens']:6d} {t['chunks']:6d} "
                f"{t['one_to_one_chunk_frac']:6.1%} {t['chunk_student_tokens']:7.2f} {t['chunk_teacher_tokens']:7.2f} "
                f"{t['masked_frac']:7.1%} {t['dense_position_frac']:6.1%} {t['topk_exact_frac']:6.1%}"
            )
    lines.append("")
    lines += [f"WARNING {w}" for w in report["warnings"]] or ["no warnings"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tokenbridge-pair", description=__doc__.split("\n\n")[0])
    forms = "model/tokenizer folder, Hugging Face id org/name[@revision] or zoo:NAME"
    parser.add_argument("--student", required=True, help=f"student {forms}")
    parser.add_argument("--teacher", required=True, help=f"teacher {forms}")
    parser.add_argument("--texts", help="file with one sample text per line (default: built-in texts)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    from framework.models import ModelPathError

    def fail(message: str) -> int:
        """One line on stderr (and a JSON error object with --json), exit code 2."""
        message = " ".join(message.split())
        if args.json:
            print(json.dumps({"error": message}))
        print(f"tokenbridge-pair: {message}", file=sys.stderr)
        return 2

    texts = None
    if args.texts:
        try:
            with open(args.texts, encoding="utf-8") as f:
                lines = [line.rstrip("\n") for line in f if line.strip()]
        except (OSError, UnicodeDecodeError) as err:
            return fail(
                f"--texts: cannot read {args.texts!r} ({type(err).__name__}). Fix: give a UTF-8 text file"
            )
        texts = {"file": [line.replace("\\n", "\n") for line in lines]}
    try:
        report = pair_report(args.student, args.teacher, texts)
    except ModelPathError as err:
        return fail(f"{err.key}: {err.problem}. Fix: {err.fix}")
    except UnsupportedTokenizerError as err:
        if args.json:
            print(json.dumps({"error": str(err)}))
        else:
            print(f"ERROR unsupported tokenizer: {err}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
