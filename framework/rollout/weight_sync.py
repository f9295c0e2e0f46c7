"""Learner -> rollout weight sync over NCCL (GPU), behind the ``WeightSync`` interface.

Which path a run uses is chosen by device in ``framework/actors/weights.py`` (design §6): on CPU and
for colocated GPUs learner rank 0 writes the full HF-named state dict as one safetensors file
(``LearnerRank.export_weights_file``) and every engine reloads it in place
(``StudentEngine.load_weights(path, version)``); that needs rank 0 and the engines on one node.

``NcclWeightSync`` (CUDA, disaggregated placement) lives on the learner's sending rank (rank 0, which
holds the full, gathered state dict; ``LearnerWorker.push_weights``) and broadcasts the tensors in
packed buckets over an NCCL group that it shares with every vLLM worker, using vLLM's native
weight-transfer engine (``vllm.distributed.weight_transfer``, backend ``"nccl"``); engines must be
started with ``weight_transfer_backend="nccl"``. It has not yet run on a GPU here.

Receivers are duck-typed so the Ray layer can hand in actor proxies: a transfer receiver has
``init_weight_transfer(init_info)`` and ``receive_weights(update_info, version)`` (``StudentEngine``
has both). A sync records ``last_sync_seconds``. This module does not import vLLM at import time.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Protocol

import torch

StateDict = Mapping[str, torch.Tensor]


class WeightSync(Protocol):
    """Push a full HF-named state dict to the rollout engines and tag them with ``version``."""

    last_sync_seconds: float | None

    def push(self, state_dict: StateDict, version: int) -> float:
        """Returns the wall-clock seconds of the whole sync (until every engine has the weights)."""
        ...

    def close(self) -> None: ...


class TransferReceiver(Protocol):
    def init_weight_transfer(self, init_info: dict[str, Any]) -> Any: ...

    def receive_weights(self, update_info: dict[str, Any], version: int) -> Any: ...


def _call_all(fns: Sequence, timeout_s: float | None) -> list[Any]:
    """Run the callables concurrently (engines must receive at the same time for collectives)."""
    if len(fns) == 1:
        return [fns[0]()]
    pool = ThreadPoolExecutor(max_workers=len(fns))
    try:
        futures = [pool.submit(fn) for fn in fns]
        return [f.result(timeout=timeout_s) for f in futures]
    finally:
        pool.shutdown(wait=False)  # on a timeout, do not wait for the hung call


# ----------------------------------------------------------------------------- GPU: vLLM native NCCL


class NcclWeightSync:
    """Broadcast the state dict from learner rank 0 to every vLLM worker over NCCL, in packed
    buckets of ``bucket_bytes`` (vLLM's ``NCCLTrainerWeightTransferEngine``).

    Group layout: rank 0 = this process; receiver ``i`` (an engine with ``workers_per_receiver``
    tensor-parallel workers) takes ranks ``1 + i * workers_per_receiver ...``. The group is formed
    on the first ``push`` (every receiver joins concurrently). Each engine receives a whole update
    in one RPC (``tokenbridge_receive_weights``: start -> buckets -> finish), so the trainer
    engine's separate start / finish calls are no-ops here. A push that exceeds ``timeout_s``
    raises ``TimeoutError`` and leaves this sync unusable (an NCCL group stuck mid-broadcast cannot
    be reused): recreate the engines' transfer group.
    """

    def __init__(
        self,
        receivers: Sequence[TransferReceiver],
        *,
        master_address: str = "127.0.0.1",
        master_port: int = 29531,
        workers_per_receiver: int = 1,
        bucket_bytes: int = 256 << 20,
        num_buffers: int = 2,
        timeout_s: float = 600.0,
        device: str | torch.device = "cuda",
    ):
        if not receivers:
            raise ValueError("NcclWeightSync needs at least one receiver (rollout engine)")
        if bucket_bytes <= 0:
            raise ValueError(f"bucket_bytes must be > 0 (got {bucket_bytes})")
        self.receivers = list(receivers)
        self.master_address = master_address
        self.master_port = master_port
        self.workers_per_receiver = workers_per_receiver
        self.bucket_bytes = bucket_bytes
        self.num_buffers = num_buffers
        self.timeout_s = timeout_s
        self.device = torch.device(device)
        self.last_sync_seconds: float | None = None
        self._holder = _SwappableSource(self.device)
        self._client = _FanOutClient(self.receivers, workers_per_receiver, timeout_s)
        self._trainer: Any = None
        self._broken = False

    @property
    def world_size(self) -> int:
        return 1 + len(self.receivers) * self.workers_per_receiver

    def _connect(self) -> None:
        from vllm.distributed.weight_transfer.nccl_engine import (
            NCCLTrainerInitInfo,
            NCCLTrainerWeightTransferEngine,
        )

        info = NCCLTrainerInitInfo(
            master_address=self.master_address,
            master_port=self.master_port,
            world_size=self.world_size,
            rank=0,
            packed=True,
            packed_buffer_size_bytes=self.bucket_bytes,
            packed_num_buffers=self.num_buffers,
        )
        self._trainer = NCCLTrainerWeightTransferEngine.trainer_init(
            info, client=self._client, source=_weight_source(self._holder)
        )

    def _on_device(self, fn) -> None:
        # A fresh thread starts on cuda:0; the NCCL group and buffers must live on our device.
        with torch.cuda.device(self.device):
            fn()

    def push(self, state_dict: StateDict, version: int) -> float:
        if self._broken:
            raise RuntimeError("NcclWeightSync is unusable after a failed push; rebuild the transfer group")
        if not torch.cuda.is_available():
            raise RuntimeError(
                "NcclWeightSync needs CUDA; on CPU the engines reload a weights file "
                "(StudentEngine.load_weights)"
            )
        start = time.perf_counter()
        self._holder.state_dict = state_dict
        self._client.version = version
        pool = ThreadPoolExecutor(max_workers=1)
        try:
            if self._trainer is None:
                pool.submit(self._on_device, self._connect).result(timeout=self.timeout_s)
            pool.submit(self._on_device, self._trainer.send_weights).result(timeout=self.timeout_s)
        except FutureTimeout as e:
            self._broken = True
            raise TimeoutError(
                f"NCCL weight sync of version {version} did not finish in {self.timeout_s} s; "
                "an engine may be dead or hung"
            ) from e
        except BaseException:
            self._broken = True
            raise
        finally:
            pool.shutdown(wait=False)  # a hung broadcast thread must not block the caller
            self._holder.state_dict = {}
        self.last_sync_seconds = time.perf_counter() - start
        return self.last_sync_seconds

    def close(self) -> None:
        if self._trainer is not None:
            self._trainer.shutdown()
            self._trainer = None


class _FanOutClient:
    """vLLM's ``VLLMWeightSyncClient`` protocol over several receivers (engines)."""

    def __init__(self, receivers: Sequence[TransferReceiver], workers_per_receiver: int, timeout_s: float):
        self.receivers = receivers
        self.workers_per_receiver = workers_per_receiver
        self.timeout_s = timeout_s
        self.version = 0

    def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None:
        infos = [
            {**init_info, "rank_offset": 1 + i * self.workers_per_receiver}
            for i in range(len(self.receivers))
        ]
        _call_all(
            [lambda r=r, info=info: r.init_weight_transfer(info) for r, info in zip(self.receivers, infos)],
            self.timeout_s,
        )

    def start_weight_update(self) -> None:
        pass  # done inside each receiver's single receive RPC

    def update_weights(self, update_info: Any) -> None:
        version = self.version
        _call_all(
            [lambda r=r: r.receive_weights(update_info, version) for r in self.receivers], self.timeout_s
        )

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        pass  # done inside each receiver's single receive RPC


class _SwappableSource:
    """Holds the state dict of the current push; the vLLM ``WeightSource`` below reads it."""

    def __init__(self, device: torch.device):
        self.device = device
        self.state_dict: StateDict = {}


def _weight_source(holder: _SwappableSource):
    """A ``vllm...weight_transfer.WeightSource`` over ``holder.state_dict``: metadata in dict order,
    tensors moved to the broadcast device one at a time as the buckets are packed. Built lazily
    because vLLM is imported only on the GPU path."""
    from vllm.distributed.weight_transfer.base import ParamMeta, WeightSource

    class StateDictSource(WeightSource):
        def metadata(self) -> list[ParamMeta]:
            return [ParamMeta(name, t.dtype, tuple(t.shape)) for name, t in holder.state_dict.items()]

        def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
            for name, t in holder.state_dict.items():
                yield name, t.detach().to(holder.device).contiguous()

    return StateDictSource()
