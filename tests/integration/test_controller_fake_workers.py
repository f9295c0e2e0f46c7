"""The real Controller, SampleStream, Stages and ActorPools on a real local Ray, driving fake workers.

The fakes are Ray actors with the verbs of the real ones (``generate_stream`` as a streaming
generator, ``prepare`` / ``score`` / ``finish``, ``train_step`` / ``save`` / ``load`` /
``export_weights``, the health group) but no model: an engine writes the prompt's answer (right for
even prompt numbers), the teacher's log-prob is a fixed function of the token, the learner counts.
So the loop's control logic — staleness, re-queued prompts, resume, replacement of a killed actor —
runs in seconds per test beside the real-stack runs of test_pipeline.py and test_faults.py.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import ray

from framework.actors.learner import LearnerGroup, batch_statistics
from framework.actors.pool import ActorPool
from framework.actors.stats import BusyClock, Health
from framework.config import Config
from framework.types import MappedSample, Prompt, Rollout, TeacherRequest, TeacherScores

pytestmark = pytest.mark.integration


class _Counted(Health):
    """The health group and busy counters every fake answers like the real workers."""

    def __init__(self):
        self.clock = BusyClock()

    @ray.method(concurrency_group="health")
    def stats(self) -> dict[str, float]:
        return self.clock.snapshot()


@ray.remote(concurrency_groups={"health": 1})
class FakeEngine(_Counted):
    def __init__(self):
        super().__init__()
        self.version = 0

    def _rollout(self, prompt: Prompt, index: int) -> Rollout:
        right = int(prompt.prompt_id[1:]) % 2 == 0
        text = f"Answer: {prompt.answer}" if right else "Answer: -1"
        ids = np.arange(1, 4 + index % 3, dtype=np.int32)
        return Rollout(
            sample_id=prompt.sample_id(index), prompt=prompt, prompt_ids=np.array([7, 8], dtype=np.int32),
            response_ids=ids, logprobs=np.full(len(ids), -1.0, np.float32), weight_version=self.version,
            finish_reason="stop", response_text=str(text),
        )  # fmt: skip

    def generate_stream(self, prompts: list[Prompt], sampling: dict):
        for p in prompts:
            for i in range(sampling["n"]):
                yield self._rollout(p, i)

    def generate(self, prompts: list[Prompt], sampling: dict) -> list[Rollout]:
        return [self._rollout(p, i) for p in prompts for i in range(sampling["n"])]

    def load_weights(self, path: str, version: int) -> float:
        self.version = version
        return 0.0

    def receive_weights(self, update_info: dict, version: int) -> float:  # the NCCL path's receive
        self.version = version
        return 0.0


@ray.remote(concurrency_groups={"health": 1}, allow_out_of_order_execution=True)
class FakeTeacher(_Counted):
    def __init__(self, logprob: float = -0.5):
        super().__init__()
        self.logprob = logprob  # every response token's log-prob under this teacher
        self.scored: list[str] = []

    def score(self, requests: list[TeacherRequest]) -> list[TeacherScores]:
        self.scored += [r.sample_id for r in requests]
        return [
            TeacherScores(
                r.sample_id, self.logprob * np.ones(len(r.input_ids) - r.response_start, np.float32)
            )
            for r in requests
        ]

    def scored_ids(self) -> list[str]:
        return self.scored


@ray.remote(concurrency_groups={"health": 1}, allow_out_of_order_execution=True)
class FakeMapper(_Counted):
    def is_identity(self) -> bool:
        return True

    def __init__(self, teacher_names: list[str] | None = None):
        super().__init__()
        self.teacher_names = teacher_names

    def prepare(self, *rollouts: Rollout, slot: int = 0) -> list[TeacherRequest]:
        return [
            TeacherRequest(r.sample_id, np.concatenate([r.prompt_ids, r.response_ids]), len(r.prompt_ids))
            for r in rollouts
        ]

    def finish(self, requests, scores, *rollouts: Rollout, slot: int = 0) -> tuple[list[MappedSample], int]:
        out = [
            MappedSample(
                sample_id=r.sample_id,
                input_ids=q.input_ids,
                response_start=q.response_start,
                behaviour_logprobs=r.logprobs,
                teacher_logprobs=s.token_logprobs,
                advantages=s.token_logprobs - r.logprobs,
                mask=np.ones(len(r.response_ids), np.float32),
                weight_version=r.weight_version,
                reward=float(r.response_text == f"Answer: {r.prompt.answer}"),
                teacher=self.teacher_names[slot] if self.teacher_names else "",
            )
            for r, q, s in zip(rollouts, requests, scores)
        ]
        return out, len(out)


@ray.remote(concurrency_groups={"health": 1})
class FakeLearner(_Counted):
    def __init__(self, die_on_step: int | None = None, how: str = "exit"):
        super().__init__()
        # asked for this step, the process exits (a crashed rank) or stops itself (a hung one)
        self.die_on_step, self.how = die_on_step, how
        self.steps = 0
        self.pushed: list[tuple[int, int]] = []  # NCCL path: (version, engines) per push
        self.exports = 0

    def address(self) -> tuple[str, int]:
        return "127.0.0.1", 0

    def init(self, addr: str, port: int) -> bool:
        return True

    def train_step(self, sample_refs: list, version: int) -> dict:
        samples = [s for ref in sample_refs for s in ray.get(ref)]
        if self.steps + 1 == self.die_on_step:
            if self.how == "stop":
                os.kill(os.getpid(), signal.SIGSTOP)
            os._exit(1)
        self.steps += 1
        stats = batch_statistics(samples, version)
        return {**stats, "loss": 1.0 / self.steps, "sample_ids": [s.sample_id for s in samples]}

    def export_weights(self, path: str) -> str:
        self.exports += 1
        Path(path).write_bytes(b"weights")
        return path

    def push_weights(
        self, engines: list, version: int, timeout_s: float, workers_per_engine: int = 1
    ) -> bool:
        """The NCCL path's verb: here the "broadcast" is one receive call per engine."""
        ray.get([e.receive_weights.remote({"buckets": 1}, version) for e in engines], timeout=timeout_s)
        self.pushed.append((version, len(engines)))
        return True

    def weight_calls(self) -> dict:
        return {"pushed": self.pushed, "exports": self.exports}

    def make_sync_folder(self) -> str:
        import tempfile

        return tempfile.mkdtemp(prefix="tokenbridge-fake-sync-")

    def sync_bytes(self, path: str) -> int:
        from framework.learner.weights import path_bytes

        return path_bytes(path)

    def remove_sync_files(self, folder: str, keep: str | None = None) -> int:
        from framework.learner.weights import remove_weights_files

        return remove_weights_files(folder, keep)

    def save(self, folder: str) -> bool:
        (Path(folder) / "learner").mkdir()
        (Path(folder) / "learner" / "steps.json").write_text(json.dumps(self.steps))
        return True

    def save_student(self, folder: str) -> bool:
        Path(folder).mkdir(parents=True, exist_ok=True)
        return True

    def load(self, folder: str) -> bool:
        self.steps = json.loads((Path(folder) / "learner" / "steps.json").read_text())
        return True


