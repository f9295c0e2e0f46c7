"""Pair preparation: the disk cache of per-tokenizer tables, and the vectorised projection build.

- a table read back from the cache equals the freshly built one bit for bit (token bytes, lengths,
  special / fallback / undecodable ids, byte order, fingerprint, backend and continuation encoders,
  stop tokens, rendered prompts), without building a transformers tokenizer, and so does the
  projection map built from it; the cached projection map equals the built one;
- the continuation encoder built on the backend's model serializes like the one parsed from the full
  spec; the chat template renders like ``apply_chat_template``;
- a damaged or truncated cache file is ignored, rebuilt and overwritten; the cache can be turned off;
  the keys follow the files (chat templates included) and, for a pair, the stop ids;
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
from framework.mapping.render import ChatTemplate, continuation_encoder
from framework.mapping.topk import MAX_GROUP_SIZE, build_projection_map, pack_groups
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
    assert a.stops == b.stops and a.stop_token_to_append == b.stop_token_to_append
    assert (a.chat, a.chat_template, a.warnings) == (b.chat, b.chat_template, b.warnings)
    assert a.prompt_encoder.to_str() == b.prompt_encoder.to_str()
    assert a.prompt_encoder.encode_special_tokens == b.prompt_encoder.encode_special_tokens
    assert a.continuation.to_str() == b.continuation.to_str()
    assert a.continuation.encode_special_tokens and b.continuation.encode_special_tokens
    for messages in CONVERSATIONS:
        assert np.array_equal(a.render_prompt_ids(messages), b.render_prompt_ids(messages))


CONVERSATIONS = [
    [{"role": "user", "content": "What is 12 + 30?"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi <|eot_id|> <s> ▁x"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "東京 🙂 and 3+3?"},
    ],
]


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
        assert cold[name].cache_key == key
        assert (home / f"{key}.tables.npz").is_file() and (home / f"{key}.tokenizer.npz").is_file()
        assert_same_info(cold[name], fresh[name])  # builds and caches the continuation encoder
        assert (home / f"{key}.continuation.npz").is_file()

    def no_rebuild(*args, **kwargs):
        raise AssertionError("a cached entry was rebuilt")

    monkeypatch.setattr("framework.mapping.render.build_byte_table", no_rebuild)
    monkeypatch.setattr("framework.mapping.render.continuation_parts_json", no_rebuild)
    monkeypatch.setattr("framework.mapping.render._from_transformers", no_rebuild)
    monkeypatch.setattr("framework.mapping.mapper.build_projection_map", no_rebuild)
    warm = {name: load_tokenizer_info(dirs[name]) for name in FIXTURE_NAMES}
    for name in FIXTURE_NAMES:
        # nothing parsed and no transformers tokenizer: all from the cache
        assert warm[name]._backend_json is None and warm[name]._prompt_encoder is None
        assert_same_info(warm[name], fresh[name])
        assert warm[name]._hf is None  # rendered prompts included
    monkeypatch.undo()  # the pairs' projection maps are built (and cached) once below
    for student in FIXTURE_NAMES:
        for teacher in FIXTURE_NAMES:
            if student != teacher:
                want = TokenMapper(fresh[student], fresh[teacher]).projection
                assert_same_projection(TokenMapper(warm[student], warm[teacher]).projection, want)
                monkeypatch.setattr("framework.mapping.mapper.build_projection_map", no_rebuild)
                assert_same_projection(TokenMapper(warm[student], warm[teacher]).projection, want)
                monkeypatch.undo()


def test_continuation_on_the_backend_model_equals_the_parsed_one(home):
    for name, path in fixture_tokenizer_dirs().items():
        info = load_tokenizer_info(path, cache=False)
        reference = continuation_encoder(info.backend_json)  # the whole spec parsed on its own
        assert info.continuation.to_str() == reference.to_str()
        assert info.continuation.encode_special_tokens and reference.encode_special_tokens
        for text in ("Hi <|eot_id|> <s> ▁x  y", " lead", "東京 🙂\n\t12345", "e\u0301 x"):
            assert info.continuation.encode(text).ids == reference.encode(text).ids, (name, text)


def test_chat_template_renders_like_transformers(home):
    for path in fixture_tokenizer_dirs().values():
        hf = load_tokenizer_info(path, cache=False).hf
        chat = ChatTemplate.of(hf)
        assert chat is not None and chat.template == hf.chat_template
        for messages in CONVERSATIONS:
            assert chat.render(messages) == hf.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=False
            )


def _damage(file: Path, damage: str, other: Path) -> None:
    data = bytearray(file.read_bytes())
    if damage == "flip":  # inside the stored arrays: the zip CRC no longer matches
        data[len(data) // 2] ^= 0xFF
    elif damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "garbage":
        data = bytearray(b"not a zip file")
    else:  # a valid entry of another tokenizer (pair) under this key
        data = bytearray(other.read_bytes())
    file.write_bytes(bytes(data))


@pytest.mark.parametrize("part", ["tables", "continuation", "tokenizer"])
@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage", "other_key"])
def test_damaged_cache_file_is_rebuilt(home, part, damage):
    path_dir = fixture_tokenizer_dirs()["sp_prefix"]
    fresh = load_tokenizer_info(path_dir, cache=False)
    _ = load_tokenizer_info(path_dir).continuation  # fills the three files
    key = disk.tokenizer_key(path_dir)
    other = fixture_tokenizer_dirs()["bl_group"]
    _ = load_tokenizer_info(other).continuation
    _damage(home / f"{key}.{part}.npz", damage, home / f"{disk.tokenizer_key(other)}.{part}.npz")

    rebuilt = load_tokenizer_info(path_dir)
    assert_same_info(rebuilt, fresh)
    load = {
        "tables": disk.load_tables,
        "continuation": disk.load_continuation,
        "tokenizer": disk.load_tokenizer,
    }
    assert load[part](key) is not None  # the damaged file was overwritten with a good one
    assert not list(home.glob("*.tmp"))


def test_inconsistent_tokenizer_entry_is_rebuilt(home):
    path_dir = fixture_tokenizer_dirs()["bl_single"]
    fresh = load_tokenizer_info(path_dir, cache=False)
    key = load_tokenizer_info(path_dir).cache_key
    assert key is not None
    text, facts = disk.load_tokenizer(key)
    disk.save_tokenizer(key, text, {**facts, "eos_id": fresh.table.vocab_size + 5})  # readable, wrong
    assert_same_info(load_tokenizer_info(path_dir), fresh)
    assert disk.load_tokenizer(key)[1] == facts


def _pair(names=("sp_prefix", "bl_group")):
    dirs = fixture_tokenizer_dirs()
    return load_tokenizer_info(dirs[names[0]]), load_tokenizer_info(dirs[names[1]])


def _projection_file(home: Path, student, teacher) -> Path:
    args = (teacher.stop_ids, student.stop_token_to_append, MAX_GROUP_SIZE)
    return home / f"{disk.projection_key(student.cache_key, teacher.cache_key, *args)}.projection.npz"


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage", "other_key", "other_student"])
def test_damaged_projection_entry_is_rebuilt(home, damage):
    student, teacher = _pair()
    want = TokenMapper(student, teacher).projection  # built and cached
    file = _projection_file(home, student, teacher)
    assert file.is_file()
    other_student = load_tokenizer_info(fixture_tokenizer_dirs()["bl_single"])
    _ = TokenMapper(other_student, teacher).projection
    other = _projection_file(home, other_student, teacher)
    if damage == "other_student":  # another pair's map under this key, with a matching header
        os_map = disk.load_projection(other.name.split(".")[0], other_student.table, teacher.table)
        assert os_map is not None
        disk.save_projection(file.name.split(".")[0], os_map)
    else:
        _damage(file, damage, other)
    assert disk.load_projection(file.name.split(".")[0], student.table, teacher.table) is None
    assert_same_projection(TokenMapper(student, teacher).projection, want)
    again = disk.load_projection(file.name.split(".")[0], student.table, teacher.table)
    assert again is not None  # overwritten with a good one
    assert_same_projection(again, want)
    assert not list(home.glob("*.tmp"))


def test_projection_key_follows_stop_ids_and_group_cap(home):
    student, teacher = _pair()
    base = (
        student.cache_key,
        teacher.cache_key,
        teacher.stop_ids,
        student.stop_token_to_append,
        MAX_GROUP_SIZE,
    )
    key = disk.projection_key(*base)
    assert key == disk.projection_key(*base)
    assert key != disk.projection_key(base[0], base[1], base[2] | {3}, base[3], base[4])
    assert key != disk.projection_key(base[0], base[1], frozenset(), base[3], base[4])
    assert key != disk.projection_key(base[0], base[1], base[2], (base[3] or 0) + 1, base[4])
    assert key != disk.projection_key(base[0], base[1], base[2], base[3], base[4] - 1)
    assert key != disk.projection_key(base[1], base[0], *base[2:])
    # a pair whose teacher stop set differs (generation_config.json) gets its own entry
    _ = TokenMapper(student, teacher).projection
    teacher.stop_ids = teacher.stop_ids | {0}
    _ = TokenMapper(student, teacher).projection
    assert len(list(home.glob("*.projection.npz"))) == 2


def test_projection_is_not_cached_without_tokenizer_entries(home, monkeypatch):
    dirs = fixture_tokenizer_dirs()
    student, teacher = (load_tokenizer_info(dirs[n], cache=False) for n in ("sp_prefix", "bl_group"))
    _ = TokenMapper(student, teacher).projection
    assert not home.exists()


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
    before = disk.tokenizer_key(copy)
    (copy / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")  # transformers reads it
    assert disk.tokenizer_key(copy) != before
    before = disk.tokenizer_key(copy)
    (copy / "additional_chat_templates").mkdir()
    (copy / "additional_chat_templates" / "tool_use.jinja").write_text("{{ 1 }}")
    assert disk.tokenizer_key(copy) != before
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
