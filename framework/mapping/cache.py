"""Disk cache of the per-tokenizer mapping tables, so that a restarted actor skips rebuilding them.

One entry per tokenizer, under ``$TOKENBRIDGE_HOME/cache/mapping/`` (or the folder that
``TOKENBRIDGE_MAPPING_CACHE`` names; ``0``/``off`` there turns the cache off):

- ``<key>.tables.npz``: the :class:`TokenByteTable` as arrays (all token bytes end to end, their lengths,
  special / byte-fallback / undecodable ids, the byte order of the ids) and a JSON header (kind,
  byte_fallback, fingerprint);
- ``<key>.continuation.npz``: the continuation encoder's ``tokenizer.json`` text (written the first
  time the tokenizer serves as a teacher, the only role that encodes continuations).

The key hashes this module's format version, the ``transformers`` and ``tokenizers`` versions (the
backend tokenizer is what transformers builds from the files) and the content of the tokenizer files
of the folder. Files hold NumPy arrays only (read with ``allow_pickle=False``), are written to a
temporary name and renamed into place, and a file that cannot be read back whole and consistent (the
zip CRC catches damaged bytes) is ignored, rebuilt and overwritten.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from framework.mapping.token_bytes import TokenByteTable

FORMAT_VERSION = 1  # bump when the cached tables or the continuation encoder change
ENV = "TOKENBRIDGE_MAPPING_CACHE"
_KEY_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")
_OFF = ("0", "off", "false", "no")
log = logging.getLogger(__name__)


def cache_dir() -> Path | None:
    """The cache folder, or None when ``TOKENBRIDGE_MAPPING_CACHE`` turns the cache off."""
    setting = os.environ.get(ENV, "").strip()
    if setting.lower() in _OFF:
        return None
    if setting:
        return Path(setting).expanduser()
    from framework.zoo.settings import tokenbridge_home

    return tokenbridge_home() / "cache" / "mapping"


def tokenizer_key(path: str | os.PathLike) -> str | None:
    """Content hash naming a tokenizer folder's entry (None: not a folder with a ``tokenizer.json``)."""
    folder = Path(path)
    if not (folder / "tokenizer.json").is_file():
        return None
    import tokenizers
    import transformers

    digest = hashlib.sha256(
        f"tokenbridge-mapping/{FORMAT_VERSION}/{transformers.__version__}/{tokenizers.__version__}".encode()
    )
    for name in _KEY_FILES:
        file = folder / name
        if file.is_file():
            data = file.read_bytes()
            digest.update(f"\0{name}\0{len(data)}\0".encode())
            digest.update(data)
    return digest.hexdigest()


def _entry(key: str, part: str) -> Path | None:
    folder = cache_dir()
    return None if folder is None else folder / f"{key}.{part}.npz"


def _header(key: str, **fields) -> np.ndarray:
    text = json.dumps({"format": FORMAT_VERSION, "key": key, **fields}, sort_keys=True)
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8)


def _read(path: Path, key: str) -> tuple[dict, dict[str, np.ndarray]] | None:
    """(header, arrays) of an entry, or None when it is missing or unreadable (then logged)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}  # reads every member: the CRC is checked
        header = json.loads(arrays.pop("header").tobytes().decode("utf-8"))
        if header.get("format") != FORMAT_VERSION or header.get("key") != key:
            raise ValueError("format or key does not match")
        return header, arrays
    except Exception as err:  # any damage means: rebuild
        log.warning("ignoring unreadable mapping cache file %s (%s: %s)", path, type(err).__name__, err)
        return None


def _write(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write an entry atomically (temporary file + rename); failures only cost the cache."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, allow_pickle=False, **arrays)
            os.chmod(tmp, 0o644)  # mkstemp makes it private; the cache is shared like the zoo
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as err:
        log.warning("could not write mapping cache file %s (%s)", path, err)


def load_tables(key: str) -> tuple[TokenByteTable, str] | None:
    """(byte table with its byte order, fingerprint) from the cache, or None."""
    path = _entry(key, "tables")
    entry = None if path is None else _read(path, key)
    if entry is None:
        return None
    header, a = entry
    try:
        table = TokenByteTable.from_arrays(
            header["kind"],
            a["flat_bytes"],
            a["byte_lengths"],
            a["special_ids"],
            header["byte_fallback"],
            a["fallback_ids"],
            a["undecodable"],
            a["byte_order"],
        )
        V = table.vocab_size
        for name in ("special_ids", "fallback_ids", "undecodable", "byte_order"):
            ids = a[name]
            if ids.ndim != 1 or (ids.shape[0] and (int(ids.min()) < 0 or int(ids.max()) >= V)):
                raise ValueError(f"{name} outside the vocabulary")
        if a["byte_order"].shape[0] != int(np.count_nonzero(table.byte_lengths)):
            raise ValueError("byte order does not cover the ids with bytes")
        return table, str(header["fingerprint"])
    except Exception as err:
        log.warning("ignoring inconsistent mapping cache file %s (%s: %s)", path, type(err).__name__, err)
        return None


def save_tables(key: str, table: TokenByteTable, fingerprint: str) -> None:
    path = _entry(key, "tables")
    if path is None:
        return
    ids = {
        name: np.array(sorted(values), dtype=np.int64)
        for name, values in (
            ("special_ids", table.special_ids),
            ("fallback_ids", table.fallback_ids),
            ("undecodable", table.undecodable),
        )
    }
    header = _header(key, kind=table.kind, byte_fallback=table.byte_fallback, fingerprint=fingerprint)
    _write(
        path,
        {
            "header": header,
            "flat_bytes": table.flat_bytes,
            "byte_lengths": table.byte_lengths.astype(np.int32),
            "byte_order": table.byte_order,
            **ids,
        },
    )


def load_continuation(key: str) -> str | None:
    """The continuation encoder's JSON text from the cache, or None."""
    path = _entry(key, "continuation")
    entry = None if path is None else _read(path, key)
    if entry is None:
        return None
    try:
        return entry[1]["json"].tobytes().decode("utf-8")
    except Exception as err:
        log.warning("ignoring unreadable mapping cache file %s (%s: %s)", path, type(err).__name__, err)
        return None


def save_continuation(key: str, spec_json: str) -> None:
    path = _entry(key, "continuation")
    if path is not None:
        _write(path, {"header": _header(key), "json": np.frombuffer(spec_json.encode("utf-8"), np.uint8)})
