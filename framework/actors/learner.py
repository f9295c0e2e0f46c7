"""Ray actors for the DeepSpeed learner: one actor per rank, and the group the controller talks to."""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import ray

from framework.actors.pool import ActorPool
from framework.actors.stats import BusyClock, Health
from framework.eval import sampled_reverse_kl
from framework.learner.settings import RankSettings
from framework.types import MappedSample

if TYPE_CHECKING:  # imported inside init(): the driver never loads DeepSpeed
    from framework.learner.engine import LearnerRank
    from framework.preference.pairs import EncodedPair


def batch_statistics(samples: list[MappedSample], trained_version: int) -> dict[str, float]:
    """What the batch says before training: teacher–student reverse KL, rewards, mapping, staleness;
    in a multi-teacher run, each teacher's reverse KL and share of the samples (``teacher/<name>/*``)."""
    out = {f"batch/{k}": v for k, v in sampled_reverse_kl(samples).items()}
    out["batch/response_tokens"] = max(out["batch/response_tokens"], 1.0)
    out["batch/samples"] = float(len(samples))
    out["batch/staleness"] = float(np.mean([trained_version - s.weight_version for s in samples]))
    for name in sorted({s.teacher for s in samples if s.teacher}):
        mine = [s for s in samples if s.teacher == name]
        out[f"teacher/{name}/reverse_kl"] = sampled_reverse_kl(mine)["reverse_kl"]
        out[f"teacher/{name}/share"] = len(mine) / len(samples)
    rewards = [s.reward for s in samples if s.reward is not None]
    if rewards:
        out["batch/reward"] = float(np.mean(rewards))
    for key in {k for s in samples for k in s.diagnostics}:
        vals = [s.diagnostics[key] for s in samples if key in s.diagnostics]
        out[f"mapping/{key}"] = float(np.mean(vals))
    return out


