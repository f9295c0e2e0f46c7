"""`tokenbridge-pair` argument handling: bad paths are one line on stderr and exit code 2 (issue #13)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from framework.mapping.report import main
from tests.unit.mapping_fixtures import tokenizer_dir


def _one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("tokenbridge-pair: ") and "Traceback" not in captured.err
    return lines[0]


@pytest.fixture
def offline(tmp_path, monkeypatch):
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_missing_path(capsys, tmp_path, offline):
    line = _one_line_error(
        capsys, ["--student", str(tmp_path / "missing"), "--teacher", tokenizer_dir("bl_single")]
    )
    assert "--student" in line and "does not exist" in line and "Fix:" in line


def test_a_file_and_a_folder_without_a_tokenizer(capsys, tmp_path):
    file = tmp_path / "weights.txt"
    file.write_text("x")
    assert "is a file" in _one_line_error(
        capsys, ["--student", tokenizer_dir("bl_group"), "--teacher", str(file)]
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    line = _one_line_error(capsys, ["--student", str(empty), "--teacher", tokenizer_dir("bl_group")])
    assert "--student" in line and "no tokenizer files" in line


def test_gguf(capsys, tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    line = _one_line_error(capsys, ["--student", tokenizer_dir("bl_group"), "--teacher", str(gguf)])
    assert "--teacher" in line and "GGUF" in line and "safetensors" in line


def test_hub_id_offline_and_not_cached(capsys, tmp_path, offline):
    line = _one_line_error(capsys, ["--student", "Qwen/Qwen3-1.7B", "--teacher", tokenizer_dir("bl_group")])
    assert "Qwen/Qwen3-1.7B" in line and str(tmp_path / "hf" / "hub") in line and "HF_HUB_OFFLINE" in line


def test_json_mode_reports_the_error_too(capsys, tmp_path):
    assert main(["--student", str(tmp_path / "x"), "--teacher", str(tmp_path / "y"), "--json"]) == 2
    captured = capsys.readouterr()
    assert "does not exist" in json.loads(captured.out)["error"]
    assert len(captured.err.strip().splitlines()) == 1


def test_unreadable_texts_file(capsys, tmp_path):
    line = _one_line_error(
        capsys,
        ["--student", tokenizer_dir("bl_group"), "--teacher", tokenizer_dir("bl_single"),
         "--texts", str(tmp_path / "none.txt")],
    )  # fmt: skip
    assert "--texts" in line


def test_zoo_names_use_the_zoo_resolver_without_building(capsys, tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("TOKENBRIDGE_HOME", str(home))
    line = _one_line_error(capsys, ["--student", "zoo:student-llama3", "--teacher", "zoo:teacher-qwen"])
    assert "--student" in line and "zoo model 'student-llama3' is not built" in line
    assert "run `tokenbridge-zoo`" in line
    assert not home.exists()  # the CLI never starts a zoo build


def test_zoo_names_resolve_through_the_zoo(capsys, monkeypatch):
    """With a zoo resolver that knows the names, the README command runs (no Hub, no build)."""
    import tokenbridge_zoo.build as zoo_build

    folders = {
        "zoo:student-llama3": tokenizer_dir("bl_group"),
        "zoo:teacher-qwen": tokenizer_dir("bl_single"),
    }
    seen = []

    def fake_resolve(spec: str, build: bool = True) -> str:
        seen.append((spec, build))
        return folders[spec]

    monkeypatch.setattr(zoo_build, "resolve_model", fake_resolve)
    assert main(["--student", "zoo:student-llama3", "--teacher", "zoo:teacher-qwen", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["student"]["path"] == folders["zoo:student-llama3"]
    assert seen == [("zoo:student-llama3", False), ("zoo:teacher-qwen", False)]


def test_local_tokenizer_folders_and_relative_paths(capsys, monkeypatch):
    student = Path(tokenizer_dir("bl_group"))
    monkeypatch.chdir(student.parent)
    assert main(["--student", student.name, "--teacher", tokenizer_dir("bl_single"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["student"]["path"] == str(student)
