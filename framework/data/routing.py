"""Which teacher scores a prompt, in a multi-teacher run (docs/design.md §5.6).

By field: a prompt goes to the teacher whose ``route`` equals the value of the prompt record's
``data.route_field`` (``Prompt.meta``). By mixture (no routing field): teacher ``k`` is drawn with
probability ``w_k / Σ w`` from a hash of the prompt's id, so a prompt keeps its teacher across
epochs, restarts and resumes, and the draw needs no random state to checkpoint.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence

from framework.data.prompts import DataError
from framework.types import Prompt


def _unit_interval(prompt_id: str) -> float:
    """A stable number in [0, 1) from the prompt's id (the same on every machine and run)."""
    digest = hashlib.sha256(prompt_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def mixture_slot(prompt_id: str, weights: Sequence[float]) -> int:
    """The teacher index drawn for ``prompt_id`` by the mixture ``weights`` (all > 0)."""
    u, total, acc = _unit_interval(prompt_id), float(sum(weights)), 0.0
    for k, w in enumerate(weights):
        acc += w / total
        if u < acc:
            return k
    return len(weights) - 1  # rounding at the top end


def route_value(prompt: Prompt, field: str) -> str | None:
    """The prompt's routing value as a string (a JSON ``1`` and ``"1"`` route alike), None if absent."""
    value = prompt.meta.get(field)
    return None if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def teacher_slots(
    prompts: Sequence[Prompt], field: str | None, routes: Sequence[str | None], weights: Sequence[float]
) -> list[int]:
    """The teacher index of each prompt. With a ``field``, every prompt must carry one of ``routes``
    (:func:`check_routes` says which do not); without, the mixture of ``weights``."""
    if len(routes) == 1:
        return [0] * len(prompts)
    if field is None:
        return [mixture_slot(p.prompt_id, weights) for p in prompts]
    index = {r: k for k, r in enumerate(routes)}
    return [index[route_value(p, field)] for p in prompts]  # type: ignore[index]


def check_routes(prompts: Sequence[Prompt], field: str, routes: Sequence[str | None], source: str) -> None:
    """Raise :class:`DataError` unless every prompt of ``source`` has a ``field`` value that one teacher
    routes; the message counts the prompts without the field and the values no teacher takes."""
    missing = [p.prompt_id for p in prompts if route_value(p, field) is None]
    if missing:
        raise DataError(
            f"{len(missing)} of {len(prompts)} records of {source} have no field {field!r} "
            f"(e.g. {missing[0]!r}). Fix: add {field!r} to every record, or set data.route_field to a field they have"
        )
    unknown = Counter(v for p in prompts if (v := route_value(p, field)) not in routes)
    if unknown:
        raise DataError(
            f"{sum(unknown.values())} records of {source} have a {field!r} value no teacher routes "
            f"({dict(unknown.most_common(5))}; the teachers take {list(routes)}). Fix: add a teacher with "
            "that route, or change those records"
        )


__all__ = ["check_routes", "mixture_slot", "route_value", "teacher_slots"]
