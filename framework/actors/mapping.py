"""Ray actor around the token mapper: teacher inputs before scoring, per-token targets after."""

from __future__ import annotations

import numpy as np
import ray

from framework.actors.stats import BusyClock, Health
from framework.types import MappedSample, Rollout, TeacherRequest, TeacherScores


# Out of order: a task waits on its arguments (``finish`` on the teacher's scores, ``score`` on the
# mapping's requests) without holding back the calls queued after it, so the heartbeat's ping is
# answered at once (in order, it waited for those arguments: seconds, and taken for a hang). The
# calls share no state that depends on their order.
@ray.remote(concurrency_groups={"health": 1}, allow_out_of_order_execution=True)  # type: ignore[call-overload]  # (not in Ray's stubs)
class MappingWorker(Health):
    def __init__(
        self, student_path: str, teacher_paths: str | list[str], credit: str, dense_topk: bool,
        verifier: str | None, max_prompt_tokens: int = 1 << 30, teacher_names: list[str] | None = None,
        boundary: str = "byte_prefix",
    ):  # fmt: skip
        from transformers import AutoTokenizer

        from framework.data.chat import stop_tokens
        from framework.data.verifiers import get_verifier
        from framework.mapping import TokenMapper

        paths = [teacher_paths] if isinstance(teacher_paths, str) else teacher_paths
        # one mapping per (student, teacher) pair, built once here (design §5.6); slot k = teacher k
        self.mappers = [
            TokenMapper.from_paths(student_path, p, credit=credit, topk=dense_topk, boundary=boundary)
            for p in paths
        ]
        self.teacher_names = teacher_names  # None: one teacher, samples unlabelled
        self.student_tokenizer = AutoTokenizer.from_pretrained(student_path)
        # the token the student's chat template closes an assistant turn with (e.g. Llama-3's <|eot_id|>)
        self.student_end_of_response = stop_tokens(self.student_tokenizer, student_path).end_of_response
        self.max_prompt_tokens = max_prompt_tokens
        self.verify = get_verifier(verifier)
        self.clock = BusyClock()
        # while starting, a replacement is not pinged; a first batch that built these would hold the
        # GIL past the heartbeat's timeout (design.md §7.2)
        for mapper in self.mappers:
            mapper.warm_up(self.student_tokenizer.encode("2", add_special_tokens=False))

    def is_identity(self) -> bool:
        return all(mapper.is_identity for mapper in self.mappers)

    def prepare(self, *rollouts: Rollout, slot: int = 0) -> list[TeacherRequest]:
        """Teacher ``slot``'s inputs for rollouts (passed as separate args so Ray resolves each ObjectRef)."""
        with self.clock:
            return self.mappers[slot].teacher_requests(list(rollouts))

    def finish(
        self, requests: list[TeacherRequest], scores: list[TeacherScores], *rollouts: Rollout, slot: int = 0
    ) -> tuple[list[MappedSample], int]:
        """Per-token targets from teacher ``slot``'s scores; returns (samples, count) so the driver can
        check success reading only the count."""
        with self.clock:
            keep = [k for k, sc in enumerate(scores) if np.all(np.isfinite(sc.token_logprobs))]
            # never train on a corrupt teacher signal (NaN/inf): counted and dropped from the batch
            self.clock.counters["skipped_nonfinite_teacher"] += len(scores) - len(keep)
            kept = [rollouts[k] for k in keep]
            rewards = None
            if self.verify is not None:
                rewards = [
                    None if r.prompt.answer is None else float(self.verify(r.response_text, r.prompt.answer))
                    for r in kept
                ]
            out = self.mappers[slot].map_samples(
                kept, [requests[k] for k in keep], [scores[k] for k in keep], rewards=rewards
            )
            if self.teacher_names is not None:
                for sample in out:
                    sample.teacher = self.teacher_names[slot]
            self.clock.items += sum(len(m.mask) for m in out)  # student tokens mapped
            return out, len(out)

    def sft_samples(self, *teacher_rollouts: Rollout) -> tuple[list[MappedSample], int]:
        """sft_teacher baseline: the teacher's response text, re-tokenized by the STUDENT, as a CE target.

        The student prompt is rendered with the student's chat template; the response ids are the
        student tokenization of the teacher's text, plus the token the student's chat template ends an
        assistant turn with when the teacher stopped.
        """
        from framework.data.chat import render_prompt_ids

        with self.clock:
            out = []
            for r in teacher_rollouts:
                prompt_ids = render_prompt_ids(
                    self.student_tokenizer, r.prompt.messages, self.max_prompt_tokens
                )
                response = self.student_tokenizer.encode(r.response_text, add_special_tokens=False)
                if r.finish_reason == "stop" and self.student_end_of_response is not None:
                    response.append(self.student_end_of_response)
                resp = np.asarray(response, dtype=np.int32)
                zeros = np.zeros(len(resp), dtype=np.float32)
                reward = None
                if self.verify is not None and r.prompt.answer is not None:
                    reward = float(self.verify(r.response_text, r.prompt.answer))
                out.append(
                    MappedSample(
                        sample_id=r.sample_id, input_ids=np.concatenate([prompt_ids, resp]),
                        response_start=len(prompt_ids), behaviour_logprobs=zeros, teacher_logprobs=zeros.copy(),
                        advantages=zeros.copy(), mask=np.ones(len(resp), dtype=np.float32),
                        weight_version=r.weight_version, reward=reward,
                    )
                )  # fmt: skip
            self.clock.items += sum(len(m.mask) for m in out)  # student tokens mapped
            return out, len(out)

    @ray.method(concurrency_group="health")  # answered beside a busy call (the step's metrics)
    def stats(self) -> dict[str, float]:
        return self.clock.snapshot()
