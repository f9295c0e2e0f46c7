"""Teacher scoring with vLLM ``prompt_logprobs`` (the fast path)."""

from __future__ import annotations

from framework.rollout.vllm_setup import build_llm
from framework.teacher.base import check_request, check_top_k, empty_scores, scores_from_candidates
from framework.types import TeacherRequest, TeacherScores


class VllmTeacher:
    """Scores whole teacher sequences in one prefill each: ``SamplingParams(max_tokens=1,
    prompt_logprobs=k, detokenize=False)`` on ``TokensPrompt`` inputs, no tokenizer loaded.

    ``max_logprobs`` is raised on the engine to the largest ``top_k`` you will ask for (vLLM
    rejects a request asking for more). Logprobs are raw (log softmax of the logits; for prompt
    positions vLLM's raw and processed modes coincide).
    """

    def __init__(
        self,
        model_path: str,
        *,
        max_logprobs: int = 20,
        max_model_len: int = 2048,
        kv_cache_gib: float | None = 1.0,
        seed: int = 0,
        enforce_eager: bool = True,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.5,
        dtype: str = "auto",
        trust_remote_code: bool = False,
    ):
        if max_logprobs < 0:
            raise ValueError(f"max_logprobs must be >= 0 (got {max_logprobs})")
        self.llm = build_llm(
            model_path,
            seed=seed,
            max_model_len=max_model_len,
            kv_cache_gib=kv_cache_gib,
            enforce_eager=enforce_eager,
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            max_logprobs=max_logprobs,
        )
        self.max_logprobs = max_logprobs
        self.max_model_len = max_model_len

    def score(self, requests: list[TeacherRequest], top_k: int) -> list[TeacherScores]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        check_top_k(top_k, self.max_logprobs)
        # One generated token must still fit: Lt + 1 <= max_model_len.
        all_ids = [check_request(r, self.max_model_len - 1) for r in requests]
        todo = [i for i, r in enumerate(requests) if r.response_start < len(all_ids[i])]
        results: list[TeacherScores] = [empty_scores(r.sample_id, top_k) for r in requests]
        if not todo:
            return results
        params = SamplingParams(max_tokens=1, prompt_logprobs=top_k, detokenize=False, temperature=0.0)
        prompts = [TokensPrompt(prompt_token_ids=all_ids[i].tolist()) for i in todo]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        for i, out in zip(todo, outputs):
            positions = [
                None if d is None else {tok: (lp.logprob, lp.rank) for tok, lp in d.items()}
                for d in out.prompt_logprobs
            ]
            results[i] = scores_from_candidates(requests[i], all_ids[i], positions, top_k)
        return results

    def shutdown(self) -> None:
        core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
