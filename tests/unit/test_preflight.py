"""Start-up checks (framework/preflight.py): chat templates, prompt lengths and the output folder are
refused in one line before Ray starts; prompts that only some limit drops give one warning line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from framework.config import ConfigError, to_config
from framework.data import load_prompts
from framework.data.chat import render_prompt_ids
from framework.mapping.render import load_tokenizer_info
from framework.models import ModelPathError, resolve_pair
from framework.preflight import _Side, check_before_start, check_output_dir
from framework.types import Prompt
from tokenbridge_zoo import resolve_model

ROOT = Path(__file__).resolve().parents[2]
QWEN_TEMPLATE = (
    "{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
# the Qwen-style template of the zoo teacher, refusing any conversation that mentions "forbidden"
PICKY_TEMPLATE = (
    "{%- for message in messages %}{%- if 'forbidden' in message['content'] %}"
    "{{ raise_exception('forbidden topic in ' + message['role'] + ' turn') }}{%- endif %}{%- endfor %}"
    + QWEN_TEMPLATE
)


@pytest.fixture(scope="module")
def zoo_pair() -> tuple[str, str]:
    """The demo pair's folders (the zoo is built before the tests run: missing is a failure)."""
    return (
        resolve_model("zoo:student-llama3", build=False),
        resolve_model("zoo:teacher-qwen", build=False),
    )


def _copy(src: str, dst: Path, template: str | None, weights: bool = False) -> str:
    """A copy of a zoo model folder whose chat template is ``template`` (None: no template at all)."""
    ignore = None if weights else shutil.ignore_patterns("*.safetensors")
    shutil.copytree(src, dst, ignore=ignore)
    (dst / "chat_template.jinja").unlink(missing_ok=True)
    config_file = dst / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config.pop("chat_template", None)
    if template is not None:
        config["chat_template"] = template
    config_file.write_text(json.dumps(config, indent=2))
    return str(dst)


def _prompts(n: int, prefix: str = "p", text: str = "What is {i} + {i}?") -> list[Prompt]:
    return [
        Prompt(prompt_id=f"{prefix}{i}", messages=[{"role": "user", "content": text.format(i=i)}])
        for i in range(n)
    ]


def _long(prefix: str, words: int) -> Prompt:
    return Prompt(prompt_id=prefix, messages=[{"role": "user", "content": " ".join(["seven"] * words)}])


def _check(tmp_path, student_dir, teacher_dir, train, evals, **overrides):
    """check_before_start with the config of ``overrides`` (sections as dicts)."""
    cfg = to_config(overrides)
    return check_before_start(cfg, student_dir, teacher_dir, train, evals, tmp_path / "out")


# ------------------------------------------------------------------------- the demo pair passes, fast
def test_demo_pair_passes_in_well_under_five_seconds(tmp_path, zoo_pair):
    cfg = to_config({})
    train, _ = load_prompts("zoo:arith", n=4096, seed=0, split="train")
    evals, _ = load_prompts("zoo:arith", n=64, seed=1, split="eval")
    # transformers' lazy imports (seconds, paid once per process, by the run anyway) are not timed
    check_before_start(cfg, *zoo_pair, train[:2], evals[:2], tmp_path / "warm-up")
    start = time.perf_counter()
    warnings = check_before_start(cfg, *zoo_pair, train, evals, tmp_path / "out")
    elapsed = time.perf_counter() - start
    assert warnings == []
    assert elapsed < 5.0, f"start-up checks took {elapsed:.1f}s for 4160 prompts"
    assert (tmp_path / "out").is_dir() and not list((tmp_path / "out").iterdir())


def test_lengths_are_those_the_run_renders(zoo_pair):
    """The student through the rollout's render_prompt_ids, the teacher through the mapping's renderer."""
    student_dir, teacher_dir = zoo_pair
    system = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": " 2 +  2 ?\n"}]
    prompts = [*_prompts(3), Prompt(prompt_id="sys", messages=system)]
    student = _Side.load("pair.student", "student", student_dir, False)
    teacher = _Side.load("pair.teacher", "teacher", teacher_dir, False)
    mapping_teacher = load_tokenizer_info(teacher_dir)
    s_counts, _ = student.lengths(prompts)
    t_counts, _ = teacher.lengths(prompts)
    for p, s_len, t_len in zip(prompts, s_counts, t_counts):
        assert (
            student.render_ids(p.messages) == render_prompt_ids(student.tokenizer, p.messages, 10**6).tolist()
        )
        assert teacher.render_ids(p.messages) == mapping_teacher.render_prompt_ids(p.messages).tolist()
        assert s_len == len(student.render_ids(p.messages)) and t_len == len(teacher.render_ids(p.messages))


