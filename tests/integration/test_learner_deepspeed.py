"""Real DeepSpeed on CPU (gloo): the learner's ranks as separate processes, checked against plain torch.

Three runs on the same global batches — 1 rank ZeRO-2, 2 ranks ZeRO-2, 2 ranks ZeRO-3 (with gradient
checkpointing) — each doing:
step 1 (samples split unevenly, so one rank runs padding micro-batches), step 2 (every sample on rank 0,
rank 1 has none), export + logprobs + save_hf, then save_state → step 3 → load_state → step 3 again.
A single-process torch reference (same objective, AdamW, warmup, clipping; the whole batch as one
micro-batch) gives the expected losses and weights.

This file is also the worker: ``python test_learner_deepspeed.py '<json spec>'`` runs one rank.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.integration

VOCAB = 512
SETTINGS = dict(  # learner.* config values
    lr=2e-3,
    weight_decay=0.01,
    betas=(0.9, 0.95),
    grad_clip=1.0,
    warmup_steps=2,
    lr_decay="cosine",  # with TOTAL_STEPS: step 3 (the one replayed after load_state) runs at the floor
    min_lr_ratio=0.25,
    micro_batch_tokens=48,
    logprob_chunk_size=7,
)
OBJECTIVE = ("opd_topk", {"clip_eps": 0.2, "topk_weight": 0.5})
TOTAL_STEPS = 3  # trainer.steps as the learner sees it (RankSettings.total_steps)
# name -> (zero stage, world size, gradient checkpointing)
RUNS = {"z2_r1": (2, 1, False), "z2_r2": (2, 2, False), "z3_r2": (3, 2, True)}
WORKER_TIMEOUT_S = 420


# --------------------------------------------------------------------------- shared data


def make_samples(seed: int, n: int):
    from framework.types import DenseTarget, MappedSample

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        Lp, R = int(rng.integers(2, 9)), int(rng.integers(3, 16))
        P, S = max(1, R // 3), 4
        probs = (rng.dirichlet(np.ones(S), size=P) * 0.9).astype(np.float32)
        dense = DenseTarget(
            positions=np.sort(rng.choice(R, size=P, replace=False)).astype(np.int32),
            support_ids=rng.choice(VOCAB, size=(P, S)).astype(np.int32),
            support_probs=probs,
            other_prob=(1.0 - probs.sum(-1)).astype(np.float32),
        )
        out.append(
            MappedSample(
                sample_id=f"seed{seed}-{i}",
                input_ids=rng.integers(0, VOCAB, Lp + R).astype(np.int32),
                response_start=Lp,
                behaviour_logprobs=rng.normal(-6.2, 0.2, R).astype(np.float32),
                teacher_logprobs=rng.normal(-4.0, 1.0, R).astype(np.float32),
                advantages=rng.normal(0.0, 1.0, R).astype(np.float32),
                mask=(rng.random(R) > 0.15).astype(np.float32),
                weight_version=0,
                dense=dense,
            )
        )
    return out


def step_shard(step: int, rank: int, world_size: int):
    """This rank's samples for steps 1-3 (the global batch is the same for every world size)."""
    from framework.learner.batching import shard_samples

    samples = make_samples(step, 10)
    if world_size == 1:
        return samples
    if step == 1:  # uneven: rank 0 has many more micro-batches than rank 1
        return samples[:8] if rank == 0 else samples[8:]
    if step == 2:  # rank 1 has nothing at all
        return samples if rank == 0 else []
    return shard_samples(samples, world_size, SETTINGS["micro_batch_tokens"])[rank]


def eval_sequences():
    rng = np.random.default_rng(99)
    seqs = [rng.integers(0, VOCAB, int(rng.integers(4, 20))).astype(np.int32) for _ in range(6)]
    return seqs, [int(rng.integers(1, len(s))) for s in seqs]


# --------------------------------------------------------------------------- worker (one rank)


