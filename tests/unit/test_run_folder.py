"""The run folder keeps what earlier runs wrote: a fresh run refuses (or moves it aside with
overwrite=true), unreadable checkpoints are skipped, stale temporary folders go, and a resume leaves
no duplicate metrics rows."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from framework import checkpoint
from framework import logging as run_logging
from framework.config import Config, ConfigError
from framework.data import PromptQueue
from framework.ledger import Ledger
from framework.types import Prompt


def _write(out: Path, step: int) -> Path:
    tmp = checkpoint.begin(out, step)
    (tmp / "learner").mkdir()
    (tmp / "learner" / "state.bin").write_bytes(b"\x00\x01weights" * step)
    return checkpoint.commit(tmp, {"step": step, "version": step, "cursor": {"epoch": 0, "index": 0}})


def _previous_run(out: Path) -> None:
    """What a run leaves: checkpoints, best/, a ledger and metrics with lines."""
    _write(out, 2)
    _write(out, 4)
    (out / "best").mkdir()
    (out / "best" / "best.json").write_text('{"step": 4, "metric": "eval/accuracy", "value": 0.5}\n')
    ledger = Ledger(out / "ledger.jsonl")
    for step in range(4):
        ledger.record(step, [f"p{step}#0", f"p{step}#1"])
    rows = [{"step": s, "time": float(s), "loss": 1.0 / (s + 1)} for s in range(1, 5)]
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (out / "train.log").write_text("2026-01-01 00:00:00 [tokenbridge] hello\n")


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(autouse=True)
def _no_run_log(monkeypatch):
    monkeypatch.setattr(run_logging, "_run_log", None)
    monkeypatch.setattr(run_logging, "_bar", None)


# ---------------------------------------------------------------- 1. a fresh run into a used folder
def test_fresh_folder_is_fine(tmp_path):
    assert checkpoint.prepare_fresh_run(tmp_path / "missing", overwrite=False) is None
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "ledger.jsonl").write_text("")  # empty files are no earlier run
    (tmp_path / "run" / ".hydra").mkdir()
    assert checkpoint.prepare_fresh_run(tmp_path / "run", overwrite=False) is None
    assert (tmp_path / "run" / "ledger.jsonl").exists()


def test_refusal_touches_nothing(tmp_path):
    out = tmp_path / "run"
    _previous_run(out)
    before = _snapshot(out)
    with pytest.raises(ConfigError) as err:
        checkpoint.prepare_fresh_run(out, overwrite=False)
    message = str(err.value)
    for needle in (str(out), "trainer.resume=auto", "trainer.overwrite=true", "trainer.output_dir"):
        assert needle in message
    assert _snapshot(out) == before
    assert not list(out.glob("previous-*"))


@pytest.mark.parametrize("artifact", ["checkpoints", "ledger.jsonl", "metrics.jsonl"])
def test_each_artifact_alone_is_refused(tmp_path, artifact):
    if artifact == "checkpoints":
        _write(tmp_path, 1)
    else:
        (tmp_path / artifact).write_text('{"step": 1}\n')
    with pytest.raises(ConfigError):
        checkpoint.prepare_fresh_run(tmp_path, overwrite=False)


def test_overwrite_moves_the_old_run_aside_intact(tmp_path, capsys):
    out = tmp_path / "run"
    _previous_run(out)
    before = _snapshot(out)
    aside = checkpoint.prepare_fresh_run(out, overwrite=True)
    assert aside is not None and aside.parent == out and aside.name.startswith("previous-")
    assert _snapshot(aside) == before  # every file, byte for byte
    assert [p.name for p in out.iterdir()] == [aside.name]
    assert str(aside) in capsys.readouterr().out
    # a second overwrite in the same second gets its own folder; the first one stays as it was
    _previous_run(out)
    again = checkpoint.prepare_fresh_run(out, overwrite=True)
    assert again is not None and again != aside
    assert _snapshot(aside) == before
    assert checkpoint.prepare_fresh_run(out, overwrite=False) is None  # previous-* is no run of its own


def _controller(out: Path, **trainer):
    from framework.actors.streaming import FaultBook
    from framework.controller import Controller

    cfg = Config()
    for key, value in trainer.items():
        setattr(cfg.trainer, key, value)
    ctl = Controller.__new__(Controller)  # no actors: only what _restore reads
    ctl.cfg, ctl.output_dir, ctl.ledger = cfg, out, Ledger(out / "ledger.jsonl")
    ctl.faults = FaultBook(cfg.trainer.max_restarts)
    return ctl


def test_controller_fresh_branch_refuses_or_moves_aside(tmp_path):
    pytest.importorskip("ray")
    _controller(tmp_path / "empty")._restore()  # a fresh folder: nothing to say
    out = tmp_path / "run"
    _previous_run(out)
    before = _snapshot(out)
    with pytest.raises(ConfigError):
        _controller(out)._restore()
    assert _snapshot(out) == before
    _controller(out, overwrite=True)._restore()
    (aside,) = out.glob("previous-*")
    assert _snapshot(aside) == before
    assert not (out / "ledger.jsonl").exists() and not (out / "best").exists()


def test_controller_resume_truncates_ledger_and_metrics(tmp_path):
    pytest.importorskip("ray")
    out = tmp_path / "run"
    _previous_run(out)
    (out / "checkpoints" / ".tmp-step_000006").mkdir()  # a crash while writing step 6
    ctl = _controller(out, resume="auto")
    loaded = []
    ctl.stages = SimpleNamespace(learner=SimpleNamespace(load=lambda c, timeout_s: loaded.append(c)))
    ctl.queue, ctl._sync = PromptQueue([Prompt("p0", [])], seed=0), lambda: 0.0
    (out / "checkpoints" / "step_000004" / "controller.json").write_text('{"step": 2, "vers')  # cut short
    ctl._restore()
    assert loaded == [out / "checkpoints" / "step_000002"] and ctl.step == 2
    assert [e["step"] for e in ctl.ledger.entries()] == [0, 1]
    assert [r["step"] for r in run_logging.read_metrics(out / "metrics.jsonl")] == [1, 2]
    assert not (out / "checkpoints" / ".tmp-step_000006").exists()


# ---------------------------------------------------------------- 2. unreadable controller state
@pytest.mark.parametrize(
    "damage, why",
    [
        (lambda p: p.unlink(), "missing"),
        (lambda p: p.write_text(p.read_text()[:7]), "unreadable"),
        (lambda p: p.write_text("not json at all"), "unreadable"),
        (lambda p: p.write_bytes(b""), "unreadable"),
    ],
)
def test_latest_complete_falls_back_past_a_damaged_controller_json(tmp_path, capsys, damage, why):
    _write(tmp_path, 10)
    newest = _write(tmp_path, 20)
    damage(newest / "controller.json")
    assert (newest / checkpoint.COMPLETE).exists()
    latest = checkpoint.latest_complete(tmp_path)
    assert latest is not None and latest.name == "step_000010"
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(lines) == 1 and str(newest) in lines[0] and why in lines[0]


def test_latest_complete_none_when_every_checkpoint_is_damaged(tmp_path, capsys):
    only = _write(tmp_path, 10)
    (only / "controller.json").write_text("{")
    assert checkpoint.latest_complete(tmp_path) is None
    assert "step_000010" in capsys.readouterr().out


# ---------------------------------------------------------------- 3. stale temporary folders
def test_remove_stale_clears_temporary_folders(tmp_path):
    kept = _write(tmp_path, 2)
    checkpoint.begin(tmp_path, 4)
    checkpoint.begin(tmp_path, 6)
    (tmp_path / "best").mkdir()
    (tmp_path / ".tmp-best").mkdir()
    (tmp_path / ".old-best").mkdir()
    checkpoint.remove_stale(tmp_path)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == [kept.name]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best", "checkpoints"]


def test_remove_stale_puts_back_a_best_cut_mid_swap(tmp_path):
    (tmp_path / ".old-best").mkdir()  # best/ was renamed away, the new one never renamed in
    (tmp_path / ".old-best" / "best.json").write_text('{"step": 3}')
    (tmp_path / ".tmp-best").mkdir()
    checkpoint.remove_stale(tmp_path)
    assert (tmp_path / "best" / "best.json").read_text() == '{"step": 3}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]


def test_prune_removes_stale_temporary_checkpoints(tmp_path):
    for s in (1, 2, 3):
        _write(tmp_path, s)
    checkpoint.begin(tmp_path, 9)
    checkpoint.prune(tmp_path, keep=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_000002", "step_000003"]


# ---------------------------------------------------------------- 4. metrics after a resume
def test_truncate_metrics_after_keeps_rows_up_to_the_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": s, "time": 0.5 * s, "loss": 2.0 - s / 10} for s in range(0, 7)]
    rows.insert(3, {"step": 2, "eval/accuracy": 0.25})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 7, "lo')  # a cut last line
    run_logging.truncate_metrics_after(path, 4)
    lines = path.read_text().splitlines()
    parsed = [json.loads(line) for line in lines]  # every line is valid JSON
    assert parsed == [r for r in rows if r["step"] <= 4]
    assert path.read_text().endswith("\n")
    assert not [p for p in tmp_path.iterdir() if p.name != "metrics.jsonl"]  # no temp file left
    run_logging.truncate_metrics_after(tmp_path / "absent.jsonl", 4)  # nothing to do
    assert not (tmp_path / "absent.jsonl").exists()


def test_resumed_run_appends_without_duplicates(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(1, 7)))
    run_logging.truncate_metrics_after(path, 4)  # resumed from the checkpoint of step 4
    with path.open("a") as f:  # the continued run redoes steps 5 and 6
        for s in (5, 6):
            f.write(json.dumps({"step": s, "loss": 0.5}) + "\n")
    steps = [json.loads(line)["step"] for line in path.read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