def _stages(
    health_timeout_s: float = 2.0, weight_path: str = "file", learner_dies_on_step: int | None = None,
    learner_fails_how: str = "exit",
):  # fmt: skip
    from framework.actors.cluster import Stages

    def pool(role, cls, n, *first):  # ``first``: the first members' arguments (replacements get none)
        return ActorPool(
            role, [cls.remote(*first) for _ in range(n)], lambda i: cls.remote(), health_timeout_s
        )

    stages = Stages(
        {"rollout": pool("rollout", FakeEngine, 2), "teacher": pool("teacher", FakeTeacher, 2),
         "mapping": pool("mapping", FakeMapper, 1)},
        LearnerGroup(pool("learner", FakeLearner, 1, learner_dies_on_step, learner_fails_how)), identity_mapping=True,
        health_timeout_s=health_timeout_s,
        start_timeout_s=60, weight_path=weight_path,
    )  # fmt: skip
    stages.record_trees()
    return stages


def _cfg(tmp_path: Path, **trainer) -> Config:
    cfg = Config()
    cfg.data.train = cfg.data.eval = "zoo:arith"
    cfg.data.prompts_per_step, cfg.rollout.samples_per_prompt = 4, 2
    cfg.logging.progress_bar = False
    cfg.logging.wandb_mode = "disabled"
    cfg.trainer.output_dir = str(tmp_path)
    cfg.trainer.eval_every, cfg.trainer.checkpoint_every = 0, 0
    for key, value in trainer.items():
        setattr(cfg.trainer, key, value)
    return cfg


def _prompts(n: int, prefix: str = "p") -> list[Prompt]:
    return [Prompt(f"{prefix}{i}", [{"role": "user", "content": f"{i}+0"}], answer=str(i)) for i in range(n)]


def _run(cfg: Config, stages, tmp_path: Path) -> dict:
    from framework.controller import Controller

    return Controller(cfg, stages, _prompts(32), _prompts(4, "p"), tmp_path).run()


def _ledger(tmp_path: Path) -> list[dict]:
    return [json.loads(x) for x in (tmp_path / "ledger.jsonl").read_text().splitlines()]


@pytest.fixture
def stages(ray_local):
    made = _stages()
    yield made
    made.close()
    for actor in made.actors():
        ray.kill(actor)


