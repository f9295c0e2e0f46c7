"""framework/actors/placement.py: the bundles each role asks Ray for, and a clear error (with the
group removed) when Ray cannot place them, instead of Ray's bare timeout."""

from __future__ import annotations

import pytest

from framework.actors import placement
from framework.config import Config


class _Group:
    def ready(self):
        return "ready-ref"


def _fake_ray(monkeypatch, placed: bool) -> dict:
    seen: dict = {"removed": []}

    def make(bundles, strategy):
        seen["bundles"], seen["strategy"] = bundles, strategy
        return _Group()

    monkeypatch.setattr(placement, "placement_group", make)
    monkeypatch.setattr(placement, "remove_placement_group", seen["removed"].append)
    monkeypatch.setattr(placement.ray, "wait", lambda refs, timeout: (refs if placed else [], []))
    monkeypatch.setattr(placement.ray, "available_resources", lambda: {"CPU": 1.0})
    return seen


def test_a_role_is_packed_into_one_bundle_per_actor(monkeypatch):
    seen = _fake_ray(monkeypatch, placed=True)
    assert isinstance(placement.pack(3, cpus=2, gpus=1), _Group)
    assert seen["bundles"] == [{"CPU": 2, "GPU": 1}] * 3 and seen["strategy"] == "PACK"
    assert placement.pack(2, cpus=0, gpus=0) is None  # asks for nothing: no group at all


def test_colocated_pairs_share_a_gpu_bundle_and_ask_for_half_of_it(monkeypatch):
    seen = _fake_ray(monkeypatch, placed=True)
    cfg = Config()
    cfg.rollout.num_engines, cfg.learner.num_ranks, cfg.cluster.cpus_per_actor = 3, 2, 1
    placement.shared_gpus(cfg)
    assert seen["bundles"] == [{"GPU": 1.0, "CPU": 2}, {"GPU": 1.0, "CPU": 2}, {"GPU": 1.0, "CPU": 1}]
    assert [placement.colocated_gpus(cfg, i) for i in range(3)] == [0.5, 0.5, 1.0]


def test_a_group_ray_cannot_place_is_removed_and_named(monkeypatch, capsys):
    seen = _fake_ray(monkeypatch, placed=False)
    with pytest.raises(
        RuntimeError, match=r"could not place 2 bundle\(s\) of \{'CPU': 4\}.*\{'CPU': 1\.0\} available"
    ):
        placement.pack(2, cpus=4, gpus=0)
    assert len(seen["removed"]) == 1
    assert "waiting for Ray to place 2 bundle(s)" in capsys.readouterr().out  # said before the long wait
