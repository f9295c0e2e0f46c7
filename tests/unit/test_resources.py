"""Start-up resource check: fits, misfits whose message shows the arithmetic, TP per node, colocation,
and every real-pair / GPU-cluster recipe composing, validating and fitting the cluster its header names."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir

from framework.config import Config, ConfigError, register_configs, to_config, validate
from framework.resources import alive_node_resources, check_resources

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
register_configs()


def _gpu_cfg(
    engines=2, rollout_tp=1, replicas=2, teacher_tp=1, ranks=4, placement="disaggregated", cpus_per_actor=0.0
) -> Config:
    cfg = Config()
    cfg.cluster.device = "cuda"
    cfg.cluster.placement = placement
    cfg.rollout.num_engines, cfg.rollout.tensor_parallel_size = engines, rollout_tp
    cfg.teacher.num_replicas, cfg.teacher.tensor_parallel_size = replicas, teacher_tp
    cfg.learner.num_ranks = ranks
    cfg.cluster.gpus_per_rollout_engine = float(rollout_tp)
    cfg.cluster.gpus_per_teacher_replica = float(teacher_tp)
    cfg.cluster.gpus_per_learner_rank = 1.0
    cfg.cluster.cpus_per_actor = cpus_per_actor
    cfg.data.prompts_per_step = 16
    validate(cfg)
    return cfg


def _nodes(count: int, gpus: int = 8, cpus: int = 64) -> list[dict[str, float]]:
    return [{"GPU": float(gpus), "CPU": float(cpus), f"node:10.0.0.{i}": 1.0} for i in range(count)]


def _total(nodes: list[dict[str, float]]) -> dict[str, float]:
    return {"GPU": sum(n["GPU"] for n in nodes), "CPU": sum(n["CPU"] for n in nodes)}


def test_disaggregated_layout_that_fits_reports_the_sum():
    cfg = _gpu_cfg(engines=4, rollout_tp=2, replicas=2, teacher_tp=2, ranks=4)
    nodes = _nodes(2)
    plan = check_resources(cfg, _total(nodes), nodes)
    assert plan.gpus_needed == 4 * 2 + 2 * 2 + 4 * 1 == 16
    assert "= 16 GPUs" in plan.gpu_arithmetic
    assert "the cluster has 16" in plan.summary()


def test_misfit_message_shows_each_term_and_both_totals():
    cfg = _gpu_cfg(engines=4, rollout_tp=2, replicas=2, teacher_tp=2, ranks=4)
    with pytest.raises(ConfigError) as info:
        check_resources(cfg, {"GPU": 8.0, "CPU": 64.0})
    msg = str(info.value)
    assert "4 rollout engines × 2 GPUs (TP 2)" in msg
    assert "2 teacher replicas × 2 GPUs (TP 2)" in msg
    assert "4 learner ranks × 1 GPU" in msg
    assert "= 16 GPUs" in msg and "the cluster has 8" in msg
    assert "Fix:" in msg


def test_one_gpu_short_fails_and_exact_fit_passes():
    cfg = _gpu_cfg(engines=2, replicas=2, ranks=4)
    check_resources(cfg, {"GPU": 8.0})
    with pytest.raises(ConfigError, match="= 8 GPUs, the cluster has 7"):
        check_resources(cfg, {"GPU": 7.0})


def test_no_gpus_visible_gives_a_hint():
    with pytest.raises(ConfigError, match="Ray sees no GPU"):
        check_resources(_gpu_cfg(), {"CPU": 32.0})


def test_tensor_parallel_larger_than_a_node_is_rejected_even_when_the_total_fits():
    cfg = _gpu_cfg(engines=1, rollout_tp=16, replicas=1, ranks=1)
    nodes = _nodes(4)  # 32 GPUs in all, 8 per node
    with pytest.raises(ConfigError) as info:
        check_resources(cfg, _total(nodes), nodes)
    assert info.value.key == "rollout.tensor_parallel_size"
    assert "TP 16 needs 16 GPUs on one node, the largest node has 8" in str(info.value)


def test_teacher_tp_per_node_is_checked_too():
    cfg = _gpu_cfg(engines=1, replicas=1, teacher_tp=4, ranks=1)
    nodes = _nodes(3, gpus=2)
    with pytest.raises(ConfigError) as info:
        check_resources(cfg, _total(nodes), nodes)
    assert info.value.key == "teacher.tensor_parallel_size"


def test_packing_onto_the_nodes_is_left_to_ray():
    # 3 engines × TP 4 + 1 rank = 13 GPUs <= 2 nodes × 7 = 14: the arithmetic passes, each TP group
    # fits a node; whether the groups pack is Ray's to say when it places them (actors/placement.py)
    cfg = _gpu_cfg(engines=3, rollout_tp=4, replicas=1, ranks=1)
    cfg.teacher.backend, cfg.teacher.url = "http", "https://teacher.example:8000/v1"
    cfg.cluster.gpus_per_teacher_replica = 0.0
    nodes = _nodes(2, gpus=7)
    plan = check_resources(cfg, _total(nodes), nodes)
    assert plan.gpus_needed == 13 and "node" not in plan.summary()


def test_colocated_counts_the_shared_pool_once():
    cfg = _gpu_cfg(engines=6, replicas=2, ranks=6, placement="colocated")
    plan = check_resources(cfg, {"GPU": 8.0}, _nodes(1))
    assert plan.gpus_needed == max(6, 6) + 2 == 8
    assert plan.gpu_arithmetic.startswith("max(6 rollout engines × 1 GPU (TP 1), 6 learner ranks × 1 GPU)")
    # the same layout disaggregated needs the sum and does not fit
    with pytest.raises(ConfigError, match="= 14 GPUs, the cluster has 8"):
        check_resources(_gpu_cfg(engines=6, replicas=2, ranks=6), {"GPU": 8.0})


def test_colocated_uneven_footprints_take_the_larger_and_say_so():
    cfg = _gpu_cfg(engines=2, replicas=1, ranks=4, placement="colocated")
    plan = check_resources(cfg, {"GPU": 5.0}, _nodes(1, gpus=5))
    assert plan.gpus_needed == max(2 * 1, 4) + 1 == 5
    assert any("serve only one of them" in n for n in plan.notes)
    with pytest.raises(ConfigError, match="= 5 GPUs, the cluster has 4"):
        check_resources(cfg, {"GPU": 4.0})


def test_colocated_rejects_tensor_parallel_engines():
    with pytest.raises(ConfigError) as info:
        _gpu_cfg(engines=2, rollout_tp=2, replicas=1, ranks=2, placement="colocated")
    assert info.value.key == "rollout.tensor_parallel_size"


def test_colocated_rejects_fractional_engines():
    cfg = _gpu_cfg(engines=2, ranks=2, placement="colocated")
    cfg.cluster.gpus_per_rollout_engine = 0.5
    cfg.rollout.gpu_memory_utilization = 0.4
    with pytest.raises(ConfigError) as info:
        check_resources(cfg, {"GPU": 8.0})
    assert info.value.key == "cluster.gpus_per_rollout_engine"


@pytest.mark.parametrize(
    ("field", "value", "key"),
    [
        ("gpus_per_rollout_engine", 1.0, "cluster.gpus_per_rollout_engine"),  # TP 2 needs 2
        ("gpus_per_rollout_engine", 0.0, "cluster.gpus_per_rollout_engine"),
        ("gpus_per_learner_rank", 0.5, "cluster.gpus_per_learner_rank"),
        ("gpus_per_learner_rank", 2.0, "cluster.gpus_per_learner_rank"),
    ],
)
def test_gpu_request_must_match_what_the_actor_uses(field, value, key):
    cfg = _gpu_cfg(engines=1, rollout_tp=2, replicas=1, ranks=1)
    setattr(cfg.cluster, field, value)
    with pytest.raises(ConfigError) as info:
        check_resources(cfg, {"GPU": 64.0})
    assert info.value.key == key and "Fix:" in str(info.value)


def test_fractional_engines_share_a_gpu_only_within_their_memory_share():
    cfg = _gpu_cfg(engines=4, replicas=1, ranks=1)
    cfg.cluster.gpus_per_rollout_engine = 0.5
    cfg.rollout.gpu_memory_utilization = 0.45
    plan = check_resources(cfg, {"GPU": 4.0}, _nodes(1, gpus=4))
    assert plan.gpus_needed == 4 * 0.5 + 1 + 1
    assert "4 rollout engines × 0.5 GPUs (TP 1)" in plan.gpu_arithmetic
    cfg.rollout.gpu_memory_utilization = 0.9
    with pytest.raises(ConfigError) as info:
        check_resources(cfg, {"GPU": 4.0})
    assert info.value.key == "rollout.gpu_memory_utilization"


def test_http_teacher_needs_no_gpu_and_must_ask_for_none():
    cfg = _gpu_cfg(engines=1, replicas=3, ranks=1)
    cfg.teacher.backend, cfg.teacher.url = "http", "https://teacher.example:8000/v1"
    with pytest.raises(ConfigError) as info:
        check_resources(cfg, {"GPU": 8.0})
    assert info.value.key == "cluster.gpus_per_teacher_replica"
    cfg.cluster.gpus_per_teacher_replica = 0.0
    plan = check_resources(cfg, {"GPU": 2.0})
    assert plan.gpus_needed == 2


def test_learner_ranks_need_a_sample_each():
    cfg = _gpu_cfg(engines=1, replicas=1, ranks=8)
    cfg.data.prompts_per_step, cfg.rollout.samples_per_prompt = 1, 4
    with pytest.raises(ConfigError) as info:
        check_resources(cfg, {"GPU": 16.0})
    assert info.value.key == "learner.num_ranks" and "1 × 4 = 4 samples" in str(info.value)
    cfg.data.prompts_per_step = 3  # 12 samples over 8 ranks: allowed, but noted
    plan = check_resources(cfg, {"GPU": 16.0})
    assert any("do not split evenly" in n for n in plan.notes)


def test_cpu_device_checks_cpus_only_when_reserved():
    cfg = Config()  # the CPU demo: cpus_per_actor = 0, nothing to reserve
    plan = check_resources(cfg, {"CPU": 2.0})
    assert plan.gpus_needed == 0 and plan.cpus_needed == 0
    cfg.cluster.cpus_per_actor = 2.0
    with pytest.raises(ConfigError) as info:
        check_resources(cfg, {"CPU": 4.0})
    assert info.value.key == "cluster.cpus_per_actor"
    assert "× 2 CPUs = 8 CPUs, the cluster has 4" in str(info.value)
    assert check_resources(cfg, {"CPU": 8.0}).cpus_needed == 8


def test_reserved_cpus_are_counted_against_the_cluster():
    cfg = Config()
    cfg.cluster.cpus_per_actor = 3.0  # 4 actors × 3 = 12 CPUs: the total fits 2 × 6, one node holds two
    plan = check_resources(cfg, {"CPU": 12.0}, [{"CPU": 6.0}, {"CPU": 6.0}])
    assert plan.cpus_needed == 12
    with pytest.raises(ConfigError, match="the cluster has 11"):
        check_resources(cfg, {"CPU": 11.0}, [{"CPU": 6.0}, {"CPU": 5.0}])


def test_alive_node_resources_reads_ray_nodes_output():
    ray_nodes = [
        {"Alive": True, "Resources": {"GPU": 8.0, "CPU": 96.0}},
        {"Alive": False, "Resources": {"GPU": 8.0, "CPU": 96.0}},
        {"Alive": True, "Resources": {"CPU": 16.0}},
    ]
    assert alive_node_resources(ray_nodes) == [{"GPU": 8.0, "CPU": 96.0}, {"CPU": 16.0}]


# ---- recipes ----------------------------------------------------------------------------------

_NEEDS = re.compile(r"^# Needs (\d+) nodes? × (\d+) GPUs and (\d+) CPUs each\.$", re.MULTILINE)
HUB_PAIRS = sorted(p.stem for p in (RECIPES / "pair").glob("*.yaml") if not p.stem.startswith("zoo_"))
GPU_CLUSTERS = sorted(p.stem for p in (RECIPES / "cluster").glob("gpu_*.yaml"))


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=str(RECIPES), version_base=None):
        return compose("config", overrides=overrides)


def test_there_are_hub_pairs_and_gpu_layouts():
    assert len(HUB_PAIRS) >= 4 and len(GPU_CLUSTERS) >= 3


@pytest.mark.parametrize("pair", sorted(p.stem for p in (RECIPES / "pair").glob("*.yaml")))
def test_every_pair_recipe_holds_only_pair_keys_and_validates(pair):
    keys = set(yaml.safe_load((RECIPES / "pair" / f"{pair}.yaml").read_text()))
    assert keys <= {"name", "student", "teacher", "trust_remote_code"}, keys
    cfg = to_config(_compose([f"pair={pair}"]))
    assert not cfg.pair.trust_remote_code
    if not pair.startswith("zoo_"):
        assert "/" in cfg.pair.student and "/" in cfg.pair.teacher  # Hugging Face Hub ids


@pytest.mark.parametrize("cluster", sorted(p.stem for p in (RECIPES / "cluster").glob("*.yaml")))
def test_every_cluster_recipe_is_global_and_composes_with_a_hub_pair(cluster):
    # pair files hold only pair.* keys (checked above), so one pair per layout covers the combinations
    text = (RECIPES / "cluster" / f"{cluster}.yaml").read_text()
    assert text.splitlines()[0] == "# @package _global_"
    cfg = to_config(_compose([f"pair={HUB_PAIRS[-1]}", f"cluster={cluster}"]))
    assert cfg.cluster.device == ("cuda" if cluster.startswith("gpu_") else "cpu")
    assert cfg.pair.name == yaml.safe_load((RECIPES / "pair" / f"{HUB_PAIRS[-1]}.yaml").read_text())["name"]


@pytest.mark.parametrize("cluster", GPU_CLUSTERS)
def test_gpu_cluster_recipe_fits_exactly_the_cluster_its_header_names(cluster):
    text = (RECIPES / "cluster" / f"{cluster}.yaml").read_text()
    match = _NEEDS.search(text)
    assert match, f"{cluster}.yaml: header lacks '# Needs N node(s) × G GPUs and C CPUs each.'"
    count, gpus, cpus = (int(g) for g in match.groups())
    assert "launch/" in text, "the header should show the launch command"
    cfg = to_config(_compose([f"pair={HUB_PAIRS[0]}", f"cluster={cluster}"]))
    assert cfg.learner.dtype == "bfloat16" and cfg.teacher.top_k == 20
    assert 1e-6 <= cfg.learner.lr <= 1e-5
    nodes = _nodes(count, gpus, cpus)
    plan = check_resources(
        cfg, _total(nodes), alive_node_resources({"Alive": True, "Resources": n} for n in nodes)
    )
    assert plan.gpus_needed == count * gpus, "the header's GPU count should be what the layout uses"
    assert f"= {count * gpus} GPUs" in plan.gpu_arithmetic
    smaller = _nodes(count, gpus - 1, cpus)  # one GPU fewer per node must not fit
    with pytest.raises(ConfigError):
        check_resources(cfg, _total(smaller), smaller)
