"""Where each actor runs: Ray placement groups per role, and the shared GPU bundles of colocated
placement (docs/design.md §3).

`framework/resources.py` checks at start-up, with arithmetic a user can read, that the totals fit
the cluster; here Ray reserves the layout and packs it onto the nodes. A group Ray cannot place
within ``PLACEMENT_TIMEOUT_S`` fails with what was asked and what the cluster has left (and, from
``train.py``, that arithmetic), instead of Ray's bare timeout.
"""

from __future__ import annotations

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from framework.config import Config
from framework.logging import say

PLACEMENT_TIMEOUT_S = 600.0
PLACEMENT_NOTICE_S = 30.0  # a group not placed by then is said on the console


class PlacementError(RuntimeError):
    """Ray could not place a role's placement group (``train.py`` adds the GPU/CPU arithmetic)."""


def role_options(
    cfg: Config, gpus: float, bundle_group: PlacementGroup | None = None, index: int = 0
) -> dict:
    """Ray actor options for one member: its CPUs and GPUs, in bundle ``index`` of ``bundle_group``."""
    opts: dict = {"num_cpus": cfg.cluster.cpus_per_actor, "num_gpus": gpus}
    if bundle_group is not None:
        opts["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
            placement_group=bundle_group, placement_group_bundle_index=index
        )
    return opts


def pack(count: int, cpus: float, gpus: float) -> PlacementGroup | None:
    """A placement group that packs a role's ``count`` actors onto as few nodes as possible (None
    when they ask for no resources)."""
    if cpus == 0 and gpus == 0:
        return None
    bundle = {k: v for k, v in (("CPU", cpus), ("GPU", gpus)) if v > 0}
    return _reserved([dict(bundle) for _ in range(count)])


def shared_gpus(cfg: Config) -> PlacementGroup:
    """``placement=colocated`` on cuda: one bundle per shared GPU, ``max(E, L)`` of them (resources.py's
    ``max(E * TP_r, L)`` with TP_r = 1). Rollout engine i and learner rank i share bundle i (see
    :func:`colocated_gpus`); an engine or a rank with no partner has a bundle of its own.
    """
    c, engines, ranks = cfg.cluster, cfg.rollout.num_engines, cfg.learner.num_ranks  # TP = 1: validate()
    pairs = min(engines, ranks)
    cpus = [c.cpus_per_actor * (2 if i < pairs else 1) for i in range(max(engines, ranks))]
    return _reserved([{"GPU": 1.0, "CPU": n} if n > 0 else {"GPU": 1.0} for n in cpus])


def colocated_gpus(cfg: Config, i: int) -> float:
    """What engine i / learner rank i asks of shared bundle i: half its GPU when both sit there (Ray's
    bookkeeping only: the engine sleeps while the learner steps), else the whole GPU."""
    return 0.5 if i < min(cfg.rollout.num_engines, cfg.learner.num_ranks) else 1.0


def _reserved(bundles: list[dict[str, float]]) -> PlacementGroup:
    group = placement_group(bundles, strategy="PACK")
    ready, _ = ray.wait([group.ready()], timeout=PLACEMENT_NOTICE_S)
    if not ready:  # an autoscaler may still bring nodes: say so, then wait the rest
        say(f"[tokenbridge] waiting for Ray to place {len(bundles)} bundle(s) of {bundles[0]} (up to "
            f"{PLACEMENT_TIMEOUT_S:g} s; the cluster has {ray.available_resources()} available)")  # fmt: skip
        ready, _ = ray.wait([group.ready()], timeout=PLACEMENT_TIMEOUT_S - PLACEMENT_NOTICE_S)
    if not ready:
        remove_placement_group(group)
        raise PlacementError(
            f"Ray could not place {len(bundles)} bundle(s) of {bundles[0]} within {PLACEMENT_TIMEOUT_S:g} s; "
            f"the cluster has {ray.available_resources()} available. Lower the role's size or resources "
            "(cluster.cpus_per_actor, cluster.gpus_per_*), or add nodes"
        )
    return group