def test_staleness_one_keeps_a_batch_in_flight_and_trains_every_sample_once(stages, tmp_path):
    cfg = _cfg(tmp_path, steps=6, max_staleness=1)
    final = _run(cfg, stages, tmp_path)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 7))
    # a batch generated while the step before trained is one version behind, never more
    assert {r["batch/staleness"] for r in steps} <= {0.0, 1.0} and any(
        r["batch/staleness"] == 1.0 for r in steps
    )
    ids = [s for row in _ledger(tmp_path) for s in row["sample_ids"]]
    assert len(ids) == len(set(ids)) == 6 * 4 * 2  # every sample trained exactly once
    assert final["eval/accuracy"] == 0.5  # the fakes answer even-numbered prompts right


def test_a_killed_teacher_is_replaced_and_no_sample_is_lost(stages, tmp_path):
    cfg = _cfg(tmp_path, steps=4, health_timeout_s=2.0)
    pid = ray.get(stages.teacher[0].pid.remote())
    os.kill(pid, signal.SIGKILL)
    _run(cfg, stages, tmp_path)
    assert stages.restarts["teacher"] >= 1
    ids = [s for row in _ledger(tmp_path) for s in row["sample_ids"]]
    assert len(ids) == len(set(ids)) == 4 * 4 * 2


@pytest.mark.parametrize("how", ["exit", "stop"])
def test_a_dead_learner_rank_is_replaced_through_its_pool_and_the_run_goes_on_from_its_checkpoint(
    ray_local, tmp_path, how
):
    """The rank's process exits (a crash) or stops itself (a hang) at step 3. A stopped rank is found
    by its pool's heartbeat within about a health timeout (2 s here), not after learner_timeout_s."""
    import time

    import psutil

    stages = _stages(learner_dies_on_step=3, learner_fails_how=how)
    try:
        first = stages.learner.ranks[0]
        first_pid = stages.learner.pool.trees[0][1][0]  # recorded when the group was joined
        start = time.monotonic()
        _run(_cfg(tmp_path, steps=5, checkpoint_every=2, learner_timeout_s=300.0), stages, tmp_path)
        assert time.monotonic() - start < 150, "the stopped rank was found by the timeout, not the heartbeat"
        assert stages.restarts["learner"] == 1
        metrics = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
        assert max(r.get("faults/learner_failed", 0.0) for r in metrics) == 1.0
        assert stages.learner.ranks[0] is not first and not psutil.pid_exists(first_pid)
        assert stages.learner.pool.trees[0][1][0] != first_pid  # the new rank's tree is recorded
        rows = _ledger(tmp_path)
        assert [r["step"] for r in rows] == list(
            range(5)
        )  # step 2 (version 2) on redone once, from the checkpoint
        ids = [s for row in rows for s in row["sample_ids"]]
        assert len(ids) == len(set(ids)) == 5 * 4 * 2
    finally:
        stages.close()
        for actor in stages.actors():
            ray.kill(actor)


def test_resume_from_a_checkpoint_with_a_batch_in_flight_retrains_the_same_prompts(stages, tmp_path):
    first = _cfg(tmp_path, steps=4, checkpoint_every=2, max_staleness=1)
    _run(first, stages, tmp_path)
    before = {r["step"]: r["sample_ids"] for r in _ledger(tmp_path)}
    mid = tmp_path / "checkpoints" / "step_000002"
    state = json.loads((mid / "controller.json").read_text())
    assert state["requeued_prompt_ids"], "the batch for step 2 was in flight at the checkpoint"
    second = _cfg(tmp_path, steps=5, max_staleness=1, resume=str(mid))
    _run(second, stages, tmp_path)
    rows = _ledger(tmp_path)
    assert [r["step"] for r in rows] == list(range(5))  # steps 2.. redone after the checkpoint, once each
    assert rows[2]["sample_ids"] == before[2]  # the in-flight batch's prompts, re-queued, trained first
    ids = [s for row in rows for s in row["sample_ids"]]
    assert len(ids) == len(set(ids))
    assert json.loads((tmp_path / "resumed_from.json").read_text())["step"] == 2