def worker(spec: dict) -> None:
    torch.set_num_threads(1)
    from safetensors.torch import save_file

    from framework.algo import make_objective
    from framework.config import LearnerConfig
    from framework.learner.batching import build_micro_batches
    from framework.learner.engine import LearnerRank
    from framework.learner.settings import RankSettings
    from framework.learner.weights import iter_full_weights

    rank, world_size, out = spec["rank"], spec["world_size"], Path(spec["out_dir"])
    t0 = time.perf_counter()
    learner = LearnerRank(
        spec["model_dir"],
        rank=rank,
        world_size=world_size,
        master_port=spec["port"],
        settings=RankSettings(
            learner=LearnerConfig(
                zero_stage=spec["zero_stage"],
                gradient_checkpointing=spec["gradient_checkpointing"],
                **SETTINGS,
            ),
            objective=make_objective(OBJECTIVE[0], **OBJECTIVE[1]),  # type: ignore[arg-type]
            seed=0,
            total_steps=TOTAL_STEPS,
        ),
    )
    report: dict = {"process_to_ready_s": time.perf_counter() - t0}
    report["local_micro_batches"] = [
        len(build_micro_batches(step_shard(s, rank, world_size), SETTINGS["micro_batch_tokens"]))
        for s in (1, 2)
    ]
    report["steps"] = [learner.train_step(step_shard(s, rank, world_size)) for s in (1, 2)]

    t = time.perf_counter()
    exported = learner.export_weights_file(out / "weights.safetensors")  # rank 0 writes, others return ""
    report["export_seconds"] = time.perf_counter() - t
    buckets = [
        [(n, t.detach().clone()) for n, t in b]
        for b in iter_full_weights(learner.engine.module.model, rank=rank, bucket_bytes=1 << 17)
    ]
    report["bucket_sizes"] = [len(b) for b in buckets]
    if rank == 0:
        save_file(dict(kv for b in buckets for kv in b), out / "buckets.safetensors")
    seqs, starts = eval_sequences()
    mine = list(range(len(seqs))) if rank == 0 else []  # rank 1 joins the collective with nothing
    logprobs = learner.compute_logprobs([seqs[i] for i in mine], [starts[i] for i in mine])
    learner.save_hf(out / "hf")
    report["exported"] = exported
    if rank == 0:
        np.savez(out / "logprobs.npz", *logprobs)

    t = time.perf_counter()
    learner.save_state(out / "state")
    report["save_state_seconds"] = time.perf_counter() - t
    report["step3"] = learner.train_step(step_shard(3, rank, world_size))
    learner.export_weights_file(out / "weights3.safetensors")
    version3 = learner.version
    t = time.perf_counter()
    learner.load_state(out / "state")
    report["load_state_seconds"] = time.perf_counter() - t
    report["version_after_load"] = learner.version
    report["step3_again"] = learner.train_step(step_shard(3, rank, world_size))
    report["versions"] = [version3, learner.version]
    learner.export_weights_file(out / "weights3_again.safetensors")
    (out / f"report_rank{rank}.json").write_text(json.dumps(report))


