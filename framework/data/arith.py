"""The built-in verifiable tasks: short multi-step chains with a brief worked answer. The demo zoo
(``tokenbridge_zoo``) trains its teachers and students on them.

``arith`` (``data.train=zoo:arith``, the demo's task): addition and subtraction.

    user:      "Compute 9 - 3 + 4 - 9."
    assistant: "9 - 3 = 6. 6 + 4 = 10. 10 - 9 = 1. Answer: 1"

``chain`` (``zoo:chain``): the same facts in longer chains (CHAIN_STEPS operations), the task of the
reproduction (benchmarks/reproduce.py --task chain). A slip early in a chain spoils every later value,
and the zoo models of this task are trained on worked answers that sometimes slip and then correct
the slip (``practice_response``), with the wrong value itself kept out of the loss, so a model learns
the correction and not the slip. (The zoo's chain teachers learned to redo a step after "Wait," but
not to see when a slip calls for it; the README's zoo section has the measurement.)

    user:      "Compute 9 - 3 + 4 - 9 + 5 + 2."
    assistant: "9 - 3 = 6. 6 + 4 = 11. Wait, 6 + 4 = 10. 10 - 9 = 1. 1 + 5 = 6. 6 + 2 = 8. Answer: 8"

``max`` (``zoo:max``): the largest of a list, found pairwise. A second skill with its own zoo
teacher, so a multi-teacher run (``zoo:arith+max``, half of each) has two domains that each need
their own teacher (docs/design.md §5.6).

    user:      "Find the largest of 7, 12, 3, 9."
    assistant: "max(7, 12) = 12. max(12, 3) = 12. max(12, 9) = 12. Answer: 12"

The worked answer makes the task learnable by tiny models in minutes (each step is one small
addition or subtraction) while leaving room for a teacher/student gap. Digits and spaces are exactly
what the tokenizer families segment differently (Llama-3 groups up to 3 digits, Qwen and Gemma split
single digits), so the task exercises the cross-tokenizer mapping on every sample.

Splits are disjoint by construction: each problem is assigned to a split by a hash of its content,
so a problem can never appear in two splits whatever the seeds.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import random
import re
from dataclasses import dataclass

from framework.types import PreferencePair, Prompt

# Task difficulty (part of the zoo settings hash: changing them rebuilds the zoo).
# Running values stay below 20 so each step is one of 270 small facts: tiny models learn them in a few
# hundred steps whatever the digit segmentation, while 3 steps give ~52k distinct problems.
FIRST_MAX = 19  # the first operand is drawn from [1, FIRST_MAX]
OPERAND_MAX = 9  # every later operand from [1, OPERAND_MAX]
VALUE_MAX = 19  # every running value stays in [0, VALUE_MAX]
NUM_STEPS = 3  # number of operations per problem (NUM_STEPS + 1 operands)
MAX_VALUE = 19  # the max task draws every operand from [1, MAX_VALUE] (NUM_STEPS + 1 of them)
CHAIN_STEPS = 5  # operations per problem of the chain task (~10.3M problems: drawn, not enumerated)
SLIP_DELTAS = (-2, -1, 1, 2)  # how far a slip in a practice response is off

# The built-in tasks, and what a ``zoo:`` data source holds: one task, or half of each.
TASKS: tuple[str, ...] = ("arith", "max", "chain")
MIXES: dict[str, tuple[str, ...]] = {
    "arith": ("arith",), "max": ("max",), "chain": ("chain",), "arith+max": ("arith", "max")
}  # fmt: skip

# Share of problems per split, in hash buckets of 100.
_SPLIT_BUCKETS: dict[str, range] = {"train": range(0, 80), "val": range(80, 90), "test": range(90, 100)}
SPLITS: tuple[str, ...] = tuple(_SPLIT_BUCKETS)

_ANSWER_RE = re.compile(r"Answer:\s*(-?\d+)")


@dataclass(frozen=True)
class Problem:
    """``operands[0] op[0] operands[1] op[1] operands[2] ...`` evaluated left to right."""

    operands: tuple[int, ...]
    ops: tuple[str, ...]  # each "+" or "-" (tasks arith, chain), or every one "max" (task max)

    @property
    def task(self) -> str:
        if self.ops[0] == "max":
            return "max"
        return "chain" if len(self.ops) == CHAIN_STEPS else "arith"

    @property
    def expression(self) -> str:
        if self.task == "max":
            return ", ".join(map(str, self.operands))
        parts = [str(self.operands[0])]
        for op, value in zip(self.ops, self.operands[1:]):
            parts += [op, str(value)]
        return " ".join(parts)

    def partial_results(self) -> list[int]:
        """Running value after each operation (all non-negative by construction)."""
        value = self.operands[0]
        results = []
        for op, operand in zip(self.ops, self.operands[1:]):
            value = _apply(op, value, operand)
            results.append(value)
        return results

    @property
    def answer(self) -> int:
        return self.partial_results()[-1]

    @property
    def key(self) -> str:
        return self.expression.replace(" ", "")  # "9-3+4-9", "7,12,3,9": never equal across tasks

    @property
    def kind(self) -> str:
        """``add`` when most operations are additions, else ``sub`` (``max`` for the max task): the
        domains a multi-teacher run may route on (``data.route_field=kind``). NUM_STEPS and
        CHAIN_STEPS are odd, so there is no tie."""
        if self.task == "max":
            return "max"
        return "add" if 2 * self.ops.count("+") > len(self.ops) else "sub"

    @property
    def question(self) -> str:
        return (
            f"Find the largest of {self.expression}." if self.task == "max" else f"Compute {self.expression}."
        )

    def worked_answer(self) -> str:
        return _worked_answer(self, self.partial_results())


def system_prompt() -> str | None:
    """The task uses no system prompt (family chat templates may add their own default)."""
    return None


def _apply(op: str, value: int, operand: int) -> int:
    if op == "max":
        return max(value, operand)
    return value + operand if op == "+" else value - operand


def _split_of(problem: Problem) -> str:
    bucket = int.from_bytes(hashlib.sha256(problem.key.encode()).digest()[:4], "big") % 100
    for split, buckets in _SPLIT_BUCKETS.items():
        if bucket in buckets:
            return split
    raise AssertionError("unreachable: buckets cover 0..99")


def _next_steps(value: int) -> list[tuple[str, int]]:
    """Every (op, operand) allowed after running value ``value`` (result stays in [0, VALUE_MAX])."""
    plus = [("+", o) for o in range(1, OPERAND_MAX + 1) if value + o <= VALUE_MAX]
    minus = [("-", o) for o in range(1, min(OPERAND_MAX, value) + 1)]
    return plus + minus


def random_problem(rng: random.Random, steps: int = NUM_STEPS) -> Problem:
    """Draw a problem left to right: the op uniformly among those possible, then the operand (any split)."""
    value = rng.randint(1, FIRST_MAX)
    operands, ops = [value], []
    for _ in range(steps):
        allowed = _next_steps(value)
        op = rng.choice(sorted({op for op, _ in allowed}))
        operand = rng.choice([o for step_op, o in allowed if step_op == op])
        value = value + operand if op == "+" else value - operand
        operands.append(operand)
        ops.append(op)
    return Problem(tuple(operands), tuple(ops))


def _problem_to_prompt(problem: Problem, split: str) -> Prompt:
    messages = [{"role": "user", "content": problem.question}]
    system = system_prompt()
    if system is not None:
        messages.insert(0, {"role": "system", "content": system})
    return Prompt(
        prompt_id=f"{problem.task}-{split}-{problem.key}",
        messages=messages,
        answer=str(problem.answer),
        meta={"task": problem.task, "split": split, "operands": list(problem.operands), "ops": list(problem.ops),
              "kind": problem.kind},
    )  # fmt: skip


def all_problems(task: str = "arith") -> list[Problem]:
    """Every distinct problem of ``task``, in a fixed order (enumerated once)."""
    return list(_all_problems(task))


@functools.cache
def _all_problems(task: str) -> tuple[Problem, ...]:
    if task == "max":
        values = range(1, MAX_VALUE + 1)
        grid = itertools.product(values, repeat=NUM_STEPS + 1)
        return tuple(Problem(operands, ("max",) * NUM_STEPS) for operands in grid)
    _check_task(task)
    if task == "chain":
        raise ValueError("the chain task has ~10.3M problems and is drawn, not enumerated: use make_problems")
    partial: list[tuple[tuple[int, ...], tuple[str, ...], int]] = [
        ((first,), (), first) for first in range(1, FIRST_MAX + 1)
    ]
    for _ in range(NUM_STEPS):
        partial = [
            ((*operands, operand), (*ops, op), value + operand if op == "+" else value - operand)
            for operands, ops, value in partial
            for op, operand in _next_steps(value)
        ]
    return tuple(Problem(operands, ops) for operands, ops, _ in partial)


@functools.cache
def _split_problems(split: str, task: str) -> tuple[Problem, ...]:
    return tuple(p for p in _all_problems(task) if _split_of(p) == split)


def split_size(split: str, task: str = "arith") -> int:
    """How many distinct problems ``split`` holds (the most ``make_problems`` can return); for the
    chain task, which is drawn rather than enumerated, the expected share of all its problems."""
    _check_split(split)
    return sum(
        _chain_split_size(split) if t == "chain" else len(_split_problems(split, t)) for t in _mix(task)
    )


def count_chain_problems() -> int:
    """How many distinct chain problems exist: running values counted step by step."""
    ways = dict.fromkeys(range(1, FIRST_MAX + 1), 1)  # running value -> number of prefixes reaching it
    for _ in range(CHAIN_STEPS):
        after: dict[int, int] = {}
        for value, count in ways.items():
            for op, operand in _next_steps(value):
                result = value + operand if op == "+" else value - operand
                after[result] = after.get(result, 0) + count
        ways = after
    return sum(ways.values())


@functools.cache  # read on every chain draw; the count walks ~10M problems' running values once
def _chain_split_size(split: str) -> int:
    return count_chain_problems() * len(_SPLIT_BUCKETS[split]) // 100


def _drawn_chain_problems(n: int, seed: int, split: str) -> list[Problem]:
    """``n`` distinct chain problems of ``split``, drawn left to right (``random_problem``) and kept when
    their hash puts them in the split; the space (~10.3M) is too large to enumerate and sample from."""
    if not 0 <= n <= _chain_split_size(split) // 2:  # far from the space's size: the draw stays fast
        raise ValueError(
            f"n={n}: ask for at most {_chain_split_size(split) // 2} chain problems of {split!r}"
        )
    rng = random.Random(f"chain/{seed}/{split}")
    seen: set[str] = set()
    problems: list[Problem] = []
    while len(problems) < n:
        problem = random_problem(rng, CHAIN_STEPS)
        if problem.key not in seen and _split_of(problem) == split:
            seen.add(problem.key)
            problems.append(problem)
    return problems


def _check_split(split: str) -> None:
    if split not in _SPLIT_BUCKETS:
        raise ValueError(f"split={split!r} is unknown; use one of {SPLITS}")


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"task={task!r} is unknown; use one of {TASKS}")


def _mix(task: str) -> tuple[str, ...]:
    if task not in MIXES:
        raise ValueError(f"task={task!r} is unknown; use one of {tuple(MIXES)}")
    return MIXES[task]


def make_problems(
    n: int, seed: int, split: str = "train", task: str = "arith", shares: tuple[float, ...] | None = None
) -> list[Prompt]:
    """``n`` distinct problems of ``split`` ("train", "val" or "test"), deterministic per (seed, split).

    Problems are drawn uniformly without replacement from the split. Prompt ids are derived from the
    problem content, so they are unique within and across splits. A mix (``arith+max``) takes
    ``round(n * share)`` problems of each task but the last, which gets the rest, shuffled together;
    ``shares`` (one per task of the mix, summing to 1) defaults to equal parts (``n // 2`` of the first).
    """
    _check_split(split)
    tasks = _mix(task)
    if shares is not None and (
        len(shares) != len(tasks) or any(s < 0 for s in shares) or abs(sum(shares) - 1.0) > 1e-9
    ):
        raise ValueError(f"shares={shares}: give one non-negative share per task of {tasks}, summing to 1")
    if len(tasks) > 1:
        if shares is None:
            counts = [n // len(tasks)] * (len(tasks) - 1)
        else:
            counts = [round(n * share) for share in shares[:-1]]
        counts.append(n - sum(counts))
        mixed = [prompt for t, count in zip(tasks, counts) for prompt in make_problems(count, seed, split, t)]
        random.Random(f"{task}/{seed}/{split}").shuffle(mixed)
        return mixed
    if task == "chain":
        return [_problem_to_prompt(problem, split) for problem in _drawn_chain_problems(n, seed, split)]
    pool = _split_problems(split, task)
    if not 0 <= n <= len(pool):
        raise ValueError(
            f"n={n}: the {split!r} split of {task} has {len(pool)} distinct problems; ask for 0..{len(pool)}"
        )
    rng = random.Random(f"{task}/{seed}/{split}")  # "arith/..." as before the max task existed
    return [_problem_to_prompt(problem, split) for problem in rng.sample(pool, n)]


def _problem_of(prompt: Prompt) -> Problem:
    meta = prompt.meta
    if "operands" not in meta or "ops" not in meta:
        raise ValueError(f"prompt {prompt.prompt_id!r} was not made by make_problems (no operands in meta)")
    return Problem(tuple(meta["operands"]), tuple(meta["ops"]))


def _step_text(op: str, left: int, operand: int, result: int) -> str:
    return f"max({left}, {operand}) = {result}." if op == "max" else f"{left} {op} {operand} = {result}."


def _worked_answer(problem: Problem, results: list[int]) -> str:
    steps, left = [], problem.operands[0]
    for op, operand, result in zip(problem.ops, problem.operands[1:], results):
        steps.append(_step_text(op, left, operand, result))
        left = result
    return " ".join(steps) + f" Answer: {results[-1]}"


def practice_response(
    prompt: Prompt, rng: random.Random, slip_rate: float
) -> tuple[str, list[tuple[int, int]]]:
    """The worked answer in which each step, with probability ``slip_rate``, first states a wrong result
    (off by one of SLIP_DELTAS, never negative) and then corrects it: ``"6 + 4 = 11. Wait, 6 + 4 = 10."``.

    Returns the text and the character spans of the wrong results. A model trained on it with those
    spans out of the loss is never taught to slip, only what follows a slip: "Wait," and the step
    again. Whether it also learns to *see* a slip written by someone else (a student, on policy) is
    another matter: the zoo's chain teachers did not (README, the zoo).
    """
    problem = _problem_of(prompt)
    pieces: list[str] = []
    slips: list[tuple[int, int]] = []
    left, at = problem.operands[0], 0  # at: length of the text so far, " ".join included
    for op, operand, result in zip(problem.ops, problem.operands[1:], problem.partial_results()):
        if rng.random() < slip_rate:
            wrong = next(w for w in (result + d for d in rng.sample(SLIP_DELTAS, len(SLIP_DELTAS))) if w >= 0)
            slipped = _step_text(op, left, operand, wrong)
            start = at + slipped.rindex(" ") + 1
            slips.append((start, start + len(str(wrong))))
            pieces.append(f"{slipped} Wait,")
            at += len(pieces[-1]) + 1
        pieces.append(_step_text(op, left, operand, result))
        at += len(pieces[-1]) + 1
        left = result
    return " ".join(pieces) + f" Answer: {problem.answer}", slips


def reference_response(prompt: Prompt) -> str:
    """The worked answer, e.g. ``"47 + 18 = 65. 65 - 9 = 56. Answer: 56"``."""
    return _problem_of(prompt).worked_answer()


def parse_answer(response_text: str) -> int | None:
    """The integer after the last ``Answer:`` in the text, or None."""
    matches = _ANSWER_RE.findall(response_text)
    return int(matches[-1]) if matches else None


def verify(response_text: str, answer: str) -> bool:
    """Exact check: the last ``Answer: N`` in the response equals ``answer``."""
    parsed = parse_answer(response_text)
    return parsed is not None and str(parsed) == str(answer).strip()


def _plausible_wrong(problem: Problem, rng: random.Random) -> str:
    """A worked answer with one arithmetic slip (off by 1, 2 or 10) carried through to a wrong final
    answer; later steps are computed correctly from the slip and no value goes negative.
    """
    correct = problem.partial_results()
    slip_step = rng.randrange(len(correct))
    delta = rng.choice([-10, -2, -1, 1, 2, 10])
    results = _results_after_slip(problem, correct, slip_step, delta)
    if min(results) < 0:
        results = _results_after_slip(problem, correct, slip_step, abs(delta))
    return _worked_answer(problem, results)


def _results_after_slip(problem: Problem, correct: list[int], slip_step: int, delta: int) -> list[int]:
    results = list(correct)
    results[slip_step] = correct[slip_step] + delta
    for step in range(slip_step + 1, len(results)):
        operand = problem.operands[step + 1]
        results[step] = (
            results[step - 1] + operand if problem.ops[step] == "+" else results[step - 1] - operand
        )
    return results


def make_preferences(n: int, seed: int) -> list[PreferencePair]:
    """``n`` (prompt, chosen = correct worked answer, rejected = answer with one slip) train-split pairs."""
    prompts = make_problems(n, seed, split="train")
    rng = random.Random(f"arith-pref/{seed}")
    pairs = []
    for prompt in prompts:
        problem = _problem_of(prompt)
        rejected = _plausible_wrong(problem, rng)
        pairs.append(
            PreferencePair(
                pair_id=f"pref-{prompt.prompt_id}",
                messages=[dict(m) for m in prompt.messages],
                chosen=reference_response(prompt),
                rejected=rejected,
            )
        )
    return pairs


def task_settings() -> dict[str, object]:
    """Everything about the task that changes what the zoo models learn (hashed into the zoo root)."""
    return {
        "first_max": FIRST_MAX,
        "operand_max": OPERAND_MAX,
        "value_max": VALUE_MAX,
        "num_steps": NUM_STEPS,
        "max_value": MAX_VALUE,
        "chain_steps": CHAIN_STEPS,
        "slip_deltas": list(SLIP_DELTAS),
        "splits": {k: [v.start, v.stop] for k, v in _SPLIT_BUCKETS.items()},
    }


__all__ = [
    "CHAIN_STEPS",
    "FIRST_MAX",
    "MAX_VALUE",
    "MIXES",
    "NUM_STEPS",
    "OPERAND_MAX",
    "SLIP_DELTAS",
    "SPLITS",
    "TASKS",
    "VALUE_MAX",
    "Problem",
    "all_problems",
    "count_chain_problems",
    "make_preferences",
    "make_problems",
    "parse_answer",
    "practice_response",
    "random_problem",
    "reference_response",
    "split_size",
    "system_prompt",
    "task_settings",
    "verify",
]
