"""Disk cache of the per-tokenizer mapping tables, so that a restarted actor skips rebuilding them.

Entries live under ``$TOKENBRIDGE_HOME/cache/mapping/`` (or the folder that ``TOKENBRIDGE_MAPPING_CACHE``
names; ``0``/``off`` there turns the cache off). Per tokenizer folder:

- ``<key>.tables.npz``: the :class:`TokenByteTable` as arrays (all token bytes end to end, their lengths,
  special / byte-fallback / undecodable ids, the byte order of the ids) and a JSON header (kind,
  byte_fallback, fingerprint);
- ``<key>.tokenizer.npz``: what the mapping reads from the ``transformers`` tokenizer, so that a warm
  start does not build one (seconds for a large vocabulary: transformers v5 parses ``tokenizer.json``
  in Python, rebuilds or deep-copies the backend and registers the added tokens): the backend
  tokenizer's JSON exactly as transformers built it (not always the folder's ``tokenizer.json``: for
  Gemma-3 it marks ``<mask>`` special, for Qwen3 it changes the ByteLevel decoder), its
  ``encode_special_tokens`` flag, the stop tokens found from the chat template, and the chat template
  with the special-token strings it is rendered with (:class:`framework.mapping.render.ChatTemplate`);
- ``<key>.continuation.npz``: the continuation encoder's ``tokenizer.json`` without its model (the
  encoder shares the backend's model, see :func:`framework.mapping.render.continuation_from_parts`;
  written the first time the tokenizer serves as a teacher, the only role that encodes continuations).

Per tokenizer pair, ``<pair key>.projection.npz``: the top-k projection map (`framework.mapping.topk`),
keyed by both tokenizers' keys, the teacher stop ids, the student stop id and the group-size cap (the
stop ids also come from ``generation_config.json``, which the tokenizer keys do not hash).

The key hashes this module's format version, the ``transformers`` and ``tokenizers`` versions (the
backend tokenizer is what transformers builds from the files) and the content of the files of the
folder that transformers reads for a tokenizer (tokenizer files, chat templates, ``config.json``).
Files hold NumPy arrays only (read with ``allow_pickle=False``), are written to a temporary name and
renamed into place, and a file that cannot be read back whole and consistent (the zip CRC catches
damaged bytes) is ignored, rebuilt and overwritten.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from framework.home import tokenbridge_home
from framework.mapping.token_bytes import TokenByteTable
from framework.mapping.topk import ProjectionMap

FORMAT_VERSION = 2  # bump when a cached entry, the continuation encoder or the projection build change
ENV = "TOKENBRIDGE_MAPPING_CACHE"
# what AutoTokenizer reads from a local folder (config.json: the tokenizer class when the config omits it)
_KEY_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "config.json",
)
_TEMPLATE_DIR = "additional_chat_templates"
_OFF = ("0", "off", "false", "no")
log = logging.getLogger(__name__)


def cache_dir() -> Path | None:
    """The cache folder, or None when ``TOKENBRIDGE_MAPPING_CACHE`` turns the cache off."""
    setting = os.environ.get(ENV, "").strip()
    if setting.lower() in _OFF:
        return None
    if setting:
        return Path(setting).expanduser()
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
    extra = sorted((folder / _TEMPLATE_DIR).glob("*")) if (folder / _TEMPLATE_DIR).is_dir() else []
    for file in [*(folder / name for name in _KEY_FILES), *extra]:
        if file.is_file():
            data = file.read_bytes()
            name = file.relative_to(folder).as_posix()
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


def _load(key: str, kind: str) -> tuple[Path | None, tuple[dict, dict[str, np.ndarray]] | None]:
    """(file, its header and arrays) of the ``kind`` entry of ``key``; the entry is None when the cache
    is off or the file is missing or unreadable."""
    path = _entry(key, kind)
    return path, (None if path is None else _read(path, key))


def load_tables(key: str) -> tuple[TokenByteTable, str] | None:
    """(byte table with its byte order, fingerprint) from the cache, or None."""
    path, entry = _load(key, "tables")
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


def load_tokenizer(key: str) -> tuple[str, dict[str, Any]] | None:
    """(backend tokenizer JSON text, facts) from the cache, or None; see :func:`save_tokenizer`."""
    path, entry = _load(key, "tokenizer")
    if entry is None:
        return None
    header, a = entry
    try:
        facts = header["facts"]
        for name in ("eos_id", "end_of_turn_id"):
            if facts[name] is not None and (not isinstance(facts[name], int) or facts[name] < 0):
                raise ValueError(f"{name} is not a token id")
        if not isinstance(facts["encode_special_tokens"], bool):
            raise ValueError("encode_special_tokens is not a flag")
        chat = facts["chat"]
        if chat is not None and not (
            (chat["template"] is None or isinstance(chat["template"], str))
            and all(isinstance(k, str) and isinstance(v, str) for k, v in chat["special_tokens"].items())
        ):
            raise ValueError("malformed chat template")
        return a["backend"].tobytes().decode("utf-8"), facts
    except Exception as err:
        log.warning("ignoring inconsistent mapping cache file %s (%s: %s)", path, type(err).__name__, err)
        return None


def save_tokenizer(key: str, backend_json: str, facts: dict[str, Any]) -> None:
    """Store the backend tokenizer's JSON and the ``facts`` read from the transformers tokenizer:
    ``eos_id``, ``end_of_turn_id``, ``encode_special_tokens`` (the backend flag, not serialized in its
    JSON) and ``chat`` (``{"template", "special_tokens"}``, or None when only transformers can render)."""
    path = _entry(key, "tokenizer")
    if path is not None:
        data = np.frombuffer(backend_json.encode("utf-8"), np.uint8)
        _write(path, {"header": _header(key, facts=facts), "backend": data})


def load_continuation(key: str) -> str | None:
    """The continuation encoder's JSON text without its model (see ``save_continuation``), or None."""
    path, entry = _load(key, "continuation")
    if entry is None:
        return None
    try:
        return entry[1]["json"].tobytes().decode("utf-8")
    except Exception as err:
        log.warning("ignoring unreadable mapping cache file %s (%s: %s)", path, type(err).__name__, err)
        return None


