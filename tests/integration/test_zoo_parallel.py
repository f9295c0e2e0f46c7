"""The parallel zoo build with real worker processes, on a throwaway zoo of two very short models:
both get built, progress reaches the parent, and a failing model stops the build with its name and
traceback, leaves no worker running and nothing half-built, and the next build finishes the rest.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing

import pytest

from tokenbridge_zoo.build import build_zoo, read_manifest, zoo_root
from tokenbridge_zoo.parallel import ZooBuildError, build_models
from tokenbridge_zoo.settings import DEFAULT_MODELS, ZooSettings

pytestmark = pytest.mark.integration


def _short(spec, **changes):
    # a few SFT steps, no early stop: enough to exercise training, evaluation and saving
    values = dict(min_steps=4, max_steps=4, eval_every=2, stop_at_val_accuracy=2.0, warmup_steps=1)
    return dataclasses.replace(spec, **{**values, **changes})


def _tiny_settings(*models) -> ZooSettings:
    return ZooSettings(corpus_lines=3000, train_problems=200, val_problems=8, eval_problems=8, models=models)


@pytest.fixture
def zoo_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENBRIDGE_HOME", str(tmp_path))
    return tmp_path


def _leftovers(settings: ZooSettings) -> list[str]:
    return [p.name for p in (zoo_root(settings) / "models").glob(".tmp-*")]


def test_two_workers_build_every_model_and_report_progress(zoo_home, capsys):
    teacher, student = DEFAULT_MODELS[0], DEFAULT_MODELS[3]
    settings = _tiny_settings(_short(teacher), _short(student))
    manifest = build_zoo(progress=True, settings=settings, jobs=2)

    assert [m["name"] for m in manifest["models"]] == [teacher.name, student.name]
    for record in manifest["models"]:
        assert record["train_steps"] == 4 and 0.0 <= record["accuracy"] <= 1.0
        assert (zoo_root(settings) / "models" / record["name"] / "model.safetensors").is_file()
    assert json.loads((zoo_root(settings) / "manifest.json").read_text()) == manifest
    assert _leftovers(settings) == []
    assert multiprocessing.active_children() == []
    # the workers' progress reached the parent's bar: one closing line per model
    captured = capsys.readouterr()
    assert "zoo: 100%" in captured.err
    for name in (teacher.name, student.name):
        assert f"zoo {name}: 4 steps, held-out accuracy" in captured.out


def test_a_failing_model_stops_the_build_and_the_next_build_finishes_the_rest(zoo_home):
    # the good model is still training (60 steps) when the bad one fails at start-up
    good = _short(DEFAULT_MODELS[2], min_steps=60, max_steps=60, eval_every=60)
    bad = _short(DEFAULT_MODELS[3], arch="gpt-nonexistent")
    settings = _tiny_settings(good, bad)
    with pytest.raises(ZooBuildError) as failure:
        build_zoo(progress=False, settings=settings, jobs=2)
    message = str(failure.value)
    assert bad.name in message and "unknown arch 'gpt-nonexistent'" in message and "Traceback" in message
    # the other worker was stopped (mid-training, unless a loaded machine let it finish first): no
    # process left, nothing half-built
    assert multiprocessing.active_children() == []
    assert _leftovers(settings) == []
    assert [m["name"] for m in read_manifest(settings)["models"]] in ([], [good.name])

    # the next build (in this process) builds what is missing; the bad spec still fails, alone
    build_models([good], settings, jobs=1, progress=False)
    assert [m["name"] for m in read_manifest(settings)["models"]] == [good.name]
    with pytest.raises(ValueError, match="unknown arch"):
        build_models([bad], settings, jobs=1, progress=False)
    assert _leftovers(settings) == []
