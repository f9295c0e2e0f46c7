"""framework.models: zoo names, local folders and Hub ids become checked local folders (issue #13).

The Hub path is exercised for real and offline: a tiny saved Llama is laid out as a Hugging Face hub
cache (``models--org--name/snapshots/<commit>/`` + ``refs/<branch>``) and resolved through
``huggingface_hub.snapshot_download`` with ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from framework.config import ConfigError
from framework.models import ModelPathError, check_model_dir, parse_hub_id, resolve_model_dir

COMMIT = "0123456789abcdef0123456789abcdef01234567"  # 40 hex digits: what the hub cache names snapshots by


def _tiny_tokenizer(folder: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "<eos>", "<eot>", "hello", "world", "the", "answer", "is", "42"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}<eot>{% endfor %}"
    PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>", chat_template=template
    ).save_pretrained(str(folder))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A real (random, 1-layer) Llama saved with safetensors, plus its tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny") / "tiny-llama"
    config = LlamaConfig(
        vocab_size=16, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(str(folder))
    _tiny_tokenizer(folder)
    assert any(p.suffix == ".safetensors" for p in folder.iterdir())
    return folder


def _copy_without(src: Path, dst: Path, *drop_suffixes: str, drop: tuple[str, ...] = ()) -> Path:
    shutil.copytree(src, dst)
    for p in list(dst.iterdir()):
        if p.suffix in drop_suffixes or p.name in drop:
            p.unlink()
    return dst


def _as_hub_cache(model: Path, cache: Path, repo_id: str, refs: tuple[str, ...] = ("main",)) -> Path:
    """Lay ``model`` out the way huggingface_hub caches ``repo_id`` at commit COMMIT."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / COMMIT
    shutil.copytree(model, snapshot)
    (repo / "refs").mkdir(parents=True)
    for ref in refs:
        (repo / "refs" / ref).write_text(COMMIT)
    return snapshot


# ------------------------------------------------------------------------------------------ local folders


def test_a_local_folder_resolves_to_itself(tiny_model, monkeypatch):
    assert resolve_model_dir(str(tiny_model)) == str(tiny_model)
    monkeypatch.chdir(tiny_model.parent)
    assert resolve_model_dir(tiny_model.name) == str(tiny_model)  # relative → absolute, for the actors


def test_model_path_error_is_a_config_error_with_key_problem_and_fix(tmp_path):
    with pytest.raises(ConfigError) as info:
        resolve_model_dir(str(tmp_path / "nope"), key="pair.student")
    err = info.value
    assert isinstance(err, ModelPathError) and err.key == "pair.student"
    assert "does not exist" in err.problem and "zoo:NAME" in err.fix
    assert str(err).startswith("config error at `pair.student`") and "\n" not in str(err)


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("file", "is a file"),
        ("no_config", "no config.json"),
        ("no_weights", "no model weights"),
        ("gguf_file", "GGUF"),
        ("gguf_folder", "GGUF"),
        ("pickle_only", "pickle weights"),
        ("no_tokenizer", "no tokenizer files"),
    ],
)
def test_unusable_folders_are_refused_before_any_actor_starts(tiny_model, tmp_path, case, expected):
    path: Path
    if case == "file":
        path = tiny_model / "config.json"
    elif case == "no_config":
        path = _copy_without(tiny_model, tmp_path / case, drop=("config.json",))
    elif case == "no_weights":
        path = _copy_without(tiny_model, tmp_path / case, ".safetensors")
    elif case == "gguf_file":
        path = tmp_path / "model-Q4_K_M.gguf"
        path.write_bytes(b"GGUF")
    elif case == "gguf_folder":
        path = tmp_path / case
        path.mkdir()
        (path / "model-Q4_K_M.gguf").write_bytes(b"GGUF")
    elif case == "pickle_only":
        path = _copy_without(tiny_model, tmp_path / case, ".safetensors")
        (path / "pytorch_model.bin").write_bytes(b"not really a pickle")
    else:
        path = _copy_without(tiny_model, tmp_path / case, ".json", drop=("chat_template.jinja",))
        shutil.copy(tiny_model / "config.json", path / "config.json")
    with pytest.raises(ModelPathError) as info:
        resolve_model_dir(str(path), key="pair.student")
    assert expected in info.value.problem, info.value.problem
    if case.startswith("gguf"):
        assert "safetensors" in info.value.fix and "convert" in info.value.fix
    if case == "pickle_only":
        assert "pair.allow_pickle_weights=true" in info.value.fix
        assert resolve_model_dir(str(path), allow_pickle_weights=True) == str(path)


def test_tokenizer_only_folders_are_enough_when_no_weights_are_needed(tiny_model, tmp_path):
    tok = tmp_path / "tok"
    tok.mkdir()
    _tiny_tokenizer(tok)
    assert resolve_model_dir(str(tok), weights=False) == str(tok)
    with pytest.raises(ModelPathError, match=r"no config\.json"):
        check_model_dir(tok)


