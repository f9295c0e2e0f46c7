"""Preference data sources (framework/preference/data.py) and how an offline run loads them
(framework/train.py:_load_pairs → framework/actors/pairs.py:PairBatches)."""

from __future__ import annotations

import json

import pytest

from framework.algo import CTPD, DPO
from framework.config import Config, ConfigError
from framework.data.prompts import DataError
from framework.preference import load_preference_pairs, read_preference_jsonl
from framework.train import _load_pairs

RECORDS = [
    {"id": "a", "prompt": "Compute 3 + 4.", "chosen": "Answer: 7", "rejected": "Answer: 8"},
    {"messages": [{"role": "user", "content": "Hi"}], "chosen": "Hello!", "rejected": "Go away."},
    {"id": "c", "prompt": "Compute 1 + 1.", "chosen": "Answer: 2", "rejected": "Answer: 3"},
]


def write(tmp_path, records, name="pairs.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    return path


def test_jsonl_pairs_are_read_and_validated(tmp_path):
    pairs = read_preference_jsonl(write(tmp_path, RECORDS))
    assert [p.pair_id for p in pairs] == ["a", "pairs:2", "c"]
    assert pairs[0].messages == [{"role": "user", "content": "Compute 3 + 4."}]
    assert (pairs[1].chosen, pairs[1].rejected) == ("Hello!", "Go away.")
    for bad, match in [
        ({"prompt": "x", "chosen": "y"}, "'rejected' must be a non-empty string"),
        ({"prompt": "x", "chosen": "", "rejected": "z"}, "'chosen' must be a non-empty string"),
        ({"chosen": "y", "rejected": "z"}, "missing field"),
        ({"id": "a", "prompt": "x", "chosen": "y", "rejected": "z"}, "duplicate id"),
    ]:
        with pytest.raises(DataError, match=match) as err:
            read_preference_jsonl(write(tmp_path, [RECORDS[0], bad], "bad.jsonl"))
        assert "bad.jsonl:2" in str(err.value)
    with pytest.raises(DataError, match="no such file"):
        read_preference_jsonl(tmp_path / "missing.jsonl")


def test_one_file_splits_into_disjoint_train_and_held_out(tmp_path):
    path = str(write(tmp_path, RECORDS))
    train, held_out = load_preference_pairs(path, path, num_train=2, num_eval=5, seed=0)
    assert [p.pair_id for p in train] == ["a", "pairs:2"] and [p.pair_id for p in held_out] == ["c"]
    with pytest.raises(DataError, match="held-out"):
        load_preference_pairs(path, path, num_train=3, num_eval=5, seed=0)


def test_zoo_pairs_held_out_share_no_problem_with_training():
    train, held_out = load_preference_pairs("zoo:arith", "zoo:arith", num_train=40, num_eval=20, seed=3)
    assert len(train) == 40 and len(held_out) == 20
    assert not {p.pair_id for p in train} & {p.pair_id for p in held_out}
    assert all(p.chosen != p.rejected for p in train + held_out)


def test_an_offline_run_walks_one_prompt_per_training_pair(tmp_path):
    path = str(write(tmp_path, RECORDS))
    cfg = Config(algo=DPO())
    cfg.data.train, cfg.data.eval, cfg.data.num_train = path, path, 2
    pairs = _load_pairs(cfg, "/student", "/teacher")
    assert [p.prompt_id for p in pairs.prompts] == ["a", "pairs:2"]  # the cursor's ids are the pair ids
    assert pairs.prompts[0].messages == [{"role": "user", "content": "Compute 3 + 4."}]
    assert [p.pair_id for p in pairs.raw_held_out] == ["c"]
    assert not pairs.pending  # nothing is encoded or scored before the actors exist


def test_bad_pair_data_stops_the_start_naming_data_train(tmp_path):
    cfg = Config(algo=CTPD())
    cfg.data.train = str(tmp_path / "missing.jsonl")
    with pytest.raises(ConfigError) as err:
        _load_pairs(cfg, "/s", "/t")
    assert err.value.key == "data.train" and "no such file" in str(err.value)
    path = str(write(tmp_path, RECORDS))
    cfg.data.train, cfg.data.eval, cfg.data.num_train = path, path, 3  # nothing left to hold out
    with pytest.raises(ConfigError, match="held-out"):
        _load_pairs(cfg, "/s", "/t")
