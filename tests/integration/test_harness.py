"""``tokenbridge-eval`` end to end, as a user runs it: a real vLLM engine on a zoo student,
lm-evaluation-harness driving it, tokenbridge's prompt sources as harness tasks, results to a JSON
file and an offline wandb run. (The same adapter on the live rollout engines during training is in
tests/integration/test_pipeline.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def _eval(args: list[str], tmp_path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true"}
    return subprocess.run(
        [sys.executable, "-m", "framework.harness.cli", *args],
        capture_output=True, text=True, timeout=timeout, env=env, cwd=tmp_path,
    )  # fmt: skip


def test_tokenbridge_eval_scores_a_student_on_the_zoo_task_and_a_jsonl_file(tmp_path):
    from framework.data.arith import make_problems

    held = tmp_path / "held.jsonl"
    held.write_text("".join(
        json.dumps({"id": p.prompt_id, "messages": p.messages, "answer": f"#### {p.answer}"}) + "\n"
        for p in make_problems(16, seed=9, split="test")
    ))  # fmt: skip
    out = tmp_path / "results.json"
    done = _eval(
        ["zoo:student-llama3", "--tasks", f"zoo:arith,{held}", "--limit", "16", "--max-new-tokens", "48",
         "--output", str(out), "--wandb", "offline"],
        tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads(out.read_text())
    accuracy = {k: v for k, v in record["metrics"].items() if k.endswith("/accuracy")}
    assert set(accuracy) == {"harness/zoo_arith/accuracy", "harness/file_held/accuracy"}
    # the zoo student answers 40-50 % of the task (README zoo table): neither 0 nor everything
    assert all(0.0 < v < 1.0 for v in accuracy.values()), accuracy
    assert record["results"]["zoo_arith"]["sample_len"] == 16
    assert "harness/zoo_arith/accuracy" in done.stdout and str(out) in done.stdout
    assert list((tmp_path / "wandb").glob("offline-run-*")), "no offline wandb run written"


def test_tokenbridge_eval_refuses_a_bad_task_file_before_starting_an_engine(tmp_path):
    bad = tmp_path / "chat.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")  # no answer
    done = _eval(["zoo:student-llama3", "--tasks", str(bad)], tmp_path, timeout=120)
    assert done.returncode == 2 and "single-turn" in done.stderr and "chat.jsonl" in done.stderr
