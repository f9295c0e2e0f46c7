"""Ray actor around the vLLM student engine: renders prompts, samples, streams Rollouts, syncs weights."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import ray

from framework.actors.stats import BusyClock, Health
from framework.data.chat import PromptTooLong, render_prompt_ids, stop_token_ids
from framework.types import Prompt, Rollout


@ray.remote(concurrency_groups={"health": 1})  # type: ignore[call-overload]  # (not in Ray's stubs)
class RolloutWorker(Health):
    """One vLLM engine. Calls run one at a time, so a sample's weight version is well defined."""

    def __init__(
        self, model_path: str, engine_kwargs: dict, max_prompt_tokens: int, trust_remote_code: bool = False
    ):
        from transformers import AutoTokenizer

        from framework.rollout import StudentEngine

        self.tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
        self.stop_ids = stop_token_ids(self.tokenizer, model_path)
        self.max_prompt_tokens = max_prompt_tokens
        self.engine = StudentEngine(model_path, trust_remote_code=trust_remote_code, **engine_kwargs)
        self.version = 0
        self.clock = BusyClock()

    def _render(self, prompts: list[Prompt]) -> tuple[list[Prompt], list[np.ndarray]]:
        kept, ids = [], []
        for p in prompts:
            try:
                ids.append(render_prompt_ids(self.tokenizer, p.messages, self.max_prompt_tokens))
                kept.append(p)
            except PromptTooLong:
                self.clock.counters["skipped_prompt_too_long"] += 1
        return kept, ids

    def _rollout(self, prompt: Prompt, prompt_ids: np.ndarray, index: int, sample) -> Rollout:
        return Rollout(
            sample_id=prompt.sample_id(index),
            prompt=prompt,
            prompt_ids=prompt_ids,
            response_ids=sample.response_ids,
            logprobs=sample.logprobs,
            weight_version=self.version,
            finish_reason=sample.finish_reason,
            response_text=str(self.tokenizer.decode(sample.response_ids, skip_special_tokens=True)),
        )

    def generate_stream(self, prompts: list[Prompt], sampling: dict) -> Iterator[Rollout]:
        """Yield each sample as soon as vLLM finishes it (``sampling``: n, temperature, top_p, max_tokens, seed)."""
        kept, ids = self._render(prompts)
        start = time.perf_counter()
        for p_idx, s_idx, sample in self.engine.generate_stream(
            [x.tolist() for x in ids], stop_token_ids=self.stop_ids, **sampling
        ):
            self.clock.items += len(sample.response_ids)  # tokens generated
            yield self._rollout(kept[p_idx], ids[p_idx], s_idx, sample)
        self.clock.busy_s += time.perf_counter() - start
        self.clock.calls += 1

    def generate(self, prompts: list[Prompt], sampling: dict) -> list[Rollout]:
        """All samples at once (evaluation)."""
        with self.clock:
            kept, ids = self._render(prompts)
            groups = self.engine.generate([x.tolist() for x in ids], stop_token_ids=self.stop_ids, **sampling)
            return [
                self._rollout(p, pid, i, s) for p, pid, g in zip(kept, ids, groups) for i, s in enumerate(g)
            ]

    def load_weights(self, path: str, version: int) -> float:
        """In-place weight reload from the safetensors file learner rank 0 wrote at ``path`` (CPU
        path; this engine runs on rank 0's node); returns the seconds it took."""
        start = time.perf_counter()
        with self.clock:
            self.engine.load_weights(path, version)
            self.version = version
        return time.perf_counter() - start

    def init_weight_transfer(self, init_info: dict) -> bool:
        """NCCL path: join the learner's weight-transfer group (``init_info``: vLLM's NCCL init info
        with this engine's rank offset; actors/weights.py)."""
        self.engine.init_weight_transfer(init_info)
        return True

    def receive_weights(self, update_info: dict, version: int) -> float:
        """NCCL path: receive one broadcast of the full weights (every bucket), then tag ``version``;
        returns the seconds it took."""
        start = time.perf_counter()
        with self.clock:
            self.engine.receive_weights(update_info, version)
            self.version = version
        return time.perf_counter() - start

    def sleep(self, level: int = 1) -> float:
        """Colocated placement: free the GPU while the learner steps (see ``StudentEngine.sleep``)."""
        return self._timed("sleep", self.engine.sleep, level)

    def wake_up(self, tags: list[str] | None = None) -> float:
        """Re-allocate ``tags`` (``["weights"]`` before a weight sync, ``["kv_cache"]`` after it)."""
        return self._timed("wake_up", self.engine.wake_up, tags)

    def _timed(self, what: str, call, arg) -> float:
        """Counts ``{what}_calls`` and ``{what}_s`` in the stats (not busy time); returns the seconds."""
        start = time.perf_counter()
        call(arg)
        seconds = time.perf_counter() - start
        self.clock.counters[f"{what}_calls"] += 1
        self.clock.counters[f"{what}_s"] += seconds  # type: ignore[assignment]
        return seconds

    def score(self, prompt_ids: list[int], continuation_ids: list[int]) -> np.ndarray:
        return self.engine.score(prompt_ids, continuation_ids)

    def greedy_ids(self, prompts_ids: list[list[int]], max_tokens: int) -> list[list[int]]:
        """Greedy response ids of already rendered prompts (the harness evaluation, framework/harness)."""
        from framework.harness.lm import engine_calls

        with self.clock:
            return engine_calls(self.engine, self.stop_ids)[0](prompts_ids, max_tokens)

    def score_ranked(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[Any, Any]]:
        """Logprob and rank of each continuation token given its context (harness log-likelihoods)."""
        from framework.harness.lm import engine_calls

        with self.clock:
            return list(engine_calls(self.engine, self.stop_ids)[1](pairs))

    @ray.method(concurrency_group="health")  # answered beside a busy call (the step's metrics)
    def stats(self) -> dict[str, float]:
        return self.clock.snapshot()
