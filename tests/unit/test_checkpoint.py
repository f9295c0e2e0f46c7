"""Checkpoint folders: a half-written one is never picked; pruning keeps the newest complete ones."""

from __future__ import annotations

from framework import checkpoint
from framework.logging import redact


def _write(out, step):
    tmp = checkpoint.begin(out, step)
    (tmp / "learner").mkdir()
    return checkpoint.commit(tmp, {"step": step, "version": step})


def test_latest_complete_skips_half_written(tmp_path):
    assert checkpoint.latest_complete(tmp_path) is None
    _write(tmp_path, 10)
    _write(tmp_path, 20)
    checkpoint.begin(tmp_path, 30)  # a crash while writing step 30: only the .tmp- folder exists
    latest = checkpoint.latest_complete(tmp_path)
    assert latest is not None and latest.name == "step_000020"
    assert checkpoint.load_controller_state(latest)["step"] == 20
    # a folder renamed but never marked complete is not picked either
    (tmp_path / "checkpoints" / "step_000040").mkdir()
    assert checkpoint.latest_complete(tmp_path).name == "step_000020"


def test_prune_keeps_newest(tmp_path):
    for s in (1, 2, 3, 4):
        _write(tmp_path, s)
    checkpoint.prune(tmp_path, keep=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step_000003", "step_000004"]


def test_redact_masks_secrets_but_keeps_env_var_names():
    tree = {
        "teacher": {"api_key": "sk-123", "api_key_env": "MY_KEY", "url": "https://x"},
        "token": "abc",
        "n": [{"password": "p"}],
    }
    clean = redact(tree)
    assert (
        clean["teacher"]["api_key"] == "***"
        and clean["token"] == "***"
        and clean["n"][0]["password"] == "***"
    )
    assert clean["teacher"]["api_key_env"] == "MY_KEY" and clean["teacher"]["url"] == "https://x"
