"""Answer verifiers: task accuracy for evaluation, and the sequence reward (logged; trained on when
``algo.reward_weight`` > 0, framework/algo/reward.py)."""

from __future__ import annotations

from collections.abc import Callable

Verifier = Callable[[str, str], bool]


def exact_match(response_text: str, answer: str) -> bool:
    """The whole stripped response equals the stripped answer."""
    return response_text.strip() == answer.strip()


def get_verifier(source: str | None) -> Verifier | None:
    """The verifier for a dataset source: the zoo task's own parser, else exact match."""
    if source is None:
        return None
    if source == "zoo:arith":
        from framework.data.arith import verify

        return verify
    return exact_match
