"""Learner state for resume: a DeepSpeed checkpoint plus a small JSON sidecar per rank.

Layout of a state directory::

    learner/                    DeepSpeed checkpoint, tag "learner" (model, optimizer, lr schedule; ZeRO
                                partitions are per rank, so resume needs the same world size and stage)
    learner_meta.json           version, world size, ZeRO stage, objective (rank 0 writes)
    rng_rank{r}.json            Python / NumPy / torch RNG states of rank r (JSON, no pickle)

DeepSpeed writes its files with ``torch.save`` (pickle) and its own loader reads them with
``torch.load(weights_only=False)``. We swap in `SafeTorchCheckpointEngine`, which loads with
``weights_only=True``: tensors and containers, plus an explicit allowlist of the few DeepSpeed / Python
classes its state dicts hold, instead of unpickling arbitrary objects.
"""

from __future__ import annotations

import json
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from framework.learner import distributed

TAG = "learner"
META = "learner_meta.json"


def _safe_globals() -> list[Any]:
    """The non-tensor classes DeepSpeed 0.19 ZeRO-1/2/3 optimizer states hold (found with
    ``torch.serialization.get_unsafe_globals_in_checkpoint`` on real checkpoints): plain data holders."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, ZeroStageEnum, fragment_address]


def safe_checkpoint_engine(config_params=None):
    """A DeepSpeed TorchCheckpointEngine whose ``load`` uses ``torch.load(weights_only=True)``."""
    from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine

    class SafeTorchCheckpointEngine(TorchCheckpointEngine):
        def load(self, path: str, map_location=None):
            allowed = _safe_globals()
            try:
                with torch.serialization.safe_globals(allowed):
                    return torch.load(path, map_location=map_location, weights_only=True)
            except pickle.UnpicklingError as e:
                raise pickle.UnpicklingError(
                    f"{path}: the checkpoint holds a class outside the safe allowlist {allowed} ({e}). If "
                    "this DeepSpeed version added a plain-data class, review it and add it to "
                    "framework/learner/state.py:_safe_globals"
                ) from e

    return SafeTorchCheckpointEngine(config_params)


def rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # type: ignore[misc]
    return {
        "python": _listify(random.getstate()),
        "numpy": [kind, np.asarray(keys).tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state().tolist(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))


def _listify(x: Any) -> Any:
    return [_listify(v) for v in x] if isinstance(x, (tuple, list)) else x


def save_learner_state(engine, out_dir: str | Path, *, rank: int, meta: dict[str, Any]) -> Path:
    """Collective: every rank writes its partitions; rank 0 writes the metadata."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    engine.save_checkpoint(str(out), tag=TAG, client_state={}, save_latest=False)
    (out / f"rng_rank{rank}.json").write_text(json.dumps(rng_state()))
    if rank == 0:
        (out / META).write_text(json.dumps(meta, indent=2))
    distributed.barrier()
    return out


def load_learner_state(engine, in_dir: str | Path, *, rank: int, expected: dict[str, Any]) -> dict[str, Any]:
    """Collective. Checks world size / ZeRO stage, loads with `safe_checkpoint_engine`, restores RNG."""
    src = Path(in_dir)
    meta_path = src / META
    if not meta_path.is_file():
        raise FileNotFoundError(f"{str(src)!r} is not a learner state directory (no {META}); use save_state")
    meta = json.loads(meta_path.read_text())
    for key in ("world_size", "zero_stage"):
        if meta[key] != expected[key]:
            raise ValueError(
                f"learner state in {str(src)!r} was saved with {key}={meta[key]}, this learner has "
                f"{key}={expected[key]}; resume with the same {key} (ZeRO partitions are per rank)"
            )
    engine.checkpoint_engine = safe_checkpoint_engine(engine._config)
    load_path, _ = engine.load_checkpoint(
        str(src), tag=TAG, load_optimizer_states=True, load_lr_scheduler_states=True
    )
    if load_path is None:
        raise FileNotFoundError(f"DeepSpeed found no checkpoint with tag {TAG!r} under {str(src)!r}")
    rng_path = src / f"rng_rank{rank}.json"
    if rng_path.is_file():
        set_rng_state(json.loads(rng_path.read_text()))
    return meta
