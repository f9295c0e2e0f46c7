"""One stop set (issue #13 point 3): EOS ∪ the chat template's end of turn ∪ generation_config eos ids,
read from ``framework.data.chat.stop_tokens`` by sampling, the mapper and the SFT targets alike."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer

from framework.data.chat import end_of_turn_id, stop_token_ids, stop_tokens
from framework.data.prompts import DataError
from framework.mapping.render import load_tokenizer_info
from framework.types import Prompt, Rollout
from tests.unit.mapping_fixtures import tokenizer_dir


def _copy(name: str, dst: Path, *, generation_config: bool = True, template: bool = True) -> Path:
    """A fixture tokenizer folder, optionally without generation_config.json or without a chat template."""
    shutil.copytree(tokenizer_dir(name), dst)
    if not generation_config:
        (dst / "generation_config.json").unlink(missing_ok=True)
    if not template:
        (dst / "chat_template.jinja").unlink(missing_ok=True)
        config = json.loads((dst / "tokenizer_config.json").read_text())
        config.pop("chat_template", None)
        (dst / "tokenizer_config.json").write_text(json.dumps(config))
    return dst


@pytest.fixture(scope="module")
def llama3(tmp_path_factory) -> Path:
    """Llama-3 style: eos <|end_of_text|>, turns closed by <|eot_id|>, and NO generation_config.json, so
    the end of turn can only come from the chat template."""
    return _copy("bl_group", tmp_path_factory.mktemp("stop") / "llama3", generation_config=False)


def _id(tok, token: str) -> int:
    return int(tok.convert_tokens_to_ids(token))


def test_llama3_stop_set_holds_eos_and_the_templates_end_of_turn(llama3):
    tok = AutoTokenizer.from_pretrained(str(llama3))
    eos, eot = _id(tok, "<|end_of_text|>"), _id(tok, "<|eot_id|>")
    assert tok.eos_token_id == eos and eos != eot
    stops = stop_tokens(tok, llama3)
    assert (stops.eos_id, stops.end_of_turn_id, stops.generation_eos_ids) == (eos, eot, ())
    assert stops.ids == {eos, eot} and stops.end_of_response == eot
    assert stop_token_ids(tok, str(llama3)) == sorted({eos, eot})  # what vLLM stops on


def test_generation_config_eos_ids_join_the_set(tmp_path):
    path = _copy("bl_group", tmp_path / "t")
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": 7}))
    tok = AutoTokenizer.from_pretrained(str(path))
    stops = stop_tokens(tok, path)
    assert stops.generation_eos_ids == (7,)
    assert stops.ids == {_id(tok, "<|end_of_text|>"), _id(tok, "<|eot_id|>"), 7}
    assert stops.end_of_response == _id(tok, "<|eot_id|>")


@pytest.mark.parametrize(
    ("name", "eot"), [("bl_single", "<|im_end|>"), ("sp_plain", "<end_of_turn>"), ("sp_prefix", "</s>")]
)
def test_end_of_turn_is_read_from_each_template(name, eot):
    tok = AutoTokenizer.from_pretrained(tokenizer_dir(name))
    assert end_of_turn_id(tok) == _id(tok, eot)


def test_without_a_template_eos_ends_a_response(tmp_path):
    path = _copy("bl_group", tmp_path / "plain", generation_config=False, template=False)
    tok = AutoTokenizer.from_pretrained(str(path))
    stops = stop_tokens(tok, path)
    assert stops.end_of_turn_id is None and stops.end_of_response == _id(tok, "<|end_of_text|>")


def test_no_stop_token_at_all_is_a_data_error():
    class Bare:
        eos_token_id = None
        chat_template = None
        name_or_path = "bare"

    assert stop_tokens(Bare()).ids == frozenset() and stop_tokens(Bare()).end_of_response is None
    with pytest.raises(DataError, match="no stop token"):
        stop_token_ids(Bare())


def test_the_mapper_reasons_with_the_same_set(llama3):
    tok = AutoTokenizer.from_pretrained(str(llama3))
    info = load_tokenizer_info(str(llama3))
    assert info.stop_ids == stop_tokens(tok, llama3).ids == frozenset(stop_token_ids(tok, str(llama3)))
    assert info.end_of_turn_id == info.stop_token_to_append == _id(tok, "<|eot_id|>")


def test_sft_samples_end_a_stopped_response_with_the_students_end_of_turn(llama3):
    from framework.actors.mapping import MappingWorker

    worker_cls = MappingWorker.__ray_metadata__.modified_class  # the plain class, no Ray needed
    worker = worker_cls(str(llama3), tokenizer_dir("bl_single"), "proportional", False, None)
    tok = AutoTokenizer.from_pretrained(str(llama3))
    messages = [{"role": "user", "content": "Compute 12 + 30."}]
    empty = np.zeros(0, np.int32)
    rollouts = [
        Rollout(
            f"p#{i}", Prompt("p", messages), empty, empty, np.zeros(0, np.float32), 0, finish, "Answer: 42"
        )
        for i, finish in enumerate(("stop", "length"))
    ]
    samples, count = worker.sft_samples(*rollouts)
    assert count == 2
    stopped, cut = (s.input_ids[s.response_start :] for s in samples)
    assert int(stopped[-1]) == _id(tok, "<|eot_id|>")  # not eos <|end_of_text|>
    assert tok.decode(stopped[:-1]) == "Answer: 42" and np.array_equal(stopped[:-1], cut)
