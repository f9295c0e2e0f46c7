"""Prompt files: the bad-input corpus gets its expected error or skip; the cursor resumes exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from framework.data import DataError, PromptCursor, load_prompt_file
from framework.types import Prompt

CORPUS = Path(__file__).resolve().parents[1] / "data" / "bad_inputs"
EXPECTED = json.loads((CORPUS / "EXPECTED.json").read_text())
GOOD = b'{"id": "g1", "prompt": "What is 2 + 2?", "answer": "4"}\n'


def test_corpus_is_large_enough():
    assert len(EXPECTED) >= 20


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bad_input_fails_with_its_message_naming_file_and_fix(name):
    with pytest.raises(DataError) as info:
        load_prompt_file(CORPUS / name)
    message = str(info.value)
    assert EXPECTED[name] in message
    assert name in message and "Fix:" in message


@pytest.mark.parametrize(
    "name", sorted(n for n in EXPECTED if n not in {"empty_file.jsonl", "duplicate_ids.jsonl"})
)
def test_bad_record_is_skipped_and_counted_when_allowed(tmp_path, name):
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(GOOD + (CORPUS / name).read_bytes())
    prompts, report = load_prompt_file(path, max_bad_lines=1)
    assert [p.prompt_id for p in prompts] == ["g1"]
    assert report.skipped == 1 and report.loaded == 1 and sum(report.reasons.values()) == 1


def test_skip_limit_is_enforced(tmp_path):
    path = tmp_path / "two_bad.jsonl"
    path.write_bytes(GOOD + b"nope\n" + b"[]\n")
    with pytest.raises(DataError, match="max_bad_lines"):
        load_prompt_file(path, max_bad_lines=1)


def test_missing_file_names_the_fix(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_prompt_file(tmp_path / "absent.jsonl")


def test_messages_and_short_form_both_load(tmp_path):
    path = tmp_path / "ok.jsonl"
    path.write_text(
        '{"prompt": "a"}\n{"id": 7, "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "b"}], "answer": 3}\n'
    )
    prompts, _ = load_prompt_file(path)
    assert prompts[0].messages == [{"role": "user", "content": "a"}] and prompts[0].prompt_id == "ok:1"
    assert prompts[1].prompt_id == "7" and prompts[1].answer == "3" and len(prompts[1].messages) == 2


def test_cursor_resume_continues_the_same_order():
    prompts = [Prompt(prompt_id=str(i), messages=[{"role": "user", "content": str(i)}]) for i in range(7)]
    full = PromptCursor(prompts, seed=3)
    uninterrupted = [p.prompt_id for p in full.take(20)]
    first = PromptCursor(prompts, seed=3)
    head = [p.prompt_id for p in first.take(9)]
    resumed = PromptCursor.from_state(prompts, 3, json.loads(json.dumps(first.state())))
    assert head + [p.prompt_id for p in resumed.take(11)] == uninterrupted
    # every epoch is a permutation: each prompt once per 7 draws
    assert sorted(uninterrupted[:7]) == sorted(p.prompt_id for p in prompts)
