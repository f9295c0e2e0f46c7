"""Full Hugging Face-named weights out of a (possibly ZeRO-3 partitioned) model.

Under ZeRO-3 each rank holds a shard of every parameter, so materialising full tensors is a collective:
every rank enters `deepspeed.zero.GatheredParameters` for the same bucket of parameters, rank 0 reads
them. Under ZeRO-0/1/2 the parameters are whole on every rank and no communication is needed.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path

import safetensors.torch
import torch
from torch import nn
from transformers import PreTrainedModel

NamedTensors = list[tuple[str, torch.Tensor]]

# Files of a source model directory that are NOT copied next to exported weights (save_hf rewrites them).
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf")
_REWRITTEN = {"config.json", "generation_config.json", "model.safetensors.index.json"}


def persistent_buffers(model: nn.Module) -> NamedTensors:
    """Buffers that belong in a state dict (e.g. not rotary ``inv_freq``, which is non-persistent)."""
    out = []
    for module_name, module in model.named_modules():
        for name, buf in module.named_buffers(recurse=False):
            if buf is not None and name not in module._non_persistent_buffers_set:
                out.append((f"{module_name}.{name}" if module_name else name, buf))
    return out


def _is_partitioned(param: torch.Tensor) -> bool:
    return hasattr(param, "ds_id")


def _buckets(named: NamedTensors, bucket_bytes: int) -> Iterator[NamedTensors]:
    bucket: NamedTensors = []
    size = 0
    for name, t in named:
        numel = int(getattr(t, "ds_numel", t.numel()))  # ZeRO-3 params hold only their shard
        nbytes = numel * t.element_size()
        if bucket and size + nbytes > bucket_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.append((name, t))
        size += nbytes
    if bucket:
        yield bucket


def iter_full_weights(
    model: nn.Module, *, rank: int, bucket_bytes: int = 256 << 20
) -> Iterator[NamedTensors]:
    """Yield buckets of ``(hf_name, full tensor)``; ALL ranks must iterate to the end (collective).

    Rank 0 receives the tensors, other ranks receive empty lists. Tied parameters appear once (under
    the first name ``named_parameters`` gives). Under ZeRO-3 a yielded tensor is valid only until the
    next ``next()``: copy it or send it before advancing.
    """
    if bucket_bytes <= 0:
        raise ValueError(f"bucket_bytes must be positive, got {bucket_bytes}")
    params: NamedTensors = list(model.named_parameters())
    for bucket in _buckets(params, bucket_bytes):
        partitioned = [p for _, p in bucket if _is_partitioned(p)]
        if partitioned:
            import deepspeed

            with deepspeed.zero.GatheredParameters(partitioned, modifier_rank=None):
                yield bucket if rank == 0 else []
        else:
            yield bucket if rank == 0 else []
    buffers = persistent_buffers(model)
    if buffers:
        yield buffers if rank == 0 else []


def gather_state_dict(
    model: nn.Module, *, rank: int, bucket_bytes: int = 256 << 20
) -> dict[str, torch.Tensor]:
    """Full CPU state dict on rank 0 (``{}`` elsewhere); collective under ZeRO-3."""
    state: dict[str, torch.Tensor] = {}
    for bucket in iter_full_weights(model, rank=rank, bucket_bytes=bucket_bytes):
        for name, t in bucket:
            state[name] = t.detach().to("cpu", copy=True).contiguous()
    return state


def save_weights_file(state: Mapping[str, torch.Tensor], path: str | os.PathLike) -> str:
    """Write a full HF-named state dict as ONE safetensors file, atomically; returns the path.

    This is what the rollout engines reload from (CPU weight sync): they read it back one tensor at
    a time, so the weights exist once on disk / in the page cache instead of as a byte string copied
    through every process on the way. The file is written to ``path + ".tmp"`` and renamed, so a
    reader never sees a partial file (an engine still reading an older file of the same name keeps
    its own copy: the rename does not touch the open inode). Tensors are moved to CPU, made
    contiguous and unshared (safetensors refuses tensors that alias each other, e.g. tied
    embedding / lm_head, or that are views into a larger buffer, e.g. DeepSpeed's flat buffers).
    """
    if not state:
        raise ValueError("state dict is empty; pass the model's full HF-named state dict")
    path = os.fspath(path)
    flat = _unshare({name: t.detach().to("cpu").contiguous() for name, t in state.items()})
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    try:
        safetensors.torch.save_file(flat, tmp, metadata={"format": "pt"})
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    return path


def path_bytes(path: str | os.PathLike) -> int:
    """Bytes of an exported weights file, or of the files of an adapter folder."""
    p = Path(path)
    return sum(f.stat().st_size for f in p.iterdir()) if p.is_dir() else p.stat().st_size


def remove_weights_files(folder: str | os.PathLike, keep: str | os.PathLike | None = None) -> int:
    """Delete the ``weights-v*.safetensors`` files and ``adapter-v*`` folders (LoRA; and ``.tmp``
    leftovers of failed writes) in ``folder`` except ``keep``; with ``keep=None`` remove the folder
    itself. Returns the entries removed."""
    keep_name = None if keep is None else os.path.basename(os.fspath(keep))
    removed = 0
    for f in [*Path(folder).glob("weights-v*.safetensors*"), *Path(folder).glob("adapter-v*")]:
        if f.name != keep_name:
            if f.is_dir():
                shutil.rmtree(f, ignore_errors=True)
            else:
                f.unlink(missing_ok=True)
            removed += 1
    if keep is None:
        shutil.rmtree(folder, ignore_errors=True)
    return removed


def _unshare(flat: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Give every tensor its own exact storage: clone aliases (tied weights) and views into a larger
    buffer, both of which safetensors refuses to save. Tensors that already own theirs are kept."""
    owners: set[int] = set()
    out: dict[str, torch.Tensor] = {}
    for name, t in flat.items():
        storage = t.untyped_storage()
        if storage.data_ptr() in owners or storage.nbytes() != t.numel() * t.element_size():
            t = t.clone()
        owners.add(t.untyped_storage().data_ptr())
        out[name] = t
    return out


def save_hf_dir(
    state: dict[str, torch.Tensor],
    model: PreTrainedModel,
    out_dir: str | Path,
    *,
    source_dir: str | Path | None = None,
    max_shard_bytes: int = 4 << 30,
) -> Path:
    """Write a Hugging Face model directory: safetensors weights (sharded with an index past
    ``max_shard_bytes``), ``config.json`` (dtype of the weights), ``generation_config.json`` and every
    tokenizer / template file of ``source_dir`` (anything that is not weights or config).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in state.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    if len(shards) == 1:
        safetensors.torch.save_file(shards[0], out / "model.safetensors", metadata={"format": "pt"})
    else:
        weight_map = {}
        for i, shard in enumerate(shards):
            fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            safetensors.torch.save_file(shard, out / fname, metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(shard, fname))
        total = sum(t.numel() * t.element_size() for t in state.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    config = copy.deepcopy(model.config)
    dtypes = {t.dtype for t in state.values() if t.is_floating_point()}
    if len(dtypes) == 1:
        config.dtype = dtypes.pop()
    config.use_cache = True  # inference default; training turned it off
    config.save_pretrained(out)
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None:
        generation_config.save_pretrained(out)
    if source_dir is not None:
        copy_tokenizer_files(source_dir, out)
    return out


def copy_tokenizer_files(source_dir: str | Path, out_dir: str | Path) -> list[str]:
    """Copy the non-weight, non-config files of a model directory (tokenizer, chat template...)."""
    copied = []
    for f in sorted(Path(source_dir).iterdir()):
        if not f.is_file() or f.name in _REWRITTEN or f.name.endswith(_WEIGHT_SUFFIXES):
            continue
        shutil.copy2(f, Path(out_dir) / f.name)
        copied.append(f.name)
    return copied
