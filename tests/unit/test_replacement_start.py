"""``ActorPool`` (framework/actors/pool.py): a replacement starts in the background in place of the
killed member (whose recorded processes are killed too); one that fails to start, or does not start
in time, stops the run with one line naming the actor and its own error or the key to raise."""

from __future__ import annotations

import time

import pytest

from framework.actors import pool as pool_module
from framework.actors.failures import RunStopped
from framework.actors.pool import ActorPool


class _Broken(Exception):
    pass


def _pool(monkeypatch, outcome):
    """A teacher pool with one replacement whose first call has ``outcome`` (a value, an exception,
    or None for not answered yet), without Ray."""
    monkeypatch.setattr(pool_module.ray, "wait", lambda refs, timeout: ([] if outcome is None else refs, []))

    def get(ref):
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    monkeypatch.setattr(pool_module.ray, "get", get)
    teachers = ActorPool("teacher", ["replacement"])
    teachers.starting[0] = ("ref", time.monotonic() + 30.0)
    return teachers


def test_a_replacement_that_came_up_is_recorded(monkeypatch):
    teachers = _pool(monkeypatch, ("127.0.0.1", [4242]))
    assert teachers.poll_started(30.0) == [0] and teachers.usable() == [0]
    assert teachers.trees[0] == ("127.0.0.1", [4242]) and not teachers.starting


def test_a_replacement_whose_constructor_raised_stops_the_run_in_one_line(monkeypatch):
    teachers = _pool(monkeypatch, _Broken("teacher model folder has no weights\nsecond line"))
    with pytest.raises(RunStopped) as err:
        teachers.poll_started(30.0)
    assert (
        str(err.value)
        == "the replacement teacher actor 0 failed to start: _Broken: teacher model folder has no weights"
    )


def test_a_replacement_still_starting_waits_then_names_the_timeout_key(monkeypatch):
    teachers = _pool(monkeypatch, None)
    assert teachers.poll_started(30.0) == [] and teachers.usable() == []  # not up yet: no error
    assert teachers.is_starting("replacement") and teachers.responsive("replacement")
    teachers.starting[0] = ("ref", time.monotonic() - 1)  # its deadline passed
    with pytest.raises(RunStopped, match=r"trainer\.actor_start_timeout_s=30 s"):
        teachers.poll_started(30.0)


class _Call:
    def __init__(self, value):
        self.value = value

    def remote(self):
        return ("ref", self.value)


class _Actor:
    def __init__(self, name: str):
        self.name = name
        self.process_tree = _Call(name)
        self._actor_id = type("Id", (), {"hex": lambda _self: name})()


def test_restart_kills_the_member_and_its_processes_and_starts_one_in_its_place(monkeypatch):
    killed, trees_killed = [], []
    monkeypatch.setattr(pool_module.ray, "kill", lambda actor, no_restart: killed.append(actor.name))
    monkeypatch.setattr(pool_module, "kill_local_tree", lambda ip, pids: trees_killed.append((ip, pids)))
    old, other = _Actor("old"), _Actor("other")
    engines = ActorPool("rollout", [old, other], factory=lambda i: _Actor(f"new{i}"))
    engines.trees = {0: ("127.0.0.1", [7, 8]), 1: ("127.0.0.1", [9])}
    engines.restart(0, start_timeout_s=30.0)
    assert killed == ["old"] and trees_killed == [("127.0.0.1", [7, 8])]
    assert engines.members[0].name == "new0" and engines.members[1] is other
    assert engines.usable() == [1] and engines.is_starting(engines.members[0]) and 0 not in engines.trees
    with pytest.raises(RuntimeError, match="no factory"):
        ActorPool("mapping", [_Actor("m")]).restart(0, start_timeout_s=30.0)
