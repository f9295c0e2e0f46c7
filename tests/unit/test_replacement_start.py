"""``Stages.poll_started`` (framework/actors/cluster.py): a replacement that fails to start, or does not
start in time, stops the run with one line that names the actor and the actor's own error or the key
to raise; one that came up is recorded and leaves the starting set."""

from __future__ import annotations

import time

import pytest

from framework.actors import cluster
from framework.actors.failures import RunStopped


class _Broken(Exception):
    pass


def _stages(monkeypatch, outcome):
    """Stages with one teacher replacement whose first call has ``outcome`` (a value, an exception,
    or None for not answered yet), without Ray."""
    monkeypatch.setattr(cluster.ray, "wait", lambda refs, timeout: ([] if outcome is None else refs, []))

    def get(ref):
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    monkeypatch.setattr(cluster.ray, "get", get)
    stages = cluster.Stages(
        rollout=[], teacher=["replacement"], mapping=[], learner=None, start_timeout_s=30.0
    )  # type: ignore[arg-type]
    stages.starting[("teacher", 0)] = ("ref", time.monotonic() + 30.0)
    return stages


def test_a_replacement_that_came_up_is_recorded(monkeypatch):
    stages = _stages(monkeypatch, ("127.0.0.1", [4242]))
    assert stages.poll_started(version=0) == [("teacher", 0)]
    assert stages.trees[("teacher", 0)] == ("127.0.0.1", [4242]) and not stages.starting


def test_a_replacement_whose_constructor_raised_stops_the_run_in_one_line(monkeypatch):
    stages = _stages(monkeypatch, _Broken("teacher model folder has no weights\nsecond line"))
    with pytest.raises(RunStopped) as err:
        stages.poll_started(version=3)
    assert (
        str(err.value)
        == "the replacement teacher actor 0 failed to start: _Broken: teacher model folder has no weights"
    )


def test_a_replacement_still_starting_waits_then_names_the_timeout_key(monkeypatch):
    stages = _stages(monkeypatch, None)
    assert stages.poll_started(version=0) == [] and ("teacher", 0) in stages.starting  # not yet: no error
    stages.starting[("teacher", 0)] = ("ref", time.monotonic() - 1)  # its deadline passed
    with pytest.raises(RunStopped, match=r"trainer\.actor_start_timeout_s=30 s"):
        stages.poll_started(version=0)
