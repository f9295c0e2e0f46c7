"""Objective registry: ``make_objective(name, **options)`` → ``objective(student, batch, counts)``.

Each objective is a dataclass deriving from `ObjectiveConfig`; its fields are its options, so the
``algo`` config section *is* the objective (framework/config.py), and a learner rank rebuilds it from
``(name, objective.options())``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, cast

from framework.algo.inputs import Objective, ObjectiveConfig
from framework.algo.opd import OPD
from framework.algo.preference import CTPD, DPO
from framework.algo.sft import SFTTeacher
from framework.algo.topk_kl import OPDTopK

OBJECTIVES: dict[str, type[ObjectiveConfig]] = {
    cls.name: cls
    for cls in (OPD, OPDTopK, SFTTeacher, DPO, CTPD)  # type: ignore[misc]
}
# objectives trained on offline preference pairs (a data source scored once), not on rollouts
PAIR_OBJECTIVES = tuple(name for name, cls in OBJECTIVES.items() if cls.trains_on_pairs)


def objective_class(name: str) -> type[ObjectiveConfig]:
    """The objective registered as ``name`` (a ValueError listing the valid names otherwise)."""
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; valid objectives: {sorted(OBJECTIVES)}")
    return OBJECTIVES[name]


def objective_options(name: str) -> list[str]:
    """The option names ``make_objective(name, ...)`` accepts (the objective's fields but ``name``)."""
    return [f.name for f in dataclasses.fields(objective_class(name)) if f.name != "name"]


def make_objective(name: str, **options: Any) -> Objective:
    """Build the objective ``name``, e.g. ``make_objective("opd", clip_eps=0.2, adv_clamp=5.0)``."""
    valid = objective_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"objective {name!r} got unknown options {unknown}; valid options: {valid}")
    return cast(Objective, objective_class(name)(**options))  # every registered class is callable
