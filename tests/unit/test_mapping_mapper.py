"""End-to-end TokenMapper properties over every ordered pair of test tokenizers (identical pairs too)."""

from __future__ import annotations

import itertools
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from framework.mapping import MissingChatTemplateError, TokenMapper, align_tokens, split_student_response
from tests.unit.mapping_fixtures import (
    make_rollout,
    random_scores,
    stop_target,
    tokenizer_dir,
    tokenizer_names,
    unicode_text,
)

PAIRS = list(itertools.product(tokenizer_names(), repeat=2))
EXAMPLES = max(8, 400 // len(PAIRS))  # per pair: keeps the suite at a few seconds as pairs are added
K = 6


def mapper_for(student: str, teacher: str, **kw) -> TokenMapper:
    """The pair's mapper with token-level chunks (``boundary="token"``) unless asked otherwise: the
    invariants below are the token-level ones (chunk sums equal the teacher's token sums);
    test_mapping_boundary.py checks the byte-prefix chunks against a brute-force reference."""
    kw.setdefault("boundary", "token")
    return TokenMapper.from_paths(tokenizer_dir(student), tokenizer_dir(teacher), **kw)


def check_invariants(mapper, rollout, request, scores, sample):
    R = rollout.response_ids.shape[0]
    assert sample.teacher_logprobs.shape == sample.advantages.shape == sample.mask.shape == (R,)
    assert sample.input_ids.tolist() == [*rollout.prompt_ids.tolist(), *rollout.response_ids.tolist()]
    np.testing.assert_allclose(
        sample.teacher_logprobs - sample.behaviour_logprobs, sample.advantages, atol=1e-4
    )
    if sample.dense is not None:  # a probability vector over support ∪ {other} at every dense position
        d = sample.dense
        assert np.all(np.diff(d.positions) > 0) and (d.positions.size == 0 or d.positions.min() >= 0)
        assert d.positions.size == 0 or d.positions.max() < R
        assert np.all(d.support_probs >= 0) and np.all(d.other_prob >= 0)
        np.testing.assert_allclose(d.support_probs.sum(axis=1) + d.other_prob, 1.0, atol=1e-5)
        assert np.all((d.support_ids >= -1) & (d.support_ids < mapper.student.table.vocab_size))

    if mapper.is_identity:
        assert request.input_ids[request.response_start :].tolist() == rollout.response_ids.tolist()
        assert np.array_equal(sample.teacher_logprobs, scores.token_logprobs)  # bit for bit
        assert sample.mask.tolist() == [1.0] * R
        assert sample.diagnostics["map/one_to_one_frac"] == 1.0
        if sample.dense is not None:
            assert sample.dense.positions.tolist() == list(range(R))
            assert np.array_equal(sample.dense.support_ids, scores.topk_ids)
        return

    split = split_student_response(
        mapper.student.table, mapper.student.stop_ids, rollout.response_ids, rollout.finish_reason
    )
    t_ids = request.input_ids[request.response_start :]
    appended = split.bridge_stop and mapper.teacher.stop_token_to_append is not None
    t_content = t_ids[:-1] if appended else t_ids
    # The teacher tokens spell exactly the (valid prefix of the) student response bytes.
    assert mapper.teacher.table.join(t_content) == split.content[: split.valid_len]
    if appended:
        assert int(t_ids[-1]) == mapper.teacher.stop_token_to_append

    s_lens = mapper.student.table.byte_lengths[rollout.response_ids[: split.num_content]]
    t_lens = mapper.teacher.table.byte_lengths[t_content]
    al = align_tokens(s_lens, t_lens, split.valid_len)
    # Every byte of the aligned prefix is covered exactly once by chunks, on both sides.
    last = int(al.chunk_end[-1]) if al.num_chunks else 0
    chunked = al.student_chunk >= 0
    assert int(s_lens[chunked].sum()) == last == int(t_lens[al.teacher_chunk >= 0].sum())
    if split.valid_len == len(split.content):  # a whole response: everything with bytes is aligned
        assert last == split.valid_len
        assert np.array_equal(chunked, s_lens > 0)
    content_mask = sample.mask[: split.num_content]
    assert np.array_equal(content_mask > 0, chunked)
    # Chunk sums telescope: Σ credited teacher logprobs = Σ teacher logprobs of the aligned tokens.
    t_lp = scores.token_logprobs.astype(np.float64)
    expected = t_lp[: t_content.shape[0]][al.teacher_chunk >= 0].sum()
    got = sample.teacher_logprobs[: split.num_content].astype(np.float64)[chunked].sum()
    assert got == pytest.approx(expected, abs=1e-3)
    if split.stopped:
        if appended:
            assert sample.mask[-1] == 1.0
            assert sample.teacher_logprobs[-1] == pytest.approx(stop_target(mapper, scores), abs=1e-5)
        else:
            assert sample.mask[-1] == 0.0


def run_case(mapper, response_ids, finish_reason, rng, messages=None):
    rollout = make_rollout(mapper, response_ids, finish_reason, rng, messages)
    request = mapper.teacher_request(rollout)
    assert request.sample_id == rollout.sample_id
    np.testing.assert_array_equal(
        request.input_ids[: request.response_start], mapper.teacher.render_prompt_ids(rollout.prompt.messages)
    ) if not mapper.same_template else None
    scores = random_scores(request, mapper.teacher.table.vocab_size, K, rng, mapper.teacher.stop_ids)
    sample = mapper.map_sample(rollout, request, scores, reward=1.0)
    check_invariants(mapper, rollout, request, scores, sample)
    return rollout, request, scores, sample


@pytest.mark.parametrize(("student", "teacher"), PAIRS)
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=unicode_text(), stop=st.booleans(), seed=st.integers(0, 2**31))
def test_canonical_responses(student, teacher, text, stop, seed):
    mapper = mapper_for(student, teacher)
    rng = np.random.default_rng(seed)
    ids = mapper.student.continuation.encode(text, add_special_tokens=False).ids
    if stop:
        ids = [*ids, mapper.student.stop_token_to_append]
    run_case(mapper, ids, "stop" if stop else "length", rng)


