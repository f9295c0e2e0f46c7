"""The pure pieces of benchmarks/reproduce.py: the compute ledger of a run, the per-method table the
README is written from, and the answers to "compute to reach SFT's accuracy" and "share of the
same-tokenizer gain"."""

from __future__ import annotations

import pytest

from framework.data.arith import make_problems
from tests.unit.benchmark_module import load_benchmark

rep = load_benchmark("reproduce")
COST = {"n_student": 10, "n_generator": 100, "n_scorer": 1000, "prompt_student": 3.0,
        "prompt_generator": 4.0, "prompt_scorer": 5.0}  # fmt: skip


def _step(step, samples=2.0, response=10.0):
    return {"step": step, "tokens": response, "batch/samples": samples, "batch/response_tokens": response}


def test_curve_counts_generation_learner_and_teacher_scoring_per_step():
    rows = [{"step": 0, "eval/accuracy": 0.25}, _step(1), _step(2), {"step": 2, "eval/accuracy": 0.5}]
    curve = rep.curve_from_rows(rows, COST)
    per_step = 2 * 100 * (2 * 4 + 10) + 6 * 10 * (2 * 3 + 10) + 2 * 1000 * (2 * 5 + 10)
    assert [p["accuracy"] for p in curve] == [0.25, 0.5]
    assert curve[0]["flops"] == 0 and curve[0]["learner_tokens"] == 0
    assert curve[1]["flops"] == pytest.approx(2 * per_step)
    assert curve[1]["learner_tokens"] == 20


def test_a_method_without_teacher_scoring_is_not_charged_for_it():
    rows = [_step(1), {"step": 1, "eval/accuracy": 0.5}]
    charged = rep.curve_from_rows(rows, COST)[0]["flops"]
    free = rep.curve_from_rows(rows, COST | {"n_scorer": 0})[0]["flops"]
    assert charged - free == pytest.approx(2 * 1000 * (2 * 5 + 10))


def _run(method, seed, accs, flops_per_eval=10.0, lr=1e-4):
    curve = [{"step": 20 * i, "flops": flops_per_eval * i, "learner_tokens": 5.0 * i, "accuracy": a}
             for i, a in enumerate(accs)]  # fmt: skip
    return {"method": method, "seed": seed, "lr": lr, "curve": curve, "wall_s": 1.0}


def test_table_has_the_documented_keys_and_gap_closed_per_run():
    runs = [_run("opd", 0, [0.4, 0.6, 0.7]), _run("opd", 1, [0.5, 0.5, 0.75])]
    table = rep.summarise(runs, teacher_acc=1.0)
    row = table["opd"]
    assert {"final_accuracy", "gap_closed", "seeds"} <= set(row)
    assert row["seeds"] == 2
    assert row["final_accuracy"] == pytest.approx(0.725)
    # per run: (0.7 - 0.4) / 0.6 = 0.5 and (0.75 - 0.5) / 0.5 = 0.5
    assert row["gap_closed"] == pytest.approx(0.5) and row["gap_closed_std"] == pytest.approx(0.0)
    assert row["final_accuracy_std"] == pytest.approx(0.0353553, rel=1e-5)
    assert row["best_accuracy"] == pytest.approx(0.725)


def test_flops_to_reach_counts_only_the_runs_that_get_there():
    runs = [_run("opd", 0, [0.4, 0.6, 0.7]), _run("opd", 1, [0.4, 0.5, 0.55])]
    assert rep.flops_to_reach(runs, 0.6) == (10.0, 1)
    assert rep.flops_to_reach(runs, 0.9) == (None, 0)


def test_answers_compare_compute_and_the_same_tokenizer_gain():
    runs_of = {
        "opd": [_run("opd", 0, [0.4, 0.6, 0.8])],
        "sft_teacher": [_run("sft_teacher", 0, [0.4, 0.5, 0.6], flops_per_eval=30.0)],
        "opd_same": [_run("opd_same", 0, [0.4, 0.6, 0.9])],
    }
    table = {}
    for runs in runs_of.values():
        table |= rep.summarise(runs, teacher_acc=1.0)
    text = "\n".join(rep.answers(table, runs_of))
    # OPD hits SFT's final 0.6 at 10 FLOPs, SFT spent 60: 0.17x
    assert "at 0.17x SFT's compute (1/1 seeds" in text
    # gain 0.4 of the same-tokenizer 0.5
    assert "keeps 80% of the same-tokenizer gain" in text


def test_answers_say_never_when_opd_does_not_reach_sft():
    runs_of = {"opd": [_run("opd", 0, [0.4, 0.45])], "sft_teacher": [_run("sft_teacher", 0, [0.4, 0.7])]}
    table = rep.summarise(runs_of["opd"], 1.0) | rep.summarise(runs_of["sft_teacher"], 1.0)
    assert "never within the budget" in rep.answers(table, runs_of)[0]


