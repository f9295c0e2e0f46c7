"""Multi-teacher routing (framework/data/routing.py) and the `teachers` / `data.route_field` checks."""

from __future__ import annotations

import json

import pytest

from framework.config import Config, ConfigError, TeacherEntry, to_config
from framework.data.arith import make_problems
from framework.data.prompts import DataError, load_prompt_file
from framework.data.routing import check_routes, mixture_slot, route_value, teacher_slots
from framework.types import Prompt


def _prompt(pid: str, **meta) -> Prompt:
    return Prompt(pid, [{"role": "user", "content": pid}], meta=meta)


def test_a_field_routes_each_prompt_to_the_teacher_with_its_value():
    prompts = [_prompt("a", kind="add"), _prompt("b", kind="sub"), _prompt("c", kind="add")]
    assert teacher_slots(prompts, "kind", ["sub", "add"], [1.0, 1.0]) == [1, 0, 1]


def test_a_mixture_is_stable_per_prompt_and_follows_the_weights():
    prompts = [_prompt(f"p{i}") for i in range(4000)]
    slots = teacher_slots(prompts, None, [None, None], [3.0, 1.0])
    assert slots == teacher_slots(prompts, None, [None, None], [3.0, 1.0])  # the same every call
    share = slots.count(0) / len(slots)
    assert 0.72 < share < 0.78  # 3:1 → 0.75 (binomial sd ≈ 0.007)
    assert mixture_slot("p1", [1.0]) == 0


def test_one_teacher_takes_every_prompt_whatever_the_field():
    assert teacher_slots([_prompt("a")], "kind", ["x"], [1.0]) == [0]


def test_route_values_are_compared_as_text():
    assert route_value(_prompt("a", tier=1), "tier") == "1"
    assert route_value(_prompt("a", hard=True), "hard") == "true"
    assert route_value(_prompt("a"), "tier") is None


def test_records_without_the_field_or_with_an_unrouted_value_are_named():
    prompts = [_prompt("a", kind="add"), _prompt("b")]
    with pytest.raises(DataError, match=r"1 of 2 records of train.jsonl have no field 'kind' \(e.g. 'b'\)"):
        check_routes(prompts, "kind", ["add"], "train.jsonl")
    with pytest.raises(DataError, match=r"'kind' value no teacher routes \(\{'mul': 1\}"):
        check_routes([_prompt("a", kind="add"), _prompt("c", kind="mul")], "kind", ["add"], "x")
    check_routes([_prompt("a", kind="add")], "kind", ["add", "sub"], "x")  # every value routed: passes


def test_prompt_files_keep_extra_scalar_fields_for_routing(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(
        json.dumps({"prompt": "2+2?", "answer": "4", "domain": "math", "level": 3, "x": [1]}) + "\n"
    )
    (prompt,), _ = load_prompt_file(path)
    assert prompt.meta == {"domain": "math", "level": 3}  # a list is not a routing value


def test_the_zoo_task_tags_each_problem_with_its_kind():
    prompts = make_problems(200, seed=0)
    for p in prompts:
        plus = p.meta["ops"].count("+")
        assert p.meta["kind"] == ("add" if plus >= 2 else "sub")
    kinds = {p.meta["kind"] for p in prompts}
    assert kinds == {"add", "sub"}


def _two(**data) -> dict:
    return {"teachers": [{"model": "zoo:teacher-qwen", "name": "a", "route": "x"},
                         {"model": "zoo:teacher-llama3", "name": "b", "route": "y"}],
            "data": {"route_field": "kind", **data}}  # fmt: skip


def test_the_single_teacher_form_is_a_list_of_one():
    cfg = Config()
    (only,) = cfg.teacher_list()
    assert (only.model, only.name, only.top_k) == (cfg.pair.teacher, "teacher", cfg.teacher.top_k)
    assert cfg.teacher_key(0) == "teacher"


def test_two_routed_teachers_validate_and_keep_their_own_options():
    raw = _two()
    raw["teachers"][1]["top_k"] = 5
    cfg = to_config(raw)
    assert [t.top_k for t in cfg.teacher_list()] == [20, 5]
    assert cfg.teacher_key(1) == "teachers.1"


@pytest.mark.parametrize(
    ("change", "key"),
    [
        (lambda r: r["data"].pop("route_field"), "teachers.0.route"),  # routes without a field
        (lambda r: r["teachers"][1].pop("route"), "teachers.1.route"),  # a field, a teacher without route
        (lambda r: r["teachers"][1].update(route="x"), "teachers"),  # two teachers, one route
        (lambda r: r["teachers"][1].update(name="a"), "teachers.1.name"),  # names label metrics: unique
        (lambda r: r["teachers"][0].update(name="a b"), "teachers.0.name"),
        (lambda r: r["teachers"][0].update(model=""), "teachers.0.model"),
        (lambda r: r["teachers"][1].update(num_replicas=0), "teachers.1.num_replicas"),
        (lambda r: r["teachers"][0].update(backend="http"), "teachers.0.url"),
        (lambda r: r.update(algo={"name": "sft_teacher"}), "teachers"),  # one teacher writes the answers
        (lambda r: r.update(algo={"name": "dpo"}), "teachers"),
        (lambda r: r.update(teachers=[]), "data.route_field"),  # a field and no list
    ],
)
def test_impossible_teacher_lists_fail_at_start_up_naming_the_key(change, key):
    raw = _two()
    change(raw)
    with pytest.raises(ConfigError) as err:
        to_config(raw)
    assert err.value.key == key


def test_a_mixture_needs_positive_weights():
    raw = _two()
    raw["data"].pop("route_field")
    for t in raw["teachers"]:
        t.pop("route")
    raw["teachers"][1]["weight"] = 0.0
    with pytest.raises(ConfigError) as err:
        to_config(raw)
    assert err.value.key == "teachers.1.weight"
    raw["teachers"][1]["weight"] = 2.0
    assert [t.weight for t in to_config(raw).teachers] == [1.0, 2.0]


def test_unnamed_teachers_are_labelled_by_position():
    cfg = to_config({"teachers": [TeacherEntry(model="m").__dict__, TeacherEntry(model="n").__dict__]})
    assert [t.name for t in cfg.teacher_list()] == ["teacher0", "teacher1"]


def test_a_routing_field_missing_from_the_data_stops_the_start_naming_it():
    from framework.train import _check_routes

    cfg = to_config(_two())
    routed = [_prompt("a", kind="x"), _prompt("b", kind="y")]
    _check_routes(cfg, routed, routed)  # every record routed: passes
    with pytest.raises(ConfigError) as err:
        _check_routes(cfg, routed, [_prompt("c")])  # the held-out prompts are scored too
    assert err.value.key == "data.route_field" and "data.eval" in err.value.problem
    assert "add 'kind' to every record" in err.value.fix


def test_a_teacher_model_that_cannot_be_found_is_named_by_its_list_key(tmp_path):
    from framework.models import resolve_pair

    raw = _two()
    raw["pair"] = {"student": "zoo:student-llama3"}
    raw["teachers"][1]["model"] = str(tmp_path / "no-such-teacher")
    with pytest.raises(ConfigError) as err:
        resolve_pair(to_config(raw))
    assert err.value.key == "teachers.1.model"
