"""Model arguments → local model folders: the core's one place for it (training and ``tokenbridge-pair``).

A model argument is one of

- ``SCHEME:NAME``: a model of an installed model source, found by its entry point in the group
  ``tokenbridge.model_sources`` (a callable ``(spec, build) -> folder``). The distribution installs one,
  ``zoo`` (the demo zoo, the top-level package ``tokenbridge_zoo``: ``zoo:NAME``); the core never imports it;
- an existing local folder (or file: it is then refused with the reason);
- ``org/name`` or ``org/name@revision``: a Hugging Face Hub repository, fetched with
  ``huggingface_hub.snapshot_download`` into the Hugging Face cache (``HF_HUB_CACHE`` / ``HF_HOME``),
  only the files a run reads (configs, tokenizer files, chat templates, safetensors weights). With
  ``HF_HUB_OFFLINE=1`` only the cache is read.

The folder is then checked before any actor starts, and every problem is a
:class:`~framework.config.ConfigError` naming the argument, the problem and the fix, so
``tokenbridge-train`` prints one line and exits 2.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from framework.config import ConfigError

if TYPE_CHECKING:
    from framework.config import Config

SOURCE_GROUP = "tokenbridge.model_sources"
_SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][\w-]*):(?!//)")  # zoo:NAME (never a Hub id, which has no ":")
# org/name with an optional @revision (branch, tag or commit); exactly one "/" and Hub-legal names
_HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<revision>[\w./-]+))?$")

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json", "tekken.json")
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth")
# what a run reads from a Hub repository; weight patterns are added when weights are needed
_HUB_TOKENIZER_PATTERNS = ["*.json", "*.jinja", "tokenizer.model", "*.tiktoken", "merges.txt", "vocab.txt"]
_HUB_WEIGHT_PATTERNS = ["*.safetensors"]
_HUB_PICKLE_PATTERNS = ["pytorch_model*.bin"]
# duplicate copies of the weights some repositories carry next to the Hugging Face ones
_HUB_IGNORE = ["original/*", "consolidated*"]

_FORMS = "a local model folder, a Hugging Face id (org/name or org/name@revision) or zoo:NAME"


class ModelSourceError(LookupError):
    """What a model source raises for a name it cannot give: the problem and the fix, in words."""

    def __init__(self, problem: str, fix: str):
        super().__init__(f"{problem}. Fix: {fix}")
        self.problem, self.fix = problem, fix


class ModelPathError(ConfigError):
    """A model argument that cannot be used; ``problem`` and ``fix`` are kept for one-line CLI messages."""

    def __init__(self, key: str, problem: str, fix: str):
        super().__init__(key, problem, fix)
        self.problem, self.fix = problem, fix


# ---------------------------------------------------------------------------------------------- Hub


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment now (as huggingface_hub reads it)."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.path.expandvars(os.environ[var])).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface"
    )
    return Path(os.path.expandvars(home)).expanduser() / "hub"


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) set to a true value, read now."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in {"1", "ON", "YES", "TRUE"}


def parse_hub_id(spec: str) -> tuple[str, str | None] | None:
    """``"org/name@rev"`` → ``("org/name", "rev")``; ``None`` when ``spec`` is not shaped like a Hub id."""
    match = _HUB_ID.match(spec)
    if match is None or ".." in match["repo"]:
        return None
    return match["repo"], match["revision"]


def download_from_hub(
    repo_id: str,
    revision: str | None = None,
    *,
    key: str = "model",
    weights: bool = True,
    allow_pickle_weights: bool = False,
    remote_code: bool = False,
) -> str:
    """The local snapshot folder of a Hub repository (downloaded once, then read from the cache)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        IncompleteSnapshotError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    patterns = list(_HUB_TOKENIZER_PATTERNS)
    if weights:
        patterns += _HUB_WEIGHT_PATTERNS + (_HUB_PICKLE_PATTERNS if allow_pickle_weights else [])
    if remote_code:
        patterns.append("*.py")
    cache, offline = hub_cache_dir(), hub_offline()
    name = repo_id if revision is None else f"{repo_id}@{revision}"
    local = "give a local model folder instead"
    try:
        return snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=str(cache),
            local_files_only=offline,
            allow_patterns=patterns,
            ignore_patterns=_HUB_IGNORE,
        )
    except IncompleteSnapshotError as err:
        raise ModelPathError(
            key, f"the cached copy of Hugging Face model {name!r} in {cache} is incomplete ({_one_line(err)})",
            f"unset HF_HUB_OFFLINE and run again on a machine that reaches the Hub to finish the download, or {local}",
        ) from None  # fmt: skip
    except LocalEntryNotFoundError as err:
        # offline by the environment now, or by huggingface_hub's own reading of it at import time
        if offline or isinstance(err.__cause__, OfflineModeIsEnabled):
            raise ModelPathError(
                key, f"{name!r} is not a local folder, and as a Hugging Face model it is not in the cache "
                f"{cache}; HF_HUB_OFFLINE is set, so it cannot be downloaded",
                f"{local}, or unset HF_HUB_OFFLINE (or run once where the Hub is reachable) to download it "
                "into that cache",
            ) from None  # fmt: skip
        raise ModelPathError(
            key, f"Hugging Face model {name!r} could not be downloaded and is not in the cache {cache} "
            f"({type(err).__name__})",
            f"check the network or the proxy, or {local}",
        ) from None  # fmt: skip
    except GatedRepoError:
        raise ModelPathError(
            key, f"Hugging Face model {name!r} is gated",
            "accept its licence on huggingface.co and export HF_TOKEN, or give a local model folder",
        ) from None  # fmt: skip
    except RevisionNotFoundError:
        raise ModelPathError(
            key, f"Hugging Face model {repo_id!r} has no revision {revision!r}",
            "use an existing branch, tag or commit after '@', or leave '@revision' out",
        ) from None  # fmt: skip
    except RepositoryNotFoundError:
        raise ModelPathError(
            key, f"{name!r} is neither a local folder nor a Hugging Face model that can be read (it may be "
            "private or misspelt)",
            f"check the spelling, export HF_TOKEN for a private model, or give {_FORMS}",
        ) from None  # fmt: skip
    except HFValidationError as err:
        raise ModelPathError(
            key, f"{name!r} is not a valid Hugging Face id ({_one_line(err)})", f"give {_FORMS}"
        ) from None
    except OSError as err:  # disk full, permissions, a network error huggingface_hub did not classify
        raise ModelPathError(
            key, f"Hugging Face model {name!r} could not be fetched into {cache} ({type(err).__name__}: {_one_line(err)})",
            f"fix the cause above or {local}",
        ) from None  # fmt: skip


