"""The CPU weight sync's file: written atomically by the learner, read lazily by the vLLM worker
extension, pruned between syncs (no vLLM, no Ray: the worker's ``reload_weights`` is a stub)."""

from __future__ import annotations

import types

import pytest
import torch
from safetensors.torch import load_file, save_file

from framework.learner.weights import remove_weights_files, save_weights_file
from framework.rollout.worker_ext import TokenbridgeWorkerExtension


def _state() -> dict[str, torch.Tensor]:
    emb = torch.randn(6, 4)
    flat = torch.arange(8, dtype=torch.float32)
    return {
        "model.embed_tokens.weight": emb,
        "lm_head.weight": emb,  # tied: the same storage
        "a": flat[:4].view(2, 2),  # views into one larger buffer
        "b": flat[4:].view(2, 2),
        "half": torch.randn(3, dtype=torch.bfloat16),
    }


def test_save_weights_file_roundtrips_tied_weights_and_views_and_leaves_no_tmp(tmp_path):
    state = _state()
    path = save_weights_file(state, tmp_path / "sub" / "weights-v1.safetensors")  # parent made too
    assert path == str(tmp_path / "sub" / "weights-v1.safetensors")
    back = load_file(path)
    assert set(back) == set(state)
    for name, t in state.items():
        assert back[name].dtype == t.dtype and torch.equal(back[name], t), name
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["weights-v1.safetensors"]
    # the caller's tensors are untouched (tied ones still share their storage)
    assert state["lm_head.weight"].data_ptr() == state["model.embed_tokens.weight"].data_ptr()


def test_save_weights_file_replaces_atomically_and_cleans_up_a_failed_write(tmp_path, monkeypatch):
    import safetensors.torch

    path = tmp_path / "weights-v3.safetensors"
    save_weights_file({"w": torch.zeros(2)}, path)
    save_weights_file({"w": torch.ones(2)}, path)  # same name again (a re-export of one version)
    assert torch.equal(load_file(path)["w"], torch.ones(2))

    def broken(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        save_weights_file({"w": torch.full((2,), 7.0)}, path)
    assert torch.equal(load_file(path)["w"], torch.ones(2))  # a reader still sees the last whole file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights-v3.safetensors"]
    with pytest.raises(ValueError, match="empty"):
        save_weights_file({}, tmp_path / "x.safetensors")


def test_remove_weights_files_keeps_only_the_latest_then_removes_the_folder(tmp_path):
    folder = tmp_path / "tokenbridge-sync-x"
    for v in (1, 2, 3):
        save_weights_file({"w": torch.zeros(1)}, folder / f"weights-v{v}.safetensors")
    (folder / "weights-v4.safetensors.tmp").write_bytes(b"left by a killed writer")
    (folder / "other.txt").write_text("not ours")
    assert remove_weights_files(folder, keep=str(folder / "weights-v3.safetensors")) == 3
    assert sorted(p.name for p in folder.iterdir()) == ["other.txt", "weights-v3.safetensors"]
    assert remove_weights_files(folder) == 1
    assert not folder.exists()
    assert remove_weights_files(folder) == 0  # already gone: nothing to do


class UnquantizedEmbeddingMethod:  # vLLM's class name: the re-pack finds the method by its name
    def __init__(self):
        self.repacked = 0

    def process_weights_after_loading(self, layer):
        self.repacked += 1


class _Worker(TokenbridgeWorkerExtension):
    """The vLLM worker stand-in: ``reload_weights`` records what it is handed and when; its model has
    one tied embedding with a CPU-packed GEMM copy (``cpu_linear``) and one plain layer."""

    def __init__(self):
        self.seen: list[str] = []
        self.lazy = None
        embedding = torch.nn.Embedding(4, 2)
        embedding.quant_method, embedding.cpu_linear = UnquantizedEmbeddingMethod(), None
        self.model_runner = types.SimpleNamespace(model=torch.nn.Sequential(embedding, torch.nn.Linear(2, 2)))

    def reload_weights(self, weights_iterator=None):
        self.lazy = isinstance(weights_iterator, types.GeneratorType)
        self.received = {}
        for name, t in weights_iterator:
            self.seen.append(name)
            self.received[name] = t.clone()


def test_worker_extension_streams_the_file_one_tensor_at_a_time(tmp_path):
    state = _state()
    path = save_weights_file(state, tmp_path / "weights-v1.safetensors")
    worker = _Worker()
    assert worker.tokenbridge_load_weights(path) == len(state)
    assert worker.lazy, "reload_weights must get a generator, not a materialised state dict"
    assert set(worker.seen) == set(state)
    for name, t in state.items():
        assert torch.equal(worker.received[name], t), name
    # the tied output layer's packed copy is rebuilt from the reloaded weight, once per reload
    assert worker.model_runner.model[0].quant_method.repacked == 1


def test_worker_extension_refuses_a_missing_or_empty_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="one node"):
        _Worker().tokenbridge_load_weights(str(tmp_path / "missing.safetensors"))
    save_file({}, str(tmp_path / "empty.safetensors"))
    with pytest.raises(ValueError, match="no tensors"):
        _Worker().tokenbridge_load_weights(str(tmp_path / "empty.safetensors"))


def test_the_sync_refuses_engines_on_another_node_than_learner_rank_0():
    from framework.actors.cluster import Stages
    from framework.actors.pool import ActorPool

    near, far = object(), object()  # engine stand-ins; their nodes come from the recorded trees
    engines = ActorPool("rollout", [near, far], trees={0: ("10.0.0.1", [11]), 1: ("10.0.0.2", [12])})
    stages = Stages({"rollout": engines}, learner=None)  # type: ignore[arg-type]
    stages.weights.learner_ip = "10.0.0.1"
    stages.weights._check_one_node([near], timeout_s=1)  # on the learner's node: fine
    with pytest.raises(
        RuntimeError, match=r"learner rank 0 runs on node 10\.0\.0\.1 and rollout engines on 10\.0\.0\.2"
    ):
        stages.weights._check_one_node(stages.rollout, timeout_s=1)


@pytest.mark.parametrize(
    "device, placement, path",
    [("cpu", "disaggregated", "file"), ("cuda", "colocated", "file"), ("cuda", "disaggregated", "nccl")],
)
def test_the_weight_path_is_chosen_by_device_and_placement(device, placement, path):
    """CPU and colocated GPUs reload a file; disaggregated GPUs take vLLM's NCCL transfer, and only
    then are the student engines (not sft_teacher's generators) started with its transfer backend."""
    from framework.actors.cluster import Stages, rollout_engine_kwargs
    from framework.actors.weights import FileWeights, NcclWeights, choose_weight_path
    from framework.config import Config

    cfg = Config()
    cfg.cluster.device, cfg.cluster.placement = device, placement
    assert choose_weight_path(cfg) == path
    student = rollout_engine_kwargs(cfg, sleeps=placement == "colocated", student=True)
    generator = rollout_engine_kwargs(cfg, sleeps=False, student=False)
    assert student.get("weight_transfer_backend") == ("nccl" if path == "nccl" else None)
    assert "weight_transfer_backend" not in generator
    assert student["enable_sleep_mode"] == (placement == "colocated")
    stages = Stages({}, learner=None, weight_path=path)  # type: ignore[arg-type]
    assert isinstance(stages.weights, NcclWeights if path == "nccl" else FileWeights)