# ------------------------------------------------------------------------- chat templates
def test_teacher_without_chat_template_is_refused(tmp_path, zoo_pair):
    teacher = _copy(zoo_pair[1], tmp_path / "teacher", template=None)
    with pytest.raises(ConfigError) as info:
        _check(tmp_path, zoo_pair[0], teacher, _prompts(2), [])
    assert info.value.key == "pair.teacher"
    message = str(info.value)
    assert "no chat template" in message and teacher in message and "chat_template" in message
    assert "\n" not in message


def test_student_without_chat_template_is_refused(tmp_path, zoo_pair):
    student = _copy(zoo_pair[0], tmp_path / "student", template=None)
    with pytest.raises(ConfigError) as info:
        _check(tmp_path, student, zoo_pair[1], _prompts(2), [])
    assert info.value.key == "pair.student" and "no chat template" in str(info.value)


def test_template_that_raises_on_the_sample_prompt_is_refused_with_its_message(tmp_path, zoo_pair):
    teacher = _copy(zoo_pair[1], tmp_path / "teacher", template="{{ raise_exception('only system turns') }}")
    with pytest.raises(ConfigError) as info:
        _check(tmp_path, zoo_pair[0], teacher, _prompts(2), [])
    assert info.value.key == "pair.teacher"
    assert "only system turns" in str(info.value) and "'p0'" in str(info.value)


def test_broken_template_is_refused(tmp_path, zoo_pair):
    student = _copy(
        zoo_pair[0], tmp_path / "student", template="{{ messages[0]['content'] | no_such_filter }}"
    )
    with pytest.raises(ConfigError) as info:
        _check(tmp_path, student, zoo_pair[1], _prompts(2), [])
    assert info.value.key == "pair.student" and "no_such_filter" in str(info.value)


def test_template_rejecting_some_prompts_gives_one_warning(tmp_path, zoo_pair):
    teacher = _copy(zoo_pair[1], tmp_path / "teacher", template=PICKY_TEMPLATE)
    train = _prompts(4) + _prompts(1, prefix="bad", text="a forbidden question")
    warnings = _check(tmp_path, zoo_pair[0], teacher, train, _prompts(2, prefix="e"))
    assert len(warnings) == 1
    assert "1 of 7 prompts are rejected by the teacher's chat template" in warnings[0]
    assert "'bad0'" in warnings[0] and "forbidden topic" in warnings[0] and "skipped" in warnings[0]


def test_template_rejecting_every_eval_prompt_is_refused(tmp_path, zoo_pair):
    teacher = _copy(zoo_pair[1], tmp_path / "teacher", template=PICKY_TEMPLATE)
    with pytest.raises(ConfigError, match="all 2 eval prompts are rejected") as info:
        _check(tmp_path, zoo_pair[0], teacher, _prompts(3), _prompts(2, "e", "forbidden {i}"))
    assert info.value.key == "pair.teacher"


def test_http_teacher_template_is_checked_but_no_length_limit(tmp_path, zoo_pair):
    http = {"teacher": {"backend": "http", "url": "http://127.0.0.1:9/v1", "max_model_len": 8}}
    assert _check(tmp_path, *zoo_pair, _prompts(2), [], **http) == []  # max_model_len is the server's
    teacher = _copy(zoo_pair[1], tmp_path / "teacher", template=None)
    with pytest.raises(ConfigError, match="no chat template"):
        _check(tmp_path, zoo_pair[0], teacher, _prompts(2), [], **http)


# ------------------------------------------------------------------------- prompt lengths
def test_all_prompts_too_long_for_the_teacher_is_refused(tmp_path, zoo_pair):
    with pytest.raises(ConfigError) as info:
        _check(tmp_path, *zoo_pair, _prompts(3), _prompts(2, "e"), teacher={"max_model_len": 40})
    err = info.value
    assert err.key == "teacher.max_model_len"
    message = str(err)
    assert "all 3 train prompts" in message and "rollout.max_new_tokens=48" in message
    assert (
        "teacher.max_model_len=40" in message
        and "teacher tokens)" in message
        and "raise teacher.max_model_len" in message
    )


