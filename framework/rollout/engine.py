"""The student's vLLM engine: sampling with behaviour logprobs, scoring, in-place weight reloads.

Behaviour logprobs. vLLM is started with ``logprobs_mode="processed_logprobs"``: the logprob
returned for each sampled token is ``log softmax(z / T)[a]``, the log-probability under the
distribution the token was actually drawn from (temperature ``T`` applied; ``rollout.top_p`` is held
at 1 by the config, so no truncation). The learner divides its logits by the same ``T``
(``LogprobLM(temperature=T)``), so the importance ratio ``pi_theta / pi_behaviour`` is exactly 1 on a
fully on-policy step at any temperature, and the reverse-KL advantage ``log p_T - log p_S`` (Thinking
Machines OPD [5]; Niu et al. [1]) compares the teacher with the policy that sampled. vLLM's default,
``"raw_logprobs"``, returns temperature-1 logprobs instead: with ``T != 1`` the two sides then
disagree (measured at T = 0.7: ratio 1.0069 and 1.6 % of tokens clipped on the first on-policy
step). At ``T = 1`` both modes give the same numbers.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from framework.rollout.vllm_setup import build_llm, drive_to_completion

WORKER_EXTENSION = "framework.rollout.worker_ext.TokenbridgeWorkerExtension"
LOGPROBS_MODES = ("raw_logprobs", "processed_logprobs")


@dataclass
class GeneratedSample:
    """One sampled response."""

    response_ids: np.ndarray  # int32[R], includes the stop token when finish_reason == "stop"
    logprobs: np.ndarray  # float32[R], behaviour logprob of each sampled token (see module doc)
    finish_reason: str  # "stop" | "length"


def sample_seed(seed: int, prompt_index: int, sample_index: int) -> int:
    """A well-mixed per-sample seed, so samples of one call differ and calls with different seeds
    never share a sample stream (``seed + i`` would collide across calls)."""
    return int(np.random.SeedSequence([seed, prompt_index, sample_index]).generate_state(1)[0])


class StudentEngine:
    """A vLLM ``LLM`` over token ids, with tokenbridge's worker extension for weight reloads.

    No tokenizer is loaded: callers pass rendered prompt token ids and the full ``stop_token_ids``
    set (generation stops on exactly those), read from ``framework.data.chat.stop_token_ids`` so that
    sampling stops on the set the mapper reasons with. Not thread-safe: one call at a time, which is
    also what makes a sample's ``weight_version`` well defined.
    """

    def __init__(
        self,
        model_path: str,
        *,
        seed: int = 0,
        max_model_len: int = 1024,
        kv_cache_gib: float | None = 1.0,
        enforce_eager: bool = True,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.5,
        dtype: str = "auto",
        trust_remote_code: bool = False,
        logprobs_mode: str = "processed_logprobs",
        weight_transfer_backend: str | None = None,
        max_num_seqs: int | None = None,
        enable_sleep_mode: bool = False,
        max_lora_rank: int | None = None,
    ):
        if logprobs_mode not in LOGPROBS_MODES:
            raise ValueError(f"logprobs_mode must be one of {LOGPROBS_MODES} (got {logprobs_mode!r})")
        extra: dict[str, Any] = {"worker_extension_cls": WORKER_EXTENSION, "logprobs_mode": logprobs_mode}
        if weight_transfer_backend is not None:  # GPU path: vLLM's native NCCL / IPC transfer engine
            extra["weight_transfer_config"] = {"backend": weight_transfer_backend}
        if max_num_seqs is not None:
            extra["max_num_seqs"] = max_num_seqs
        if enable_sleep_mode:  # GPU only: vLLM rejects it on CPU, where sleep/wake_up are no-ops anyway
            extra["enable_sleep_mode"] = True
        if max_lora_rank is not None:  # a LoRA student: the syncs bring adapters, one active at a time
            extra.update(enable_lora=True, max_lora_rank=max_lora_rank, max_loras=1)
        try:
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
                **extra,
            )
        except ValueError as err:
            raise lora_refusal(err) if max_lora_rank is not None and "LoRA" in str(err) else err from None
        self.model_path = model_path
        self.max_model_len = max_model_len
        self._weight_version = 0
        self._lora: Any = None  # the current adapter's LoRARequest (LoRA students), None: base weights
        self._request_counter = itertools.count()
        self.last_sync_seconds: float | None = None
        self.asleep = False

    @property
    def weight_version(self) -> int:
        return self._weight_version

    # ------------------------------------------------------------------ sampling

    def _check_awake(self) -> None:
        if self.asleep:  # a sleeping engine's scheduler is paused: requests would never finish
            raise RuntimeError("the engine is asleep; wake_up() it before generating or scoring")

    def _check_prompts(self, prompts_ids: Sequence[Sequence[int]], max_tokens: int) -> None:
        self._check_awake()
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1 (got {max_tokens})")
        for i, p in enumerate(prompts_ids):
            if len(p) == 0:
                raise ValueError(f"prompts_ids[{i}] is empty; every prompt needs at least one token")
            if len(p) >= self.max_model_len:
                raise ValueError(
                    f"prompts_ids[{i}] has {len(p)} tokens but max_model_len={self.max_model_len}; "
                    "truncate the prompt or raise max_model_len"
                )

    def generate_stream(
        self,
        prompts_ids: Sequence[Sequence[int]],
        *,
        n: int = 1,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_tokens: int = 256,
        stop_token_ids: Sequence[int] = (),
        seed: int | None = None,
    ) -> Iterator[tuple[int, int, GeneratedSample]]:
        """Sample ``n`` responses per prompt; yield ``(prompt_index, sample_index, sample)`` as each
        one finishes, so a consumer streams per sample instead of waiting for the slowest of a batch.

        Generation stops exactly at a token of ``stop_token_ids`` (kept in the response) or after
        ``max_tokens``; the model's EOS is not added implicitly, so pass the whole stop set (EOS, the
        chat template's end of turn and generation_config eos ids, as ``framework.data.chat.stop_token_ids``
        gives it). Each sample is its own vLLM request (what vLLM's own ``n > 1`` fan-out does internally),
        so every sample is reported the moment it stops. With ``seed`` the run is reproducible.
        """
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        if n < 1:
            raise ValueError(f"n must be >= 1 (got {n})")
        self._check_prompts(prompts_ids, max_tokens)
        stop_ids = [int(t) for t in stop_token_ids]
        index_of: dict[str, tuple[int, int]] = {}
        engine = self.llm.llm_engine
        try:
            for p_idx, prompt in enumerate(prompts_ids):
                tokens = TokensPrompt(prompt_token_ids=[int(t) for t in prompt])
                for s_idx in range(n):
                    params = SamplingParams(
                        n=1,
                        temperature=temperature,
                        top_p=top_p,
                        max_tokens=max_tokens,
                        stop_token_ids=stop_ids,
                        # Stop exactly on the caller's stop set: without this vLLM silently adds the
                        # EOS of the model's generation_config.json.
                        ignore_eos=True,
                        logprobs=0,  # only the sampled token's logprob
                        detokenize=False,
                        seed=None if seed is None else sample_seed(seed, p_idx, s_idx),
                        output_kind=RequestOutputKind.FINAL_ONLY,
                    )
                    request_id = f"tb-gen-{next(self._request_counter)}"
                    engine.add_request(request_id, tokens, params, lora_request=self._lora)
                    index_of[request_id] = (p_idx, s_idx)
        except Exception:
            if index_of:
                engine.abort_request(list(index_of), internal=False)
            raise
        for out in drive_to_completion(self.llm, set(index_of)):
            p_idx, s_idx = index_of[out.request_id]
            yield p_idx, s_idx, _to_sample(out.outputs[0])

    def generate(
        self,
        prompts_ids: Sequence[Sequence[int]],
        *,
        n: int = 1,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_tokens: int = 256,
        stop_token_ids: Sequence[int] = (),
        seed: int | None = None,
    ) -> list[list[GeneratedSample]]:
        """All samples at once: ``result[prompt_index][sample_index]``."""
        groups: list[list[GeneratedSample | None]] = [[None] * n for _ in prompts_ids]
        for p_idx, s_idx, sample in self.generate_stream(
            prompts_ids,
            n=n,
            temperature=temperature,
            top_p=top_p,
            max_tokens=max_tokens,
            stop_token_ids=stop_token_ids,
            seed=seed,
        ):
            groups[p_idx][s_idx] = sample
        missing = sum(s is None for g in groups for s in g)
        if missing:
            raise RuntimeError(f"{missing} samples never finished")
        return [[s for s in g if s is not None] for g in groups]

    # ------------------------------------------------------------------ scoring

    def score(self, prompt_ids: Sequence[int], continuation_ids: Sequence[int]) -> np.ndarray:
        """float32[C]: the engine's logprob of each fixed continuation token given everything before
        it (vLLM ``prompt_logprobs``). Used to check a weight sync against the learner's forward."""
        return self.score_ranked(prompt_ids, continuation_ids)[0]

    def score_ranked(
        self, prompt_ids: Sequence[int], continuation_ids: Sequence[int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """`score` plus int64[C]: each continuation token's rank in its position's distribution (1 =
        the greedy choice), which a harness's log-likelihood tasks need (``is_greedy``)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        self._check_awake()
        if len(prompt_ids) == 0 or len(continuation_ids) == 0:
            raise ValueError("score needs a non-empty prompt_ids and a non-empty continuation_ids")
        ids = [int(t) for t in prompt_ids] + [int(t) for t in continuation_ids]
        if len(ids) >= self.max_model_len:
            raise ValueError(f"{len(ids)} tokens do not fit max_model_len={self.max_model_len}")
        params = SamplingParams(
            max_tokens=1,
            prompt_logprobs=0,
            detokenize=False,
            temperature=0.0,
            output_kind=RequestOutputKind.FINAL_ONLY,
        )
        request_id = f"tb-score-{next(self._request_counter)}"
        self.llm.llm_engine.add_request(
            request_id, TokensPrompt(prompt_token_ids=ids), params, lora_request=self._lora
        )
        (out,) = list(drive_to_completion(self.llm, {request_id}))
        picked = [out.prompt_logprobs[p][ids[p]] for p in range(len(prompt_ids), len(ids))]
        return (
            np.asarray([x.logprob for x in picked], dtype=np.float32),
            np.asarray([x.rank for x in picked], dtype=np.int64),
        )

    # ------------------------------------------------------------------ weight sync

    def _after_sync(self, version: int, seconds: float) -> None:
        # Cached prefix KV was computed with the old weights: drop it, or prompts seen before the
        # sync would keep being continued from stale keys/values.
        self.llm.reset_prefix_cache()
        self._weight_version = int(version)
        self.last_sync_seconds = seconds

    def load_weights(
        self, path: str | os.PathLike, version: int, *, timeout_s: float | None = 600.0
    ) -> float:
        """In-place reload from a safetensors file of the full HF-named state dict (the CPU sync; works
        on any device); returns the seconds it took. See ``worker_ext.TokenbridgeWorkerExtension``.

        Only the path crosses into vLLM's worker processes, which read the file one tensor at a time:
        the weights are never held as one more full copy in this process or in the RPC. The file must
        be on this node's filesystem (learner rank 0 writes it on the same node).
        """
        if not isinstance(path, str | os.PathLike):
            raise TypeError(f"path must be a safetensors file path (got {type(path).__name__})")
        path = os.path.abspath(os.fspath(path))  # vLLM's workers may run in another directory
        if os.path.isfile(os.path.join(path, "adapter_config.json")):  # a LoRA student's adapter folder
            return self._load_adapter(path, version)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"weights file {path} does not exist on this node: learner rank 0 writes it on its own "
                "node, and the CPU weight sync needs the rollout engines on that node"
            )
        start = time.perf_counter()
        loaded = self.llm.collective_rpc("tokenbridge_load_weights", timeout=timeout_s, args=(path,))
        if not loaded or min(loaded) == 0:
            raise RuntimeError(f"weight reload loaded no tensors on some worker: {loaded}")
        seconds = time.perf_counter() - start
        self._after_sync(version, seconds)
        return seconds

    # GPU path (vLLM's native weight-transfer engine; needs weight_transfer_backend at construction).

    def _load_adapter(self, path: str, version: int) -> float:
        """A LoRA student's sync: load the adapter folder as the engine's one active adapter (ids are
        versions + 1, so a new version is a new adapter to vLLM) and drop the previous one."""
        from vllm.lora.request import LoRARequest

        start = time.perf_counter()
        request = LoRARequest(f"tokenbridge-v{version}", int(version) + 1, path)
        engine = self.llm.llm_engine
        if not engine.add_lora(request):
            raise RuntimeError(f"vLLM refused the LoRA adapter {path}")
        if self._lora is not None and self._lora.lora_int_id != request.lora_int_id:
            engine.remove_lora(self._lora.lora_int_id)
        self._lora = request
        seconds = time.perf_counter() - start
        self._after_sync(version, seconds)
        return seconds

    def init_weight_transfer(self, init_info: dict[str, Any], *, timeout_s: float | None = 300.0) -> None:
        """Join the trainer's transfer group (NCCL: blocks until the trainer side joins too)."""
        self.llm.collective_rpc(
            "init_weight_transfer_engine", timeout=timeout_s, kwargs={"init_info": init_info}
        )

    def receive_weights(
        self, update_info: dict[str, Any], version: int, *, timeout_s: float | None = 600.0
    ) -> float:
        """Receive one full weight update over the transfer engine (runs while the trainer sends)."""
        start = time.perf_counter()
        self.llm.collective_rpc(
            "tokenbridge_receive_weights", timeout=timeout_s, kwargs={"update_info": update_info}
        )
        seconds = time.perf_counter() - start
        self._after_sync(version, seconds)
        return seconds

    # ------------------------------------------------------------------ sleep mode (colocated placement)

    def sleep(self, level: int = 1) -> None:
        """Free the GPU for a colocated learner: level 1 offloads the weights to CPU memory and drops
        the KV cache (``vllm.LLM.sleep``; build with ``enable_sleep_mode=True``). On CPU vLLM's worker
        logs a warning and keeps everything, but still pauses the scheduler until a full wake-up."""
        self.llm.sleep(level=level)
        self.asleep = True

    def wake_up(self, tags: list[str] | None = None) -> bool:
        """Re-allocate ``tags`` (``"weights"``, ``"kv_cache"``; None = all); True once fully awake.
        RL order: ``["weights"]``, then the weight sync, then ``["kv_cache"]`` (no KV cache held
        during the sync)."""
        awake = bool(self.llm.wake_up(tags=tags))
        self.asleep = not awake
        return awake

    def shutdown(self) -> None:
        """Stop the engine's processes now (otherwise they stop when the object is collected)."""
        engine = getattr(self.llm, "llm_engine", None)
        core = getattr(engine, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()


def lora_refusal(err: BaseException) -> Exception:
    """vLLM cannot serve LoRA adapters for this model (its class lacks LoRA support): a configuration
    error of the run, naming the key that asked for adapters."""
    from framework.config import ConfigError

    return ConfigError(
        "learner.lora_rank",
        f"the rollout engine cannot load LoRA adapters for this model ({str(err).strip().splitlines()[0]})",
        "set learner.lora_rank=0 to train and sync the full weights",
    )


def _to_sample(completion) -> GeneratedSample:
    token_ids = list(completion.token_ids)
    if completion.logprobs is None or len(completion.logprobs) != len(token_ids):
        raise RuntimeError("vLLM returned no per-token logprobs; was logprobs=0 dropped?")
    logprobs = [completion.logprobs[i][t].logprob for i, t in enumerate(token_ids)]
    reason = completion.finish_reason
    if reason not in ("stop", "length"):
        raise RuntimeError(f"unexpected vLLM finish_reason {reason!r} (request aborted?)")
    return GeneratedSample(
        response_ids=np.asarray(token_ids, dtype=np.int32),
        logprobs=np.asarray(logprobs, dtype=np.float32),
        finish_reason=reason,
    )