# ---------------------------------------------------------------------------------------------- checks


def _gguf_error(key: str, path: Path) -> ModelPathError:
    return ModelPathError(
        key, f"{str(path)!r} holds GGUF weights, which tokenbridge does not load",
        "convert it to a Hugging Face folder with safetensors weights (e.g. load it with transformers' "
        "gguf_file=... and save_pretrained), or give the original Hugging Face id",
    )  # fmt: skip


def check_model_dir(
    path: str | Path, *, key: str = "model", weights: bool = True, allow_pickle_weights: bool = False
) -> None:
    """Refuse what no actor could load: a missing path, a file, no tokenizer, and with ``weights`` no
    config.json, no weights, GGUF-only or pickle-only weights (unless ``allow_pickle_weights``)."""
    folder = Path(path).expanduser()
    if not folder.exists():
        raise ModelPathError(key, f"{str(path)!r} does not exist", f"give {_FORMS}")
    if not folder.is_dir():
        if folder.suffix.lower() == ".gguf":
            raise _gguf_error(key, folder)
        raise ModelPathError(
            key, f"{str(path)!r} is a file, not a model folder", "give the folder that holds config.json"
        )
    names = {p.name for p in folder.iterdir()}
    safetensors = any(n.endswith(".safetensors") for n in names)
    pickles = sorted(n for n in names if n.endswith(_PICKLE_SUFFIXES))
    gguf = any(n.lower().endswith(".gguf") for n in names)
    if gguf and not safetensors and not pickles:
        raise _gguf_error(key, folder)
    if weights and "config.json" not in names:
        raise ModelPathError(
            key, f"{str(path)!r} has no config.json, so it is not a Hugging Face model folder",
            f"give the folder written by save_pretrained (config.json + *.safetensors), or {_FORMS}",
        )  # fmt: skip
    if not names & set(TOKENIZER_FILES):
        raise ModelPathError(
            key, f"{str(path)!r} has no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...)",
            "save the tokenizer into the same folder (tokenizer.save_pretrained(folder))",
        )  # fmt: skip
    if not weights or safetensors:
        return
    if pickles and not allow_pickle_weights:
        raise ModelPathError(
            key, f"{str(path)!r} has only pickle weights ({', '.join(pickles[:2])}), which can run code when "
            "loaded",
            "convert them to safetensors (load the model and save_pretrained it), or set "
            "pair.allow_pickle_weights=true if you trust these files",
        )  # fmt: skip
    if not pickles:
        raise ModelPathError(
            key, f"{str(path)!r} has no model weights (*.safetensors)",
            "save the model into this folder with save_pretrained, or finish its download",
        )  # fmt: skip