def save_continuation(key: str, parts_json: str) -> None:
    path = _entry(key, "continuation")
    if path is not None:
        _write(path, {"header": _header(key), "json": np.frombuffer(parts_json.encode("utf-8"), np.uint8)})


# ----------------------------------------------------------------------------- pair entries


def projection_key(
    student_key: str,
    teacher_key: str,
    teacher_stop_ids: frozenset[int],
    student_stop_id: int | None,
    max_group_size: int,
) -> str:
    """Name of a pair's projection entry: everything `build_projection_map` reads besides the two
    tables (which the tokenizer keys name)."""
    stops = ",".join(str(i) for i in sorted(teacher_stop_ids))
    text = (
        f"tokenbridge-projection/{FORMAT_VERSION}/{student_key}/{teacher_key}/{stops}/{student_stop_id}/"
        f"{max_group_size}"
    )
    return hashlib.sha256(text.encode()).hexdigest()


_PROJECTION_ARRAYS = {
    "teacher_to_student": np.int32,
    "exact": np.bool_,
    "teacher_to_group": np.int32,
    "group_bounds": np.int32,
    "student_order": np.int32,
}


def load_projection(key: str, student: TokenByteTable, teacher: TokenByteTable) -> ProjectionMap | None:
    """The pair's projection map from the cache, or None when missing or not consistent with the tables
    (shapes, dtypes, id ranges, and the student order must be the student's own byte order)."""
    path, entry = _load(key, "projection")
    if entry is None:
        return None
    a = entry[1]
    try:
        for name, dtype in _PROJECTION_ARRAYS.items():
            if a[name].dtype != dtype:
                raise ValueError(f"{name} is {a[name].dtype}, not {np.dtype(dtype)}")
        t2s, t2g, bounds, order = (
            a["teacher_to_student"],
            a["teacher_to_group"],
            a["group_bounds"],
            a["student_order"],
        )
        Vt, Vs, G, N = teacher.vocab_size, student.vocab_size, bounds.shape[0], order.shape[0]
        if any(a[name].shape != (Vt,) for name in ("teacher_to_student", "exact", "teacher_to_group")):
            raise ValueError("per-teacher-id arrays do not cover the teacher vocabulary")
        if bounds.ndim != 2 or bounds.shape[1] != 2 or order.ndim != 1:
            raise ValueError("malformed group bounds or student order")
        expected = student.byte_order
        if student.special_ids:
            expected = expected[~np.isin(expected, np.fromiter(student.special_ids, np.int64))]
        if not np.array_equal(order, expected):
            raise ValueError("student order is not this student's byte order")
        if Vt and (int(t2s.min()) < -1 or int(t2s.max()) >= Vs or int(t2g.min()) < -1 or int(t2g.max()) >= G):
            raise ValueError("teacher map outside the student vocabulary or the groups")
        if G and (
            int(bounds.min()) < 0 or int(bounds.max()) > N or bool((bounds[:, 0] > bounds[:, 1]).any())
        ):
            raise ValueError("group bounds outside the student order")
        return ProjectionMap(t2s, a["exact"], t2g, bounds, order)
    except Exception as err:
        log.warning("ignoring inconsistent mapping cache file %s (%s: %s)", path, type(err).__name__, err)
        return None


def save_projection(key: str, projection: ProjectionMap) -> None:
    path = _entry(key, "projection")
    if path is None:
        return
    arrays = {name: getattr(projection, name) for name in _PROJECTION_ARRAYS}
    if any(value is None for value in arrays.values()):
        return  # the identity projection has no groups; it is not cached (nothing to build)
    _write(path, {"header": _header(key), **arrays})
