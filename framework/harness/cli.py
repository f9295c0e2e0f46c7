"""``tokenbridge-eval``: evaluate a model folder, a checkpoint's student or a Hub id with
lm-evaluation-harness on one local vLLM engine (the rollout engine class, framework/rollout/engine.py).

    tokenbridge-eval outputs/.../best/student --tasks zoo:arith
    tokenbridge-eval zoo:student-llama3 --tasks zoo:arith,data/held_out.jsonl --limit 256
    tokenbridge-eval HuggingFaceTB/SmolLM2-135M-Instruct --tasks gsm8k --limit 100 --max-model-len 2048

Results go to a JSON file (``--output``, default ``<model>/harness.json`` for a local folder, else
``harness.json``) and, with ``--wandb offline|online``, to a wandb run. Exit status 2 on a bad
argument, with the reason on one line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from framework.config import ConfigError
from framework.data.prompts import DataError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tokenbridge-eval", description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="a model folder (e.g. a run's best/student), zoo:NAME or a Hub id")
    p.add_argument("--tasks", default="zoo:arith",
                   help="comma-separated: zoo:arith, JSONL/Parquet files, or lm-evaluation-harness task names")  # fmt: skip
    p.add_argument(
        "--limit", type=int, default=None, help="problems per task (default: all; 512 for a prompt source)"
    )
    p.add_argument("--output", default=None, help="results JSON (default: <model folder>/harness.json)")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--max-model-len", type=int, default=512)
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    p.add_argument("--kv-cache-gib", type=float, default=1.0, help="CPU: KV cache size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--wandb", default="disabled", choices=("disabled", "offline", "online"))
    p.add_argument("--project", default="tokenbridge")
    p.add_argument(
        "--trust-remote-code", action="store_true", help="run the model repo's own code (off by default)"
    )
    return p


def evaluate_model(args: argparse.Namespace) -> dict[str, Any]:
    """Start the engine on ``args.model`` and run the tasks; returns the results record."""
    from transformers import AutoTokenizer

    from framework.data.chat import stop_token_ids
    from framework.harness.lm import EngineLM, engine_calls
    from framework.harness.tasks import harness_tasks, run_harness
    from framework.models import resolve_model_dir
    from framework.rollout import StudentEngine

    if args.limit is not None and args.limit < 1:
        raise ConfigError("--limit", f"must be >= 1, got {args.limit}", "give a positive number of problems")
    if args.max_new_tokens >= args.max_model_len:
        raise ConfigError("--max-new-tokens", "leaves no room for the prompt", "raise --max-model-len")
    specs = [t.strip() for t in args.tasks.split(",") if t.strip()]
    tasks = harness_tasks(specs, limit=args.limit, seed=args.seed, max_gen_toks=args.max_new_tokens)
    model_dir = resolve_model_dir(args.model, key="model", remote_code=args.trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=args.trust_remote_code)
    stops = stop_token_ids(tokenizer, model_dir)
    t0 = time.perf_counter()
    engine = StudentEngine(
        model_dir, seed=args.seed, max_model_len=args.max_model_len, kv_cache_gib=args.kv_cache_gib,
        dtype=args.dtype, trust_remote_code=args.trust_remote_code,
    )  # fmt: skip
    generate, score = engine_calls(engine, stops, seed=args.seed)
    lm = EngineLM(tokenizer, generate, score, max_length=args.max_model_len, max_gen_toks=args.max_new_tokens)
    try:
        out = run_harness(lm, tasks, limit=args.limit, seed=args.seed)
    finally:
        engine.shutdown()
    return {"model": args.model, "model_dir": model_dir, "tasks": specs, "limit": args.limit,
            "seconds": round(time.perf_counter() - t0, 1), **out}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # CPU: the engine core in this process
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    for name in ("lm-eval", "lm_eval", "vllm"):  # a quiet console: the results are printed below
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        record = evaluate_model(args)
    except (ConfigError, DataError) as err:
        print(f"tokenbridge-eval: {err}", file=sys.stderr)
        return 2
    model_path = Path(args.model)
    output = (
        Path(args.output)
        if args.output
        else (model_path if model_path.is_dir() else Path(".")) / "harness.json"
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(record, indent=2))
    if args.wandb != "disabled":
        import wandb

        run = wandb.init(project=args.project, mode=args.wandb, job_type="eval", config=vars(args))
        run.log(record["metrics"])
        run.finish()
    for key, value in sorted(record["metrics"].items()):
        print(f"{key} = {value:.4f}")
    print(f"results: {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
