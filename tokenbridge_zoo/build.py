"""Build and cache the zoo under ``$TOKENBRIDGE_HOME/zoo/<settings digest>/``.

Layout::

    <root>/tokenizers/<family>/   tokenizer.json, tokenizer_config.json, generation_config.json, ...
    <root>/models/<name>/         config.json, model.safetensors, generation_config.json, tokenizer files,
                                  zoo_info.json (this model's manifest record)
    <root>/manifest.json          every built entry with its measured accuracy

Every entry is built in a temporary folder next to its final place and renamed into place when
complete, so a half-built entry is never used; a per-entry file lock lets concurrent processes wait
for one build instead of racing.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from framework.checkpoint import write_json
from tokenbridge_zoo.families import FAMILIES, style
from tokenbridge_zoo.settings import ON_DEMAND_MODELS, ModelSpec, ZooSettings, spec_digest, tokenbridge_home

DEFAULT_SETTINGS = ZooSettings()
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
_INFO_FILE = "zoo_info.json"


def zoo_root(settings: ZooSettings | None = None) -> Path:
    """``$TOKENBRIDGE_HOME/zoo/<settings digest>`` (default home: ``~/.cache/tokenbridge``)."""
    settings = settings or DEFAULT_SETTINGS
    return tokenbridge_home() / "zoo" / settings.digest()


@contextlib.contextmanager
def _locked(root: Path, name: str) -> Iterator[None]:
    lock_dir = root / ".locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / f"{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def _atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a fresh temporary folder; on success it becomes ``final`` (one rename)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        if final.exists():  # someone else finished first (only possible without the lock)
            shutil.rmtree(tmp)
        else:
            os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _is_complete(path: Path, marker: str) -> bool:
    return (path / marker).is_file()


# --------------------------------------------------------------------------------------------------
# tokenizers


def tokenizer_path(family: str, settings: ZooSettings | None = None) -> Path:
    """Folder of the ``family`` tokenizer (Hugging Face format); trains it first if missing (~seconds)."""
    settings = settings or DEFAULT_SETTINGS
    if family not in FAMILIES:
        raise ValueError(f"unknown tokenizer family {family!r}; use one of {FAMILIES}")
    root = zoo_root(settings)
    final = root / "tokenizers" / family
    if _is_complete(final, _INFO_FILE):
        return final
    with _locked(root, f"tokenizer-{family}"):
        if not _is_complete(final, _INFO_FILE):
            _build_tokenizer(family, settings, final)
    return final


def _build_tokenizer(family: str, settings: ZooSettings, final: Path) -> None:
    from tokenbridge_zoo.corpus import generate_corpus
    from tokenbridge_zoo.tokenizer_build import save_hf_tokenizer, train_tokenizer

    start = time.perf_counter()
    spec = settings.tokenizer(family)
    family_style = style(family)
    corpus = generate_corpus(settings.corpus_lines, settings.corpus_seed)
    tokenizer = train_tokenizer(family_style, corpus, spec.vocab_size)
    with _atomic_dir(final) as tmp:
        save_hf_tokenizer(family_style, tokenizer, tmp, settings.max_position_embeddings)
        info = {
            "family": family,
            "kind": family_style.kind,
            "vocab_size": tokenizer.get_vocab_size(),
            "build_seconds": round(time.perf_counter() - start, 2),
        }
        write_json(tmp / _INFO_FILE, info)


# --------------------------------------------------------------------------------------------------
# models


def model_path(
    name: str, settings: ZooSettings | None = None, progress: bool = False, device: str = "cpu"
) -> Path:
    """Folder of zoo model ``name`` (e.g. ``"teacher-qwen"``); trains it first if missing (minutes),
    on ``device`` (a torch device: the float kernels differ, so a CUDA build has other weights)."""
    with progress_bar(progress) as bar:
        return ensure_model(name, settings, bar, device=device)


def model_dir(name: str, settings: ZooSettings | None = None) -> Path:
    """Where model ``name`` lives: ``models/NAME``, or ``models/NAME-<spec digest>`` for an on-demand
    model (its spec is not part of the zoo digest, so its folder name carries it)."""
    settings = settings or DEFAULT_SETTINGS
    try:
        spec = settings.model(name)
    except KeyError as error:
        raise ValueError(str(error.args[0])) from None
    root = zoo_root(settings) / "models"
    if spec in settings.models or spec not in ON_DEMAND_MODELS:
        return root / name
    return root / f"{name}-{spec_digest(spec, settings)}"


def ensure_model(
    name: str,
    settings: ZooSettings | None = None,
    progress: BuildProgress | None = None,
    threads: int | None = None,
    device: str = "cpu",
) -> Path:
    """``model_path`` with the progress sink and torch thread count chosen by the caller (the parallel
    build gives each worker its share of the cores; ``None`` keeps the process's setting).
    """
    settings = settings or DEFAULT_SETTINGS
    final = model_dir(name, settings)
    if _is_complete(final, _INFO_FILE):
        return final
    spec = settings.model(name)
    tok_dir = tokenizer_path(spec.family, settings)
    root = zoo_root(settings)
    with _locked(root, f"model-{name}"):
        if not _is_complete(final, _INFO_FILE):
            _build_model(spec, settings, tok_dir, final, progress, threads, device)
    return final


class BuildProgress(Protocol):
    """Receives one model build's progress: ``start``, then ``step`` per SFT step and ``eval`` per
    validation, then ``finish`` with the held-out test accuracy.
    """

    def start(self, name: str, max_steps: int) -> None: ...
    def step(self, name: str, step: int, loss: float) -> None: ...
    def eval(self, name: str, step: int, val_accuracy: float) -> None: ...
    def finish(self, name: str, steps: int, test_accuracy: float) -> None: ...


def _build_model(
    spec: ModelSpec,
    settings: ZooSettings,
    tok_dir: Path,
    final: Path,
    progress: BuildProgress | None,
    threads: int | None,
    device: str = "cpu",
) -> None:
    import torch
    from transformers import AutoTokenizer, GenerationConfig

    from framework.data.arith import make_problems, split_size
    from tokenbridge_zoo.models import create_model, make_config, num_parameters
    from tokenbridge_zoo.training import accuracy_by_task, recheck_probe, train_sft

    start = time.perf_counter()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads or previous_threads)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
        generation_config = GenerationConfig.from_pretrained(str(tok_dir))
        stop_ids = list(generation_config.eos_token_id)
        special_ids = {
            "bos_token_id": generation_config.bos_token_id,
            "eos_token_id": stop_ids,
            "pad_token_id": generation_config.pad_token_id,
        }
        config = make_config(spec, len(tokenizer), special_ids, settings.max_position_embeddings)
        model = create_model(config, seed=spec.seed)  # initialised on the CPU: the same start anywhere
        model.to(device)  # type: ignore[arg-type]  # (transformers' wrapper of `to` is mis-typed)
        model.generation_config = generation_config
        num_train = settings.train_problems
        if num_train is None:
            num_train = split_size("train", spec.task)
        train_prompts = make_problems(
            num_train, seed=spec.seed, split="train", task=spec.task, shares=spec.train_shares
        )
        val_prompts = make_problems(settings.val_problems, seed=spec.seed, split="val", task=spec.task)
        test_prompts = make_problems(settings.eval_problems, seed=0, split="test", task=spec.task)
        if progress is not None:
            progress.start(spec.name, spec.max_steps)
        max_new_tokens = settings.max_new_tokens(spec)
        result = train_sft(
            model,
            tokenizer,
            train_prompts,
            val_prompts,
            stop_ids,
            lr=spec.lr,
            batch_size=spec.batch_size,
            warmup_steps=spec.warmup_steps,
            min_steps=spec.min_steps,
            max_steps=spec.max_steps,
            eval_every=spec.eval_every,
            stop_at_val_accuracy=spec.stop_at_val_accuracy,
            max_new_tokens=max_new_tokens,
            seed=spec.seed,
            slip_rate=spec.slip_rate,
            on_step=functools.partial(progress.step, spec.name) if progress is not None else None,
            on_eval=functools.partial(progress.eval, spec.name) if progress is not None else None,
        )
        by_task = accuracy_by_task(model, tokenizer, test_prompts, stop_ids, max_new_tokens)
        # the test split of a mix is equal parts of each task, so the plain mean is the overall share
        test_accuracy = sum(by_task.values()) / len(by_task)
        recheck = recheck_probe(model, tokenizer) if spec.slip_rate > 0 else None
        model.cpu()
        if progress is not None:
            progress.finish(spec.name, result.steps, test_accuracy)
        with _atomic_dir(final) as tmp:
            model.save_pretrained(str(tmp), safe_serialization=True)
            for file_name in _TOKENIZER_FILES:
                if (tok_dir / file_name).exists():
                    shutil.copy2(tok_dir / file_name, tmp / file_name)
            info = {
                "name": spec.name,
                "family": spec.family,
                "role": spec.role,
                "task": spec.task,
                "arch": config.architectures[0] if config.architectures else type(model).__name__,
                "params": num_parameters(model),
                "hidden_size": spec.hidden_size,
                "num_layers": spec.num_layers,
                "vocab_size": len(tokenizer),
                "accuracy": round(test_accuracy, 4),
                "accuracy_problems": len(test_prompts),
                "accuracy_by_task": {task: round(value, 4) for task, value in by_task.items()},
                "val_accuracy": round(result.val_accuracy, 4),
                "train_steps": result.steps,
                "train_loss": round(result.final_loss, 4),
                "build_seconds": round(time.perf_counter() - start, 2),
                "build_device": torch.device(device).type,
            }
            if recheck is not None:  # p("Wait") after a first step stated +1 off, -1 off, right
                info["p_wait_after"] = recheck
            if spec in ON_DEMAND_MODELS:
                info["spec_digest"] = spec_digest(spec, settings)
            write_json(tmp / _INFO_FILE, info)
    finally:
        torch.set_num_threads(previous_threads)


class ZooProgressBar:
    """One tqdm bar over the SFT steps of every model being built (several at once in a parallel
    build); the postfix shows each active model's loss and validation accuracy, and a line is printed
    as each model finishes. Early stopping takes the unused steps off the total.
    """

    def __init__(self) -> None:
        self._bar: Any = None
        self._active: dict[str, dict[str, Any]] = {}

    def start(self, name: str, max_steps: int) -> None:
        from tqdm.auto import tqdm

        if self._bar is None:
            self._bar = tqdm(total=0, desc="zoo", unit="step", dynamic_ncols=True)
        self._bar.total += max_steps
        self._active[name] = {"max_steps": max_steps, "start": time.perf_counter(), "loss": "-", "val": "-"}
        self._show()

    def step(self, name: str, step: int, loss: float) -> None:
        self._bar.update(1)
        if step % 10 == 0:
            self._active[name]["loss"] = f"{loss:.3f}"
            self._show()

    def eval(self, name: str, step: int, val_accuracy: float) -> None:
        self._active[name]["val"] = f"{val_accuracy:.2f}"
        self._show()

    def finish(self, name: str, steps: int, test_accuracy: float) -> None:
        state = self._active.pop(name)
        self._bar.total -= state["max_steps"] - steps
        self._bar.write(
            f"zoo {name}: {steps} steps, held-out accuracy {test_accuracy:.1%}, "
            f"{time.perf_counter() - state['start']:.0f} s"
        )
        self._show()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _show(self) -> None:
        parts = [f"{name} loss {s['loss']} val {s['val']}" for name, s in self._active.items()]
        self._bar.set_postfix_str(" | ".join(parts), refresh=True)


@contextlib.contextmanager
def progress_bar(enabled: bool) -> Iterator[ZooProgressBar | None]:
    """A ``ZooProgressBar`` closed on exit, or ``None`` when progress is off."""
    bar = ZooProgressBar() if enabled else None
    try:
        yield bar
    finally:
        if bar is not None:
            bar.close()


# --------------------------------------------------------------------------------------------------
# whole zoo


def read_manifest(settings: ZooSettings | None = None) -> dict[str, Any]:
    """What is built now (nothing is built): ``{"root", "settings_digest", "tokenizers": [record],
    "models": [record]}``; a model record has name, path, family, role, arch, params, accuracy
    (greedy, held-out test problems), train_steps and build_seconds.
    """
    settings = settings or DEFAULT_SETTINGS
    root = zoo_root(settings)
    tokenizers, models = [], []
    for family in FAMILIES:
        path = root / "tokenizers" / family
        if _is_complete(path, _INFO_FILE):
            tokenizers.append({**json.loads((path / _INFO_FILE).read_text()), "path": str(path)})
    for spec in settings.models:
        path = model_dir(spec.name, settings)
        if _is_complete(path, _INFO_FILE):
            models.append({**json.loads((path / _INFO_FILE).read_text()), "path": str(path)})
    return {
        "root": str(root),
        "settings_digest": settings.digest(),
        "tokenizers": tokenizers,
        "models": models,
    }


def build_zoo(
    progress: bool = True, settings: ZooSettings | None = None, jobs: int | None = None
) -> dict[str, Any]:
    """Build every missing tokenizer and model, write ``manifest.json`` and return it.

    Models build side by side in ``jobs`` worker processes (default: one per core, at most one per
    missing model; see ``tokenbridge_zoo.parallel``); ``jobs=1`` builds them one by one in this process.
    """
    from tokenbridge_zoo.parallel import build_models

    settings = settings or DEFAULT_SETTINGS
    root = zoo_root(settings)
    for family in FAMILIES:
        tokenizer_path(family, settings)
    missing = [
        spec for spec in settings.models if not _is_complete(model_dir(spec.name, settings), _INFO_FILE)
    ]
    build_models(missing, settings, jobs=jobs, progress=progress)
    manifest = read_manifest(settings)
    with _locked(root, "manifest"):
        write_json(root / "manifest.json", manifest)
    return manifest


def remove_zoo(settings: ZooSettings | None = None) -> None:
    """Delete this settings' zoo folder (the next use rebuilds it)."""
    root = zoo_root(settings)
    if root.exists():
        shutil.rmtree(root)


class ZooModelMissing(FileNotFoundError):
    """A zoo model was asked for without building it, and it is not built yet."""

    def __init__(self, name: str, path: Path, command: str = "tokenbridge-zoo"):
        super().__init__(
            f"zoo model {name!r} is not built (looked in {path}); run `{command}` once to build "
            "it (set TOKENBRIDGE_HOME to use a zoo somewhere else)"
        )
        self.name, self.path, self.command = name, path, command


def resolve_model(spec: str, build: bool = True) -> str:
    """``"zoo:NAME"`` → the path of zoo model NAME; any other string unchanged. ``"zoo:real/NAME"`` is a
    model of the real tier (``tokenbridge_zoo.real``: ``smollm2-135m-instruct``, ``gemma3-270m``).

    A missing model is built first (minutes) unless ``build=False``: then :class:`ZooModelMissing`
    says where it was looked for and the command that builds it. An unknown NAME is a ``ValueError``
    listing the known names.
    """
    if not spec.startswith("zoo:"):
        return spec
    name = spec[len("zoo:") :]
    if name.startswith(REAL_PREFIX):
        return _resolve_real(name[len(REAL_PREFIX) :], build)
    final = model_dir(name)
    on_demand = final.name != name  # model_dir names an on-demand model's folder by its spec digest
    complete = _is_complete(final, _INFO_FILE)
    if build:
        # an on-demand model can take many minutes on the CPU: show its progress
        return str(model_path(name, progress=on_demand and not complete))
    if not complete:
        command = f"tokenbridge-zoo --models {name}" if on_demand else "tokenbridge-zoo"
        raise ZooModelMissing(name, final, command)
    return str(final)


REAL_PREFIX = "real/"


def model_source(spec: str, build: bool = True) -> str:
    """The zoo as a model source of the core (``framework.models``; entry point ``zoo`` in the group
    ``tokenbridge.model_sources``): `resolve_model`, its refusals as ``ModelSourceError``."""
    from framework.models import ModelSourceError

    try:
        return resolve_model(spec, build=build)
    except ZooModelMissing as err:
        raise ModelSourceError(
            f"zoo model {err.name!r} is not built (looked in {err.path})",
            f"run `{err.command}` once to build it (or set TOKENBRIDGE_HOME to the home of a built one)",
        ) from None
    except ValueError as err:  # an unknown zoo name
        raise ModelSourceError(f"{spec!r}: {err}", "use one of the names listed above") from None


def _resolve_real(name: str, build: bool) -> str:
    from tokenbridge_zoo.real import REAL_MODELS, build_real_tier, real_model_path, real_root
    from tokenbridge_zoo.real_sources import BUILD_COMMAND

    if name not in REAL_MODELS:
        raise ValueError(
            f"unknown real model {name!r}; known: {', '.join(REAL_PREFIX + m for m in REAL_MODELS)}"
        )
    if build:
        build_real_tier(models=(name,), progress=True)  # reuses what is built; fetches the rest
    try:
        return str(real_model_path(name))
    except FileNotFoundError:
        raise ZooModelMissing(REAL_PREFIX + name, real_root() / "models" / name, BUILD_COMMAND) from None


__all__ = [
    "DEFAULT_SETTINGS",
    "FAMILIES",
    "BuildProgress",
    "ZooModelMissing",
    "ZooProgressBar",
    "build_zoo",
    "ensure_model",
    "model_path",
    "progress_bar",
    "read_manifest",
    "remove_zoo",
    "resolve_model",
    "tokenizer_path",
    "zoo_root",
]