def test_some_prompts_too_long_for_the_teacher_give_one_warning(tmp_path, zoo_pair):
    train = [*_prompts(5), _long("long", 100)]
    warnings = _check(tmp_path, *zoo_pair, train, _prompts(2, "e"), teacher={"max_model_len": 120})
    assert len(warnings) == 1, warnings
    line = warnings[0]
    assert line.startswith("[tokenbridge] warning: 1 of 8 prompts") and "teacher.max_model_len=120" in line
    assert "longest:" in line and "skipped" in line and "\n" not in line


def test_all_prompts_too_long_for_the_student_is_refused(tmp_path, zoo_pair):
    with pytest.raises(ConfigError) as info:
        _check(tmp_path, *zoo_pair, _prompts(3), [], data={"max_prompt_tokens": 5})
    assert info.value.key == "data.max_prompt_tokens" and "student tokens" in str(info.value)


def test_some_prompts_too_long_for_the_student_give_one_warning(tmp_path, zoo_pair):
    train = [*_prompts(3), _long("long", 100)]
    warnings = _check(tmp_path, *zoo_pair, train, [], data={"max_prompt_tokens": 60})
    assert (
        len(warnings) == 1 and "1 of 4 prompts render to more than data.max_prompt_tokens=60" in warnings[0]
    )


def test_every_eval_prompt_too_long_is_refused(tmp_path, zoo_pair):
    with pytest.raises(ConfigError, match="all 2 eval prompts"):
        _check(tmp_path, *zoo_pair, _prompts(3), [_long("e1", 400), _long("e2", 500)])


def test_preference_runs_check_templates_but_not_prompt_lengths(tmp_path, zoo_pair):
    dpo = {"algo": {"name": "dpo"}}
    assert _check(tmp_path, *zoo_pair, _prompts(2), _prompts(2), **dpo, teacher={"max_model_len": 8}) == []
    teacher = _copy(zoo_pair[1], tmp_path / "teacher", template=None)
    with pytest.raises(ConfigError, match=r"pair\.teacher"):
        _check(tmp_path, zoo_pair[0], teacher, _prompts(2), _prompts(2), **dpo)


# ------------------------------------------------------------------------- output folder, zoo names
def test_uncreatable_output_dir_is_refused(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError) as info:
        check_output_dir(blocker / "run")
    assert info.value.key == "trainer.output_dir" and str(blocker / "run") in str(info.value)
    with pytest.raises(ConfigError, match=r"trainer\.output_dir"):
        check_output_dir(blocker)  # a file where the folder should be


def test_output_dir_is_created_and_left_empty(tmp_path):
    check_output_dir(tmp_path / "a" / "b")
    assert (tmp_path / "a" / "b").is_dir() and not list((tmp_path / "a" / "b").iterdir())


def test_unknown_zoo_model_is_one_line(tmp_path):
    cfg = to_config({"pair": {"teacher": "zoo:no-such-teacher"}})
    with pytest.raises(ModelPathError) as info:
        resolve_pair(cfg)
    assert info.value.key == "pair.teacher" and "unknown zoo model" in str(info.value)
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------- the entry point itself
def test_tokenbridge_train_refuses_a_teacher_without_template_before_ray(tmp_path, zoo_pair):
    """``tokenbridge-train`` with a template-less teacher: exit 2, one line naming pair.teacher, fast,
    and Ray never started (``_init_ray`` is replaced by one that fails loudly)."""
    teacher = _copy(zoo_pair[1], tmp_path / "teacher", template=None, weights=True)
    wrapper = (
        "import sys\n"
        "import framework.train as train\n"
        "def _no_ray(cfg):\n"
        "    print('RAY WAS STARTED', file=sys.stderr)\n"
        "    sys.exit(99)\n"
        "train._init_ray = _no_ray\n"
        "sys.argv = ['tokenbridge-train', *sys.argv[1:]]\n"
        "train.main()\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", wrapper, f"pair.teacher={teacher}", "pair.student=zoo:student-llama3",
         f"trainer.output_dir={tmp_path / 'out'}", f"hydra.run.dir={tmp_path / 'hydra'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    elapsed = time.perf_counter() - start
    assert out.returncode == 2, out.stderr[-3000:]
    assert "RAY WAS STARTED" not in out.stderr and "Traceback" not in out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("config error at `pair.teacher`") and "no chat template" in lines[0]
    assert elapsed < 60, f"the refusal took {elapsed:.0f}s"
