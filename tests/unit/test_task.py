"""The zoo's synthetic arithmetic task: verifier, splits, determinism, preference pairs."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from framework.data import arith as task
from framework.types import Prompt


def test_reference_response_is_a_worked_answer_that_verifies():
    for prompt in task.make_problems(50, seed=0, split="test"):
        response = task.reference_response(prompt)
        assert task.verify(response, prompt.answer)
        operands = prompt.meta["operands"]
        # The worked answer starts by restating the first step of the question.
        assert response.startswith(f"{operands[0]} {prompt.meta['ops'][0]} {operands[1]} = ")
        assert response.endswith(f"Answer: {prompt.answer}")
        assert prompt.messages[-1]["content"].startswith("Compute ")


def test_answers_are_the_left_to_right_value():
    for prompt in task.make_problems(100, seed=3, split="train"):
        value = prompt.meta["operands"][0]
        for op, operand in zip(prompt.meta["ops"], prompt.meta["operands"][1:]):
            value = value + operand if op == "+" else value - operand
            assert value >= 0
        assert prompt.answer == str(value)


@pytest.mark.parametrize(
    "response, answer, ok",
    [
        ("47 + 18 = 65. 65 - 9 = 56. Answer: 56", "56", True),
        ("Answer:56", "56", True),
        ("Answer: 12. Answer: 56", "56", True),  # the last answer counts
        ("Answer: 56. Answer: 12", "56", False),
        ("47 + 18 = 65. 65 - 9 = 56. Answer: 57", "56", False),
        ("47 + 18 = 65. 65 - 9 = 56.", "56", False),  # no final answer
        ("Answer: 560", "56", False),
        ("Answer: -56", "56", False),
        ("", "0", False),
    ],
)
def test_verify_exact_final_answer(response, answer, ok):
    assert task.verify(response, answer) is ok


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 10_000), delta=st.integers(-50, 50).filter(lambda d: d != 0))
def test_verify_rejects_any_other_number(seed, delta):
    prompt = task.make_problems(1, seed=seed, split="val")[0]
    wrong = int(prompt.answer) + delta
    assert not task.verify(f"Answer: {wrong}", prompt.answer)
    assert task.verify(task.reference_response(prompt), prompt.answer)


def test_splits_are_disjoint_and_ids_unique():
    keys = {}
    for split in task.SPLITS:
        prompts = task.make_problems(min(400, task.split_size(split)), seed=1, split=split)
        ids = [p.prompt_id for p in prompts]
        assert len(set(ids)) == len(ids)
        keys[split] = {p.messages[-1]["content"] for p in prompts}
        assert all(p.meta["split"] == split and p.answer is not None for p in prompts)
    assert not keys["train"] & keys["val"]
    assert not keys["train"] & keys["test"]
    assert not keys["val"] & keys["test"]


def test_split_sizes_cover_all_problems_and_are_large_enough():
    sizes = {split: task.split_size(split) for split in task.SPLITS}
    assert sum(sizes.values()) == len(task.all_problems())
    assert sizes["train"] >= 4096  # the default training set size (config data.num_train)
    assert sizes["test"] >= 200 and sizes["val"] >= 64  # zoo evaluation sets


def test_generation_is_deterministic_per_seed():
    a = task.make_problems(30, seed=7, split="train")
    b = task.make_problems(30, seed=7, split="train")
    c = task.make_problems(30, seed=8, split="train")
    assert [p.prompt_id for p in a] == [p.prompt_id for p in b]
    assert [p.messages for p in a] == [p.messages for p in b]
    assert [p.prompt_id for p in a] != [p.prompt_id for p in c]


def test_bad_arguments_name_the_fix():
    with pytest.raises(ValueError, match="split"):
        task.make_problems(3, seed=0, split="dev")
    with pytest.raises(ValueError, match="distinct problems"):
        task.make_problems(task.split_size("test") + 1, seed=0, split="test")
    with pytest.raises(ValueError, match="make_problems"):
        task.reference_response(Prompt(prompt_id="x", messages=[{"role": "user", "content": "hi"}]))


def test_preference_pairs_chosen_correct_rejected_wrong():
    pairs = task.make_preferences(100, seed=0)
    assert len({p.pair_id for p in pairs}) == 100
    for pair in pairs:
        prompt_text = pair.messages[-1]["content"]
        answer = str(task.Problem(*_parse_question(prompt_text)).answer)
        assert task.verify(pair.chosen, answer)
        assert not task.verify(pair.rejected, answer)
        assert pair.chosen != pair.rejected
        # The rejected answer is plausible: same format, same number of steps, same first operands.
        assert pair.rejected.count("=") == pair.chosen.count("=")
        assert pair.rejected.split(" = ")[0] == pair.chosen.split(" = ")[0]
    assert task.make_preferences(20, seed=4) == task.make_preferences(20, seed=4)


def _parse_question(text: str) -> tuple[tuple[int, ...], tuple[str, ...]]:
    parts = text.removeprefix("Compute ").removesuffix(".").split(" ")
    return tuple(int(x) for x in parts[0::2]), tuple(parts[1::2])


def test_system_prompt_is_optional_text():
    system = task.system_prompt()
    assert system is None or isinstance(system, str)
    roles = [m["role"] for m in task.make_problems(1, seed=0)[0].messages]
    assert roles[-1] == "user" and (system is None) == (roles == ["user"])


def test_max_task_worked_answer_is_the_running_maximum():
    prompts = task.make_problems(50, seed=0, split="test", task="max")
    for prompt in prompts:
        operands = prompt.meta["operands"]
        assert prompt.meta["task"] == "max" and prompt.meta["kind"] == "max"
        assert prompt.answer == str(max(operands))
        assert prompt.messages[-1]["content"] == f"Find the largest of {', '.join(map(str, operands))}."
        response = task.reference_response(prompt)
        assert response.startswith(f"max({operands[0]}, {operands[1]}) = {max(operands[:2])}. ")
        assert task.verify(response, prompt.answer)
    assert len({p.prompt_id for p in prompts}) == 50 and all(
        p.prompt_id.startswith("max-test-") for p in prompts
    )


def test_the_two_tasks_share_the_splits_and_the_mix_is_half_of_each():
    max_ids = {
        s: {p.prompt_id for p in task.make_problems(300, seed=1, split=s, task="max")} for s in task.SPLITS
    }
    assert not (max_ids["train"] & max_ids["test"]) and not (max_ids["val"] & max_ids["test"])
    mixed = task.make_problems(41, seed=2, split="val", task="arith+max")
    assert [p.meta["task"] for p in mixed].count("arith") == 20 and len({p.prompt_id for p in mixed}) == 41
    # each half is the single-task draw of the same seed, so the arith problems a model was trained on
    # before the max task existed are unchanged
    assert {p.prompt_id for p in mixed if p.meta["task"] == "arith"} == {
        p.prompt_id for p in task.make_problems(20, seed=2, split="val")
    }
    assert task.split_size("test", "arith+max") == task.split_size("test") + task.split_size("test", "max")
    with pytest.raises(ValueError, match="task='sort' is unknown"):
        task.make_problems(1, seed=0, task="sort")


def test_a_mix_can_be_weighted_and_bad_shares_are_refused():
    even = task.make_problems(40, seed=3, split="train", task="arith+max")
    assert task.make_problems(40, seed=3, split="train", task="arith+max", shares=(0.5, 0.5)) == even
    skewed = task.make_problems(40, seed=3, split="train", task="arith+max", shares=(0.9, 0.1))
    kinds = [p.meta["task"] for p in skewed]
    assert kinds.count("arith") == 36 and kinds.count("max") == 4 and len({p.prompt_id for p in skewed}) == 40
    # the max part is the single-task draw of the same seed
    assert {p.prompt_id for p in skewed if p.meta["task"] == "max"} == {
        p.prompt_id for p in task.make_problems(4, seed=3, split="train", task="max")
    }
    assert kinds != sorted(kinds)  # shuffled together, not all arith then all max
    for bad in ((0.9,), (0.8, 0.1), (1.1, -0.1)):
        with pytest.raises(ValueError, match="shares="):
            task.make_problems(40, seed=3, split="train", task="arith+max", shares=bad)


# --- the chain task: drawn five-step chains, practice responses that slip and correct -----------


def test_chain_problems_are_distinct_deterministic_and_in_their_split():
    prompts = task.make_problems(300, seed=4, split="test", task="chain")
    assert [p.prompt_id for p in prompts] == [
        p.prompt_id for p in task.make_problems(300, 4, "test", "chain")
    ]
    assert len({p.prompt_id for p in prompts}) == 300
    for prompt in prompts:
        assert len(prompt.meta["ops"]) == task.CHAIN_STEPS and prompt.meta["task"] == "chain"
        assert prompt.prompt_id.startswith("chain-test-")
        problem = task.Problem(tuple(prompt.meta["operands"]), tuple(prompt.meta["ops"]))
        assert problem.task == "chain" and task._split_of(problem) == "test"
        assert min(problem.partial_results()) >= 0 and str(problem.answer) == prompt.answer
    train_ids = {
        p.prompt_id.split("-", 2)[2] for p in task.make_problems(3000, seed=4, split="train", task="chain")
    }
    assert not train_ids & {p.prompt_id.split("-", 2)[2] for p in prompts}


def test_chain_count_matches_enumeration_at_arith_length(monkeypatch):
    """The step-by-step count is the enumeration's size where enumerating is cheap (3 steps = arith)."""
    monkeypatch.setattr(task, "CHAIN_STEPS", task.NUM_STEPS)
    assert task.count_chain_problems() == len(task.all_problems("arith"))


