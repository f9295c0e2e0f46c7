"""Learner → rollout engines weight sync, one interface with two paths chosen by device (design §6).

``choose_weight_path(cfg)`` picks it once per run:

- ``file`` (CPU, and colocated GPUs): learner rank 0 writes the full weights as ONE safetensors file
  on its node and every engine reloads it in place (`FileWeights`). Only the path travels through
  Ray; rank 0 and every engine must share the node.
- ``nccl`` (CUDA, disaggregated placement): every learner rank joins the gather and rank 0
  broadcasts the weights to the engines' workers over NCCL in packed buckets, tagged with the
  version, under a timeout (vLLM's weight-transfer engine; `LearnerWorker.push_weights` holds a
  `framework.rollout.weight_sync.NcclWeightSync`; `NcclWeights`). It crosses nodes. Not for
  colocated engines: NCCL cannot put two ranks of one group on the same GPU.

Both answer ``sync(version, targets, timeout_s)`` with the positions in ``targets`` of engines that
died or hung during the sync (the caller replaces them); a failure on the learner's side raises.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import weakref
from typing import TYPE_CHECKING

import ray

from framework.config import Config

if TYPE_CHECKING:
    from framework.actors.cluster import Stages


def choose_weight_path(cfg: Config) -> str:
    """``"nccl"`` on CUDA with disaggregated placement, else ``"file"`` (module docstring). A LoRA
    student always takes the file path: its sync is an adapter folder of a few MB, which vLLM loads
    as a LoRA adapter (``learner.lora_rank``, framework/learner/lora.py)."""
    nccl = (
        cfg.cluster.device == "cuda"
        and cfg.cluster.placement == "disaggregated"
        and cfg.learner.lora_rank == 0
    )
    return "nccl" if nccl else "file"


class FileWeights:
    """The file path: one safetensors file in a folder on learner rank 0's node, reloaded in place.

    Learner rank 0 writes ``weights-v{version}.safetensors`` into the sync folder (every rank joins
    the gather), then each engine reloads it, one tensor at a time. The weights exist once on disk /
    in the page cache, not as a byte string copied through the object store, the driver, the engine
    actor and vLLM's RPC. After the loads older files are deleted: only the latest stays, so that a
    replacement engine (same ``version``) reloads it without a new export.
    """

    def __init__(self, stages: Stages):
        self.stages = stages
        self.sync_folder: str | None = None
        self.latest: tuple[int, str] | None = None  # (version, path) of the file on disk
        self.learner_ip: str | None = None
        self._cleanup: weakref.finalize | None = None
        self.last_bytes: int | None = None  # size of the last export (the ``sync/bytes`` metric)

    def sync(self, version: int, targets: list, timeout_s: float) -> list[int]:
        learner = self.stages.learner
        self._check_one_node(targets, timeout_s)
        if self.latest is not None and self.latest[0] == version:
            path = self.latest[1]  # a replacement engine: the current weights are on disk
        else:
            name = f"adapter-v{version}" if self.stages.adapters else f"weights-v{version}.safetensors"
            path = os.path.join(self._folder(timeout_s), name)
            learner.export(path, timeout_s)  # raises if a rank failed or went silent
            self.latest = (version, path)
            self.last_bytes = ray.get(learner.ranks[0].sync_bytes.remote(path), timeout=timeout_s)
        loads = [engine.load_weights.remote(path, version) for engine in targets]
        failed = self.stages.pools["rollout"].failed_calls(loads, targets, timeout_s)
        # every load has finished (or its engine is dead / hung and about to be replaced): drop the rest
        ray.get(learner.ranks[0].remove_sync_files.remote(self.sync_folder, path), timeout=timeout_s)
        return failed

    def metrics(self) -> dict[str, float]:
        """``sync/bytes``: what the last export wrote (the full weights, or a LoRA adapter)."""
        return {} if self.last_bytes is None else {"sync/bytes": float(self.last_bytes)}

    def learner_replaced(self) -> None:
        """New ranks: a new node perhaps, and the file on disk is not theirs (the folder stays)."""
        self.learner_ip, self.latest = None, None

    def _folder(self, timeout_s: float) -> str:
        """The run's sync folder, made once by learner rank 0 in its node's system temp dir.

        Not under the run's output folder: that one may be a network volume shared by every node
        (slow for a full model per step, and kept after the run), while the file only has to live
        until the engines on this node have read it. The temp dir honours ``TMPDIR``; where it is a
        tmpfs (RAM), point ``TMPDIR`` at a disk folder to keep the file out of memory. ``close``
        removes the folder; a driver on the learner's node also removes it when it exits.
        """
        if self.sync_folder is None:
            rank0 = self.stages.learner.ranks[0]
            self.sync_folder = ray.get(rank0.make_sync_folder.remote(), timeout=timeout_s)
            if self.learner_ip == ray.util.get_node_ip_address():  # a run that ends without close()
                self._cleanup = weakref.finalize(self, shutil.rmtree, self.sync_folder, True)
        return self.sync_folder

    def _check_one_node(self, targets: list, timeout_s: float) -> None:
        """The engines read a file learner rank 0 writes: raise unless they all run on its node."""
        stages = self.stages
        if self.learner_ip is None:
            self.learner_ip = ray.get(stages.learner.ranks[0].process_tree.remote(), timeout=timeout_s)[0]
        nodes: dict[int, str] = {}
        asked = {}
        for i, engine in enumerate(targets):
            index = next((j for j, e in enumerate(stages.rollout) if e == engine), None)
            tree = stages.pools["rollout"].trees.get(index) if index is not None else None
            if tree is not None:
                nodes[i] = tree[0]  # recorded at start-up / restart
            else:
                asked[i] = engine.process_tree.remote()
        if asked:
            ready, _ = ray.wait(list(asked.values()), num_returns=len(asked), timeout=stages.health_timeout_s)
            for i, ref in asked.items():
                if ref in ready:
                    with contextlib.suppress(ray.exceptions.RayError):  # a dead one fails its load instead
                        nodes[i] = ray.get(ref)[0]
        away = sorted({ip for ip in nodes.values() if ip != self.learner_ip})
        if away:
            raise RuntimeError(
                f"the file weight sync passes a file on the local filesystem, but learner rank 0 runs on "
                f"node {self.learner_ip} and rollout engines on {', '.join(away)}: place the learner's "
                "rank 0 and every rollout engine on one node (on CUDA with cluster.placement="
                "disaggregated the weights go over NCCL, across nodes)"
            )

    def close(self, timeout_s: float) -> None:
        """Remove the sync folder (learner rank 0 deletes it on its node). Call before the actors
        are killed; a learner that is gone already is skipped (the driver's exit hook, where it
        shares the node, still removes the folder)."""
        if self.sync_folder is not None:
            with contextlib.suppress(ray.exceptions.RayError):
                ray.get(
                    self.stages.learner.ranks[0].remove_sync_files.remote(self.sync_folder), timeout=timeout_s
                )
            if self._cleanup is not None:
                self._cleanup()
        self.sync_folder, self.latest = None, None


class NcclWeights:
    """The NCCL path: ``LearnerWorker.push_weights`` on every rank (rank 0 broadcasts, the others
    join the gather). An engine set that changed since the last sync (a replacement) makes rank 0
    rebuild its transfer group first. When the broadcast fails, the engines that are dead or hung
    are the ones to replace; with every engine alive the failure is the learner's and raises."""

    def __init__(self, stages: Stages):
        self.stages = stages

    def sync(self, version: int, targets: list, timeout_s: float) -> list[int]:
        try:
            self.stages.learner.push(targets, version, timeout_s, self.stages.engine_workers)
            return []
        except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError):
            health = self.stages.health_timeout_s
            failed = [i for i, engine in enumerate(targets) if not self.stages.alive(engine, health)]
            if not failed:
                raise
            return failed

    def metrics(self) -> dict[str, float]:
        """Nothing yet: the broadcast's bytes are not counted (the file path reports ``sync/bytes``)."""
        return {}

    def learner_replaced(self) -> None:
        """New ranks build their own transfer group at their first push."""

    def close(self, timeout_s: float) -> None:
        """The transfer group lives in learner rank 0's process and goes with it."""


__all__ = ["FileWeights", "NcclWeights", "choose_weight_path"]