# --------------------------------------------------------------------------- fixtures


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A random tiny Llama (hidden 128, 2 heads of 64, 2 layers, vocab 512) with a word-level tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path = tmp_path_factory.mktemp("tiny_student")
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).float().save_pretrained(path)
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, VOCAB)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory) -> dict[str, dict]:
    """Run every configuration in RUNS (ranks as subprocesses); returns reports and output dirs."""
    results = {}
    env = {
        **os.environ,
        "DS_ACCELERATOR": "cpu",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    for name, (stage, world_size, checkpointing) in RUNS.items():
        out = tmp_path_factory.mktemp(name)
        port = free_port()
        procs, logs = [], []
        t0 = time.perf_counter()
        for rank in range(world_size):
            spec = dict(
                rank=rank,
                world_size=world_size,
                zero_stage=stage,
                gradient_checkpointing=checkpointing,
                port=port,
                model_dir=str(tiny_model_dir),
                out_dir=str(out),
            )
            log = open(out / f"rank{rank}.log", "w")  # noqa: SIM115 - closed below
            logs.append(log)
            procs.append(
                subprocess.Popen(
                    [sys.executable, __file__, json.dumps(spec)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                )
            )
        try:
            codes = [p.wait(timeout=WORKER_TIMEOUT_S) for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
            for log in logs:
                log.close()
        if any(codes):
            tails = "\n".join((out / f"rank{r}.log").read_text()[-3000:] for r in range(world_size))
            pytest.fail(f"run {name}: worker exit codes {codes}\n{tails}")
        reports = [json.loads((out / f"report_rank{r}.json").read_text()) for r in range(world_size)]
        results[name] = {"out": out, "reports": reports, "wall_s": time.perf_counter() - t0}
        print(
            f"[learner-ds] {name}: wall {results[name]['wall_s']:.1f}s init {reports[0]['process_to_ready_s']:.1f}s "
            f"steps {[round(s['step_seconds'], 3) for s in reports[0]['steps']]}s "
            f"export {reports[0]['export_seconds'] * 1e3:.1f}ms"
        )
    return results


@pytest.fixture(scope="module")
def reference(tiny_model_dir) -> dict:
    """Plain torch, one process: steps 1-2 on the whole batch as one micro-batch."""
    from framework.algo import LossCounts, TokenLogprobs, make_objective
    from framework.learner.batching import collate_micro_batch
    from framework.learner.model import LogprobLM, load_student

    torch.manual_seed(0)
    lm = LogprobLM(load_student(tiny_model_dir), chunk_size=SETTINGS["logprob_chunk_size"])
    objective = make_objective(OBJECTIVE[0], **OBJECTIVE[1])
    opt = torch.optim.AdamW(
        lm.parameters(), lr=SETTINGS["lr"], betas=SETTINGS["betas"], weight_decay=SETTINGS["weight_decay"]
    )
    warm = SETTINGS["warmup_steps"]
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))  # steps 1-2: warm-up
    steps = []
    for step in (1, 2):
        mb = collate_micro_batch(make_samples(step, 10), with_dense=True)
        lp, ent, sup = lm(
            mb.input_ids_B_L,
            mb.attention_mask_B_L,
            mb.hidden_index_B_T,
            mb.inputs.target_ids_B_T,
            mb.inputs.mask_B_T,
            mb.inputs.support_ids_B_T_S,
        )
        loss, _ = objective(TokenLogprobs(lp, ent, sup), mb.inputs, LossCounts.of(mb.inputs))
        opt.zero_grad()
        loss.backward()
        lr = opt.param_groups[0]["lr"]
        norm = torch.nn.utils.clip_grad_norm_(lm.parameters(), SETTINGS["grad_clip"])
        opt.step()
        sched.step()
        steps.append({"loss": float(loss.detach()), "grad_norm": float(norm), "lr": lr})
    weights = {k: v.detach().clone() for k, v in lm.model.named_parameters()}
    return {"steps": steps, "weights": weights}


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(path)


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("name", list(RUNS))
def test_steps_match_single_process_torch(runs, reference, name):
    reports = runs[name]["reports"]
    if RUNS[name][1] == 2:  # step 1 really ran different micro-batch counts per rank (padding path)
        assert reports[0]["local_micro_batches"][0] > reports[1]["local_micro_batches"][0]
        assert reports[1]["local_micro_batches"][1] == 0
    for got, want in zip(reports[0]["steps"], reference["steps"]):
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-4, abs=1e-6)
        assert got["grad_norm"] == pytest.approx(want["grad_norm"], rel=1e-4)
        assert got["lr"] == pytest.approx(want["lr"], rel=1e-9)
        assert got["tokens"] > 0
    for r in reports[1:]:  # every rank reports the same (all-reduced) metrics
        assert [s["loss"] for s in r["steps"]] == [s["loss"] for s in reports[0]["steps"]]
    exported = load_weights(runs[name]["out"] / "weights.safetensors")
    assert set(exported) == set(reference["weights"])
    worst = max(float((exported[k] - w).abs().max()) for k, w in reference["weights"].items())
    loss_gap = max(abs(g["loss"] - w["loss"]) for g, w in zip(reports[0]["steps"], reference["steps"]))
    print(f"[learner-ds] {name}: max |w - w_ref| = {worst:.2e}, max |loss - loss_ref| = {loss_gap:.2e}")
    for k, w in reference["weights"].items():
        torch.testing.assert_close(
            exported[k], w, atol=2e-5, rtol=1e-4, msg=lambda m, k=k: f"{name} {k}: {m}"
        )


