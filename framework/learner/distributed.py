"""Process-group setup for one learner rank and the few small collectives the learner needs."""

from __future__ import annotations

import ipaddress
import os
import socket

import torch
import torch.distributed as dist

BACKENDS = ("gloo", "nccl")
_STORES: list[dist.TCPStore] = []  # keeps rank 0's loopback rendezvous server alive for the process


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
    if is_loopback(master_addr):
        # every rank is on this machine: gloo's sockets and the rendezvous listen on loopback only
        os.environ.update(loopback_env())
        if rank == 0:
            _STORES.append(_loopback_store(str(master_addr), int(master_port), world_size))
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    import deepspeed

    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (127.0.0.0/8, ::1) or ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def loopback_interface() -> str:
    """The name of the network interface holding 127.0.0.1 (``lo`` on Linux, ``lo0`` on macOS)."""
    try:
        import psutil
    except ImportError:
        return "lo"
    for name, addrs in psutil.net_if_addrs().items():
        if any(a.family == socket.AF_INET and is_loopback(a.address) for a in addrs):
            return name
    return "lo"


def loopback_env() -> dict[str, str]:
    """The environment that puts gloo's listening sockets (one per peer pair) on loopback.

    Without it gloo binds to the address the machine's hostname resolves to, often a routable one.
    NCCL's bootstrap sockets are not covered: set ``NCCL_SOCKET_IFNAME`` yourself for those.
    """
    return {"GLOO_SOCKET_IFNAME": loopback_interface()}


def _loopback_store(host: str, port: int, world_size: int) -> dist.TCPStore:
    """Rank 0's rendezvous server (torch's TCPStore) listening on ``host`` only.

    torch's own TCPStore server binds every interface whatever the host, so the socket is bound
    here and handed over (``master_listen_fd``). It is multi-tenant: the env:// rendezvous that
    ``deepspeed.init_distributed`` runs next on the same port reuses this server instead of binding
    a second one.
    """
    if host == "localhost":
        host = "127.0.0.1"
    family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(max(world_size, 1) * 4)
    except OSError:
        listener.close()
        raise
    # the store owns the descriptor from here (it closes it)
    return dist.TCPStore(
        host, port, world_size, is_master=True, multi_tenant=True, wait_for_workers=False,
        master_listen_fd=listener.detach(),
    )  # fmt: skip


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
