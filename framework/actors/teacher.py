"""Ray actor around a teacher scoring backend, with the token-budgeted micro-batcher in front."""

from __future__ import annotations

import ray

from framework.actors.stats import BusyClock, Health
from framework.types import TeacherRequest, TeacherScores


@ray.remote(concurrency_groups={"health": 1})  # type: ignore[call-overload]  # (not in Ray's stubs)
class TeacherWorker(Health):
    def __init__(self, backend: str, backend_kwargs: dict, top_k: int, max_tokens_per_batch: int):
        from framework.teacher import TokenBudgetBatcher, make_teacher

        self.backend = make_teacher(backend, **backend_kwargs)
        self.batcher = TokenBudgetBatcher(max_tokens_per_batch)
        self.top_k = top_k
        self.clock = BusyClock()

    def score(self, requests: list[TeacherRequest]) -> list[TeacherScores]:
        with self.clock:
            out: list[TeacherScores] = []
            for micro in self.batcher.split(requests):
                out.extend(self.backend.score(micro, self.top_k))
            self.clock.items += sum(len(r.input_ids) - r.response_start for r in requests)
            return out

    def stats(self) -> dict[str, float]:
        return self.clock.snapshot()
