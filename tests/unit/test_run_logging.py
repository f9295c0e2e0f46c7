"""The run's user-facing output: train.log lines, the actors' log file, the curves plot, best student."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from framework import checkpoint
from framework import logging as run_logging


def test_say_prints_and_appends_to_train_log(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(run_logging, "_run_log", None)
    log = run_logging.open_run_log(tmp_path / "run")
    run_logging.say("[eval step 0] eval/accuracy=0.2500")
    run_logging.say("second line")
    assert capsys.readouterr().out.splitlines() == ["[eval step 0] eval/accuracy=0.2500", "second line"]
    lines = log.read_text().splitlines()
    assert len(lines) == 2 and lines[0].endswith("[eval step 0] eval/accuracy=0.2500")


def test_route_actor_output_sends_stdout_stderr_and_children_to_the_file(tmp_path):
    target = tmp_path / "logs" / "actors.log"
    code = (
        "import os, subprocess, sys\n"
        "from framework.logging import route_actor_output\n"
        "route_actor_output()\n"
        "print('from stdout', flush=True)\n"
        "print('from stderr', file=sys.stderr, flush=True)\n"
        "subprocess.run([sys.executable, '-c', 'print(\"from a child\")'], check=True)\n"
    )
    env = {**os.environ, run_logging.ACTOR_LOG_ENV: str(target)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout == "" and out.stderr == ""  # nothing reached the console
    assert target.read_text().splitlines() == ["from stdout", "from stderr", "from a child"]


def test_route_actor_output_without_the_variable_changes_nothing(tmp_path):
    code = "from framework.logging import route_actor_output\nroute_actor_output()\nprint('still here')\n"
    env = {k: v for k, v in os.environ.items() if k != run_logging.ACTOR_LOG_ENV}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout == "still here\n"


def _write_metrics(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_read_metrics_keeps_the_last_copy_of_a_redone_step_and_skips_a_cut_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    _write_metrics(
        path,
        [
            {"step": 0, "time": 0.0, "eval/accuracy": 0.25},
            {"step": 1, "time": 1.0, "loss": 2.0},
            {"step": 1, "time": 5.0, "loss": 1.5},  # the same step again after a resume
        ],
    )
    with path.open("a") as f:
        f.write('{"step": 2, "lo')  # a run killed mid-write
    rows = run_logging.read_metrics(path)
    assert [r["step"] for r in rows] == [0, 1]
    assert rows[1]["loss"] == 1.5


def test_plot_run_draws_accuracy_and_kl(tmp_path):
    pytest.importorskip("matplotlib")
    _write_metrics(
        tmp_path / "metrics.jsonl",
        [
            {"step": 0, "eval/accuracy": 0.25, "eval/teacher_kl": 0.3},
            {"step": 1, "loss": 1.0},
            {"step": 20, "eval/accuracy": 0.5, "eval/teacher_kl": 0.2},
        ],
    )
    plot = run_logging.plot_run(tmp_path)
    assert plot is not None and plot.stat().st_size > 1000
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_run_without_evaluations_writes_nothing(tmp_path):
    _write_metrics(tmp_path / "metrics.jsonl", [{"step": 1, "loss": 1.0}])
    assert run_logging.plot_run(tmp_path) is None
    assert not (tmp_path / "curves.png").exists()


def test_eval_score_prefers_accuracy_then_negated_kl():
    assert checkpoint.eval_score({"eval/accuracy": 0.5, "eval/teacher_kl": 0.2}) == ("eval/accuracy", 0.5)
    assert checkpoint.eval_score({"eval/teacher_kl": 0.2}) == ("-eval/teacher_kl", -0.2)
    assert checkpoint.eval_score({"loss": 1.0}) is None


def _student_writer(marker: str):
    def write(folder: Path) -> None:
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_text(marker)

    return write


def test_save_best_replaces_the_previous_best_whole(tmp_path):
    checkpoint.save_best(
        tmp_path, {"step": 0, "metric": "eval/accuracy", "value": 0.25}, _student_writer("a")
    )
    checkpoint.save_best(
        tmp_path, {"step": 20, "metric": "eval/accuracy", "value": 0.5}, _student_writer("b")
    )
    assert checkpoint.best_record(tmp_path) == {"step": 20, "metric": "eval/accuracy", "value": 0.5}
    assert (tmp_path / "best" / "student" / "model.safetensors").read_text() == "b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]  # no temporary folders left


def test_save_best_interrupted_keeps_the_previous_best(tmp_path):
    checkpoint.save_best(
        tmp_path, {"step": 0, "metric": "eval/accuracy", "value": 0.25}, _student_writer("a")
    )

    def dies(folder: Path) -> None:
        raise RuntimeError("learner lost while writing")

    with pytest.raises(RuntimeError):
        checkpoint.save_best(tmp_path, {"step": 20, "metric": "eval/accuracy", "value": 0.5}, dies)
    assert checkpoint.best_record(tmp_path)["step"] == 0
    assert (tmp_path / "best" / "student" / "model.safetensors").read_text() == "a"
