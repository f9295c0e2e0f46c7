"""Pair preparation: the disk cache of per-tokenizer tables, and the vectorised projection build.

- a table read back from the cache equals the freshly built one bit for bit (token bytes, lengths,
  special / fallback / undecodable ids, byte order, fingerprint, continuation encoder), and so does
  the projection map built from it;
- a damaged or truncated cache file is ignored, rebuilt and overwritten; the cache can be turned off;
- `build_projection_map` equals a direct per-token reference (the loop it replaced) on the fixture
  tokenizers and on random vocabularies full of edge cases (0x00 / 0xFF bytes, duplicates,
  byte-fallback pieces, specials, tiny group caps).
"""

from __future__ import annotations

import shutil
from bisect import bisect_left
from pathlib import Path

import numpy as np
import pytest

from framework.mapping import TokenByteTable, TokenMapper, load_tokenizer_info
from framework.mapping import cache as disk
from framework.mapping.topk import build_projection_map, pack_groups
from tests.unit.mapping_fixtures import FIXTURE_NAMES, fixture_tokenizer_dirs


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("TOKENBRIDGE_HOME", str(tmp_path))
    monkeypatch.delenv(disk.ENV, raising=False)
    return tmp_path / "cache" / "mapping"


def assert_same_info(a, b) -> None:
    ta, tb = a.table, b.table
    assert ta.token_bytes == tb.token_bytes
    assert ta.byte_lengths.dtype == tb.byte_lengths.dtype and np.array_equal(ta.byte_lengths, tb.byte_lengths)
    assert np.array_equal(ta.flat_bytes, tb.flat_bytes) and np.array_equal(ta.byte_starts, tb.byte_starts)
    assert (ta.kind, ta.byte_fallback) == (tb.kind, tb.byte_fallback)
    assert (ta.special_ids, ta.fallback_ids, ta.undecodable) == (
        tb.special_ids,
        tb.fallback_ids,
        tb.undecodable,
    )
    assert ta.byte_order.dtype == tb.byte_order.dtype and np.array_equal(ta.byte_order, tb.byte_order)
    assert a.fingerprint == b.fingerprint
    assert (a.stop_ids, a.eos_id, a.end_of_turn_id) == (b.stop_ids, b.eos_id, b.end_of_turn_id)
    assert a.continuation.to_str() == b.continuation.to_str()
    assert a.continuation.encode_special_tokens and b.continuation.encode_special_tokens


def assert_same_projection(p, q) -> None:
    for x, y in (
        (p.teacher_to_student, q.teacher_to_student),
        (p.exact, q.exact),
        (p.teacher_to_group, q.teacher_to_group),
        (p.group_bounds, q.group_bounds),
        (p.student_order, q.student_order),
    ):
        assert x.dtype == y.dtype and np.array_equal(x, y)


def test_cached_tables_equal_fresh_ones(home, monkeypatch):
    dirs = fixture_tokenizer_dirs()
    fresh = {name: load_tokenizer_info(dirs[name], cache=False) for name in FIXTURE_NAMES}
    assert not home.exists()
    cold = {name: load_tokenizer_info(dirs[name]) for name in FIXTURE_NAMES}
    for name in FIXTURE_NAMES:
        key = disk.tokenizer_key(dirs[name])
        assert cold[name].cache_key == key and (home / f"{key}.tables.npz").is_file()
        assert_same_info(cold[name], fresh[name])  # builds and caches the continuation encoder
        assert (home / f"{key}.continuation.npz").is_file()

    def no_rebuild(*args, **kwargs):
        raise AssertionError("a cached table was rebuilt")

    monkeypatch.setattr("framework.mapping.render.build_byte_table", no_rebuild)
    monkeypatch.setattr("framework.mapping.render.continuation_spec_json", no_rebuild)
    warm = {name: load_tokenizer_info(dirs[name]) for name in FIXTURE_NAMES}
    for name in FIXTURE_NAMES:
        assert warm[name]._backend_json is None  # nothing parsed: all from the cache
        assert_same_info(warm[name], fresh[name])
    for student in FIXTURE_NAMES:
        for teacher in FIXTURE_NAMES:
            if student != teacher:
                assert_same_projection(
                    TokenMapper(warm[student], warm[teacher]).projection,
                    TokenMapper(fresh[student], fresh[teacher]).projection,
                )


