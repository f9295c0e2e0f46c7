"""GPU-only checks of the rollout weight sync and the HF teacher (skip cleanly without CUDA).

The lent GPU machines carry torch + transformers but not vLLM, so the vLLM-backed NCCL sync test
also needs vLLM and a second GPU (vLLM's NCCL group cannot put two ranks on one device).
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
import torch

from framework.learner.weights import save_weights_file
from framework.types import TeacherRequest

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def _tiny_qwen2(path: str, tie: bool) -> None:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=640,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        initializer_range=0.2,
        tie_word_embeddings=tie,
    )
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(path)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("tiny"))
    _tiny_qwen2(path, tie=True)
    return path


def test_weights_file_from_cuda_state_dict_roundtrips_bitwise(model_dir, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).cuda()
    state = model.state_dict()
    # Tied weights alias one CUDA storage; safetensors would refuse them without the clone.
    assert state["lm_head.weight"].data_ptr() == state["model.embed_tokens.weight"].data_ptr()
    back = load_file(save_weights_file(state, tmp_path / "weights.safetensors"))
    assert set(back) == set(state)
    for name, t in state.items():
        assert back[name].dtype == t.dtype and torch.equal(back[name], t.cpu()), name


def test_hf_teacher_on_cuda_matches_cpu(model_dir):
    from framework.teacher import HFTeacher

    rng = np.random.default_rng(0)
    reqs = [
        TeacherRequest(f"r{i}", rng.integers(3, 640, n).astype(np.int32), response_start=s)
        for i, (n, s) in enumerate([(20, 5), (64, 1), (9, 8)])
    ]
    cpu = HFTeacher(model_dir, device="cpu").score(reqs, 5)
    gpu = HFTeacher(model_dir, device="cuda").score(reqs, 5)
    bf16 = HFTeacher(model_dir, device="cuda", dtype="bfloat16").score(reqs, 5)
    for c, g, b in zip(cpu, gpu, bf16):
        # TF32 matmuls may be on by default on this GPU: allow 1e-3 for float32.
        np.testing.assert_allclose(g.token_logprobs, c.token_logprobs, atol=1e-3)
        np.testing.assert_allclose(g.topk_logprobs, c.topk_logprobs, atol=1e-3)
        # bf16 keeps 8 mantissa bits (~0.4 % per logit of magnitude ~10 here): on an H200 (2026-12-04)
        # the 15 logprobs of the first request differed from float32 CPU by 0.06 on average, 0.16 at most
        diff = np.abs(b.token_logprobs - c.token_logprobs)
        assert diff.max() < 0.3 and diff.mean() < 0.1, diff
        assert np.all(np.diff(g.topk_logprobs, axis=1) <= 0)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="needs vLLM (CUDA build)")
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL sync needs the learner and vLLM on 2 GPUs")
def test_nccl_weight_sync_into_vllm(model_dir):
    from transformers import AutoModelForCausalLM

    from framework.rollout import NcclWeightSync, StudentEngine

    # vLLM's worker process takes GPU 1 (it inherits CUDA_VISIBLE_DEVICES at spawn); this process,
    # the "learner", broadcasts from GPU 0.
    saved = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = "1"
    try:
        engine = StudentEngine(
            model_dir,
            dtype="float32",
            kv_cache_gib=None,
            gpu_memory_utilization=0.3,
            weight_transfer_backend="nccl",
        )
    finally:
        if saved is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES")
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = saved
    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to("cuda:0")
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        sync = NcclWeightSync(
            [engine], master_port=29561, bucket_bytes=1 << 20, timeout_s=300, device="cuda:0"
        )
        seconds = sync.push(model.state_dict(), version=1)
        assert engine.weight_version == 1 and seconds > 0
        prompt, cont = list(range(3, 40)), list(range(100, 130))
        got = engine.score(prompt, cont)
        with torch.inference_mode():
            logits = model(torch.tensor([prompt + cont], device="cuda:0")).logits[0].float()
        logp = torch.log_softmax(logits, -1)[len(prompt) - 1 : -1]
        ref = logp.gather(1, torch.tensor(cont, device="cuda:0")[:, None])[:, 0].cpu().numpy()
        np.testing.assert_allclose(got, ref, atol=2e-3)
        sync.close()
    finally:
        engine.shutdown()
