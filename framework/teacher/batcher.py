"""Token-budgeted micro-batching in front of a teacher backend."""

from __future__ import annotations

from collections.abc import Sequence

from framework.teacher.base import TeacherBackend
from framework.types import TeacherRequest, TeacherScores


class TokenBudgetBatcher:
    """Split requests, in order, into micro-batches of at most ``max_tokens_per_batch`` total input
    tokens (a teacher forward costs ~ its total sequence length, and its activation memory grows with
    it). A single request longer than the budget goes alone rather than failing."""

    def __init__(self, max_tokens_per_batch: int):
        if max_tokens_per_batch < 1:
            raise ValueError(f"max_tokens_per_batch must be >= 1 (got {max_tokens_per_batch})")
        self.max_tokens_per_batch = max_tokens_per_batch

    def split(self, requests: Sequence[TeacherRequest]) -> list[list[TeacherRequest]]:
        batches: list[list[TeacherRequest]] = []
        current: list[TeacherRequest] = []
        used = 0
        for req in requests:
            n = len(req.input_ids)
            if current and used + n > self.max_tokens_per_batch:
                batches.append(current)
                current, used = [], 0
            current.append(req)
            used += n
        if current:
            batches.append(current)
        return batches

    def score(
        self, backend: TeacherBackend, requests: Sequence[TeacherRequest], top_k: int
    ) -> list[TeacherScores]:
        """Score every request through ``backend`` micro-batch by micro-batch; results in input order."""
        out: list[TeacherScores] = []
        for batch in self.split(requests):
            out.extend(backend.score(batch, top_k))
        return out
