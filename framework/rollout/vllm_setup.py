"""Building a vLLM ``LLM`` the way tokenbridge uses it (shared by the student engine and the vLLM teacher).

Our engines speak token ids only: the caller renders and tokenizes (with the right chat template),
so vLLM's tokenizer is never initialised (``skip_tokenizer_init=True``) and prompts are
``TokensPrompt``.
"""

from __future__ import annotations

import json
import os
from typing import Any

GIB = 1 << 30


def validate_model_path(model_path: str) -> None:
    """Fail early with a clear message (vLLM's own error for a bad path is far down a stack trace)."""
    if not os.path.isdir(model_path):
        raise FileNotFoundError(
            f"model_path={model_path!r} is not a directory; pass a local Hugging Face model folder "
            "(config.json + safetensors), e.g. what framework.models.resolve_model_dir gives for zoo:NAME or a Hub id"
        )
    if not os.path.isfile(os.path.join(model_path, "config.json")):
        raise FileNotFoundError(f"model_path={model_path!r} has no config.json; is it a HF model folder?")


def resolve_dtype(dtype: str, model_path: str) -> str:
    """``"auto"`` -> the checkpoint's own dtype when that is float32, else vLLM's ``"auto"``.

    Why: vLLM's ``"auto"`` runs a float32 checkpoint in bfloat16 on CPU (float16 on GPU). For a
    rollout engine that breaks the learner/vLLM logprob agreement the importance ratio relies on (we
    measured 2e-2 to 2.5e-1 max abs logprob error on the zoo student); for a teacher it rounds the
    scores. Any explicit value is passed through unchanged.
    """
    if dtype != "auto":
        return dtype
    try:
        with open(os.path.join(model_path, "config.json")) as f:
            config = json.load(f)
    except (OSError, ValueError):
        return dtype
    declared = config.get("dtype") or config.get("torch_dtype")
    return "float32" if declared == "float32" else dtype


def build_llm(
    model_path: str,
    *,
    seed: int,
    max_model_len: int,
    kv_cache_gib: float | None,
    enforce_eager: bool,
    tensor_parallel_size: int,
    gpu_memory_utilization: float,
    dtype: str,
    trust_remote_code: bool,
    **extra: Any,
):
    """Create a token-id-only ``vllm.LLM``.

    ``kv_cache_gib`` sets the KV cache size explicitly (``kv_cache_memory_bytes``; on CPU this is
    the only sizing knob, and the legacy env ``VLLM_CPU_KVCACHE_SPACE`` overrides it when set). On
    GPU pass ``kv_cache_gib=None`` to let vLLM size the cache from ``gpu_memory_utilization``.
    """
    validate_model_path(model_path)
    if kv_cache_gib is not None and kv_cache_gib <= 0:
        raise ValueError(f"kv_cache_gib must be > 0 or None (got {kv_cache_gib})")
    from vllm import LLM  # imported lazily: importing vLLM costs seconds

    kwargs: dict[str, Any] = dict(
        skip_tokenizer_init=True,
        seed=seed,
        max_model_len=max_model_len,
        enforce_eager=enforce_eager,
        tensor_parallel_size=tensor_parallel_size,
        gpu_memory_utilization=gpu_memory_utilization,
        dtype=resolve_dtype(dtype, model_path),
        trust_remote_code=trust_remote_code,
    )
    if kv_cache_gib is not None:
        kwargs["kv_cache_memory_bytes"] = int(kv_cache_gib * GIB)
    kwargs.update(cpu_scheduling(max_model_len) if _on_cpu() else {})
    kwargs.update(extra)
    return LLM(model_path, **kwargs)


# vLLM CPU's default per-step token budget (SchedulerConfig on the CPU platform).
CPU_STEP_TOKENS = 4096


def cpu_scheduling(max_model_len: int) -> dict[str, Any]:
    """Scheduler options for a CPU engine: never split a prompt's prefill across steps.

    Why: with chunked prefill a prompt that does not fit the step's token budget is prefilled in
    parts, and vLLM rewinds the seeded generator of such a request by the token it discards
    (``Generator.set_offset``), which CPU generators do not support: the engine dies with "CPU
    Generator does not use offset" as soon as one call's prompts exceed the budget (4,096 tokens:
    about 180 zoo prompts; our rollouts and evaluations always pass seeds). Without chunked prefill
    the scheduler admits whole prompts only, so seeded sampling holds at any batch size. The budget
    must then cover the longest prompt (vLLM refuses a budget below ``max_model_len``).
    """
    return {"enable_chunked_prefill": False, "max_num_batched_tokens": max(CPU_STEP_TOKENS, max_model_len)}


def _on_cpu() -> bool:
    from vllm.platforms import current_platform

    return bool(current_platform.is_cpu())


def drive_to_completion(llm, request_ids: set[str]):
    """Step the engine until every id in ``request_ids`` finished; yield each final ``RequestOutput``
    as soon as it is done. Requests left unfinished (the consumer stopped early, or an error) are
    aborted so they do not leak into the next call.
    """
    engine = llm.llm_engine
    pending = set(request_ids)
    try:
        while pending:
            if not engine.has_unfinished_requests():
                raise RuntimeError(f"vLLM engine went idle with {len(pending)} requests unfinished")
            for out in engine.step():
                if out.finished and out.request_id in pending:
                    pending.discard(out.request_id)
                    yield out
    finally:
        if pending:
            engine.abort_request(sorted(pending), internal=False)
