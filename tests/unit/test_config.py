"""Every recipe composes and validates; impossible values fail with the key and the fix."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from framework.config import ALGOS, Config, ConfigError, register_configs, to_config, validate

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
register_configs()


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=str(RECIPES), version_base=None):
        return compose("config", overrides=overrides)


def _group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (RECIPES / group).glob("*.yaml"))


@pytest.mark.parametrize("group", ["pair", "algo", "data", "cluster", "harness", "lora", "teachers"])
def test_every_recipe_in_group_composes_and_validates(group):
    options = _group_options(group)
    assert options, f"recipes/{group} is empty"
    for option in options:
        cfg = to_config(_compose([f"{group}={option}"]))
        assert isinstance(cfg, Config)


def test_default_recipe_is_the_cross_family_cpu_demo():
    cfg = to_config(_compose([]))
    assert cfg.pair.student.startswith("zoo:") and cfg.pair.teacher.startswith("zoo:")
    assert cfg.pair.student.split("-")[-1] != cfg.pair.teacher.split("-")[-1]  # different families
    assert cfg.cluster.device == "cpu" and cfg.algo.name == "opd" and not cfg.pair.trust_remote_code


def test_the_harness_recipe_turns_on_harness_evaluation():
    assert to_config(_compose([])).harness.tasks == []
    assert to_config(_compose(["harness=zoo_arith"])).harness.tasks == ["zoo:arith"]


def test_every_algo_has_a_recipe():
    options = _group_options("algo")
    assert set(ALGOS) <= set(options)  # recipes beyond the names are variants (opd_reward: opd + reward)
    assert to_config(_compose(["algo=opd_reward"])).algo.reward_weight > 0


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("rollout.top_p=1.5", "rollout.top_p"),
        ("rollout.temperature=0", "rollout.temperature"),
        ("algo.name=ppo", "algo.name"),
        ("algo=ctpd algo.name=dpo", "algo.name"),  # the group chooses the objective, not the name
        ("learner.zero_stage=4", "learner.zero_stage"),
        ("learner.lr=-1", "learner.lr"),
        ("rollout.max_new_tokens=600", "rollout.max_new_tokens"),
        ("data.max_prompt_tokens=500", "data.max_prompt_tokens"),
        ("teacher.backend=http", "teacher.url"),
        ("algo=opd_topk teacher.top_k=0", "teacher.top_k"),
        ("algo=opd_topk algo.topk_weight=0 algo.with_sampled=false", "algo.topk_weight"),
        ("learner.dtype=float16", "learner.dtype"),
        ("learner.warmup_steps=-1", "learner.warmup_steps"),
        ("learner.lr_decay=linear", "learner.lr_decay"),
        ("learner.lr_decay=cosine learner.min_lr_ratio=1.5", "learner.min_lr_ratio"),
        ("cluster.gpus_per_learner_rank=1", "cluster.gpus_per_learner_rank"),
        ("cluster.placement=colocated trainer.max_staleness=1", "trainer.max_staleness"),
        ("cluster.placement=colocated rollout.tensor_parallel_size=2", "rollout.tensor_parallel_size"),
        ("mapping.credit=random", "mapping.credit"),
        ("mapping.boundary=bytes", "mapping.boundary"),
        ("learner.backend=nccl", "learner.backend"),
        ("rollout.dtype=fp32", "rollout.dtype"),
        ("teacher.dtype=half", "teacher.dtype"),
        ("algo.reward_weight=-0.5", "algo.reward_weight"),
        ("algo.reward_baseline=median", "algo.reward_baseline"),
        ("algo.distill_weight=0", "algo.distill_weight"),
        ("algo.clip_eps_high=-1", "algo.clip_eps_high"),
    ],
)
def test_impossible_value_names_key_and_fix(override, key):
    with pytest.raises(ConfigError) as info:
        to_config(_compose(override.split()))  # one or more space-separated overrides
    assert info.value.key == key
    assert "Fix:" in str(info.value) and key in str(info.value)


def test_validate_accepts_defaults_and_staleness_with_room():
    cfg = Config()
    validate(cfg)
    cfg.trainer.max_staleness = 1
    validate(cfg)


def test_the_algo_section_is_the_objective_with_exactly_its_options():
    """One schema: ``algo`` is the chosen objective's own dataclass, so its options are the algo.* keys,
    an option of another objective is refused naming the key, and what the run needs from the other
    services (top-k projection, pairs, teacher-written responses) comes from the objective."""
    from framework.algo import OBJECTIVES, objective_options

    for name, objective in OBJECTIVES.items():
        cfg = to_config(_compose([f"algo={name}"]))
        assert type(cfg.algo) is objective
        assert set(cfg.algo.options()) == set(objective_options(name))
    assert to_config(_compose(["algo=opd_topk"])).algo.needs_support
    assert to_config(_compose(["algo=ctpd"])).algo.trains_on_pairs
    assert to_config(_compose(["algo=sft_teacher"])).algo.teacher_generates
    with pytest.raises(ConfigError) as info:  # the same from a plain dict (the Python entry point)
        to_config({"algo": {"name": "opd", "mu": 0.5}})
    assert info.value.key == "algo.mu" and "algo=opd has no option" in str(info.value)
    assert to_config({"algo": {"name": "ctpd", "mu": 0.5}}).algo.options()["mu"] == 0.5
    with pytest.raises(Exception, match=r"algo\.mu"):  # Hydra refuses it at composition
        _compose(["algo=opd", "algo.mu=0.5"])


@pytest.mark.parametrize(
    "name, key, value, reaches",
    [
        ("opd", "dual_clip", 3.0, lambda o: o.dual_clip == 3.0),
        ("opd", "clip_eps_high", 0.28, lambda o: o.clip_eps_high == 0.28),
        ("opd_topk", "min_target_prob", 1e-6, lambda o: o.min_target_prob == 1e-6 and o.with_sampled),
        ("ctpd", "mu", 0.0, lambda o: o.mu == 0.0 and not o.needs_reference),
        ("dpo", "label_smoothing", 0.1, lambda o: o.label_smoothing == 0.1),
        ("opd", "reward_weight", 0.5, lambda o: o.reward_weight == 0.5 and o.distill_weight == 1.0),
        (
            "opd_topk",
            "reward_baseline",
            "none",
            lambda o: o.with_sampled and o.reward_baseline == "none",
        ),
    ],
)
def test_algo_options_reach_the_objective(name, key, value, reaches):
    from framework.actors.cluster import _rank_settings
    from framework.algo import make_objective

    cfg = to_config(_compose([f"algo={name}", f"algo.{key}={value}"]))
    settings = _rank_settings(cfg)  # what the learner ranks are given
    assert reaches(make_objective(settings.objective.name, **settings.objective.options()))


def test_a_bad_objective_option_fails_at_validation_naming_it():
    with pytest.raises(ConfigError) as info:
        to_config(_compose(["algo.dual_clip=0.5"]))
    assert info.value.key == "algo.dual_clip" and "dual_clip" in str(info.value)


def test_learner_ranks_get_the_learner_section_itself():
    """One set of learner options: a rank's settings hold the run's ``learner`` section and objective,
    not copies with defaults of their own (they once disagreed on lr and betas)."""
    from framework.actors.cluster import _rank_settings
    from framework.config import LearnerConfig
    from framework.learner.settings import RankSettings

    cfg = to_config(_compose(["algo=ctpd", "learner.lr=2e-5", "trainer.seed=3"]))
    settings = _rank_settings(cfg)
    assert settings.learner is cfg.learner and settings.objective is cfg.algo and settings.seed == 3
    assert settings.backend == "gloo" and RankSettings(device="cuda").backend == "nccl"
    shared = {f.name for f in dataclasses.fields(RankSettings)} & {
        f.name for f in dataclasses.fields(LearnerConfig)
    }
    assert not shared  # no learner option is defined twice