def test_zero3_and_zero2_agree_across_ranks(runs):
    a = load_weights(runs["z2_r2"]["out"] / "weights.safetensors")
    b = load_weights(runs["z3_r2"]["out"] / "weights.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("name", list(RUNS))
def test_exported_weights_file_is_the_model_the_engine_runs(runs, name):
    """A fresh HF model loaded with the exported file reproduces the engine's own compute_logprobs."""
    from transformers import AutoModelForCausalLM

    out = runs[name]["out"]
    reports = runs[name]["reports"]
    assert reports[0]["exported"] == str(out / "weights.safetensors")
    assert all(r["exported"] == "" for r in reports[1:])  # non-zero ranks write nothing
    assert not list(out.glob("*.tmp"))  # written to .tmp, then renamed
    model = AutoModelForCausalLM.from_pretrained(out / "hf", dtype=torch.float32)
    missing, unexpected = model.load_state_dict(load_weights(out / "weights.safetensors"), strict=False)
    assert not unexpected and not [m for m in missing if "rotary" not in m]
    engine_logprobs = np.load(out / "logprobs.npz")
    seqs, starts = eval_sequences()
    for i, (ids, start) in enumerate(zip(seqs, starts)):
        ids_t = torch.as_tensor(ids, dtype=torch.long)[None]
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids_t).logits[0].double(), -1)
        want = logp[start - 1 : -1].gather(1, ids_t[0, start:, None]).squeeze(1).numpy()
        np.testing.assert_allclose(engine_logprobs[f"arr_{i}"], want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["z2_r2", "z3_r2"])
def test_bucketed_weight_iterator_matches_the_exported_file(runs, name):
    from safetensors.torch import load_file

    rank0, rank1 = runs[name]["reports"]
    assert len(rank0["bucket_sizes"]) > 1 and sum(rank0["bucket_sizes"]) == 21  # several gathers
    assert sum(rank1["bucket_sizes"]) == 0 and len(rank1["bucket_sizes"]) == len(rank0["bucket_sizes"])
    buckets = load_file(runs[name]["out"] / "buckets.safetensors")
    exported = load_weights(runs[name]["out"] / "weights.safetensors")
    assert buckets.keys() == exported.keys()
    for k in exported:
        assert torch.equal(buckets[k], exported[k]), k


def test_save_hf_loads_in_transformers_with_tokenizer(runs, tiny_model_dir):
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoTokenizer

    hf = runs["z3_r2"]["out"] / "hf"
    weights = load_file(hf / "model.safetensors")
    exported = load_weights(runs["z3_r2"]["out"] / "weights.safetensors")
    assert weights.keys() == exported.keys()
    for k in weights:
        assert torch.equal(weights[k], exported[k]), k
    saved, source = (
        AutoConfig.from_pretrained(hf).to_dict(),
        AutoConfig.from_pretrained(tiny_model_dir).to_dict(),
    )
    saved.pop("_name_or_path"), source.pop("_name_or_path")
    assert saved == source
    assert (hf / "generation_config.json").is_file()
    tok = AutoTokenizer.from_pretrained(hf)
    assert tok("w5 w7")["input_ids"] == [5, 7]


@pytest.mark.parametrize("name", list(RUNS))
def test_save_load_state_resumes_identically(runs, name):
    for r in runs[name]["reports"]:
        a, b = r["step3"], r["step3_again"]
        assert r["version_after_load"] == 2 and r["versions"] == [3, 3]
        for key in ("loss", "grad_norm", "lr", "opd/ratio_mean", "topk/kl"):
            assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-9), key
        # the cosine schedule's last update runs at the floor, also after a reload of its state
        assert a["lr"] == pytest.approx(SETTINGS["lr"] * SETTINGS["min_lr_ratio"], rel=1e-9)
    out = runs[name]["out"]
    first, again = (
        load_weights(out / "weights3.safetensors"),
        load_weights(out / "weights3_again.safetensors"),
    )
    for k in first:
        torch.testing.assert_close(again[k], first[k], atol=1e-7, rtol=1e-6)


if __name__ == "__main__":
    worker(json.loads(sys.argv[1]))
