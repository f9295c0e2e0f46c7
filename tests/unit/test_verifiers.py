"""Answer extraction for dataset files (framework/data/verifiers.py): a worked solution is judged by
the final answer it states, not by whole-response exact match."""

from __future__ import annotations

import pytest

from framework.data.verifiers import answer_match, extract_answer, get_verifier, normalize_answer


@pytest.mark.parametrize(
    "text, expected",
    [
        ("so x = 3, and \\boxed{\\frac{1}{2}} is the result", "\\frac{1}{2}"),  # MATH, nested braces
        ("first \\boxed{1} then \\boxed{2}", "2"),  # the last one wins
        ("48 / 2 = 24 clips in May.\n#### 72", "72"),  # GSM8K
        ("Adding them up, the answer is 1,024.", "1,024."),
        ("3 + 4 = 7. Answer: 7", "7"),
        ("I counted 3 apples and then 5 more, 8 in all", "8"),  # no marker: the last number
        ("no idea", None),
    ],
)
def test_the_final_answer_is_extracted_from_common_forms(text, expected):
    assert extract_answer(text) == expected


def test_numbers_compare_after_normalisation():
    assert normalize_answer("1,024.") == normalize_answer("1024") == "1024"
    assert normalize_answer("$42.0") == "42" and normalize_answer("0.50") == "0.5"
    assert normalize_answer(" Paris ") == "paris"


def test_a_worked_solution_is_right_when_its_final_answer_is():
    assert answer_match("Step 1: 20 + 22 = 42.\n#### 42", "42")
    assert answer_match("The answer is 42.", "... so she has 42 left.\n#### 42")  # GSM8K-style reference
    assert not answer_match("The answer is 41.", "42")
    assert not answer_match("I do not know", "42")
    assert get_verifier("data/tasks.jsonl") is answer_match and get_verifier(None) is None
    for source in ("zoo:arith", "zoo:max", "zoo:arith+max"):  # the built-in tasks' exact parser
        verify = get_verifier(source)
        assert (
            verify is not None and verify("max(3, 4) = 4. Answer: 4", "4") and not verify("Answer: 41", "4")
        )


def test_a_task_reward_on_a_dataset_file_needs_an_answer_in_every_record():
    from framework.config import Config, ConfigError
    from framework.train import _check_answers_for_reward
    from framework.types import Prompt

    cfg = Config()
    cfg.data.train, cfg.algo.reward_weight = "data/tasks.jsonl", 1.0
    with_answers = [Prompt(f"q{i}", [{"role": "user", "content": "1+1"}], answer="2") for i in range(3)]
    _check_answers_for_reward(cfg, with_answers)  # every record can be verified: fine
    with pytest.raises(ConfigError) as err:
        _check_answers_for_reward(cfg, [*with_answers, Prompt("q3", [{"role": "user", "content": "hi"}])])
    assert err.value.key == "algo.reward_weight" and "1 of 4 records" in str(err.value)
    cfg.algo.reward_weight = 0.0
    _check_answers_for_reward(cfg, [Prompt("q3", [{"role": "user", "content": "hi"}])])  # no reward: no need
