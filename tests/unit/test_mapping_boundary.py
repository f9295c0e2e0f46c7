"""Byte-prefix chunk log-probabilities (`framework.mapping.boundary`) against a brute-force reference
written with plain ``bytes.startswith`` loops, on every ordered pair of test tokenizers."""

from __future__ import annotations

import bisect
import itertools

import numpy as np
import pytest

from framework.mapping import TokenMapper, align_tokens, split_student_response
from framework.mapping.boundary import (
    chunk_boundary_shift,
    continuation_bytes,
    extendable_tokens,
    extension_logmass,
    first_bytes,
    prefix_ranges,
    student_end_logprob,
)
from framework.types import TeacherScores
from tests.unit.mapping_fixtures import make_rollout, tokenizer_dir, tokenizer_names

K = 6
TEXTS = [
    "12 + 345 = 357. Answer: 357",
    "max(7, 12) = 12. max(12, 3) = 12. Answer: 12",
    "The answer is 1234567.",
    "東京 12, 7.5 and  two  spaces",
]


def brute_d(table, token: int, lp: float, ids, lps) -> float:
    """log(p(t) + Σ p of the other top-k ids whose bytes start with bytes(t)) − log p(t)."""
    own = table.token_bytes[token]
    if not own:
        return 0.0
    mass = np.exp(lp) + sum(
        np.exp(q) for i, q in zip(ids, lps) if int(i) != token and table.token_bytes[int(i)].startswith(own)
    )
    return float(np.log(mass) - lp)


_NEXT_BYTES: dict[tuple[int, int], set[int]] = {}


def next_bytes(table, token: int) -> set[int]:
    """Bytes b such that some non-special token's bytes start with bytes(token) + b: a scan of the
    sorted vocabulary from bytes(token) while the strings start with it."""
    key = (id(table), token)
    if key not in _NEXT_BYTES:
        own, found = table.token_bytes[token], set()
        strings, _ = sorted_vocab(table)
        k = bisect.bisect_left(strings, own) if own else len(strings)
        while k < len(strings) and strings[k].startswith(own):
            if len(strings[k]) > len(own):
                found.add(strings[k][len(own)])
            k += 1
        _NEXT_BYTES[key] = found
    return _NEXT_BYTES[key]


def brute_mirror(student_table, teacher_table, s: int, next_t: int, ids, lps) -> float:
    """log(1 − Σ p of the top-k teacher tokens whose first byte continues student token s); 0 when
    the realised next teacher token's first byte continues it."""
    cont = next_bytes(student_table, s)
    first = teacher_table.token_bytes[next_t][:1]
    if first and first[0] in cont:
        return 0.0
    e = sum(
        np.exp(float(q))
        for i, q in zip(ids, lps)
        if teacher_table.token_bytes[int(i)][:1] and teacher_table.token_bytes[int(i)][0] in cont
    )
    return float(np.log1p(-min(e, 1.0 - 1e-9)))


_SORTED: dict[int, tuple[list[bytes], list[int]]] = {}


def sorted_vocab(table) -> tuple[list[bytes], list[int]]:
    """The non-special tokens with bytes, sorted by bytes (Python's own bytes order, cached)."""
    if id(table) not in _SORTED:
        pairs = sorted((b, i) for i, b in enumerate(table.token_bytes) if b and i not in table.special_ids)
        _SORTED[id(table)] = ([b for b, _ in pairs], [i for _, i in pairs])
    return _SORTED[id(table)]


def extensions(table, own: bytes, limit: int = 64) -> list[int]:
    """Up to ``limit`` token ids whose bytes start with ``own`` (``own`` itself included)."""
    strings, ids = sorted_vocab(table)
    out, k = [], bisect.bisect_left(strings, own)
    while k < len(strings) and strings[k].startswith(own) and len(out) < limit:
        out.append(ids[k])
        k += 1
    return out


