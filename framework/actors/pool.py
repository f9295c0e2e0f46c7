"""One role's actors — rollout engines, teacher replicas, mapping workers, sft_teacher's generators,
the learner's ranks — as a pool: spawned from a factory, health-checked without blocking, with their
process trees kept for orphan cleanup (docs/design.md §7.2). Members of a stateless role are replaced
one at a time in the background (:meth:`ActorPool.restart`); the learner's ranks form one process
group and are replaced together (:meth:`ActorPool.replace_all`, driven by
:class:`framework.actors.learner.LearnerGroup`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import ray

from framework.actors.failures import RunStopped, first_line, unwrap
from framework.actors.stats import kill_local_tree

# process states of an actor that will not answer however long one waits
_NOT_RUNNING = {"stopped", "tracing-stop", "zombie", "dead", "gone"}


def actor_key(actor) -> str:
    return actor._actor_id.hex()


@dataclass
class ActorPool:
    """The members of one role. ``members`` is mutated in place: a replacement takes its index."""

    role: str
    members: list
    factory: Callable[[int], Any] | None = None  # make member i (None: cannot be replaced)
    health_timeout_s: float = 10.0  # a ping unanswered this long marks a member hung
    # member index -> (node ip, [pid, child pids...]) recorded while it answered, for orphan cleanup
    trees: dict[int, tuple[str, list[int]]] = field(default_factory=dict)
    # replacements still starting: index -> (their first process_tree call, start deadline)
    starting: dict[int, tuple[Any, float]] = field(default_factory=dict)
    _pings: dict[str, tuple[Any, float]] = field(default_factory=dict, init=False, repr=False)

    def __len__(self) -> int:
        return len(self.members)

    def __iter__(self) -> Iterator:
        return iter(self.members)

    def index(self, actor) -> int | None:
        return next((i for i, a in enumerate(self.members) if a is actor), None)

    def record_trees(self, timeout_s: float = 60.0) -> None:
        """Remember each member's process tree while it answers, to clean up orphans if it dies."""
        for i, actor in enumerate(self.members):
            self.trees[i] = ray.get(actor.process_tree.remote(), timeout=timeout_s)

    # -- replacement ----------------------------------------------------------------------------

    def restart(self, index: int, start_timeout_s: float) -> None:
        """Kill member ``index`` (dead or hung) and its recorded processes, and create its replacement
        without waiting for it: until :meth:`poll_started` sees it answer, it is *starting*."""
        self._kill(index)
        self.members[index] = self._make(index)
        self.starting[index] = (self.members[index].process_tree.remote(), time.monotonic() + start_timeout_s)

    def replace_all(self, start_timeout_s: float) -> None:
        """Kill every member and its recorded processes, create them all anew and wait until each
        answers (its tree recorded): for members that only work together, as the learner's ranks in
        one process group. Raises ``RunStopped`` naming ``trainer.actor_start_timeout_s`` for a rank
        not up in time, or with the error of one that failed while starting."""
        for index in range(len(self.members)):
            self._kill(index)
        self.members[:] = [self._make(index) for index in range(len(self.members))]
        refs = [m.process_tree.remote() for m in self.members]
        try:
            trees = ray.get(refs, timeout=start_timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise RunStopped(
                f"the replacement {self.role} actors did not start within "
                f"trainer.actor_start_timeout_s={start_timeout_s:g} s"
            ) from None
        except ray.exceptions.RayError as err:
            raise RunStopped(
                f"a replacement {self.role} actor failed to start: {first_line(unwrap(err))}"
            ) from err
        self.trees = dict(enumerate(trees))

    def _make(self, index: int):
        if self.factory is None:
            raise RuntimeError(f"the {self.role} pool has no factory: its members cannot be replaced")
        return self.factory(index)

    def _kill(self, index: int) -> None:
        """Member ``index`` and, where recorded, its process tree (on GPUs vLLM's engine-core child
        would outlive a killed actor)."""
        if self.factory is None:
            raise RuntimeError(f"the {self.role} pool has no factory: its members cannot be replaced")
        self._pings.pop(actor_key(self.members[index]), None)
        ray.kill(self.members[index], no_restart=True)
        if index in self.trees:
            kill_local_tree(*self.trees.pop(index))

    def poll_started(self, start_timeout_s: float) -> list[int]:
        """The replacements that came up since the last call (non-blocking; their trees recorded).
        Raises ``RunStopped`` (one line for the console) for one not up in time — naming
        ``trainer.actor_start_timeout_s`` — or one that failed while starting, with its own error."""
        done = []
        for index, (ref, deadline) in list(self.starting.items()):
            ready, _ = ray.wait([ref], timeout=0)
            if not ready:
                if time.monotonic() > deadline:
                    raise RunStopped(
                        f"the replacement {self.role} actor {index} did not start within "
                        f"trainer.actor_start_timeout_s={start_timeout_s:g} s"
                    )
                continue
            del self.starting[index]
            try:
                self.trees[index] = ray.get(ref)
            except Exception as err:  # its constructor raised, or the process died while starting
                raise RunStopped(
                    f"the replacement {self.role} actor {index} failed to start: {first_line(unwrap(err))}"
                ) from err
            done.append(index)
        return done

    def usable(self) -> list[int]:
        """Members that are up (not a replacement still starting)."""
        return [i for i in range(len(self.members)) if i not in self.starting]

    def is_starting(self, actor) -> bool:
        return any(self.members[i] is actor for i in self.starting)

    # -- health ---------------------------------------------------------------------------------

    def process_state(self, actor) -> str | None:
        """psutil's status of the member's process when it runs on this node ("gone" if it exited),
        else None (not a member, not recorded, or on another node)."""
        import psutil

        index = self.index(actor)
        tree = self.trees.get(index) if index is not None else None
        if tree is None or not tree[1] or tree[0] != ray.util.get_node_ip_address():
            return None
        try:
            return str(psutil.Process(tree[1][0]).status())
        except psutil.NoSuchProcess:
            return "gone"
        except psutil.Error:
            return None

    def alive(self, actor, timeout_s: float) -> bool:
        """Blocking liveness: ``ping`` runs in its own concurrency group, so a busy actor still answers
        (a replacement still starting is not asked: it would answer only once up)."""
        if self.is_starting(actor):
            return True
        try:
            return bool(ray.get(actor.ping.remote(), timeout=timeout_s))
        except (ray.exceptions.GetTimeoutError, ray.exceptions.RayActorError, ray.exceptions.RayTaskError):
            return False

    def responsive(self, actor) -> bool:
        """Heartbeat without blocking: False once a ping has gone ``health_timeout_s`` unanswered
        (a stopped or dead process), else True. Called on every pass of the stream's loop for the
        actors it waits on; a new ping goes out when the last was answered and is a third of the
        timeout old. A replacement that is still starting counts as responsive (its own deadline is
        ``actor_start_timeout_s``). Detection takes about ``health_timeout_s`` instead of the hop's
        whole timeout."""
        if self.is_starting(actor):
            return True
        key, now = actor_key(actor), time.monotonic()
        sent = self._pings.get(key)
        if sent is None:
            self._pings[key] = (actor.ping.remote(), now)
            return True
        ref, at = sent
        ready, _ = ray.wait([ref], timeout=0)
        if not ready:
            late = now - at
            if late < self.health_timeout_s:
                return True
            if self.process_state(actor) in _NOT_RUNNING:
                return False  # stopped (SIGSTOP, a debugger) or gone: no need to wait longer
            # running but silent: a C extension may hold the GIL for seconds (a tokenizer parse); a
            # process on another node cannot be looked at. Three times the timeout before giving up.
            return late < 3 * self.health_timeout_s
        try:
            ray.get(ref)
        except ray.exceptions.RayError:
            return False
        if now - at >= self.health_timeout_s / 3:
            self._pings[key] = (actor.ping.remote(), now)
        return True

    # -- fan-out --------------------------------------------------------------------------------

    def gather(self, refs: list, timeout_s: float, heartbeat: bool = True) -> list:
        """The results of one call fanned out to every member (``refs[i]`` on member ``i``), in order.

        A member whose call fails raises its error at once (the others may be blocked in a collective
        with it and would never return). With ``heartbeat``, one whose heartbeat goes silent
        (:meth:`responsive`: a stopped process after ``health_timeout_s``, a running but silent one
        after three) raises ``GetTimeoutError`` naming it, instead of after the whole ``timeout_s``,
        which still bounds a call that runs but does not end. Calls that may hold the GIL for long
        (writing or reading a large checkpoint) go without it, bounded by ``timeout_s`` alone."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            ready, pending = ray.wait(refs, num_returns=len(refs), timeout=max(0.0, min(1.0, left)))
            for ref in ready:
                ray.get(ref)  # a failed call raises here, before its partners are waited for
            if not pending:
                return ray.get(refs)
            if time.monotonic() >= deadline:
                raise ray.exceptions.GetTimeoutError(
                    f"{self.role} call not done after {timeout_s:g} s while its members answer pings"
                )
            silent = heartbeat and [
                i for i, ref in enumerate(refs) if ref in pending and not self.responsive(self.members[i])
            ]
            if silent:
                raise ray.exceptions.GetTimeoutError(
                    f"{self.role} member {silent[0]} stopped answering its heartbeat during a call"
                )

    def failed_calls(self, refs: list, actors: list, timeout_s: float) -> list[int]:
        """Wait for every call (``refs[i]`` on ``actors[i]``); return the indexes whose actor died,
        hung or overran ``timeout_s``. While a call runs its actor is pinged every
        ``health_timeout_s``: a stopped process is found within about two health timeouts instead of
        after the whole (long) timeout."""
        deadline = time.monotonic() + timeout_s
        pending, failed = dict(enumerate(refs)), []
        while pending:
            wait_s = max(0.0, min(self.health_timeout_s, deadline - time.monotonic()))
            ready, _ = ray.wait(list(pending.values()), num_returns=len(pending), timeout=wait_s)
            for i in [i for i, ref in pending.items() if ref in ready]:
                try:
                    ray.get(pending.pop(i))
                except ray.exceptions.RayActorError:
                    failed.append(i)
            if pending and time.monotonic() >= deadline:
                return sorted(failed + list(pending))
            for i in [i for i in pending if not self.alive(actors[i], self.health_timeout_s)]:
                failed.append(i)
                del pending[i]
        return sorted(failed)


def gather_stats(actors: list, wait_s: float = 1.0) -> list[dict[str, float]]:
    """Each actor's busy counters. ``stats`` runs on the health thread (a live actor answers in
    milliseconds): ``wait_s`` bounds what a stopped actor, not yet found by the heartbeat, costs the
    step. A hung actor is left out, a dead one skipped (the stream replaces it)."""
    refs = [a.stats.remote() for a in actors]
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=wait_s)
    out = []
    for ref in ready:
        try:
            out.append(ray.get(ref))
        except ray.exceptions.RayActorError:
            continue
    return out
