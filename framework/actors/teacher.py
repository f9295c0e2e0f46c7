"""Ray actor around a teacher scoring backend, with the token-budgeted micro-batcher in front."""

from __future__ import annotations

import ray

from framework.actors.stats import BusyClock, Health
from framework.types import TeacherRequest, TeacherScores


# Out of order: a task waits on its arguments (``finish`` on the teacher's scores, ``score`` on the
# mapping's requests) without holding back the calls queued after it, so the heartbeat's ping is
# answered at once (in order, it waited for those arguments: seconds, and taken for a hang). The
# calls share no state that depends on their order.
@ray.remote(concurrency_groups={"health": 1}, allow_out_of_order_execution=True)  # type: ignore[call-overload]  # (not in Ray's stubs)
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

    @ray.method(concurrency_group="health")  # answered beside a busy call (the step's metrics)
    def stats(self) -> dict[str, float]:
        return self.clock.snapshot()