@ray.remote(concurrency_groups={"health": 1})  # type: ignore[call-overload]  # (not in Ray's stubs)
class LearnerWorker(Health):
    """One DeepSpeed rank."""

    def __init__(self, model_path: str, rank: int, world_size: int, settings: RankSettings):
        self.model_path, self.rank, self.world_size = model_path, rank, world_size
        self.settings = settings
        self._learner: LearnerRank | None = None  # built by init(), once the rendezvous is known
        self._transfer: Any = None  # rank 0 on the NCCL weight path: its NcclWeightSync
        self._transfer_engines: list[str] = []  # the engines (actor ids) its group was built for
        self.clock = BusyClock()

    @property
    def learner(self) -> LearnerRank:
        if self._learner is None:
            raise RuntimeError("LearnerWorker.init() must run before any other call")
        return self._learner

    def address(self) -> tuple[str, int]:
        """This node's IP and a free port for the process group's rendezvous (asked of rank 0)."""
        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return ray.util.get_node_ip_address(), port

    def init(self, master_addr: str, master_port: int) -> bool:
        from framework.learner.engine import LearnerRank

        os.environ.setdefault("DS_ACCELERATOR", "cpu" if self.settings.backend == "gloo" else "cuda")
        self._learner = LearnerRank(
            self.model_path, rank=self.rank, world_size=self.world_size,
            master_addr=master_addr, master_port=master_port, settings=self.settings,
        )  # fmt: skip
        return True

    def train_step(self, sample_refs: list, version: int) -> dict[str, Any]:
        """The step's metrics (floats) plus ``sample_ids``: the trained samples (rank 0; the ledger)."""
        with self.clock:
            from framework.algo.reward import attach_reward_groups
            from framework.learner import shard_samples

            samples = [s for part in ray.get(sample_refs) for s in part]
            if self.settings.objective.trains_on_pairs:
                return self._train_pairs(samples)
            attach_reward_groups(samples)  # group baselines need the whole step, before sharding
            stats = batch_statistics(samples, version) if self.rank == 0 else {}
            num_tokens = int(sum(float(s.mask.sum()) for s in samples))
            # every rank reads the same refs and takes its own deterministic share
            mine = shard_samples(samples, self.world_size, self.settings.learner.micro_batch_tokens)[
                self.rank
            ]
            metrics = self.learner.train_step(mine, num_tokens_global=num_tokens)
            self.clock.items += num_tokens
            ids = [s.sample_id for s in samples] if self.rank == 0 else []
            return {**stats, **metrics, "sample_ids": ids}

    def _train_pairs(self, pairs: list[EncodedPair]) -> dict[str, Any]:
        """``dpo`` / ``ctpd``: the step's preference pairs dealt over the ranks like samples (the same
        deal on every rank; a pair's two responses stay together)."""
        from framework.learner import deal_by_length

        budget = self.settings.learner.micro_batch_tokens // 2  # two rows per pair
        shares = deal_by_length(
            [p.max_length for p in pairs], [p.pair_id for p in pairs], self.world_size, budget
        )
        metrics = self.learner.train_pairs([pairs[i] for i in shares[self.rank]])
        tokens = sum(r.num_response_tokens for p in pairs for r in p.responses)
        self.clock.items += tokens
        if self.rank != 0:
            return {**metrics, "sample_ids": []}
        stats = {"batch/pairs": float(len(pairs)), "batch/response_tokens": float(tokens)}
        return {**stats, **metrics, "sample_ids": [p.pair_id for p in pairs]}

    def export_weights(self, path: str) -> str:
        """Write the full weights to ``path`` (collective; rank 0 writes and returns ``path``, the
        other ranks return ``""``). Only a short string comes back through Ray."""
        with self.clock:
            return self.learner.export_weights_file(path)

    def push_weights(
        self, engines: list, version: int, timeout_s: float, workers_per_engine: int = 1
    ) -> bool:
        """NCCL weight path (framework/actors/weights.py): every rank joins the gather of the full
        weights; rank 0 broadcasts them to ``engines`` (``workers_per_engine`` tensor-parallel
        workers each) in packed buckets tagged ``version``, through
        a transfer group it builds at the first push and rebuilds when the engine set changed or a
        push failed (a group stuck mid-broadcast cannot be reused)."""
        with self.clock:
            state = self.learner.full_weights()  # collective: rank 0 holds the tensors
            if self.rank != 0:
                return True
            ids = [engine._actor_id.hex() for engine in engines]
            if self._transfer is None or ids != self._transfer_engines:
                self._close_transfer()
                from framework.rollout.weight_sync import NcclWeightSync

                with socket.socket() as s:  # a free port on this node for the group's rendezvous
                    s.bind(("", 0))
                    port = s.getsockname()[1]
                receivers = [_EngineReceiver(engine, timeout_s) for engine in engines]
                self._transfer = NcclWeightSync(
                    receivers, master_address=ray.util.get_node_ip_address(), master_port=port,
                    workers_per_receiver=workers_per_engine, timeout_s=timeout_s,
                    bucket_bytes=self.settings.export_bucket_bytes, device=self.learner.device,
                )  # fmt: skip
                self._transfer_engines = ids
            try:
                self._transfer.push(state, version)
            except BaseException:
                self._close_transfer()
                raise
            return True

    def _close_transfer(self) -> None:
        if self._transfer is not None:
            with contextlib.suppress(Exception):  # a broken group may fail to shut down cleanly
                self._transfer.close()
        self._transfer, self._transfer_engines = None, []

    def make_sync_folder(self) -> str:
        """A fresh folder for the weight-sync files, in the system temp dir of THIS node (rank 0 is
        asked: it writes the files, and the engines that read them run on its node)."""
        return tempfile.mkdtemp(prefix="tokenbridge-sync-")

    def sync_bytes(self, path: str) -> int:
        """Bytes of an exported weights file or adapter folder on this node."""
        from framework.learner.weights import path_bytes

        return path_bytes(path)

    def remove_sync_files(self, folder: str, keep: str | None = None) -> int:
        """Delete the weight-sync files in ``folder`` but ``keep``; ``keep=None``: the folder too."""
        from framework.learner.weights import remove_weights_files

        return remove_weights_files(folder, keep)

    def save(self, folder: str) -> bool:
        with self.clock:
            self.learner.save_state(str(Path(folder) / "learner"))
            self.learner.save_hf(str(Path(folder) / "student"))  # collective; rank 0 writes
            return True

    def save_student(self, folder: str) -> bool:
        """Only the student's weights, as a Hugging Face folder (collective; rank 0 writes)."""
        with self.clock:
            self.learner.save_hf(folder)
            return True

    def load(self, folder: str) -> bool:
        self.learner.load_state(str(Path(folder) / "learner"))
        return True

    def logprobs(self, input_ids_list: list[np.ndarray], response_starts: list[int]) -> list[np.ndarray]:
        """Rank 0 scores the sequences; the other ranks join with nothing (ZeRO-3 gathers are collective)."""
        if self.rank != 0:
            input_ids_list, response_starts = [], []
        return self.learner.compute_logprobs(input_ids_list, response_starts)

    @ray.method(concurrency_group="health")  # answered beside a busy call (the step's metrics)
    def stats(self) -> dict[str, float]:
        return self.clock.snapshot()