def test_answers_do_not_price_a_target_below_the_start():
    runs_of = {"opd": [_run("opd", 0, [0.8, 0.7])], "sft_teacher": [_run("sft_teacher", 0, [0.8, 0.75])]}
    table = rep.summarise(runs_of["opd"], 1.0) | rep.summarise(runs_of["sft_teacher"], 1.0)
    (line,) = rep.answers(table, runs_of)
    assert line.startswith("- neither method gains from this start (0.800)")


def test_a_gain_within_evaluation_noise_is_no_gain():
    """Flat curves (the 1-layer student): SFT ends 0.01 above the start, OPD's first evaluation 0.02
    above it. Without the noise rule that read "OPD reaches SFT's final accuracy at 0.10x its compute"."""
    runs_of = {"opd": [_run("opd", 0, [0.176, 0.197, 0.154])],
               "sft_teacher": [_run("sft_teacher", 0, [0.176, 0.178, 0.186])]}  # fmt: skip
    table = rep.summarise(runs_of["opd"], 1.0) | rep.summarise(runs_of["sft_teacher"], 1.0)
    assert "OPD reaches" in rep.answers(table, runs_of)[0]
    (line,) = rep.answers(table, runs_of, num_eval=512)
    assert line.startswith("- neither method gains beyond evaluation noise (2 SE on 512 problems: 0.034)")
    # a real gain still gets priced
    runs_of["sft_teacher"] = [_run("sft_teacher", 0, [0.176, 0.3, 0.4])]
    table = rep.summarise(runs_of["opd"], 1.0) | rep.summarise(runs_of["sft_teacher"], 1.0)
    assert "never within the budget" in rep.answers(table, runs_of, num_eval=512)[0]


@pytest.mark.parametrize("task", sorted(rep.SETUPS))
def test_every_method_of_every_task_composes_to_its_pair_and_data(task):
    """The study's overrides are real recipes: each run's config validates, trains the task's student
    on the task's data, and is scored by the teacher the compute ledger charges."""
    from hydra import compose, initialize_config_dir

    from framework.config import register_configs, to_config

    register_configs()
    setup = rep.SETUPS[task]
    with initialize_config_dir(config_dir=str(rep.ROOT / "recipes"), version_base=None):
        for name, method in rep.methods(task).items():
            cfg = to_config(compose("config", overrides=method["overrides"]))
            assert cfg.pair.student == setup["student"], name
            assert cfg.data.train == cfg.data.eval == f"zoo:{rep.prompt_task(task)}", name
            if method["teacher"] is not None:
                assert cfg.pair.teacher == method["teacher"], name
            if (
                setup["data"] == "zoo_chain"
            ):  # a five-step answer with corrected slips does not fit the default 48
                assert cfg.rollout.max_new_tokens == 128, name
    assert rep.methods(task)["opd_same"]["teacher"] == setup["same_teacher"] != setup["teacher"]
    assert make_problems(2, seed=0, split="train", task=rep.prompt_task(task))  # the cost ledger's prompts


def test_chain_positions_are_classed_by_what_they_predict():
    """benchmarks/chain_kl_classes.py: digit-grouping (Llama-3-style) and single-digit (Qwen-style)
    tokens of one answer with a recheck get the same classes, number by number."""
    from tests.unit.benchmark_module import load_benchmark

    kl = load_benchmark("chain_kl_classes")
    grouped = ["13", " -", " ", "6", " =", " ", "8", ".", " Wait", ",", " ", "13", " -", " ", "6", " =", " ",
               "7", ".", " Answer", ":", " ", "7"]  # fmt: skip
    split = ["1", "3", " -", " ", "6", " =", " ", "8", ".", " Wait", ",", " ", "1", "3", " -", " ", "6", " =",
             " ", "7", ".", " Answer", ":", " ", "7"]  # fmt: skip
    for pieces in (grouped, split):
        classes = [kl.position_class(pieces, j) for j in range(len(pieces))]
        numbers = [c for piece, c in zip(pieces, classes) if piece.strip().isdigit()]
        assert [n for i, n in enumerate(numbers) if i == 0 or numbers[i - 1] != n] == [
            "left operand", "right operand", "result", "left operand", "right operand", "result", "final answer"
        ]  # fmt: skip
        assert classes[pieces.index(" Wait")] == "after '.'" == classes[pieces.index(" Answer")]
        assert classes[pieces.index(" -")] == "format"


def test_answers_for_a_start_read_only_that_starts_rows():
    # the weak rows say OPD wins; the long rows (suffix "@long") say it never reaches SFT
    runs_of = {
        "opd": [_run("opd", 0, [0.4, 0.6, 0.8])],
        "sft_teacher": [_run("sft_teacher", 0, [0.4, 0.5, 0.6], flops_per_eval=30.0)],
        "opd@long": [_run("opd@long", 0, [0.4, 0.42, 0.45])],
        "sft_teacher@long": [_run("sft_teacher@long", 0, [0.4, 0.6, 0.7])],
    }
    table = {}
    for runs in runs_of.values():
        table |= rep.summarise(runs, teacher_acc=1.0)
    assert "at 0.17x SFT's compute" in rep.answers(table, runs_of)[0]
    long = rep.answers(table, runs_of, "@long")
    assert "final accuracy (0.700) never within the budget" in long[0]


