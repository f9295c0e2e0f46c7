"""Preference data sources and the config → run-settings mapping (framework/preference/data.py,
from_config.py, run.PreferenceRunSettings)."""

from __future__ import annotations

import json

import pytest

from framework.config import Config
from framework.data.prompts import DataError
from framework.preference import PreferenceRunSettings, load_preference_pairs, read_preference_jsonl
from framework.preference.from_config import settings_from_config
from framework.preference.run import load_pairs

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
    s = PreferenceRunSettings("s", "t", train_pairs=train, eval_pairs=train[:2])
    with pytest.raises(ValueError, match="also training pairs"):
        load_pairs(s)


def test_settings_validate_objective_and_options():
    with pytest.raises(ValueError, match="preference runs train one of"):
        PreferenceRunSettings("s", "t", objective="opd")
    with pytest.raises(ValueError, match=r"\['clip_eps'\] are not options of 'dpo'"):
        PreferenceRunSettings("s", "t", objective="dpo", objective_options={"clip_eps": 0.2})
    s = PreferenceRunSettings("s", "t", objective="ctpd", beta=0.3, objective_options={"mu": 0.5})
    assert s.options == {"beta": 0.3, "mu": 0.5}


def test_config_maps_onto_run_settings():
    cfg = Config()
    cfg.algo.name, cfg.algo.beta = "ctpd", 0.2
    cfg.teacher.backend = "hf"
    cfg.trainer.steps, cfg.data.prompts_per_step, cfg.learner.lr = 7, 5, 3e-4
    s = settings_from_config(cfg, "/student", "/teacher", "/out")
    assert (s.objective, s.beta, s.steps, s.pairs_per_step, s.lr) == ("ctpd", 0.2, 7, 5, 3e-4)
    assert (s.student_path, s.teacher_path, s.output_dir) == ("/student", "/teacher", "/out")
    assert s.teacher_backend == "hf" and s.teacher_options["device"] == "cpu" and s.backend == "gloo"
    assert s.num_train_pairs == cfg.data.num_train and s.num_eval_pairs == cfg.data.num_eval
    cfg.algo.name = "opd"
    with pytest.raises(ValueError, match=r"algo\.name"):
        settings_from_config(cfg, "/s", "/t", "/o")
    cfg.algo.name, cfg.learner.num_ranks = "dpo", 2
    with pytest.raises(ValueError, match=r"learner\.num_ranks"):
        settings_from_config(cfg, "/s", "/t", "/o")
