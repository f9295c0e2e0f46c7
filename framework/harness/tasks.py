"""Harness tasks from tokenbridge's prompt sources, and one call that runs an evaluation.

A task spec is either a prompt source tokenbridge already reads (``zoo:arith``, a JSONL or Parquet
file of records with ``messages`` and ``answer``) or the name of any lm-evaluation-harness task
(``gsm8k``, ``ifeval``, ...; those fetch their data from the Hugging Face Hub). A prompt source
becomes a generation task judged by the source's own verifier (framework/data/verifiers.py): the
zoo task's ``Answer: N`` parser, else answer extraction (``\\boxed{}``, ``#### N``, "the answer is",
the last number) compared after normalisation, never whole-response exact match.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from framework.data.prompts import ZOO_SOURCES, DataError, load_prompts
from framework.data.verifiers import get_verifier

DEFAULT_PROBLEMS = 512  # problems of a prompt source when no limit is given
PROMPT_FILE_SUFFIXES = (".jsonl", ".json", ".parquet")


def is_prompt_source(spec: str) -> bool:
    """Whether ``spec`` names a tokenbridge prompt source rather than a harness task."""
    return spec.startswith("zoo:") or spec.endswith(PROMPT_FILE_SUFFIXES) or Path(spec).is_file()


def task_name(spec: str) -> str:
    """The name results are reported under: ``zoo_arith``, ``file_<stem>``, else the harness name."""
    if spec.startswith("zoo:"):
        return "zoo_" + spec[4:].replace("/", "_")
    if is_prompt_source(spec):
        return "file_" + Path(spec).stem
    return spec


def prompt_source_task(source: str, *, limit: int | None, seed: int, max_gen_toks: int) -> dict[str, Any]:
    """An lm-evaluation-harness task config (a dict it accepts in place of a task name) over the
    held-out prompts of ``source``: single-turn records, greedy generation, accuracy by its verifier."""
    import datasets

    prompts, _ = load_prompts(source, n=limit or DEFAULT_PROBLEMS, seed=seed, split="eval")
    verify = get_verifier(source)
    assert verify is not None  # a source always has one
    docs = []
    for p in prompts:
        roles = [m.get("role") for m in p.messages]
        if roles != ["user"] or p.answer is None:
            raise DataError(
                f"{source}: record {p.prompt_id!r} has roles {roles} and answer {p.answer!r}; a harness "
                "task takes single-turn records. Fix: give each record one user message and an 'answer'"
            )
        docs.append({"id": p.prompt_id, "question": p.messages[0]["content"], "answer": str(p.answer)})
    if not docs:
        raise DataError(f"{source}: no records to evaluate. Fix: point the task at a file with records")

    def score(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
        return {"accuracy": float(verify(results[0], doc["answer"]))}

    return {
        "task": task_name(source),
        "custom_dataset": lambda **_: datasets.DatasetDict({"test": datasets.Dataset.from_list(docs)}),
        "test_split": "test",
        "doc_to_text": "{{question}}",
        "doc_to_target": "answer",
        "output_type": "generate_until",
        "generation_kwargs": {"until": [], "do_sample": False, "max_gen_toks": max_gen_toks},
        "process_results": score,
        "metric_list": [{"metric": "accuracy", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {
            "version": 1,
            "source": source if source in ZOO_SOURCES else str(Path(source).resolve()),
        },
    }


def harness_tasks(specs: list[str], *, limit: int | None, seed: int, max_gen_toks: int) -> list[Any]:
    """What ``simple_evaluate`` takes for ``specs``: a task config per prompt source (its records are
    read and checked here, so a bad file fails now), the name itself for a harness task."""
    return [
        prompt_source_task(s, limit=limit, seed=seed, max_gen_toks=max_gen_toks) if is_prompt_source(s) else s
        for s in specs
    ]


def run_harness(lm: Any, tasks: list[Any], *, limit: int | None, seed: int = 0) -> dict[str, Any]:
    """Evaluate ``lm`` (an ``EngineLM``) on ``tasks`` (`harness_tasks`) with lm-evaluation-harness,
    chat templates on. Returns the harness's ``results`` section and the flat metrics (`flat_metrics`)."""
    from lm_eval import simple_evaluate

    out = simple_evaluate(
        model=lm,
        tasks=tasks,
        limit=limit,
        apply_chat_template=True,
        log_samples=False,
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
    )
    if out is None:  # only on non-zero ranks of a distributed harness run, which this never is
        raise RuntimeError("lm-evaluation-harness returned no results")
    results = json.loads(json.dumps(out["results"], default=str))
    return {"results": results, "metrics": flat_metrics(results)}


def flat_metrics(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """``harness/<task>/<metric>`` for every numeric metric (``acc,none`` → ``acc``; no stderr)."""
    flat = {}
    for task, metrics in results.items():
        for key, value in metrics.items():
            name, _, _filter = key.partition(",")
            if (
                "stderr" in name
                or name == "sample_len"
                or not isinstance(value, int | float)
                or isinstance(value, bool)
            ):
                continue
            if math.isfinite(value):
                suffix = f"_{_filter}" if _filter not in ("", "none") else ""
                flat[f"harness/{task}/{name}{suffix}"] = float(value)
    return flat