class _EngineReceiver:
    """A rollout engine actor as `NcclWeightSync`'s receiver: its fan-out threads call these and
    block until the engine has joined the group / received the whole update."""

    def __init__(self, engine, timeout_s: float):
        self.engine, self.timeout_s = engine, timeout_s

    def init_weight_transfer(self, init_info: dict) -> Any:
        return ray.get(self.engine.init_weight_transfer.remote(init_info), timeout=self.timeout_s)

    def receive_weights(self, update_info: dict, version: int) -> Any:
        return ray.get(self.engine.receive_weights.remote(update_info, version), timeout=self.timeout_s)


class LearnerGroup:
    """The R ranks of the learner, driven in lockstep (every call goes to every rank). The ranks are
    an :class:`ActorPool` like every other role's members (factory, heartbeat, recorded process
    trees); what differs is that they form one process group, so a failure replaces them all."""

    def __init__(self, pool: ActorPool, start_timeout_s: float = 900.0):
        self.pool = pool
        self._connect(start_timeout_s)

    @property
    def ranks(self) -> list:
        return self.pool.members

    def _connect(self, timeout_s: float) -> None:
        """Join the ranks into one process group (rank 0's address) and record their process trees."""
        addr, port = ray.get(self.ranks[0].address.remote(), timeout=timeout_s)
        ray.get([r.init.remote(addr, port) for r in self.ranks], timeout=timeout_s)
        self.pool.record_trees(timeout_s)

    def replace(self, start_timeout_s: float) -> None:
        """Every rank killed (with its processes) and started afresh at the initial weights, then
        joined again: a process group cannot lose one member."""
        self.pool.replace_all(start_timeout_s)
        self._connect(start_timeout_s)

    def train_step(self, sample_refs: list, version: int, timeout_s: float) -> dict[str, Any]:
        """Rank 0's metrics. A rank that dies or goes silent fails the step within about a health
        timeout (:meth:`ActorPool.gather`), not after ``timeout_s``."""
        return self.pool.gather([r.train_step.remote(sample_refs, version) for r in self.ranks], timeout_s)[0]

    def export(self, path: str, timeout_s: float) -> None:
        """Every rank joins the export (a collective); rank 0 writes ``path`` (a large file: no heartbeat)."""
        self.pool.gather([r.export_weights.remote(path) for r in self.ranks], timeout_s, heartbeat=False)

    def push(self, engines: list, version: int, timeout_s: float, workers_per_engine: int) -> None:
        """The NCCL path: every rank joins the gather of the full weights; rank 0 broadcasts them."""
        refs = [r.push_weights.remote(engines, version, timeout_s, workers_per_engine) for r in self.ranks]
        self.pool.gather(refs, timeout_s, heartbeat=False)  # not yet run on a GPU: bounded by the timeout

    def save(self, folder: Path, timeout_s: float) -> None:
        self.pool.gather([r.save.remote(str(folder)) for r in self.ranks], timeout_s, heartbeat=False)

    def save_student(self, folder: Path, timeout_s: float) -> None:
        self.pool.gather([r.save_student.remote(str(folder)) for r in self.ranks], timeout_s, heartbeat=False)

    def load(self, folder: Path, timeout_s: float) -> None:
        self.pool.gather([r.load.remote(str(folder)) for r in self.ranks], timeout_s, heartbeat=False)

    def logprobs(self, input_ids_list, response_starts, timeout_s: float = 300) -> list[np.ndarray]:
        """The learner's logprobs of fixed response tokens (every rank joins: ZeRO-3 gathers are collective)."""
        refs = [r.logprobs.remote(input_ids_list, response_starts) for r in self.ranks]
        return self.pool.gather(refs, timeout_s)[0]
