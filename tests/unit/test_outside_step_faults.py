"""Eval, weight sync and checkpoint save under the fault rules (framework/controller.py).

A fake stage set stands in for the actors (no Ray cluster): each test makes one of those calls fail
the way Ray reports it and checks the answer: skipped and counted, the learner recovered, the
previous checkpoints intact, or the run stopped with one line.
"""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import pytest
import ray

from framework import checkpoint
from framework.actors.failures import RunStopped
from framework.config import Config, ConfigError
from framework.controller import Controller
from framework.types import Prompt


def _task_error(cause: BaseException) -> BaseException:
    return ray.exceptions.RayTaskError(
        "LearnerWorker.export_weights", "Traceback (fake)", cause, proctitle="ray::x", pid=0, ip="127.0.0.1"
    ).as_instanceof_cause()


class FakeLearner:
    def __init__(self):
        self.save_error: BaseException | None = None
        self.saved: list = []

    def save(self, folder, timeout_s):
        if self.save_error is not None:
            (folder / "partial.bin").write_bytes(b"half")  # what a failing writer leaves behind
            raise self.save_error
        (folder / "learner").mkdir()
        self.saved.append(folder)

    def load(self, folder, timeout_s):
        pass


class FakeStages:
    def __init__(self):
        self.learner = FakeLearner()
        self.rollout, self.teacher_generators, self.colocated = [object()], [], False
        self.restarts: Counter[str] = Counter()
        self.sync_errors: list[BaseException] = []
        self.synced: list[int] = []

    def sync_weights(self, version, timeout_s, engines=None):
        if self.sync_errors:
            raise self.sync_errors.pop(0)
        self.synced.append(version)
        return []

    def restart_learner(self, timeout_s):
        self.restarts["learner"] += 1


@pytest.fixture
def controller(tmp_path):
    cfg = Config()
    prompts = [Prompt(prompt_id=f"p{i}", messages=[{"role": "user", "content": str(i)}]) for i in range(4)]
    ctl = Controller(cfg, FakeStages(), prompts, prompts[:1], tmp_path)  # type: ignore[arg-type]
    ctl.step = ctl.version = 5
    return ctl


def test_a_failed_export_recovers_the_learner_and_the_run_goes_on(controller, capsys):
    controller.stages.sync_errors = [_task_error(RuntimeError("export blew up"))]
    controller._sync()
    assert controller.stages.restarts["learner"] == 1  # new ranks ...
    assert (controller.step, controller.version) == (0, 0)  # ... from the initial weights (no checkpoint)
    assert controller.stages.synced == [0]  # and the engines got those weights
    assert controller.faults.counts["sync_failed"] == 1
    assert "sync at step 5 failed (RuntimeError: export blew up)" in capsys.readouterr().out


def test_a_configuration_error_in_the_sync_stops_the_run_with_its_text(controller):
    controller.stages.sync_errors = [_task_error(ConfigError("rollout.x", "bad", "fix it"))]
    with pytest.raises(RunStopped, match="sync at step 5: ConfigError"):
        controller._sync()
    assert controller.stages.restarts["learner"] == 0


def test_an_evaluation_that_times_out_is_skipped_and_counted(controller, monkeypatch, capsys):
    def hung(step, version, log):
        raise ray.exceptions.GetTimeoutError("Get timed out: some object(s) not ready.")

    monkeypatch.setattr(controller.evaluator, "run", hung)
    assert controller._evaluate(log=None) == {}
    assert controller.faults.counts["eval_failed"] == 1
    assert "eval at step 5 failed (GetTimeoutError" in capsys.readouterr().out


def test_a_full_disk_keeps_the_previous_checkpoint_and_leaves_no_partial_folder(controller, tmp_path):
    first = controller._checkpoint()
    assert first is not None and checkpoint.latest_complete(tmp_path) == first
    controller.step = 10
    controller.stages.learner.save_error = OSError(28, "No space left on device")
    assert controller._checkpoint() is None
    assert controller.faults.counts["checkpoint_failed"] == 1
    assert checkpoint.latest_complete(tmp_path) == first
    assert not [p for p in checkpoint.checkpoints_root(tmp_path).iterdir() if p.name.startswith(".tmp-")]
    assert controller.stages.restarts["learner"] == 0  # a disk error is not the learner's fault
    with pytest.raises(RunStopped, match=r"final checkpoint \(step 10\): OSError"):
        controller._checkpoint(last=True)  # the run's last checkpoint must exist


def test_a_learner_lost_while_saving_is_recovered_from_the_last_checkpoint(controller, tmp_path):
    first = controller._checkpoint()
    controller.step = controller.version = 9
    controller.stages.learner.save_error = ray.exceptions.RayActorError()
    assert controller._checkpoint() is None
    assert controller.stages.restarts["learner"] == 1
    assert (controller.step, controller.version) == (5, 5)  # back to the checkpoint that was complete
    assert checkpoint.latest_complete(tmp_path) == first
    assert SimpleNamespace(**controller.faults.counts).checkpoint_failed == 1