def test_every_reproduce_command_the_readme_prints_parses():
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    inline = re.findall(r"`python benchmarks/reproduce\.py([^`]*)`", readme)
    blocks = re.findall(r"^ {4}python benchmarks/reproduce\.py(.*)$", readme, flags=re.M)
    commands = inline + blocks
    assert len(inline) >= 1 and len(blocks) >= 4
    for command in commands:
        args = rep.parser().parse_args(command.split())
        assert set(args.stages) <= set(rep.STAGES)


def test_gap_closed_is_undefined_from_a_start_above_the_teacher():
    runs_of = {"opd": [_run("opd", 0, [0.98, 0.99])], "sft_teacher": [_run("sft_teacher", 0, [0.98, 0.97])]}
    table = rep.summarise(runs_of["opd"], 0.9) | rep.summarise(runs_of["sft_teacher"], 0.9)
    assert table["opd"]["gap_closed"] is None and table["opd"]["final_accuracy"] == pytest.approx(0.99)
    assert "| n/a |" in rep.markdown(table, {}, 0.9, "zoo:t")
    lines = rep.answers(table, runs_of, teacher_acc=0.9)
    assert lines[0].startswith("- the start (0.980) is at or above the teacher (0.900)")


def test_a_study_made_with_other_model_builds_is_not_extended():
    here = {"zoo:student": "aa", "zoo:teacher": "bb"}
    acc = {"student": 0.345, "teacher": 0.975}
    assert rep.other_models({"model_hashes": dict(here)}, here, acc) == []
    assert rep.other_models({"model_hashes": {"zoo:student": "cc", "zoo:teacher": "bb"}}, here, acc) == [
        "zoo:student"
    ]
    # a study from before the hashes: the zoo accuracy it recorded tells the builds apart
    assert rep.other_models({"zoo_accuracy": {"student": 0.42, "teacher": 0.975}}, here, acc) == [
        "zoo:student"
    ]
    assert rep.other_models({"zoo_accuracy": {"student": 0.345}}, here, acc) == []


def test_chain_first_errors_are_classed_by_what_went_wrong():
    """benchmarks/chain_errors.py: the first wrong step of an answer to 3 + 4 - 2 + 5 - 1 + 6."""
    errors = load_benchmark("chain_errors")
    operands, ops = [3, 4, 2, 5, 1, 6], ["+", "-", "+", "-", "+"]
    clean = "3 + 4 = 7. 7 - 2 = 5. 5 + 5 = 10. 10 - 1 = 9. 9 + 6 = 15. Answer: 15"
    assert errors.first_error(clean, operands, ops) == ("clean", 0)
    # a value slip corrected after "Wait," is a recheck, not an error
    rechecked = "3 + 4 = 8. Wait, 3 + 4 = 7. 7 - 2 = 5. 5 + 5 = 10. 10 - 1 = 9. 9 + 6 = 15. Answer: 15"
    assert errors.first_error(rechecked, operands, ops) == ("clean", 1)
    assert errors.first_error("3 + 4 = 7. 7 - 2 = 6. 6 + 5 = 11.", operands, ops) == ("arith", 0)
    assert errors.first_error("3 + 4 = 7. 7 - 5 = 2. 2 + 5 = 7.", operands, ops) == ("lookup", 0)
    assert errors.first_error("3 + 4 = 7. 7 + 2 = 9.", operands, ops) == ("lookup", 0)
    assert errors.first_error("3 + 4 = 7. 6 - 2 = 4.", operands, ops) == ("copy", 0)
    assert errors.first_error("3 + 4 = 7. Answer: 7", operands, ops) == ("other", 0)
    # the step restated after "Wait," is the one judged
    assert errors.first_error("3 + 4 = 8. Wait, 3 + 4 = 9. 9 - 2 = 7.", operands, ops) == ("arith", 1)


def test_sfts_long_run_and_the_plateau_build_are_one_run(tmp_path):
    """Whichever of the long and plateau stages runs first makes SFT's seed-0 run; the other reuses it
    (found by start, method, seed, lr and length), so the study never trains it twice."""
    args = rep.parser().parse_args(["--task", "recheck", "--out", str(tmp_path)])
    study = rep.Study(tmp_path, args)
    assert study.sft_build(3e-4, 240) is None
    long_run = {"method": "sft_teacher", "start": "long", "seed": 0, "lr": 3e-4, "steps": 240}
    study.data["runs"] = [dict(long_run, method="opd"), dict(long_run, seed=1), long_run]
    assert study.sft_build(3e-4, 240) is long_run
    assert study.sft_build(3e-4, 200) is None and study.sft_build(1e-4, 240) is None
    build = dict(long_run, start="plateau-build")
    study.data["runs"] = [build]
    assert study.sft_build(3e-4, 240) is build
