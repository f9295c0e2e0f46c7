"""Preference pairs → aligned spans and teacher requests (framework/preference/pairs.py).

Over every ordered pair of the fixture tokenizers (identical pairs too): spans partition each response
on both sides and cover the same bytes, they are exactly the token mapping's chunks, identity pairs give
one token per span, and teacher span logprobs telescope to the response's teacher logprob.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from framework.mapping import TokenMapper, align_tokens
from framework.preference import (
    attach_reference,
    attach_teacher_scores,
    encode_pairs,
    responses_of,
    student_sequences,
    teacher_requests,
)
from framework.types import PreferencePair, Rollout, TeacherScores
from tests.unit.mapping_fixtures import FIXTURE_NAMES, tokenizer_dir, unicode_text

PAIRS = list(itertools.product(FIXTURE_NAMES, repeat=2))
TEXTS = [
    "47 + 18 = 65. 65 - 9 = 56. Answer: 56",
    "47 + 18 = 66. 66 - 9 = 57. Answer: 57",
    "  naïve café 東京 🙂 \n\tdef f(x):\n    return x**2\r\n",
    "x",
]


def mapper_for(student: str, teacher: str) -> TokenMapper:
    return TokenMapper.from_paths(tokenizer_dir(student), tokenizer_dir(teacher), topk=False)


def make_pairs(texts: list[str]) -> list[PreferencePair]:
    messages = [{"role": "user", "content": "Compute 47 + 18 - 9."}]
    return [
        PreferencePair(f"p{i}", messages, chosen=texts[i], rejected=texts[(i + 1) % len(texts)])
        for i in range(len(texts))
    ]


def random_scores(encoded, rng) -> list[TeacherScores]:
    out = []
    for req in teacher_requests(encoded):
        n = len(req.input_ids) - req.response_start
        out.append(TeacherScores(req.sample_id, np.log(rng.uniform(0.01, 1.0, n)).astype(np.float32)))
    return out


def span_ranges(index: np.ndarray, k: int) -> list[tuple[int, int]]:
    """[start, stop) of each span 0..k-1; asserts each span is one contiguous, non-empty run."""
    ranges = []
    for span in range(k):
        where = np.flatnonzero(index == span)
        assert where.shape[0] > 0, f"span {span} is empty"
        assert np.array_equal(where, np.arange(where[0], where[-1] + 1)), f"span {span} is not contiguous"
        ranges.append((int(where[0]), int(where[-1]) + 1))
    return ranges


def check_response(mapper: TokenMapper, r) -> None:
    """Spans partition the response on both sides (in order) and cover the same bytes."""
    s_ids, t_ids = r.response_ids, r.teacher_request.input_ids[r.teacher_request.response_start :]
    assert not r.teacher_mismatch
    assert (r.span_index >= 0).all() and (r.teacher_span_index >= 0).all(), "a token has no span"
    assert (np.diff(r.span_index) >= 0).all() and (np.diff(r.teacher_span_index) >= 0).all()
    s_ranges = span_ranges(r.span_index, r.num_spans)
    t_ranges = span_ranges(r.teacher_span_index, r.num_spans)
    for (s0, s1), (t0, t1) in zip(s_ranges, t_ranges):
        assert mapper.student.table.join(s_ids[s0:s1]) == mapper.teacher.table.join(t_ids[t0:t1])
    # the last span is the bridged stop token on both sides (no bytes, one token each)
    assert s_ranges[-1] == (len(s_ids) - 1, len(s_ids)) and t_ranges[-1] == (len(t_ids) - 1, len(t_ids))
    assert int(s_ids[-1]) == mapper.student.stop_token_to_append
    assert int(t_ids[-1]) in mapper.teacher.stop_ids


@pytest.mark.parametrize("student,teacher", PAIRS)
def test_spans_partition_each_response_and_match_the_mapping_chunks(student, teacher):
    mapper = mapper_for(student, teacher)
    encoded = encode_pairs(make_pairs(TEXTS), mapper)
    assert [p.pair_id for p in encoded] == [f"p{i}" for i in range(len(TEXTS))]
    for r in responses_of(encoded):
        check_response(mapper, r)
        # the same chunks as the mapping's own byte-offset alignment of the two tokenizations
        s_ids, req = r.response_ids[:-1], r.teacher_request
        t_ids = req.input_ids[req.response_start : -1]
        expected = align_tokens(mapper.student.table.lengths(s_ids), mapper.teacher.table.lengths(t_ids))
        spans = [(s, t) for s, t in expected.spans()]
        got = list(
            zip(span_ranges(r.span_index, r.num_spans), span_ranges(r.teacher_span_index, r.num_spans))
        )
        assert got[:-1] == spans


@pytest.mark.parametrize("student,teacher", PAIRS)
def test_teacher_span_logprobs_equal_the_mappers_chunk_targets(student, teacher):
    """Σ of the mapper's per-token teacher targets over a span = τ_k (its chunk logprob), and Σ_k τ_k =
    the teacher's logprob of the whole response (telescoping)."""
    mapper = mapper_for(student, teacher)
    rng = np.random.default_rng(0)
    encoded = encode_pairs(make_pairs(TEXTS), mapper)
    scores = random_scores(encoded, rng)
    attach_teacher_scores(encoded, scores)
    responses = responses_of(encoded)
    rollouts = [
        Rollout(
            r.sample_id,
            None,  # type: ignore[arg-type]  # map_samples does not read the prompt
            r.input_ids[: r.response_start],
            r.response_ids,
            -rng.uniform(0.1, 3.0, r.num_response_tokens).astype(np.float32),
            0,
            "stop",
        )
        for r in responses
    ]
    mapped = mapper.map_samples(rollouts, teacher_requests(encoded), scores)
    for r, sample, score in zip(responses, mapped, scores):
        per_span = np.bincount(r.span_index, weights=sample.teacher_logprobs.astype(np.float64))
        np.testing.assert_allclose(per_span, r.teacher_span_logprobs, atol=2e-4)
        assert r.teacher_logprob == pytest.approx(float(score.token_logprobs.astype(np.float64).sum()))
        assert r.teacher_span_logprobs.sum() == pytest.approx(r.teacher_logprob, abs=1e-9)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pair=st.sampled_from(PAIRS),
    chosen=unicode_text().filter(lambda t: t != ""),
    rejected=unicode_text().filter(lambda t: t != ""),
)
def test_adversarial_texts_keep_spans_consistent(pair, chosen, rejected):
    mapper = mapper_for(*pair)
    encoded = encode_pairs(
        [PreferencePair("q", [{"role": "user", "content": "Hi"}], chosen, rejected)], mapper
    )
    attach_teacher_scores(encoded, random_scores(encoded, np.random.default_rng(1)))
    for r in responses_of(encoded):
        assert r.span_index.shape[0] == r.num_response_tokens
        aligned = r.span_index[r.span_index >= 0]
        assert aligned.shape[0] == 0 or (aligned.min() == 0 and aligned.max() == r.num_spans - 1)
        assert set(np.unique(aligned)) == set(np.unique(r.teacher_span_index[r.teacher_span_index >= 0]))
        if not r.teacher_mismatch:
            check_response(mapper, r)
            assert r.teacher_span_logprobs.sum() == pytest.approx(r.teacher_logprob, abs=1e-6)


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_identity_pair_gives_one_token_per_span(name):
    mapper = mapper_for(name, name)
    assert mapper.is_identity
    for r in responses_of(encode_pairs(make_pairs(TEXTS), mapper)):
        req = r.teacher_request
        np.testing.assert_array_equal(req.input_ids[req.response_start :], r.response_ids)
        np.testing.assert_array_equal(r.span_index, np.arange(r.num_response_tokens))
        np.testing.assert_array_equal(r.teacher_span_index, np.arange(r.num_response_tokens))
        assert r.num_spans == r.num_response_tokens


