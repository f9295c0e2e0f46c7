"""The fault counters (``faults/<name>``, ``faults/restarts_<stage>``) are cumulative over resumes
(framework/controller.py): the checkpoint's ``controller.json`` carries them, a ``trainer.resume=auto``
continues from them, an older checkpoint without them resumes from zero, and the
``trainer.max_restarts`` budget stays per driver process. The fake stages of
test_outside_step_faults stand in for the actors (no Ray cluster).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from framework import checkpoint
from framework.actors.streaming import StageFailure
from framework.config import Config
from framework.controller import Controller
from framework.types import Prompt
from tests.unit.test_outside_step_faults import FakeStages

PROMPTS = [Prompt(prompt_id=f"p{i}", messages=[{"role": "user", "content": str(i)}]) for i in range(4)]


def _controller(out: Path, max_restarts: int = 20) -> Controller:
    """A new driver process on ``out`` (fresh stages, fresh counters), set to resume from it."""
    cfg = Config()
    cfg.trainer.resume, cfg.trainer.max_restarts = "auto", max_restarts
    return Controller(cfg, FakeStages(), PROMPTS, PROMPTS[:1], out)  # type: ignore[arg-type]


def fault_metrics(ctl: Controller) -> dict[str, float]:
    """What the step logs under faults/* (Controller._step)."""
    return ctl.faults.metrics(ctl.stages.restarts)


def _faults_of_the_first_process(ctl: Controller) -> None:
    ctl.step = ctl.version = 5
    ctl.faults.note("sync_failed")
    ctl.faults.note("skipped_too_long", 3)
    ctl.faults.counts["requeued_samples"] += 7
    ctl.stages.restarts.update({"rollout": 2, "learner": 1})


def test_a_resume_continues_the_fault_counters_from_the_checkpoint(tmp_path):
    first = _controller(tmp_path)
    _faults_of_the_first_process(first)
    ckpt = first._checkpoint()
    assert ckpt is not None
    saved = checkpoint.load_controller_state(ckpt)
    assert saved["faults"] == {"sync_failed": 1, "skipped_too_long": 3, "requeued_samples": 7}
    assert saved["restarts"] == {"rollout": 2, "learner": 1}
    before = fault_metrics(first)

    second = _controller(tmp_path)  # the driver crashed; trainer.resume=auto
    second._restore()
    assert second.step == 5 and fault_metrics(second) == before
    second.faults.note("sync_failed")
    second.stages.restarts["rollout"] += 1
    metrics = fault_metrics(second)
    assert metrics["faults/sync_failed"] == 2.0 and metrics["faults/skipped_too_long"] == 3.0
    assert metrics["faults/restarts_rollout"] == 3.0 and metrics["faults/restarts_learner"] == 1.0

    second.step = second.version = 10  # and once more: the counts keep adding up
    second._checkpoint()
    third = _controller(tmp_path)
    third._restore()
    assert third.step == 10 and fault_metrics(third) == metrics


def test_the_restart_budget_is_per_process_so_a_resumed_run_does_not_stop_at_once(tmp_path):
    first = _controller(tmp_path, max_restarts=3)
    _faults_of_the_first_process(first)
    first.stages.restarts["teacher"] += 1  # 4 replacements: this process's budget is spent
    with pytest.raises(StageFailure):
        first.faults.record("teacher_died", sum(first.stages.restarts.values()))
    first._checkpoint()

    second = _controller(tmp_path, max_restarts=3)
    second._restore()
    second.faults.record("teacher_died", sum(second.stages.restarts.values()))  # a fresh budget
    assert second.faults.counts["teacher_died"] == 2
    assert fault_metrics(second)["faults/restarts_teacher"] == 1.0  # the logged counter stays cumulative


def test_a_learner_recovery_mid_run_keeps_the_live_counts(tmp_path):
    ctl = _controller(tmp_path)
    _faults_of_the_first_process(ctl)
    ctl._checkpoint()
    ctl.step = ctl.version = 8
    ctl.faults.note("sync_failed")  # after the checkpoint: it happened, the steps are redone
    ctl._recover_learner()  # back to the checkpoint of step 5, counters not rolled back
    assert ctl.step == 5
    metrics = fault_metrics(ctl)
    assert metrics["faults/sync_failed"] == 2.0 and metrics["faults/learner_failed"] == 1.0
    assert metrics["faults/restarts_learner"] == 2.0


def test_an_older_checkpoint_without_counters_resumes_from_zero(tmp_path):
    tmp = checkpoint.begin(tmp_path, 4)
    state = {"step": 4, "version": 4, "cursor": {"epoch": 0, "index": 2}, "requeued_prompt_ids": [["p3"]]}
    ckpt = checkpoint.commit(tmp, state)  # the controller.json of a checkpoint written before the counters
    assert set(json.loads((ckpt / "controller.json").read_text())) == set(state)

    ctl = _controller(tmp_path)
    ctl._restore()
    assert (ctl.step, ctl.version) == (4, 4) and [[p.prompt_id for p in b] for b in ctl.queue.requeued] == [
        ["p3"]
    ]
    assert fault_metrics(ctl) == {}
    ctl.faults.note("eval_failed")
    ctl.stages.restarts["rollout"] += 1
    assert fault_metrics(ctl) == {"faults/eval_failed": 1.0, "faults/restarts_rollout": 1.0}