def test_the_nccl_weight_path_syncs_through_the_learner_and_names_a_dead_engine(ray_local, tmp_path):
    """``weight_path="nccl"`` (CUDA, disaggregated): every step's weights go through the learner's
    ``push_weights`` to every engine, tagged with the version, and no file is written; when an engine
    dies the failed broadcast names it for replacement instead of failing the learner."""
    stages = _stages(weight_path="nccl")
    try:
        _run(_cfg(tmp_path, steps=3), stages, tmp_path)
        rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
        assert [r["batch/staleness"] for r in rows if "loss" in r] == [0.0, 0.0, 0.0]  # engines were current
        calls = ray.get(stages.learner.ranks[0].weight_calls.remote())
        assert calls == {"pushed": [(1, 2), (2, 2), (3, 2)], "exports": 0}
        assert (
            ray.get([e.generate.remote(_prompts(1), {"n": 1}) for e in stages.rollout])[0][0].weight_version
            == 3
        )
        os.kill(ray.get(stages.rollout[1].pid.remote()), signal.SIGKILL)
        assert stages.sync_weights(version=4, timeout_s=20) == [1]
    finally:
        stages.close()
        for actor in stages.actors():
            ray.kill(actor)


def test_two_teachers_each_score_only_the_prompts_routed_to_them(ray_local, tmp_path):
    """data.route_field=kind: odd prompts go to teacher "odd" (log-prob -2 per token), even ones to
    "even" (-0.5). Every sample is scored by one replica of its own teacher, and the per-teacher
    metrics come from the right samples (the engines' log-prob is -1 per token). Teacher "odd"'s only
    replica is killed before the run: its replacement is again a replica of "odd" (the same factory
    index), so the odd samples keep their teacher and nothing is lost."""
    from framework.actors.cluster import Stages
    from framework.config import TeacherEntry

    cfg = _cfg(tmp_path, steps=4)
    cfg.teachers = [TeacherEntry(model="m", name="even", route="even", num_replicas=2),
                    TeacherEntry(model="m", name="odd", route="odd")]  # fmt: skip
    cfg.data.route_field = "kind"
    teachers = [FakeTeacher.remote(-0.5), FakeTeacher.remote(-0.5), FakeTeacher.remote(-2.0)]
    logprob_of = {0: -0.5, 1: -0.5, 2: -2.0}

    def pool(role, members, remake):
        return ActorPool(role, members, remake, 2.0)

    stages = Stages(
        {"rollout": pool("rollout", [FakeEngine.remote() for _ in range(2)], lambda i: FakeEngine.remote()),
         "teacher": pool("teacher", teachers, lambda i: FakeTeacher.remote(logprob_of[i])),
         "mapping": pool("mapping", [FakeMapper.remote(["even", "odd"])], lambda i: FakeMapper.remote(["even", "odd"]))},
        LearnerGroup(pool("learner", [FakeLearner.remote()], lambda i: FakeLearner.remote())),
        identity_mapping=True, health_timeout_s=2.0, start_timeout_s=60,
        teacher_names=["even", "odd"], teacher_slots=[[0, 1], [2]],
    )  # fmt: skip
    stages.record_trees()
    prompts = _prompts(32)
    for p in prompts:
        p.meta["kind"] = "odd" if int(p.prompt_id[1:]) % 2 else "even"
    evals = _prompts(4, "p")
    for p in evals:
        p.meta["kind"] = "odd" if int(p.prompt_id[1:]) % 2 else "even"
    killed = teachers[2]  # (the pool holds this very list: a replacement takes the killed one's place)
    os.kill(ray.get(killed.pid.remote()), signal.SIGKILL)
    try:
        from framework.controller import Controller

        final = Controller(cfg, stages, prompts, evals, tmp_path).run()
        assert stages.restarts["teacher"] >= 1 and stages.teacher[2] is not killed
        scored = [ray.get(t.scored_ids.remote()) for t in stages.teacher]
    finally:
        stages.close()
        for actor in stages.actors():
            ray.kill(actor)
    number = lambda sample_id: int(sample_id.split("#")[0][1:])  # noqa: E731
    even_ids, odd_ids = scored[0] + scored[1], scored[2]
    assert scored[0] and scored[1], "teacher even's two replicas share its work"
    assert even_ids and all(number(i) % 2 == 0 for i in even_ids)
    assert odd_ids and all(number(i) % 2 == 1 for i in odd_ids)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in rows if "teacher/even/share" in r]
    assert len(trained) == 4
    for row in trained:  # reverse KL = log p_S - log p_T = -1 - log p_T
        assert row["teacher/even/reverse_kl"] == pytest.approx(-0.5)
        assert row["teacher/odd/reverse_kl"] == pytest.approx(1.0)
        assert row["teacher/even/share"] + row["teacher/odd/share"] == pytest.approx(1.0)
    assert final["teacher/even/eval_accuracy"] == 1.0  # the fake engine answers even prompts right
    assert final["teacher/odd/eval_accuracy"] == 0.0
    assert final["teacher/odd/eval_teacher_kl"] == pytest.approx(1.0)
    assert any("busy/teacher/odd" in r for r in rows)
    ids = [s for row in _ledger(tmp_path) for s in row["sample_ids"]]
    assert len(ids) == len(set(ids)) == 4 * 4 * 2  # no sample lost or trained twice
