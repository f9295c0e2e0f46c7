"""SampleStream's repair loop (framework/actors/streaming.py) against in-process fakes.

The fakes speak the verbs the real actors and Ray do (``generate_stream`` as a streaming generator,
``prepare`` / ``score`` / ``finish``, ``ray.wait`` / ``ray.get``, ``RayTaskError`` around an actor's
exception, an upstream error reaching every later task), but run each call at once in this process:
no Ray cluster, each test takes milliseconds. Every ``collect`` runs under a deadline, so a loop
that never ends fails the test instead of hanging it.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
import ray

from framework.actors import streaming
from framework.actors.failures import RetryPolicy, RunStopped
from framework.actors.streaming import EmptyBatch, FaultBook, SampleStream
from framework.config import Config
from framework.data.chat import PromptTooLong
from framework.teacher.base import check_request
from framework.teacher.http_teacher import TeacherHTTPError
from framework.types import Prompt, TeacherRequest

DEADLINE_S = 10.0
FAST = RetryPolicy(base_s=0.01, cap_s=0.05, budget=5, repeats=3, max_empty_batches=3)


# ---------------------------------------------------------------- a fake of the Ray verbs used
class Ref:
    def __init__(self, value=None, error: BaseException | None = None, pending: bool = False):
        self.value, self.error, self.pending = value, error, pending  # pending: never ready (a hung actor)


def _task_error(name: str, cause: BaseException) -> BaseException:
    return ray.exceptions.RayTaskError(
        name, "Traceback (fake)", cause, proctitle=f"ray::{name}", pid=0, ip="127.0.0.1"
    ).as_instanceof_cause()


class Stream:  # ray's ObjectRefGenerator: an actor error arrives as the stream's last ref
    def __init__(self, refs: list[Ref]):
        self.refs = refs

    def next_ready(self) -> bool:
        return bool(self.refs)

    def __next__(self) -> Ref:
        if not self.refs:
            raise StopIteration
        return self.refs.pop(0)

    def is_finished(self) -> bool:
        return not self.refs


class SilentStream(Stream):  # the stream of a stopped engine: nothing ever arrives, it never ends
    def __init__(self):
        super().__init__([])

    def is_finished(self) -> bool:
        return False


class Method:
    def __init__(self, actor, name: str, num_returns=1):
        self.actor, self.name, self.num_returns = actor, name, num_returns

    def options(self, num_returns=1) -> Method:
        return Method(self.actor, self.name, num_returns)

    def remote(self, *args, **kwargs):
        n = 2 if self.num_returns == 2 else 1
        if getattr(self.actor, "stopped", False) or any(isinstance(a, Ref) and a.pending for a in args):
            if self.num_returns == "streaming":
                return SilentStream()
            refs = [Ref(pending=True) for _ in range(n)]
            return refs[0] if n == 1 else refs
        upstream = next((a.error for a in args if isinstance(a, Ref) and a.error is not None), None)
        if not self.actor.alive:
            upstream = ray.exceptions.ActorDiedError()
        if upstream is not None:  # the task never runs; its results carry the error
            refs = [Ref(error=upstream) for _ in range(n)]
            return Stream(refs[:1]) if self.num_returns == "streaming" else (refs[0] if n == 1 else refs)
        values = [a.value if isinstance(a, Ref) else a for a in args]
        call = getattr(self.actor, self.name)
        if self.num_returns == "streaming":
            refs = []
            try:
                refs.extend(Ref(x) for x in call(*values))
            except Exception as e:
                refs.append(Ref(error=_task_error(self.name, e)))
            return Stream(refs)
        try:
            out = call(*values, **kwargs)
        except Exception as e:
            refs = [Ref(error=_task_error(self.name, e)) for _ in range(n)]
            return refs[0] if n == 1 else refs
        return Ref(out) if n == 1 else [Ref(v) for v in out]


class Handle:  # an actor handle: handle.method.remote(...)
    def __init__(self, actor):
        self._actor = actor

    def __getattr__(self, name: str) -> Method:
        return Method(self._actor, name)


class FakeRay:
    exceptions = ray.exceptions

    def wait(self, refs, num_returns=1, timeout=None):
        # every call ran at once: all is ready, but for the calls on a stopped actor
        ready = [r for r in refs if not getattr(r, "pending", False)]
        return ready, [r for r in refs if r not in ready]

    def get(self, refs, timeout=None):
        if isinstance(refs, list):
            return [self.get(r) for r in refs]
        if refs.pending:
            raise ray.exceptions.GetTimeoutError("fake: a call on a stopped actor never returns")
        if refs.error is not None:
            raise refs.error
        return refs.value


# ---------------------------------------------------------------- fake actors (same verbs as the real ones)
class Engine:
    """RolloutWorker: renders every prompt first (a bad one raises before any sample), then streams."""

    def __init__(self, bad_prompts: set[str] = frozenset()):  # type: ignore[assignment]
        self.alive, self.bad_prompts, self.calls = True, set(bad_prompts), 0

    def generate_stream(self, prompts: list[Prompt], sampling: dict):
        self.calls += 1
        for p in prompts:
            if p.prompt_id in self.bad_prompts:
                raise PromptTooLong(f"prompt {p.prompt_id} has 900 tokens > data.max_prompt_tokens=512")
        for p in prompts:
            for i in range(sampling["n"]):
                yield SimpleNamespace(sample_id=p.sample_id(i), length=p.meta["length"])


class Mapper:
    def __init__(self):
        self.alive = True

    def prepare(self, *rollouts, slot: int = 0) -> list[TeacherRequest]:
        return [TeacherRequest(r.sample_id, np.arange(r.length, dtype=np.int32), 1) for r in rollouts]

    def finish(self, requests, scores, *rollouts, slot: int = 0):
        out = [r.sample_id for r in rollouts]
        return out, len(out)


class Teacher:
    """TeacherWorker on a vLLM teacher with max_model_len=512: the length check fails the whole call."""

    def __init__(self, errors: list[BaseException] | None = None, always: BaseException | None = None):
        self.alive, self.errors, self.always, self.calls = True, list(errors or []), always, 0

    def score(self, requests):
        self.calls += 1
        if self.always is not None:
            raise self.always
        if self.errors:
            raise self.errors.pop(0)
        for r in requests:
            check_request(r, 511)
        return [r.sample_id for r in requests]


class Stages:
    """cluster.Stages' verbs: a replacement is "starting" for ``start_polls`` polls (None: until the
    test lets it up), a stopped actor (``.stopped``) fails its heartbeat and its pings."""

    def __init__(self, engines, teachers, make_teacher=Teacher, start_polls: int | None = 0):
        self.rollout = [Handle(e) for e in engines]
        teachers = teachers if isinstance(teachers, list) else [teachers]
        self.teacher, self.mapping = [Handle(t) for t in teachers], [Handle(Mapper())]
        self.teacher_generators: list = []
        self.restarts: Counter[str] = Counter()
        self.make = {"teacher": make_teacher, "mapping": Mapper, "rollout": Engine}
        self.start_polls, self.starting, self.started = start_polls, {}, []

    def pool(self, role):
        return {"rollout": self.rollout, "teacher": self.teacher, "mapping": self.mapping}[role]

    def teacher_members(self, slot):
        return list(range(len(self.teacher)))

    def alive(self, actor, timeout_s):
        return self.is_starting(actor) or (actor._actor.alive and not getattr(actor._actor, "stopped", False))

    def responsive(self, actor):
        return self.is_starting(actor) or not getattr(actor._actor, "stopped", False)

    def restart(self, role, index, version, timeout_s):
        self.pool(role)[index] = Handle(self.make[role]())
        self.restarts[role] += 1
        self.starting[(role, index)] = self.start_polls

    def poll_started(self, version):
        for key, left in list(self.starting.items()):
            if left is None:
                continue
            if left <= 0:
                del self.starting[key]
                self.started.append(key)
            else:
                self.starting[key] = left - 1

    def usable(self, role):
        return [i for i in range(len(self.pool(role))) if (role, i) not in self.starting]

    def is_starting(self, actor):
        return any(self.pool(r)[i] is actor for r, i in self.starting)


# ---------------------------------------------------------------- helpers
@pytest.fixture(autouse=True)
def fake_ray(monkeypatch):
    monkeypatch.setattr(streaming, "ray", FakeRay())


def _prompts(lengths: list[int]) -> list[Prompt]:
    return [
        Prompt(f"p{i}", [{"role": "user", "content": "hi"}], meta={"length": n})
        for i, n in enumerate(lengths)
    ]


def _stream(stages, lines: list[str] | None = None, policy: RetryPolicy = FAST) -> SampleStream:
    cfg = Config()
    cfg.rollout.samples_per_prompt = 2
    out = lines if lines is not None else []
    return SampleStream(
        cfg, stages, FaultBook(max_restarts=5), version=lambda: 0, policy=policy, emit=out.append
    )


def _collect(stream: SampleStream) -> list[str]:
    """``collect`` under a deadline; the sample ids it returns."""
    box: dict = {}

    def run():
        try:
            box["refs"] = stream.collect()
        except BaseException as e:
            box["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(DEADLINE_S)
    assert not thread.is_alive(), f"collect still running after {DEADLINE_S} s: an endless loop"
    if "error" in box:
        raise box["error"]
    return sorted(s for ref in box["refs"] for s in ref.value)


def _ids(prompts: list[Prompt], n: int = 2) -> list[str]:
    return sorted(p.sample_id(i) for p in prompts for i in range(n))


# ---------------------------------------------------------------- (1) data errors: skipped, counted, rest trained
def test_a_sample_too_long_for_the_teacher_is_skipped_and_counted_the_rest_trained():
    # the reported case: 394 tokens fit the student, 565 do not fit a teacher of max_model_len 512
    teacher = Teacher()
    stages, lines = Stages([Engine()], teacher), []
    stream = _stream(stages, lines)
    prompts = _prompts([300, 394, 565, 200, 100, 50, 40, 30])
    stream.launch(0, prompts)
    trained = _collect(stream)
    assert trained == _ids([p for p in prompts if p.prompt_id != "p2"])
    assert stream.faults.counts["skipped_teacher_input_too_long"] == 2  # both samples of p2
    assert not stages.restarts  # a data error is no death
    assert teacher.calls <= 2 * 16  # halving: a few hops per bad sample, never an endless loop
    skip_lines = [x for x in lines if "skipping" in x]
    assert len(skip_lines) == 1 and "565 tokens" in skip_lines[0]  # once per reason, original text


def test_a_prompt_the_student_cannot_render_is_skipped_without_restarting_the_engine():
    engines = [Engine(bad_prompts={"p2"}), Engine()]
    stages = Stages(engines, Teacher())
    stream = _stream(stages)
    prompts = _prompts([100] * 8)  # engine 0 gets p0 p2 p4 p6
    stream.launch(0, prompts)
    assert _collect(stream) == _ids([p for p in prompts if p.prompt_id != "p2"])
    assert stream.faults.counts["skipped_prompt_too_long"] == 2  # samples_per_prompt of p2
    assert not stages.restarts


# ---------------------------------------------------------------- (2) deterministic errors: the run stops
def test_the_same_error_from_a_live_teacher_stops_the_run_with_the_original_text():
    teacher = Teacher(always=RuntimeError("model 'qwen-typo' is not loaded on this server"))
    lines: list[str] = []
    stream = _stream(Stages([Engine()], teacher), lines)
    stream.launch(0, _prompts([100] * 4))
    with pytest.raises(RunStopped, match=r"teacher failed the same way 3 times.*qwen-typo"):
        _collect(stream)
    assert teacher.calls == FAST.repeats
    assert any("STOPPING" in x and "qwen-typo" in x for x in lines)


def test_http_401_stops_at_the_first_answer():
    teacher = Teacher(
        always=TeacherHTTPError("teacher server rejected the API key (HTTP 401): check $KEY", 401)
    )
    stream = _stream(Stages([Engine()], teacher))
    stream.launch(0, _prompts([100] * 4))
    with pytest.raises(RunStopped, match=r"configuration error.*HTTP 401"):
        _collect(stream)
    assert teacher.calls == 1


def test_a_deterministic_engine_error_stops_instead_of_restarting_the_engine():
    class BadSampling(Engine):
        def generate_stream(self, prompts, sampling):
            self.calls += 1
            raise ValueError("top_p must be in (0, 1], got 1.5")
            yield  # pragma: no cover

    engine = BadSampling()
    stages = Stages([engine], Teacher())
    stream = _stream(stages)
    stream.launch(0, _prompts([100] * 4))
    with pytest.raises(RunStopped, match=r"rollout failed the same way.*top_p must be"):
        _collect(stream)
    assert not stages.restarts and engine.calls == FAST.repeats


# ---------------------------------------------------------------- (3) transient errors: backoff, then success
def test_a_transient_error_that_clears_after_two_tries_is_retried_with_backoff():
    busy = TeacherHTTPError("teacher server answered HTTP 503: overloaded", 503, retryable=True)
    teacher = Teacher(errors=[busy, busy])
    lines: list[str] = []
    stream = _stream(Stages([Engine()], teacher), lines)
    prompts = _prompts([100] * 4)
    stream.launch(0, prompts)
    start = time.monotonic()
    assert _collect(stream) == _ids(prompts)
    assert time.monotonic() - start >= FAST.delay(1) + FAST.delay(2)  # it waited between tries
    assert stream.faults.counts["teacher_retry"] == 2 and teacher.calls == 3
    assert len([x for x in lines if "HTTP 503" in x]) == 1  # the same message once


def test_a_transient_error_that_never_clears_stops_within_the_budget():
    teacher = Teacher(always=TeacherHTTPError("cannot reach teacher server: refused", retryable=True))
    stream = _stream(Stages([Engine()], teacher))
    stream.launch(0, _prompts([100] * 2))
    with pytest.raises(RunStopped, match=rf"still failing after {FAST.budget} retries.*cannot reach"):
        _collect(stream)
    assert teacher.calls == FAST.budget + 1


def test_a_dead_teacher_is_replaced_and_the_hop_redone():
    dead = Teacher()
    dead.alive = False
    stages = Stages([Engine()], dead)
    stream = _stream(stages)
    prompts = _prompts([100] * 4)
    stream.launch(0, prompts)
    assert _collect(stream) == _ids(prompts)
    assert stages.restarts["teacher"] == 1 and stream.faults.counts["teacher_failed"] == 1


# ---------------------------------------------------------------- (4) never an endless loop
def test_a_batch_with_no_usable_sample_is_skipped_then_the_run_stops():
    stages = Stages([Engine()], Teacher())
    lines: list[str] = []
    stream = _stream(stages, lines)
    for step in range(FAST.max_empty_batches):
        stream.launch(step, _prompts([600, 700]))  # every sample too long for the teacher
        if step < FAST.max_empty_batches - 1:
            with pytest.raises(EmptyBatch, match="every sample of batch"):
                _collect(stream)
            assert not stream.pending  # dropped: the caller launches the next batch
    with pytest.raises(RunStopped, match="3 batches in a row had no usable sample"):
        _collect(stream)
    assert stream.faults.counts["skipped_teacher_input_too_long"] == 4 * FAST.max_empty_batches


def test_an_error_whose_text_changes_every_time_still_stops():
    class Noisy(Teacher):
        def score(self, requests):
            self.calls += 1
            raise RuntimeError(f"request {'abcdefghij'[self.calls % 10]} failed")

    teacher = Noisy()
    stream = _stream(Stages([Engine()], teacher))
    stream.launch(0, _prompts([100] * 2))
    with pytest.raises(RunStopped, match="still failing after"):
        _collect(stream)
    assert teacher.calls <= FAST.budget + 1


# ---------------------------------------------------------------- (5) hung actors: heartbeat, replacement in the background
def _stopped(actor):
    actor.stopped = True
    return actor


def test_a_teacher_that_stops_answering_is_replaced_at_its_heartbeat_not_after_the_hop_timeout():
    # the hop timeout is 300 + 120 s (Config defaults): only the heartbeat finds it within the deadline
    stages = Stages([Engine()], _stopped(Teacher()))
    stream = _stream(stages)
    prompts = _prompts([100] * 4)
    stream.launch(0, prompts)
    assert _collect(stream) == _ids(prompts)
    assert stages.restarts["teacher"] == 1 and stream.faults.counts["teacher_failed"] == 1
    assert stream.faults.counts["requeued_samples"] >= 1


def test_hops_go_to_the_live_teacher_while_the_replacement_starts():
    live = Teacher()
    # two engines: two hops, one per teacher (round-robin)
    stages = Stages([Engine(), Engine()], [_stopped(Teacher()), live], start_polls=None)  # never up here
    stream = _stream(stages)
    prompts = _prompts([100] * 8)
    stream.launch(0, prompts)
    assert _collect(stream) == _ids(prompts)
    assert stages.restarts["teacher"] == 1 and stages.starting == {("teacher", 0): None}
    assert live.calls == 2  # its own hop, then the stopped teacher's, redone at once


def test_a_stopped_engine_s_prompts_move_to_another_engine_while_it_is_replaced():
    stuck, other = _stopped(Engine()), Engine()
    stages = Stages([stuck, other], Teacher(), start_polls=None)
    stream = _stream(stages)
    prompts = _prompts([100] * 6)
    stream.launch(0, prompts)
    assert _collect(stream) == _ids(prompts)  # every sample, none twice
    assert stages.restarts["rollout"] == 1 and ("rollout", 0) in stages.starting
    assert other.calls == 2  # its own chunk, then the stopped engine's
    assert stream.faults.counts["rollout_hung"] == 1


def test_with_no_engine_up_the_prompts_wait_for_the_replacement():
    stages = Stages([_stopped(Engine())], Teacher(), start_polls=3)
    stream = _stream(stages)
    prompts = _prompts([100] * 4)
    stream.launch(0, prompts)
    assert _collect(stream) == _ids(prompts)
    assert stages.started == [("rollout", 0)] and stages.pool("rollout")[0]._actor.calls == 1