@pytest.mark.parametrize(("student", "teacher"), PAIRS)
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31), length=st.integers(0, 40), stop=st.booleans())
def test_sampled_token_soup(student, teacher, seed, length, stop):
    """Non-canonical sampled ids: any vocabulary id, specials inside, invalid or cut UTF-8."""
    mapper = mapper_for(student, teacher)
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, mapper.student.table.vocab_size, size=length).tolist()
    if stop:
        ids.append(mapper.student.stop_token_to_append)
    run_case(mapper, ids, "stop" if stop else "length", rng)


def _byte_ids(mapper, raw: bytes) -> list[int]:
    """Student ids spelling `raw` one byte per token (single-byte or <0xNN> tokens)."""
    table = mapper.student.table
    single = {b: i for i, b in enumerate(table.token_bytes) if len(b) == 1}
    return [single[bytes([c])] for c in raw]


@pytest.mark.parametrize("student", tokenizer_names())
def test_response_cut_inside_a_character(student):
    teacher = next(n for n in tokenizer_names() if n != student)
    mapper = mapper_for(student, teacher)
    rng = np.random.default_rng(0)
    head = mapper.student.continuation.encode("The answer is 7", add_special_tokens=False).ids
    cut = _byte_ids(mapper, "🙂".encode()[:2])  # max_tokens hit after 2 of the emoji's 4 bytes
    _, request, _, sample = run_case(mapper, head + cut, "length", rng)
    assert mapper.teacher.table.join(request.input_ids[request.response_start :]) == b"The answer is 7"
    assert sample.mask[-2:].tolist() == [0.0, 0.0]
    assert sample.mask[: len(head)].min() == 1.0
    assert sample.diagnostics["map/cut_bytes"] == 2.0


@pytest.mark.parametrize(("student", "teacher"), [("bl_group", "sp_plain"), ("sp_plain", "bl_single")])
def test_stop_token_bridged_to_teacher_stop_set(student, teacher):
    mapper = mapper_for(student, teacher)
    rng = np.random.default_rng(1)
    ids = mapper.student.continuation.encode("Done: 42.", add_special_tokens=False).ids
    ids.append(mapper.student.stop_token_to_append)
    _, request, scores, sample = run_case(mapper, ids, "stop", rng)
    assert request.input_ids[-1] == mapper.teacher.stop_token_to_append
    other_stop = next(i for i in mapper.teacher.stop_ids if i != mapper.teacher.stop_token_to_append)
    scores.topk_ids[-1, :2] = [mapper.teacher.stop_token_to_append, other_stop]
    scores.topk_logprobs[-1] = np.log([0.5, 0.25] + [0.2 / (K - 2)] * (K - 2))
    scores.token_logprobs[-1] = np.log(0.5)
    sample = mapper.map_sample(make_rollout(mapper, ids, "stop", np.random.default_rng(1)), request, scores)
    assert sample.teacher_logprobs[-1] == pytest.approx(np.log(0.75), abs=1e-6)
    assert sample.diagnostics["map/stop_bridged"] == 1.0
    # The dense target at the stop position puts the teacher's stop mass on the student stop token.
    assert sample.dense.positions[-1] == len(ids) - 1
    row = sample.dense.support_ids[-1] == mapper.student.stop_token_to_append
    assert sample.dense.support_probs[-1][row].sum() >= 0.75 - 1e-6