def test_chain_task_refuses_enumeration_and_oversized_requests():
    with pytest.raises(ValueError, match="drawn, not enumerated"):
        task.all_problems("chain")
    with pytest.raises(ValueError, match="at most"):
        task.make_problems(task.split_size("test", "chain"), seed=0, split="test", task="chain")


def _without_slips(text: str, slips: list[tuple[int, int]]) -> str:
    """The response with each slipped step and its "Wait," removed (what a clean answer says)."""
    for start, _ in reversed(slips):
        step_start = text.rfind(". ", 0, start) + 2 if text.rfind(". ", 0, start) >= 0 else 0
        text = text[:step_start] + text[text.index("Wait, ", start) + len("Wait, ") :]
    return text


@pytest.mark.parametrize("slip_rate", [0.0, 0.3, 1.0])
def test_practice_response_is_the_worked_answer_plus_corrected_slips(slip_rate):
    import random

    rng = random.Random(7)
    total_slips = 0
    for prompt in task.make_problems(60, seed=2, split="train", task="chain"):
        text, slips = task.practice_response(prompt, rng, slip_rate)
        assert task.verify(text, prompt.answer)
        assert _without_slips(text, slips) == task.reference_response(prompt)
        correct = task.Problem(tuple(prompt.meta["operands"]), tuple(prompt.meta["ops"])).partial_results()
        for start, end in slips:
            wrong = int(text[start:end])
            assert text[end : end + len(". Wait, ")] == ". Wait, " and wrong >= 0
            step = text[:start].count("=") - 1 - text[:start].count("Wait")  # earlier slips wrote "=" twice
            assert wrong - correct[step] in task.SLIP_DELTAS
        assert len(slips) == text.count("Wait,")
        total_slips += len(slips)
    expected = {0.0: 0, 1.0: 60 * task.CHAIN_STEPS}.get(slip_rate)
    assert total_slips == expected if expected is not None else 0.15 * 300 < total_slips < 0.45 * 300
