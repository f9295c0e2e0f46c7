"""Answer verifiers: task accuracy for evaluation, and the sequence reward (logged; trained on when
``algo.reward_weight`` > 0, framework/algo/reward.py).

A dataset file's records carry an ``answer``; a response is right when the final answer it states
(`extract_answer`: ``\\boxed{...}`` as in MATH, ``#### N`` as in GSM8K, ``Answer: ...`` / ``the answer
is ...``, else its last number) equals the record's answer after `normalize_answer` (spaces, ``$``,
thousands separators, a trailing period, ``42.0`` = ``42``). Whole-response exact match would call
almost every worked solution wrong. The built-in arithmetic task keeps its own parser.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from framework.data.prompts import ZOO_SOURCES

Verifier = Callable[[str, str], bool]

_BOXED = re.compile(r"\\boxed\s*\{")
_HASHES = re.compile(r"####\s*([^\n]+)")
_STATED = re.compile(r"(?:answer\s*(?:is|:)|answer\s*=)\s*([^\n]+)", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def _last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}``, braces balanced."""
    starts = [m.end() for m in _BOXED.finditer(text)]
    if not starts:
        return None
    depth, start = 1, starts[-1]
    for i in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[start:i]
    return None


def extract_answer(text: str) -> str | None:
    """The final answer ``text`` states (module docstring), or None when it states none."""
    for found in (
        _last_boxed(text),
        *(m[-1] if (m := r.findall(text)) else None for r in (_HASHES, _STATED)),
    ):
        if found is not None and found.strip():
            return found.strip()
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def normalize_answer(answer: str) -> str:
    """Comparable form: no spaces or ``$``, no trailing period, numbers without separators or ``.0``."""
    text = answer.strip().rstrip(".").replace("$", "").replace(" ", "")
    if re.fullmatch(r"-?\d[\d,]*(?:\.\d+)?", text):
        number = float(text.replace(",", ""))
        return str(int(number)) if number.is_integer() else repr(number)
    return text.lower()


def answer_match(response_text: str, answer: str) -> bool:
    """The response's final answer equals ``answer`` (a reference that is itself a worked solution,
    e.g. GSM8K's ``... #### 42``, is reduced to its final answer first)."""
    got = extract_answer(response_text)
    reference = extract_answer(answer) if ("####" in answer or "\\boxed" in answer) else answer
    return got is not None and reference is not None and normalize_answer(got) == normalize_answer(reference)


def get_verifier(source: str | None) -> Verifier | None:
    """The verifier for a dataset source: the built-in task's own parser, else `answer_match`."""
    if source is None:
        return None
    if source in ZOO_SOURCES:
        from framework.data.arith import verify

        return verify
    return answer_match