def test_stopped_on_a_stop_string_is_not_bridged():
    mapper = mapper_for("bl_group", "bl_single")
    ids = mapper.student.continuation.encode("Answer: 3", add_special_tokens=False).ids
    _, request, _, sample = run_case(mapper, ids, "stop", np.random.default_rng(2))
    assert request.input_ids[-1] not in mapper.teacher.stop_ids
    assert sample.diagnostics["map/stop_bridged"] == 0.0


def test_spacemark_text_is_masked_from_the_mismatch_on():
    """A literal '▁' is a space to SentencePiece-style tokenizers: bytes disagree, the tail is masked."""
    mapper = mapper_for("bl_group", "sp_plain")
    ids = mapper.student.continuation.encode("ok a▁b and more", add_special_tokens=False).ids
    rollout = make_rollout(mapper, ids, "length", np.random.default_rng(3))
    request = mapper.teacher_request(rollout)
    scores = random_scores(request, mapper.teacher.table.vocab_size, K, np.random.default_rng(3))
    sample = mapper.map_sample(rollout, request, scores)
    assert sample.diagnostics["map/teacher_mismatch"] == 1.0
    assert sample.mask[0] == 1.0 and sample.mask[-1] == 0.0


def test_batch_equals_single():
    mapper = mapper_for("sp_prefix", "bl_group")
    rng = np.random.default_rng(4)
    texts = ["Hello there 123", "東京 🙂 x", "", "def f(x):\n\treturn 1"]
    rollouts = []
    for n, text in enumerate(texts):
        ids = [*mapper.student.continuation.encode(text, add_special_tokens=False).ids]
        if n % 2 == 0:
            ids.append(mapper.student.stop_token_to_append)
        r = make_rollout(mapper, ids, "stop" if n % 2 == 0 else "length", rng, sample_id=f"p{n}#0")
        rollouts.append(r)
    requests = mapper.teacher_requests(rollouts)
    scores = [random_scores(q, mapper.teacher.table.vocab_size, K, rng) for q in requests]
    batch = mapper.map_samples(rollouts, requests, scores)
    for r, q, s, b in zip(rollouts, requests, scores, batch):
        one = mapper.map_sample(r, q, s)
        for field in ("teacher_logprobs", "advantages", "mask"):
            np.testing.assert_allclose(getattr(one, field), getattr(b, field), atol=1e-6)
        np.testing.assert_array_equal(one.dense.support_ids, b.dense.support_ids)
        assert one.diagnostics == pytest.approx(b.diagnostics)


def test_student_bytes_kept_from_the_request_are_checked_against_the_rollout():
    """map_samples reuses the student bytes teacher_requests computed, but only for the same response:
    a rollout regenerated under the same sample id (a requeue) is split afresh."""
    mapper = mapper_for("bl_group", "sp_plain")
    rng = np.random.default_rng(9)
    encode = mapper.student.continuation.encode
    first = make_rollout(mapper, encode("12 + 30 = 42", add_special_tokens=False).ids, "length", rng)
    again = make_rollout(mapper, encode("the answer: 7", add_special_tokens=False).ids, "length", rng)
    assert first.sample_id == again.sample_id
    mapper.teacher_requests([first])  # remembers first's bytes under the shared sample id
    fresh = mapper_for("bl_group", "sp_plain")
    request = TokenMapper(fresh.student, fresh.teacher, boundary="token").teacher_requests([again])[0]
    scores = random_scores(request, mapper.teacher.table.vocab_size, K, rng)
    reused = mapper.map_sample(again, request, scores)
    expected = TokenMapper(fresh.student, fresh.teacher, boundary="token").map_sample(again, request, scores)
    np.testing.assert_array_equal(reused.advantages, expected.advantages)
    assert reused.diagnostics["map/teacher_mismatch"] == 0.0
    check_invariants(mapper, again, request, scores, reused)


def test_prompts_rendered_in_one_batch_equal_one_by_one():
    mapper = mapper_for("bl_group", "sp_prefix")
    conversations = [[{"role": "user", "content": f"What is {n} + {n}?"}] for n in (1, 2, 1, 3)] + [
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "東京 🙂"}]
    ]
    one_by_one = []
    for messages in conversations:
        mapper.teacher._prompt_cache.clear()
        one_by_one.append(mapper.teacher.render_prompt_ids(messages).tolist())
    mapper.teacher._prompt_cache.clear()
    batch = mapper.teacher.render_prompts_ids(conversations)
    assert [ids.tolist() for ids in batch] == one_by_one
    assert batch[0] is batch[2]  # one array per distinct conversation
    assert len(mapper.teacher._prompt_cache) == 4