# ---------------------------------------------------------------------------------------------- resolution


def resolve_model_dir(
    spec: str,
    *,
    key: str = "model",
    weights: bool = True,
    allow_pickle_weights: bool = False,
    remote_code: bool = False,
    build: bool = True,
    check: bool = True,
) -> str:
    """The local folder of a model argument (see the module doc), checked with :func:`check_model_dir`.

    ``weights=False`` asks for the tokenizer only (``tokenbridge-pair``, an http teacher): nothing
    else is downloaded or required. ``build=False`` asks a model source not to build a model it does
    not have yet (the zoo's take minutes) but to refuse it. ``check=False`` returns any argument it cannot resolve unchanged.
    """
    spec = str(spec).strip()
    if not spec:
        raise ModelPathError(key, "empty model argument", f"give {_FORMS}")
    if Path(spec).expanduser().exists():
        path = os.path.abspath(Path(spec).expanduser())  # actors may run in another working folder
    elif (scheme := _SCHEME.match(spec)) is not None:
        path = _from_source(scheme["scheme"], spec, key, build)
    elif (hub := parse_hub_id(spec)) is not None:
        path = download_from_hub(
            hub[0], hub[1], key=key, weights=weights, allow_pickle_weights=allow_pickle_weights,
            remote_code=remote_code,
        )  # fmt: skip
    elif not check:
        return spec
    else:
        raise ModelPathError(key, f"{spec!r} does not exist", f"give {_FORMS}")
    if check:
        check_model_dir(path, key=key, weights=weights, allow_pickle_weights=allow_pickle_weights)
    return path


def _from_source(scheme: str, spec: str, key: str, build: bool) -> str:
    """``spec`` from the model source installed under ``scheme`` (module docstring)."""
    from importlib.metadata import entry_points

    found = [ep for ep in entry_points(group=SOURCE_GROUP) if ep.name == scheme]
    if not found:
        installed = sorted(ep.name for ep in entry_points(group=SOURCE_GROUP))
        raise ModelPathError(
            key, f"{spec!r}: no model source {scheme!r} is installed (installed: {installed})",
            f"give {_FORMS}, or install the package that provides {scheme}:",
        )  # fmt: skip
    try:
        return str(found[0].load()(spec, build=build))
    except ModelSourceError as err:
        raise ModelPathError(key, err.problem, err.fix) from None


def resolve_pair(cfg: Config) -> tuple[str, list[str]]:
    """``(student folder, [teacher folder, ...])`` of a run (one per teacher of
    :meth:`Config.teacher_list`), checked before any actor starts.

    An http teacher is scored by a server: only its tokenizer is read here (a Hub id fetches tokenizer
    files only) and its folder is not checked, as before.
    """
    pickle, remote_code = cfg.pair.allow_pickle_weights, cfg.pair.trust_remote_code
    student = resolve_model_dir(
        cfg.pair.student, key="pair.student", allow_pickle_weights=pickle, remote_code=remote_code
    )
    teachers = []
    for i, t in enumerate(cfg.teacher_list()):
        http = t.backend == "http"
        key = f"teachers.{i}.model" if cfg.teachers else "pair.teacher"
        folder = resolve_model_dir(
            t.model, key=key, weights=not http, allow_pickle_weights=pickle, remote_code=remote_code,
            check=not http,
        )  # fmt: skip
        teachers.append(folder)
    return student, teachers


__all__ = [
    "ModelPathError",
    "ModelSourceError",
    "check_model_dir",
    "download_from_hub",
    "hub_cache_dir",
    "hub_offline",
    "parse_hub_id",
    "resolve_model_dir",
    "resolve_pair",
]
