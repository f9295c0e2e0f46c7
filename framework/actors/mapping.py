"""Ray actor around the token mapper: teacher inputs before scoring, per-token targets after."""

from __future__ import annotations

import numpy as np
import ray

from framework.actors.stats import BusyClock
from framework.types import MappedSample, Rollout, TeacherRequest, TeacherScores


@ray.remote
class MappingWorker:
    def __init__(self, student_path: str, teacher_path: str, credit: str, dense_topk: bool, verifier: str | None):
        from framework.data.verifiers import get_verifier
        from framework.mapping import TokenMapper

        self.mapper = TokenMapper.from_paths(student_path, teacher_path, credit=credit, topk=dense_topk)
        self.verify = get_verifier(verifier)
        self.clock = BusyClock()

    def ping(self) -> bool:
        return True

    def is_identity(self) -> bool:
        return bool(self.mapper.is_identity)

    def prepare(self, rollouts: list[Rollout]) -> list[TeacherRequest]:
        with self.clock:
            return [self.mapper.teacher_request(r) for r in rollouts]

    def finish(
        self, rollouts: list[Rollout], requests: list[TeacherRequest], scores: list[TeacherScores]
    ) -> list[MappedSample]:
        with self.clock:
            out = []
            for r, q, s in zip(rollouts, requests, scores):
                if not (np.all(np.isfinite(s.token_logprobs))):
                    # never train on a corrupt teacher signal; counted and dropped from the batch
                    self.clock.counters["skipped_nonfinite_teacher"] += 1
                    continue
                reward = None
                if self.verify is not None and r.prompt.answer is not None:
                    reward = float(self.verify(r.response_text, r.prompt.answer))
                out.append(self.mapper.map_sample(r, q, s, reward=reward))
            self.clock.items += len(out)
            return out

    def stats(self) -> dict[str, float]:
        return self.clock.snapshot()
