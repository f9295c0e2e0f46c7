"""Objective registry: ``make_objective(name, **options)`` → ``objective(student, batch, counts)``.

Options are flat keyword arguments (the shape of ``AlgoConfig`` in framework/config.py). A flat config
that carries the options of every objective can be narrowed with `objective_options`:
``make_objective(name, **{k: v for k, v in cfg.items() if k in objective_options(name)})``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from framework.algo.inputs import Objective
from framework.algo.opd import OPD
from framework.algo.preference import CTPD, DPO
from framework.algo.sft import SFTTeacher
from framework.algo.topk_kl import OPDTopK

_FIXED = {"name", "needs_support", "needs_reference"}
# opd_topk's flat keys -> OPDTopK fields ("with_sampled" decides whether OPDTopK.opd is built)
_TOPK_KEYS = {"topk_weight": "topk_weight", "kl_direction": "direction", "min_target_prob": "min_target_prob"}


def _fields(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.name not in _FIXED]


def _make_opd_topk(**cfg: Any) -> OPDTopK:
    """``with_sampled`` (default True) adds the sampled-path ``opd`` term built from the OPD options."""
    with_sampled = bool(cfg.pop("with_sampled", True))
    topk_cfg = {_TOPK_KEYS[k]: cfg.pop(k) for k in list(cfg) if k in _TOPK_KEYS}
    return OPDTopK(opd=OPD(**cfg) if with_sampled else None, **topk_cfg)


_BUILDERS: dict[str, tuple[Callable[..., Objective], list[str]]] = {
    "opd": (OPD, _fields(OPD)),
    "opd_topk": (_make_opd_topk, [*_TOPK_KEYS, "with_sampled", *_fields(OPD)]),
    "sft_teacher": (SFTTeacher, _fields(SFTTeacher)),
    "dpo": (DPO, _fields(DPO)),
    "ctpd": (CTPD, _fields(CTPD)),
}
OBJECTIVES: dict[str, Callable[..., Objective]] = {name: b for name, (b, _) in _BUILDERS.items()}
# objectives trained on offline preference pairs (a data source scored once), not on rollouts
PAIR_OBJECTIVES = ("dpo", "ctpd")


def objective_options(name: str) -> list[str]:
    """The option names ``make_objective(name, ...)`` accepts."""
    _check_name(name)
    return list(_BUILDERS[name][1])


def objective_kwargs(name: str, flat: Mapping[str, Any]) -> dict[str, Any]:
    """The options of objective ``name`` picked from a flat mapping that may carry every objective's
    options (``AlgoConfig`` as a dict): the one way config values reach an objective."""
    return {k: flat[k] for k in objective_options(name) if k in flat}


def needs_topk_support(name: str) -> bool:
    """Whether objective ``name`` trains on the teacher's top-k projected onto the student vocabulary
    (its batches carry support ids): the one place the mapping's dense projection is decided from."""
    _check_name(name)
    return bool(make_objective(name).needs_support)


def make_objective(name: str, **options: Any) -> Objective:
    """Build the objective ``name``, e.g. ``make_objective("opd", clip_eps=0.2, adv_clamp=5.0)``."""
    _check_name(name)
    builder, valid = _BUILDERS[name]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"objective {name!r} got unknown options {unknown}; valid options: {valid}")
    return builder(**options)


def _check_name(name: str) -> None:
    if name not in _BUILDERS:
        raise ValueError(f"unknown objective {name!r}; valid objectives: {sorted(_BUILDERS)}")