def test_identity_is_detected_across_paths_and_pickles(tmp_path: Path):
    copy = tmp_path / "copy"
    shutil.copytree(tokenizer_dir("bl_group"), copy)
    mapper = TokenMapper.from_paths(tokenizer_dir("bl_group"), str(copy), credit="last")
    assert mapper.is_identity and mapper.same_template
    assert not mapper_for("bl_group", "bl_single").is_identity
    clone = pickle.loads(pickle.dumps(mapper))
    assert clone.is_identity and clone.credit == "last" and clone.teacher.path == str(copy)


def test_missing_chat_template_is_a_clear_error(tmp_path: Path):
    bare = tmp_path / "bare"
    shutil.copytree(tokenizer_dir("bl_single"), bare)
    for f in bare.glob("chat_template*"):
        f.unlink()
    cfg = bare / "tokenizer_config.json"
    cfg.write_text(cfg.read_text().replace('"chat_template"', '"unused_template"'))
    mapper = TokenMapper.from_paths(tokenizer_dir("bl_group"), str(bare))
    assert any("chat template" in w for w in mapper.teacher.warnings)
    rollout = make_rollout(mapper, [5, 6], "length", np.random.default_rng(0))
    with pytest.raises(MissingChatTemplateError, match="no chat template"):
        mapper.teacher_request(rollout)


def test_inconsistent_inputs_are_rejected():
    mapper = mapper_for("bl_group", "sp_plain")
    rng = np.random.default_rng(5)
    rollout = make_rollout(mapper, [10, 11, 12], "length", rng)
    request = mapper.teacher_request(rollout)
    scores = random_scores(request, mapper.teacher.table.vocab_size, K, rng)
    scores.token_logprobs = scores.token_logprobs[:-1]
    with pytest.raises(ValueError, match="positions"):
        mapper.map_sample(rollout, request, scores)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        mapper.teacher_request(make_rollout(mapper, [10**7], "length", rng))


def test_phantom_prefix_space_from_a_foreign_request_is_stripped():
    """A request whose response was tokenized WITH the dummy prefix (b" Hello ..."): the phantom space is
    stripped from the first teacher token, everything still aligns, and that token's row gets no dense target."""
    mapper = mapper_for("bl_group", "sp_prefix")
    rng = np.random.default_rng(6)
    for text in ("Hello world 42", "the sum is 42"):
        _check_phantom(mapper, text, rng)


def _check_phantom(mapper, text, rng):
    from framework.types import TeacherRequest

    rollout = make_rollout(mapper, mapper.student.continuation.encode(text).ids, "length", rng)
    prompt = mapper.teacher.render_prompt_ids(rollout.prompt.messages)
    response = np.asarray(mapper.teacher.prompt_encoder.encode(text, add_special_tokens=False).ids, np.int32)
    assert mapper.teacher.table.join(response) == b" " + text.encode()
    request = TeacherRequest(rollout.sample_id, np.concatenate([prompt, response]), int(prompt.shape[0]))
    scores = random_scores(request, mapper.teacher.table.vocab_size, K, rng)
    sample = mapper.map_sample(rollout, request, scores)
    assert (
        sample.diagnostics["map/phantom_space"] == 1.0 and sample.diagnostics["map/teacher_mismatch"] == 0.0
    )
    assert sample.mask.tolist() == [1.0] * rollout.response_ids.shape[0]
    t_lens = mapper.teacher.table.byte_lengths[response].astype(np.int64)
    t_lens[0] -= 1
    keep = t_lens > 0  # a bare phantom "▁" token scores no response bytes
    expected = scores.token_logprobs.astype(np.float64)[keep].sum()
    assert sample.teacher_logprobs.astype(np.float64).sum() == pytest.approx(expected, abs=1e-4)
    # The row of the token that carries the phantom is not a dense target; a bare "▁" has no bytes at
    # all, and then the next teacher row (predicting the first response bytes) serves position 0.
    assert (0 in sample.dense.positions.tolist()) == (t_lens[0] == 0)


def test_continuation_encoder_ignores_saved_padding_and_truncation():
    import json

    from framework.mapping.render import continuation_encoder

    spec = json.loads((Path(tokenizer_dir("bl_group")) / "tokenizer.json").read_text())
    spec["truncation"] = {"direction": "Right", "max_length": 3, "strategy": "LongestFirst", "stride": 0}
    spec["padding"] = {"strategy": {"Fixed": 64}, "direction": "Right", "pad_to_multiple_of": None,
                       "pad_id": 0, "pad_type_id": 0, "pad_token": "<pad>"}  # fmt: skip
    text = "12 + 7 = 19. 19 - 3 = 16. Answer: 16"
    ids = continuation_encoder(spec).encode(text).ids
    assert 3 < len(ids) < 64
    assert continuation_encoder(spec).decode(ids) == text
