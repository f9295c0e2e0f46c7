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


# ---------------------------------------------------------------- formats are read from the bytes
def _write_parquet(path: Path, columns: dict) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path)
    return path


def test_parquet_is_read_by_content_whatever_its_name(tmp_path):
    columns = {"id": ["a", "b"], "prompt": ["What is 1 + 1?", "What is 2 + 2?"], "answer": ["2", "4"]}
    for name in ("prompts.parquet", "prompts.pq", "prompts.jsonl", "prompts"):
        prompts, report = load_prompt_file(_write_parquet(tmp_path / name, columns))
        assert [(p.prompt_id, p.answer) for p in prompts] == [("a", "2"), ("b", "4")], name
        assert report.loaded == 2 and report.skipped == 0


@pytest.mark.parametrize("name", ["prompts.pq", "prompts.parquet"])
def test_parquet_name_with_jsonl_content_is_refused(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(GOOD)
    with pytest.raises(DataError) as info:
        load_prompt_file(path)
    message = str(info.value)
    assert str(path) in message and "not one" in message and "Fix:" in message and "\n" not in message


def test_corrupt_parquet_is_refused(tmp_path):
    good = _write_parquet(tmp_path / "good.parquet", {"prompt": ["What is 1 + 1?"] * 50})
    data = good.read_bytes()
    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated or corrupt"):
        load_prompt_file(truncated)
    scrambled = tmp_path / "scrambled.parquet"  # both signatures intact, the footer length garbage
    scrambled.write_bytes(data[:-8] + b"\xff\xff\xff\x7f" + b"PAR1")
    with pytest.raises(DataError) as info:
        load_prompt_file(scrambled)
    assert "not a readable Parquet file" in str(info.value) and str(scrambled) in str(info.value)
    assert "\n" not in str(info.value)


def test_compressed_file_is_refused_with_the_fix(tmp_path):
    import gzip

    path = tmp_path / "prompts.jsonl"
    path.write_bytes(gzip.compress(GOOD))
    with pytest.raises(DataError, match=r"gzip-compressed.*Fix: decompress"):
        load_prompt_file(path)


def test_nan_or_null_answer_is_a_bad_record_not_the_string_nan(tmp_path):
    import pyarrow as pa

    jsonl = tmp_path / "nan.jsonl"
    jsonl.write_bytes(
        GOOD
        + b'{"id": "n", "prompt": "0 / 0?", "answer": NaN}\n{"id": "i", "prompt": "1 / 0?", "answer": Infinity}\n'
    )
    prompts, report = load_prompt_file(jsonl, max_bad_lines=2)
    assert [p.prompt_id for p in prompts] == ["g1"] and report.skipped == 2
    assert report.reasons == {"field 'answer' is NaN or infinite": 2}
    numbers = _write_parquet(
        tmp_path / "numbers.parquet",
        {"prompt": ["a", "b", "c"], "answer": pa.array([4.0, float("nan"), None])},
    )
    prompts, report = load_prompt_file(numbers, max_bad_lines=2)
    assert [p.answer for p in prompts] == ["4.0"] and report.skipped == 2
    assert set(report.reasons) == {"field 'answer' is NaN or infinite", "field 'answer' is null"}
    with pytest.raises(DataError, match=r"numbers\.parquet:2: field 'answer' is NaN"):
        load_prompt_file(numbers)
    # a column of nulls only is no answers at all, not a missing one per record
    no_answers = _write_parquet(
        tmp_path / "none.parquet", {"prompt": ["a", "b"], "answer": pa.array([None, None])}
    )
    prompts, _ = load_prompt_file(no_answers)
    assert [p.answer for p in prompts] == [None, None]


def test_data_problems_at_start_up_name_their_config_key(tmp_path):
    from framework.config import ConfigError, to_config
    from framework.train import _load_split

    bad = tmp_path / "prompts.pq"
    bad.write_bytes(GOOD)
    cfg = to_config({"data": {"train": str(bad), "eval": "zoo:no-such-task"}})
    with pytest.raises(ConfigError) as info:
        _load_split(cfg, "train")
    assert info.value.key == "data.train" and str(bad) in str(info.value) and "Fix:" in str(info.value)
    with pytest.raises(ConfigError) as info:
        _load_split(cfg, "eval")
    assert info.value.key == "data.eval" and "unknown built-in dataset" in str(info.value)
    assert "zoo:arith+max" in str(info.value)  # the fix lists the built-in sources
    assert "\n" not in str(info.value)