@pytest.mark.parametrize("part", ["tables", "continuation"])
@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage", "other_key"])
def test_damaged_cache_file_is_rebuilt(home, part, damage):
    path_dir = fixture_tokenizer_dirs()["sp_prefix"]
    fresh = load_tokenizer_info(path_dir, cache=False)
    _ = load_tokenizer_info(path_dir).continuation  # fills both files
    key = disk.tokenizer_key(path_dir)
    file = home / f"{key}.{part}.npz"
    data = bytearray(file.read_bytes())
    if damage == "flip":  # inside the stored arrays: the zip CRC no longer matches
        data[len(data) // 2] ^= 0xFF
    elif damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "garbage":
        data = bytearray(b"not a zip file")
    else:  # a valid entry of another tokenizer under this key
        other = fixture_tokenizer_dirs()["bl_group"]
        _ = load_tokenizer_info(other).continuation
        data = bytearray((home / f"{disk.tokenizer_key(other)}.{part}.npz").read_bytes())
    file.write_bytes(bytes(data))

    rebuilt = load_tokenizer_info(path_dir)
    assert_same_info(rebuilt, fresh)
    again = disk.load_tables(key) if part == "tables" else disk.load_continuation(key)
    assert again is not None  # the damaged file was overwritten with a good one
    assert not list(home.glob("*.tmp"))


def test_cache_can_be_turned_off_and_follows_the_files(home, tmp_path, monkeypatch):
    src = fixture_tokenizer_dirs()["bl_single"]
    monkeypatch.setenv(disk.ENV, "0")
    assert load_tokenizer_info(src).cache_key is None and not home.exists()
    monkeypatch.delenv(disk.ENV)
    assert load_tokenizer_info(src, cache=False).cache_key is None and not home.exists()

    copy = tmp_path / "copy"
    shutil.copytree(src, copy)
    assert disk.tokenizer_key(copy) == disk.tokenizer_key(src)  # content, not path
    config = copy / "tokenizer_config.json"
    config.write_text(config.read_text().replace("}", ', "model_max_length": 77}', 1))
    assert disk.tokenizer_key(copy) != disk.tokenizer_key(src)
    assert disk.tokenizer_key(tmp_path) is None  # no tokenizer.json: not cached
    custom = tmp_path / "elsewhere"
    monkeypatch.setenv(disk.ENV, str(custom))
    load_tokenizer_info(src)
    assert len(list(custom.glob("*.tables.npz"))) == 1 and not home.exists()


# ----------------------------------------------------------------------------- projection build


def _prefix_successor(b: bytes) -> bytes | None:
    b = b.rstrip(b"\xff")
    return b[:-1] + bytes([b[-1] + 1]) if b else None


def reference_projection(student, teacher, teacher_stop_ids, student_stop_id, max_group_size):
    """One teacher token at a time with dict lookups and bisection (the implementation replaced)."""
    by_bytes: dict[bytes, int] = {}
    eligible = []
    for sid, b in enumerate(student.token_bytes):
        if not b or sid in student.special_ids:
            continue
        eligible.append(sid)
        prev = by_bytes.get(b)
        if prev is None or (prev in student.fallback_ids and sid not in student.fallback_ids):
            by_bytes[b] = sid
    longest = max((len(b) for b in by_bytes), default=0)
    extended = {b[:n] for b in by_bytes for n in range(1, len(b))}
    eligible.sort(key=lambda sid: (student.token_bytes[sid], sid))
    sorted_bytes = [student.token_bytes[sid] for sid in eligible]
    t2s = np.full(teacher.vocab_size, -1, dtype=np.int32)
    t2g = np.full(teacher.vocab_size, -1, dtype=np.int32)
    exact = np.zeros(teacher.vocab_size, dtype=bool)
    groups: dict[tuple[int, int], int] = {}
    for tid, b in enumerate(teacher.token_bytes):
        if not b:
            if tid in teacher_stop_ids and student_stop_id is not None:
                t2s[tid], exact[tid] = student_stop_id, True
            continue
        if b in extended:
            lo = bisect_left(sorted_bytes, b)
            succ = _prefix_successor(b)
            hi = len(sorted_bytes) if succ is None else bisect_left(sorted_bytes, succ, lo)
            if hi - lo <= max_group_size:
                t2g[tid] = groups.setdefault((lo, hi), len(groups))
            continue
        for n in range(min(len(b), longest), 0, -1):
            match = by_bytes.get(b[:n])
            if match is not None:
                t2s[tid], exact[tid] = match, n == len(b)
                break
    bounds = np.array(list(groups), dtype=np.int32).reshape(-1, 2)
    return t2s, exact, t2g, bounds, np.array(eligible, dtype=np.int32)


def random_table(rng: np.random.Generator, size: int, with_fallback: bool) -> TokenByteTable:
    alphabet = np.array([0x00, 0x01, 0x20, 0x61, 0x62, 0x7F, 0x80, 0xFE, 0xFF], dtype=np.uint8)
    tokens = [bytes(rng.choice(alphabet, size=int(rng.integers(1, 6))).tolist()) for _ in range(size)]
    special = {int(i) for i in rng.choice(size, size=min(3, size), replace=False)}
    for i in list(special)[:2]:
        tokens[i] = b""  # as build_byte_table stores specials; one keeps bytes (hand-made tables)
    fallback = set()
    if with_fallback:  # <0xNN> pieces, some sharing bytes with regular pieces
        fallback = {int(i) for i in rng.choice(size, size=min(6, size), replace=False)} - special
        for i in fallback:
            tokens[i] = bytes([int(rng.choice(alphabet))])
    lengths = np.array([len(t) for t in tokens], dtype=np.int32)
    return TokenByteTable(
        "bytelevel", tokens, lengths, frozenset(special), with_fallback, frozenset(fallback)
    )


@pytest.mark.parametrize("seed", range(60))
def test_projection_build_equals_reference_on_random_vocabularies(seed):
    rng = np.random.default_rng(seed)
    student = random_table(rng, int(rng.integers(1, 120)), bool(seed % 2))
    teacher = random_table(rng, int(rng.integers(1, 120)), bool(seed % 3 == 0))
    stops = frozenset(int(i) for i in np.flatnonzero(teacher.byte_lengths == 0)[:1])
    cap = int(rng.choice([1, 2, 3, 1024]))
    got = build_projection_map(student, teacher, stops, 0, max_group_size=cap)
    want = reference_projection(student, teacher, stops, 0, cap)
    for x, y in zip(
        (got.teacher_to_student, got.exact, got.teacher_to_group, got.group_bounds, got.student_order), want
    ):
        assert x.dtype == y.dtype and np.array_equal(x, y)


def test_projection_build_equals_reference_on_fixture_tokenizers():
    dirs = fixture_tokenizer_dirs()
    infos = {name: load_tokenizer_info(dirs[name], cache=False) for name in FIXTURE_NAMES}
    for s in FIXTURE_NAMES:
        for t in FIXTURE_NAMES:
            args = (infos[s].table, infos[t].table, infos[t].stop_ids, infos[s].stop_token_to_append)
            for cap in (4, 1024):
                got = build_projection_map(*args, max_group_size=cap)
                want = reference_projection(*args, cap)
                assert np.array_equal(got.teacher_to_student, want[0]) and np.array_equal(got.exact, want[1])
                assert np.array_equal(got.teacher_to_group, want[2]) and np.array_equal(
                    got.group_bounds, want[3]
                )
                assert np.array_equal(got.student_order, want[4])


@pytest.mark.parametrize("seed", range(30))
def test_pack_groups_equals_reference(seed):
    """Per-sample group payload: the merged-range member union equals the unique of all members."""
    rng = np.random.default_rng(seed)
    student, teacher = random_table(rng, 150, True), random_table(rng, 150, False)
    projection = build_projection_map(student, teacher, frozenset(), None)
    if projection.num_groups == 0:
        pytest.skip("no groups drawn")
    group_ids = rng.integers(-1, projection.num_groups, size=(int(rng.integers(1, 40)), 5)).astype(np.int32)
    got = pack_groups(group_ids, projection)
    slots = group_ids >= 0
    if not slots.any():
        assert got is None
        return
    used, inverse = np.unique(group_ids[slots], return_inverse=True)
    lo, hi = projection.group_bounds[used, 0].astype(np.int64), projection.group_bounds[used, 1]
    sizes = hi - lo
    ranks = np.unique(
        np.arange(int(sizes.sum()), dtype=np.int64) + np.repeat(lo - (np.cumsum(sizes) - sizes), sizes)
    )
    local = np.full(group_ids.shape, -1, dtype=np.int32)
    local[slots] = inverse
    bounds = np.stack([np.searchsorted(ranks, lo), np.searchsorted(ranks, hi)], axis=1).astype(np.int32)
    for x, y in zip(got, (local, projection.student_order[ranks], bounds)):
        assert x.dtype == y.dtype and np.array_equal(x, y)
