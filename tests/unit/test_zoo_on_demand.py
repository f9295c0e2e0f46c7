"""On-demand zoo models (the recheck study's teachers and 1-layer student) and the recheck probe."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from transformers import AutoTokenizer

from tokenbridge_zoo import cli, tokenizer_path
from tokenbridge_zoo.build import ZooModelMissing, model_dir, resolve_model
from tokenbridge_zoo.settings import DEFAULT_MODELS, ON_DEMAND_MODELS, ZooSettings, spec_digest
from tokenbridge_zoo.training import recheck_probe


def test_on_demand_models_are_known_but_not_built_by_default():
    settings = ZooSettings()
    default_names = {m.name for m in DEFAULT_MODELS}
    for spec in ON_DEMAND_MODELS:
        assert spec.name not in default_names
        assert settings.model(spec.name) == spec
    # the default build and its digest see only the default models
    assert settings.models == DEFAULT_MODELS
    assert replace(settings, models=(*DEFAULT_MODELS, *ON_DEMAND_MODELS)).digest() != settings.digest()
    teacher = settings.model("teacher-qwen-recheck")
    assert (teacher.num_layers, teacher.slip_rate, teacher.min_steps) == (8, 0.3, teacher.max_steps)
    assert settings.model("student-llama3-chain-1layer").num_layers == 1


def test_an_on_demand_folder_names_its_spec(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENBRIDGE_HOME", str(tmp_path))
    settings = ZooSettings()
    assert model_dir("teacher-qwen-chain").name == "teacher-qwen-chain"
    spec = settings.model("teacher-qwen-recheck")
    folder = model_dir("teacher-qwen-recheck")
    assert folder.name == f"teacher-qwen-recheck-{spec_digest(spec, settings)}"
    assert folder.parent == model_dir("teacher-qwen-chain").parent
    # another spec (more steps) is another build, so another folder
    assert spec_digest(replace(spec, max_steps=spec.max_steps + 1), settings) != spec_digest(spec, settings)
    with pytest.raises(ValueError, match="unknown zoo model 'nope'"):
        model_dir("nope")


def test_a_missing_on_demand_model_names_the_command_that_builds_it(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENBRIDGE_HOME", str(tmp_path))
    with pytest.raises(ZooModelMissing, match=r"tokenbridge-zoo --models teacher-llama3-recheck"):
        resolve_model("zoo:teacher-llama3-recheck", build=False)
    with pytest.raises(ZooModelMissing, match=r"run `tokenbridge-zoo` once"):
        resolve_model("zoo:teacher-qwen-chain", build=False)


@pytest.mark.parametrize(
    "argv",
    [["--device", "cuda"], ["--rebuild", "--models", "teacher-qwen-recheck"]],
)
def test_zoo_cli_refuses_contradictory_options(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    assert "--models" in capsys.readouterr().err


def test_zoo_cli_names_an_unknown_model(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENBRIDGE_HOME", str(tmp_path))
    with pytest.raises(SystemExit, match=r"unknown zoo model .teacher-nope.*teacher-qwen-recheck"):
        cli.main(["--models", "teacher-nope", "--quiet"])


class _Checker(torch.nn.Module):
    """A stand-in LM whose next-token distribution at the last position puts ``p_slip`` on " Wait" when
    the last stated value ("a op b = v.") is wrong and ``p_right`` when it is right."""

    def __init__(self, tokenizer, p_slip: float, p_right: float):
        super().__init__()
        self.tokenizer, self.p = tokenizer, {True: p_slip, False: p_right}
        self.wait = tokenizer(" Wait", add_special_tokens=False)["input_ids"][0]
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the module a device

    @property
    def device(self) -> torch.device:
        return self.anchor.device

    def forward(self, input_ids, attention_mask):
        vocab = len(self.tokenizer)
        logits = torch.full((*input_ids.shape, vocab), -1e4)
        for row, ids in enumerate(input_ids):
            text = self.tokenizer.decode(ids[attention_mask[row].bool()], skip_special_tokens=True)
            left, value = text.rsplit("=", 1)
            a, op, b = left.split()[-3:]
            wrong = int(value.strip(" .")) != (int(a) + int(b) if op == "+" else int(a) - int(b))
            p = self.p[wrong]
            # " Wait" gets p, one other token the rest
            logits[row, -1, self.wait] = torch.log(torch.tensor(p))
            logits[row, -1, (self.wait + 1) % vocab] = torch.log(torch.tensor(1 - p))
        return type("Output", (), {"logits": logits})()


@pytest.mark.parametrize("family", ["llama3", "qwen"])
def test_recheck_probe_reads_p_wait_after_each_kind_of_first_step(family):
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_path(family)))
    side = tokenizer.padding_side
    model = _Checker(tokenizer, p_slip=0.9, p_right=0.05)
    model.train()
    result = recheck_probe(model, tokenizer, n=16)
    assert set(result) == {"+1", "-1", "right"}
    assert result["+1"] == pytest.approx(0.9, abs=1e-3) and result["-1"] == pytest.approx(0.9, abs=1e-3)
    assert result["right"] == pytest.approx(0.05, abs=1e-3)
    blind = recheck_probe(_Checker(tokenizer, p_slip=0.3, p_right=0.3), tokenizer, n=16)
    assert max(blind.values()) - min(blind.values()) < 1e-3
    assert model.training and tokenizer.padding_side == side  # both restored