def brute_extendable(table, token: int) -> bool:
    """Some non-special token's bytes strictly extend ``token``'s: a linear scan (small vocabularies)."""
    own = table.token_bytes[token]
    return bool(own) and any(
        len(b) > len(own) and b.startswith(own)
        for i, b in enumerate(table.token_bytes)
        if i not in table.special_ids
    )


def sorted_extendable(table, token: int) -> bool:
    """The same through the sorted vocabulary (large vocabularies)."""
    own = table.token_bytes[token]
    return bool(own) and any(
        len(b) > len(own) for b in (table.token_bytes[i] for i in extensions(table, own))
    )


def extension_heavy_scores(request, table, rng) -> TeacherScores:
    """Teacher scores whose top-k rows hold tokens that extend the realised token (what makes d > 0),
    the realised token itself now and then, a token starting with a letter or digit (what may
    continue the student's previous token: the mirror case), and random others."""
    ids_R = request.input_ids[request.response_start :]
    starters = [i for i, b in enumerate(table.token_bytes) if b[:1].isalnum() and i not in table.special_ids]
    rows_ids, rows_lp = [], []
    for t in ids_R.tolist():
        own = table.token_bytes[t]
        ext = [i for i in extensions(table, own) if i != t] if own else []
        picks = list(rng.choice(ext, size=min(len(ext), K // 2), replace=False)) if ext else []
        if rng.random() < 0.5:
            picks.append(t)
        starter = int(rng.choice(starters))
        if starter not in picks:
            picks.append(starter)
        while len(picks) < K:
            other = int(rng.integers(table.vocab_size))
            if other not in picks:
                picks.append(other)
        probs = -np.sort(-rng.dirichlet(np.ones(K + 1))[:K])
        rows_ids.append(picks[:K])
        rows_lp.append(np.log(probs))
    token_lp = np.log(rng.uniform(0.01, 1.0, ids_R.shape[0]))
    return TeacherScores(
        request.sample_id,
        token_lp.astype(np.float32),
        np.asarray(rows_ids, dtype=np.int32).reshape(-1, K),
        np.asarray(rows_lp, dtype=np.float32).reshape(-1, K),
    )


def check_byte_prefix_sample(mapper, token_level, rollout, rng, extendable=None) -> tuple[int, int]:
    """Map ``rollout`` with byte-prefix and token-level chunks under the same teacher scores and check
    every chunk against the brute-force reference (returns the number of chunks checked, and of
    chunks with a mirror-case term below zero).
    ``extendable(id)`` says whether a longer student token extends a student token."""
    extendable = extendable or (lambda token: brute_extendable(mapper.student.table, token))
    request = mapper.teacher_request(rollout)
    scores = extension_heavy_scores(request, mapper.teacher.table, rng)
    sample = mapper.map_sample(rollout, request, scores)
    flat = token_level.map_sample(rollout, token_level.teacher_request(rollout), scores)
    split = split_student_response(
        mapper.student.table, mapper.student.stop_ids, rollout.response_ids, rollout.finish_reason
    )
    t_ids = request.input_ids[request.response_start :]
    appended = split.bridge_stop and mapper.teacher.stop_token_to_append is not None
    t_content = t_ids[:-1] if appended else t_ids
    s_lens = mapper.student.table.byte_lengths[rollout.response_ids[: split.num_content]]
    t_lens = mapper.teacher.table.byte_lengths[t_content].astype(np.int64)
    if sample.diagnostics["map/phantom_space"]:
        t_lens[np.argmax(t_lens > 0)] -= 1
    al = align_tokens(s_lens, t_lens, split.valid_len)
    lp_t = scores.token_logprobs.astype(np.float64)
    prev_d, mirrored = 0.0, 0
    for c in range(al.num_chunks):
        t_in = np.flatnonzero(al.teacher_chunk == c)
        s_in = np.flatnonzero(al.student_chunk == c)
        last = int(t_in[-1])
        d = brute_d(mapper.teacher.table, int(t_content[last]), lp_t[last], scores.topk_ids[last],
                    scores.topk_logprobs[last])  # fmt: skip
        s_last = int(rollout.response_ids[s_in[-1]])
        if extendable(s_last):  # the student's own token decides where it ends: the mirror case
            nxt = last + 1
            follows = (nxt < t_content.shape[0] and al.teacher_chunk[nxt] == c + 1) or (
                appended and nxt == t_content.shape[0]
            )
            d = 0.0
            if follows:
                d = brute_mirror(mapper.student.table, mapper.teacher.table, s_last, int(t_ids[nxt]),
                                 scores.topk_ids[nxt], scores.topk_logprobs[nxt])  # fmt: skip
                mirrored += d < -1e-6
        want = lp_t[t_in].sum() + d - prev_d
        got = sample.teacher_logprobs[s_in].astype(np.float64).sum()
        assert got == pytest.approx(want, abs=2e-4), c
        prev_d = d
    if appended and sample.mask[-1] > 0:  # the stop decides where the last teacher token ended
        assert sample.teacher_logprobs[-1] == pytest.approx(flat.teacher_logprobs[-1] - prev_d, abs=2e-4)
    np.testing.assert_array_equal(sample.mask, flat.mask)  # the alignment itself is unchanged
    total = sample.teacher_logprobs.astype(np.float64)[sample.mask > 0].sum()
    tail = 0.0 if (appended and sample.mask[-1] > 0) else prev_d
    want_total = flat.teacher_logprobs.astype(np.float64)[flat.mask > 0].sum() + tail
    assert total == pytest.approx(want_total, abs=1e-3)
    return al.num_chunks, mirrored


def test_extension_logmass_matches_brute_force():
    table = TokenMapper.from_paths(tokenizer_dir("bl_single"), tokenizer_dir("bl_group")).teacher.table
    rng = np.random.default_rng(0)
    with_bytes = np.flatnonzero(table.byte_lengths > 0)
    special = np.flatnonzero(table.byte_lengths == 0)
    R = 300
    ids = rng.choice(with_bytes, size=R)
    ids[:5] = special[:1]  # nothing extends a special token
    lp = np.log(rng.uniform(0.01, 1.0, R))
    topk = rng.choice(table.vocab_size, size=(R, K))
    for r in range(R):  # plant extensions (and the realised id) in most rows
        own = table.token_bytes[int(ids[r])]
        ext = [i for i in with_bytes if own and table.token_bytes[i].startswith(own)]
        topk[r, : min(3, len(ext))] = rng.choice(ext, size=min(3, len(ext)), replace=False) if ext else []
    topk_lp = np.log(rng.dirichlet(np.ones(K + 1), size=R)[:, :K])
    got = extension_logmass(prefix_ranges(table), ids, lp, topk, topk_lp)
    want = [brute_d(table, int(ids[r]), lp[r], topk[r], topk_lp[r]) for r in range(R)]
    np.testing.assert_allclose(got, want, atol=1e-9)
    assert (got[:5] == 0).all() and (got > 1e-3).sum() > R // 4  # the planted extensions count


@pytest.mark.parametrize("name", tokenizer_names())
def test_extendable_tokens_matches_brute_force(name):
    table = TokenMapper.from_paths(tokenizer_dir(name), tokenizer_dir(name)).student.table
    got = extendable_tokens(continuation_bytes(table))
    want = [brute_extendable(table, i) for i in range(table.vocab_size)]
    assert got.tolist() == want
    assert 0 < sum(want) < table.vocab_size


@pytest.mark.parametrize("name", tokenizer_names())
def test_continuation_bytes_match_a_scan_of_the_sorted_vocabulary(name):
    table = TokenMapper.from_paths(tokenizer_dir(name), tokenizer_dir(name)).student.table
    bits = np.unpackbits(continuation_bytes(table), axis=1)
    assert not bits[:, 256:].any()  # the no-byte code never continues anything
    for token in range(table.vocab_size):
        assert set(np.flatnonzero(bits[token]).tolist()) == next_bytes(table, token), token


def test_student_end_logprob_matches_brute_force():
    pair = TokenMapper.from_paths(tokenizer_dir("bl_group"), tokenizer_dir("sp_plain"))
    s_table, t_table = pair.student.table, pair.teacher.table
    rng = np.random.default_rng(1)
    R = 300
    students = rng.choice(np.flatnonzero(extendable_tokens(continuation_bytes(s_table))), size=R)
    realised = rng.choice(t_table.vocab_size, size=R)
    topk = rng.choice(t_table.vocab_size, size=(R, K))
    topk_lp = np.log(rng.dirichlet(np.ones(K + 1), size=R)[:, :K])
    got = student_end_logprob(
        continuation_bytes(s_table), first_bytes(t_table), students, realised, topk, topk_lp
    )
    want = [
        brute_mirror(s_table, t_table, int(students[r]), int(realised[r]), topk[r], topk_lp[r])
        for r in range(R)
    ]
    np.testing.assert_allclose(got, want, atol=1e-9)
    assert (got < -1e-3).sum() > R // 10 and (got == 0).sum() > 0


def test_chunk_boundary_shift_moves_d_within_a_sample_only():
    d_C = np.array([0.5, 1.0, 0.0, 2.0, 3.0])
    sample = np.array([0, 0, 0, 1, 1])
    np.testing.assert_allclose(chunk_boundary_shift(d_C, sample), [0.5, 0.5, -1.0, 2.0, 1.0])


@pytest.mark.parametrize(
    "student,teacher", [p for p in itertools.product(tokenizer_names(), repeat=2) if p[0] != p[1]]
)
@pytest.mark.parametrize("finish", ["stop", "length"])
def test_byte_prefix_chunks_match_the_reference(student, teacher, finish):
    """Per chunk c: Σ_{i∈c} teacher_logprobs_i = Σ_{j∈c} log p_T(t_j) + d_c − d_{c−1} (d_c = 0 where a
    longer student token extends the chunk's last student token), the student's
    stop token gets the bridged stop logprob − d of the last chunk, and each sample telescopes to
    Σ log p_T + d_last (d_last only when no stop follows)."""
    mapper = TokenMapper.from_paths(tokenizer_dir(student), tokenizer_dir(teacher), boundary="byte_prefix")
    token_level = TokenMapper.from_paths(tokenizer_dir(student), tokenizer_dir(teacher), boundary="token")
    rng = np.random.default_rng(len(student) * 31 + len(teacher))
    checked = mirrored = 0
    for text in TEXTS:
        ids = mapper.student.continuation.encode(text).ids
        if finish == "stop":
            ids = [*ids, sorted(mapper.student.stop_ids)[0]]
        rollout = make_rollout(mapper, ids, finish, rng)
        chunks, mirror_chunks = check_byte_prefix_sample(mapper, token_level, rollout, rng)
        checked, mirrored = checked + chunks, mirrored + mirror_chunks
    assert checked > 0 and mirrored > 0


def test_an_early_stop_is_blamed_on_the_token_that_stopped():
    """Teacher "12" (a digit-grouping tokenizer), student "1", "2", "." — a number cut one digit short
    of the "123" the teacher expects. Token-level chunks punish the right digits and reward the
    wrong "."; byte-prefix chunks put the teacher's "not here" on the "."."""
    student, teacher = tokenizer_dir("bl_single"), tokenizer_dir("bl_group")
    by_mode = {m: TokenMapper.from_paths(student, teacher, boundary=m) for m in ("token", "byte_prefix")}
    mapper = by_mode["token"]
    ids = mapper.student.continuation.encode("12.").ids
    assert [mapper.student.table.token_bytes[i] for i in ids] == [b"1", b"2", b"."]
    rng = np.random.default_rng(0)
    rollout = make_rollout(mapper, ids, "length", rng)
    rollout.logprobs[:] = np.log(0.9)  # a confident student
    request = mapper.teacher_request(rollout)
    t_ids = request.input_ids[request.response_start :]
    vocab = mapper.teacher.table.token_bytes
    assert [vocab[i] for i in t_ids] == [b"12", b"."]
    longer = next(i for i, b in enumerate(vocab) if b.startswith(b"12") and len(b) == 3)
    topk = np.full((2, K), int(t_ids[0]), dtype=np.int32)
    topk[0, :2] = [longer, t_ids[0]]  # the teacher: "12x" (0.95), "12" (0.01)
    topk[1, :1] = t_ids[1]
    topk_lp = np.full((2, K), -30.0, dtype=np.float32)
    topk_lp[0, :2] = np.log([0.95, 0.01])
    topk_lp[1, 0] = 0.0
    scores = TeacherScores(rollout.sample_id, np.log([0.01, 1.0]).astype(np.float32), topk, topk_lp)
    adv = {m: by_mode[m].map_sample(rollout, request, scores).advantages for m in by_mode}
    assert adv["token"][:2].sum() < -3 and adv["token"][2] > 0  # the wrong credit
    assert adv["byte_prefix"][:2].sum() > 0 and adv["byte_prefix"][2] < -3  # the "." pays
    assert adv["byte_prefix"].sum() == pytest.approx(adv["token"].sum(), abs=1e-5)


def test_a_coarse_student_token_pays_for_the_end_it_decided():
    """The mirror case: student "12", "." (a digit-grouping tokenizer), teacher "1", "2", "." (single
    digits) expecting "123". The student's "12" decided that the number ends; the teacher decides it
    at its next token. Token-level chunks reward "12" and punish the "."; byte-prefix chunks charge
    the teacher's "not here" (its mass on a next digit) to the "12"."""
    student, teacher = tokenizer_dir("bl_group"), tokenizer_dir("bl_single")
    by_mode = {m: TokenMapper.from_paths(student, teacher, boundary=m) for m in ("token", "byte_prefix")}
    mapper = by_mode["token"]
    ids = mapper.student.continuation.encode("12.").ids
    assert [mapper.student.table.token_bytes[i] for i in ids] == [b"12", b"."]
    assert next_bytes(mapper.student.table, ids[0]) & set(b"0123456789")  # "12x" is a student token
    rng = np.random.default_rng(0)
    rollout = make_rollout(mapper, ids, "length", rng)
    rollout.logprobs[:] = np.log(0.9)
    request = mapper.teacher_request(rollout)
    t_ids = request.input_ids[request.response_start :]
    vocab = mapper.teacher.table.token_bytes
    assert [vocab[i] for i in t_ids] == [b"1", b"2", b"."]
    three = vocab.index(b"3")
    topk = np.tile(t_ids[:, None], (1, K)).astype(np.int32)
    topk[2, :2] = [three, t_ids[2]]  # after "12" the teacher says "3" (0.95), "." (0.01)
    topk_lp = np.full((3, K), -30.0, dtype=np.float32)
    topk_lp[:, 0] = 0.0
    topk_lp[2, :2] = np.log([0.95, 0.01])
    scores = TeacherScores(rollout.sample_id, np.log([1.0, 1.0, 0.01]).astype(np.float32), topk, topk_lp)
    adv = {m: by_mode[m].map_sample(rollout, request, scores).advantages for m in by_mode}
    assert adv["token"][0] > 0 and adv["token"][1] < -4  # the wrong credit
    # the "12" pays log(1 − 0.95); the "." keeps log(0.01 / 0.05), the teacher's "." among the ends
    assert adv["byte_prefix"][0] == pytest.approx(np.log(0.05) - np.log(0.9), abs=1e-4)
    assert adv["byte_prefix"][1] == pytest.approx(np.log(0.2) - np.log(0.9), abs=1e-4)
    assert adv["byte_prefix"].sum() == pytest.approx(adv["token"].sum(), abs=1e-5)
