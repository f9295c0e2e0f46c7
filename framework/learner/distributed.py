"""Process-group setup for one learner rank and the few small collectives the learner needs."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

BACKENDS = ("gloo", "nccl")


def select_accelerator(backend: str) -> None:
    """Point DeepSpeed at the CPU accelerator for gloo on a machine without CUDA.

    DeepSpeed picks its accelerator when it is first imported, so this runs before ``import deepspeed``.
    An explicit ``DS_ACCELERATOR`` in the environment wins.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "gloo" and not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def init_distributed(*, rank: int, world_size: int, master_addr: str, master_port: int, backend: str) -> None:
    """Join the learner's process group (``deepspeed.init_distributed`` from the env:// variables).

    Idempotent within a process: a second call checks the existing group matches.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
    select_accelerator(backend)
    if dist.is_initialized():
        if dist.get_rank() != rank or dist.get_world_size() != world_size:
            raise RuntimeError(
                f"this process already joined a process group as rank {dist.get_rank()}/"
                f"{dist.get_world_size()}; one learner rank per process"
            )
        return
    if backend == "nccl" and not torch.cuda.is_available():
        raise RuntimeError("backend='nccl' needs CUDA GPUs; use backend='gloo' on CPU")
    # LOCAL_RANK picks the GPU: a Ray actor that sees one GPU gets 0; all GPUs visible gets rank % count
    default_local = rank % torch.cuda.device_count() if backend == "nccl" else rank
    os.environ.update(
        MASTER_ADDR=str(master_addr),
        MASTER_PORT=str(master_port),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=os.environ.get("LOCAL_RANK", str(default_local)),
        LOCAL_WORLD_SIZE=os.environ.get("LOCAL_WORLD_SIZE", str(world_size)),
    )
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    import deepspeed

    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)


def collective_device(backend: str) -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")


def all_reduce(values: torch.Tensor, op: str, backend: str) -> torch.Tensor:
    """Sum or max of a small tensor over all ranks (returned on CPU)."""
    ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}
    out = values.to(collective_device(backend)).clone()
    dist.all_reduce(out, op=ops[op])
    return out.cpu()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