def test_student_sequence_is_the_student_chat_prompt_then_the_response():
    mapper = mapper_for("bl_group", "bl_single")
    pair = make_pairs(TEXTS)[0]
    (encoded,) = encode_pairs([pair], mapper)
    ids, starts = student_sequences([encoded])
    prompt = mapper.student.render_prompt_ids(pair.messages)
    for seq, start, text in zip(ids, starts, (pair.chosen, pair.rejected)):
        assert start == len(prompt) and np.array_equal(seq[:start], prompt)
        assert mapper.student.table.join(seq[start:-1]).decode() == text
        teacher_prompt = mapper.teacher.render_prompt_ids(pair.messages)
    for r in encoded.responses:
        np.testing.assert_array_equal(
            r.teacher_request.input_ids[: r.teacher_request.response_start], teacher_prompt
        )


def test_bad_inputs_are_clear_errors():
    mapper = mapper_for("bl_group", "bl_single")
    msgs = [{"role": "user", "content": "Hi"}]
    with pytest.raises(ValueError, match="appears twice"):
        encode_pairs([PreferencePair("a", msgs, "x", "y"), PreferencePair("a", msgs, "x", "z")], mapper)
    with pytest.raises(ValueError, match="rejected is empty"):
        encode_pairs([PreferencePair("a", msgs, "x", "")], mapper)
    with pytest.raises(ValueError, match="no messages"):
        encode_pairs([PreferencePair("a", [], "x", "y")], mapper)
    encoded = encode_pairs(make_pairs(TEXTS[:2]), mapper)
    scores = random_scores(encoded, np.random.default_rng(0))
    with pytest.raises(ValueError, match="teacher_requests"):
        attach_teacher_scores(encoded, scores[::-1])
    with pytest.raises(ValueError, match="teacher scores"):
        attach_teacher_scores(encoded, scores[:-1])
    with pytest.raises(ValueError, match="reference logprobs for"):
        attach_reference(encoded, [np.zeros(1, np.float32)] * len(scores))


def test_a_tokenizer_that_pads_its_batches_encodes_like_one_that_does_not(tmp_path):
    """A tokenizer.json with batch padding switched on must not put pad tokens inside responses
    (batched continuation encoding): the continuation encoder ignores saved padding/truncation."""
    import json
    import shutil

    padded = tmp_path / "padded"
    shutil.copytree(tokenizer_dir("bl_single"), padded)
    spec = json.loads((padded / "tokenizer.json").read_text())
    spec["padding"] = {"strategy": "BatchLongest", "direction": "Left", "pad_to_multiple_of": None,
                       "pad_id": 0, "pad_type_id": 0, "pad_token": "<|endoftext|>"}  # fmt: skip
    (padded / "tokenizer.json").write_text(json.dumps(spec))
    plain = TokenMapper.from_paths(tokenizer_dir("bl_group"), tokenizer_dir("bl_single"), topk=False)
    mapper = TokenMapper.from_paths(tokenizer_dir("bl_group"), str(padded), topk=False)
    for want, got in zip(encode_pairs(make_pairs(TEXTS), plain), encode_pairs(make_pairs(TEXTS), mapper)):
        for a, b in zip(want.responses, got.responses):
            np.testing.assert_array_equal(a.teacher_request.input_ids, b.teacher_request.input_ids)
            np.testing.assert_array_equal(a.teacher_span_index, b.teacher_span_index)