def test_hub_ids_are_told_apart_from_paths():
    assert parse_hub_id("Qwen/Qwen3-8B") == ("Qwen/Qwen3-8B", None)
    assert parse_hub_id("meta-llama/Llama-3.1-8B-Instruct@main") == (
        "meta-llama/Llama-3.1-8B-Instruct",
        "main",
    )
    assert parse_hub_id(f"org/name@{COMMIT}") == ("org/name", COMMIT)
    for path in ("/abs/model", "./rel/model", "a/b/c", "model", "~/m/x", "../up/x", "org/../x"):
        assert parse_hub_id(path) is None, path


# ------------------------------------------------------------------------------------------ the Hub, offline


def test_hub_ids_resolve_from_the_cache_offline(tiny_model, offline_cache):
    snapshot = _as_hub_cache(tiny_model, offline_cache, "tiny-org/tiny-llama", refs=("main", "v1"))
    for spec in ("tiny-org/tiny-llama", f"tiny-org/tiny-llama@{COMMIT}", "tiny-org/tiny-llama@v1"):
        path = resolve_model_dir(spec, key="pair.student")
        assert Path(path).resolve() == snapshot.resolve(), spec
    # the folder is a real model: transformers loads it from there, offline
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_dir("tiny-org/tiny-llama")
    assert AutoModelForCausalLM.from_pretrained(path).config.num_hidden_layers == 1
    assert AutoTokenizer.from_pretrained(path).eos_token == "<eos>"


def test_hub_cache_is_read_from_hf_hub_cache_too(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    snapshot = _as_hub_cache(tiny_model, tmp_path / "elsewhere", "org/m")
    assert Path(resolve_model_dir("org/m")).resolve() == snapshot.resolve()


def test_hub_id_not_cached_offline_is_one_clear_error(offline_cache):
    with pytest.raises(ModelPathError) as info:
        resolve_model_dir("no-org/not-cached@main", key="pair.teacher")
    err = info.value
    assert err.key == "pair.teacher"
    assert "no-org/not-cached@main" in err.problem and str(offline_cache) in err.problem
    assert "HF_HUB_OFFLINE" in err.problem and "HF_HUB_OFFLINE" in err.fix and "local model folder" in err.fix
    assert err.__cause__ is None and err.__suppress_context__  # no huggingface_hub traceback chained on


def test_a_cached_snapshot_is_still_checked(tiny_model, offline_cache, tmp_path):
    weightless = _copy_without(tiny_model, tmp_path / "weightless", ".safetensors")
    _as_hub_cache(weightless, offline_cache, "org/weightless")
    with pytest.raises(ModelPathError, match="no model weights"):
        resolve_model_dir("org/weightless")
    assert resolve_model_dir("org/weightless", weights=False)  # a tokenizer is all tokenbridge-pair needs


# ------------------------------------------------------------------------------------------ the zoo


def test_zoo_names_go_to_the_zoo_resolver(monkeypatch, tiny_model):
    import tokenbridge_zoo.build as zoo_build

    calls = []

    def fake_resolve(spec: str, build: bool = True) -> str:
        calls.append((spec, build))
        return str(tiny_model)

    monkeypatch.setattr(zoo_build, "resolve_model", fake_resolve)
    assert resolve_model_dir("zoo:student-llama3") == str(tiny_model)
    assert resolve_model_dir("zoo:teacher-qwen", weights=False, build=False) == str(tiny_model)
    assert calls == [("zoo:student-llama3", True), ("zoo:teacher-qwen", False)]


def test_a_missing_zoo_says_to_run_tokenbridge_zoo_and_builds_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENBRIDGE_HOME", str(tmp_path / "home"))
    with pytest.raises(ModelPathError) as info:
        resolve_model_dir("zoo:student-llama3", key="--student", build=False)
    assert "not built" in info.value.problem and str(tmp_path / "home") in info.value.problem
    assert "tokenbridge-zoo" in info.value.fix
    assert not (tmp_path / "home").exists()  # nothing was built or even locked
    with pytest.raises(ModelPathError, match="unknown zoo model"):
        resolve_model_dir("zoo:no-such-model", build=False)


def test_real_tier_models_resolve_as_zoo_real_names(tmp_path, monkeypatch, tiny_model):
    import tokenbridge_zoo.real as real

    monkeypatch.setenv("TOKENBRIDGE_HOME", str(tmp_path / "home"))
    with pytest.raises(ModelPathError) as info:  # not built, and not allowed to build
        resolve_model_dir("zoo:real/smollm2-135m-instruct", key="pair.student", build=False)
    assert "tokenbridge-zoo --real" in info.value.fix and not (tmp_path / "home").exists()
    with pytest.raises(ModelPathError, match="unknown real model 'nope'"):
        resolve_model_dir("zoo:real/nope", build=False)
    built = []  # building asks the real tier for that one model only
    monkeypatch.setattr(real, "build_real_tier", lambda **kw: built.append(kw))
    monkeypatch.setattr(real, "real_model_path", lambda name: tiny_model)
    assert resolve_model_dir("zoo:real/gemma3-270m") == str(tiny_model)
    assert built == [{"models": ("gemma3-270m",), "progress": True}]


def test_the_core_does_not_import_the_zoo_or_the_hub_client_at_import_time():
    code = (
        "import sys, framework.models; "
        "assert 'tokenbridge_zoo' not in sys.modules, 'zoo'; "
        "assert 'huggingface_hub' not in sys.modules, 'hub'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
