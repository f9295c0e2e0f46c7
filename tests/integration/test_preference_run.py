"""Offline preference distillation end to end on the zoo pair (teacher-qwen → student-llama3).

Each objective runs as its own process (`python -m framework.preference`): real DeepSpeed, one rank,
gloo, DS_ACCELERATOR=cpu; the HF teacher scores every response once; the reference is the student's
own logprobs before the first step. A few steps on a few pairs must lower the loss and raise the
preference accuracy on the training pairs; the final student is saved as a loadable HF folder.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
STEPS = 24
SETTINGS = dict(
    steps=STEPS,
    pairs_per_step=8,
    num_train_pairs=24,
    num_eval_pairs=24,
    num_train_eval_pairs=24,  # all training pairs
    task_eval_problems=16,
    lr=2e-4,
    beta=0.1,
    seed=0,
)
RUN_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def zoo_pair() -> tuple[str, str]:
    from framework.zoo import model_path  # builds the zoo on first use (cached under $TOKENBRIDGE_HOME)

    return str(model_path("student-llama3")), str(model_path("teacher-qwen"))


def run(objective: str, zoo_pair: tuple[str, str], out: Path) -> tuple[dict, list[dict]]:
    student, teacher = zoo_pair
    settings = dict(
        SETTINGS, student_path=student, teacher_path=teacher, objective=objective, output_dir=str(out)
    )
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-m", "framework.preference", json.dumps(settings)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return summary, records


@pytest.mark.parametrize("objective", ["ctpd", "dpo"])
def test_preference_run_learns_the_training_pairs(objective, zoo_pair, tmp_path):
    summary, records = run(objective, zoo_pair, tmp_path)
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == list(range(1, STEPS + 1))
    losses = np.array([r["loss"] for r in train])
    assert np.isfinite(losses).all()
    assert losses[-6:].mean() < losses[:6].mean(), losses

    start, end = summary["start"], summary["end"]
    acc = f"train_eval/{objective}_acc"
    assert end[acc] > start[acc], (start[acc], end[acc])
    assert end["train_eval/logp_margin"] > start["train_eval/logp_margin"]
    assert end["train_eval/logp_acc"] > start["train_eval/logp_acc"]
    assert end[f"train_eval/{objective}_loss"] < start[f"train_eval/{objective}_loss"]
    if objective == "dpo":  # at the reference every implicit-reward margin is a tie
        assert start["train_eval/dpo_acc"] == 0.0
        assert start["train_eval/dpo_loss"] == pytest.approx(math.log(2.0), abs=1e-4)
    for key in ("eval/logp_acc", "eval/dpo_acc", "eval/ctpd_acc", "eval/teacher_acc"):
        assert 0.0 <= end[key] <= 1.0
    assert end["eval/pairs"] == SETTINGS["num_eval_pairs"]

    # cross-tokenizer spans: Qwen splits every digit, Llama-3 groups up to three
    data = summary["data"]
    assert data["spans/teacher_tokens_per_span"] > data["spans/student_tokens_per_span"] >= 1.0
    assert data["spans/teacher_mismatch"] == 0.0

    final = Path(summary["final_model_dir"])
    assert (final / "config.json").is_file()
    for tag in ("start", "end"):
        assert 0.0 <= summary["task"][f"{tag}/task_acc"] <= 1.0
    assert summary["task"]["task_problems"] == SETTINGS["task_eval_problems"]
