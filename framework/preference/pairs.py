"""Preference pairs → student sequences, aligned spans and teacher requests (CTPD's span projection).

For one response ``y`` (the chosen or the rejected text of a `PreferencePair`):

- **Student sequence.** The conversation rendered with the STUDENT's chat template (generation prompt),
  then ``y`` tokenized by the student as a continuation (no dummy prefix, no merge across the
  prompt/response boundary), then the student's end-of-turn token so that stopping is scored too.
- **Teacher request.** Built by `TokenMapper.teacher_requests` from that student response, exactly as
  for an on-policy rollout: the conversation in the TEACHER's chat template, ``y`` re-tokenized by the
  teacher, the teacher's end-of-turn token (docs/design.md §3.3).
- **Aligned spans.** The byte-offset chunking of docs/design.md §3.4 between the two tokenizations of ``y``:
  span ``k`` is a student token range and a teacher token range covering the same bytes. The student
  stop token and the teacher stop token form one more span (stop-token bridging, §3.5). Identical
  tokenizers give one token per span. These are CTPD's aligned spans (Nguyen et al. 2026, arXiv
  2601.11865, docs/design.md §12 [2]).

After teacher scoring, the teacher span logprob is the sum of the realised teacher token logprobs in
the span, ``τ_k = Σ_{j ∈ k} log p_T(t_j | t_<j)``; the spans telescope, ``Σ_k τ_k = log p_T(y)`` when
the teacher tokens cover the response bytes exactly (always, save for tokenizers that normalise text).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from framework.mapping import TokenMapper, align_flat
from framework.mapping.mapper import common_prefix_len
from framework.types import PreferencePair, Prompt, Rollout, TeacherRequest, TeacherScores

ROLES = ("chosen", "rejected")


@dataclass
class EncodedResponse:
    """One response of a pair, tokenized for the student and the teacher, with its aligned spans."""

    sample_id: str  # "<pair_id>/chosen" or "<pair_id>/rejected"
    input_ids: np.ndarray  # int32[Lp + R] student prompt + response (+ student stop token)
    response_start: int  # Lp
    span_index: np.ndarray  # int64[R] span of each student response token, -1 = no span
    teacher_request: TeacherRequest
    teacher_span_index: np.ndarray  # int64[Rt] span of each teacher response token, -1 = no span
    num_spans: int  # K
    teacher_mismatch: bool  # the teacher's bytes differ from the student's: the tail has no spans
    teacher_span_logprobs: np.ndarray | None = None  # float64[K], after `attach_teacher_scores`
    teacher_logprob: float | None = None  # Σ of all teacher response token logprobs
    reference_logprobs: np.ndarray | None = None  # float32[R], after `attach_reference`

    @property
    def response_ids(self) -> np.ndarray:
        return self.input_ids[self.response_start :]

    @property
    def num_response_tokens(self) -> int:
        return int(self.input_ids.shape[0] - self.response_start)


@dataclass
class EncodedPair:
    pair_id: str
    chosen: EncodedResponse
    rejected: EncodedResponse

    @property
    def responses(self) -> tuple[EncodedResponse, EncodedResponse]:
        return (self.chosen, self.rejected)

    @property
    def max_length(self) -> int:
        return max(len(self.chosen.input_ids), len(self.rejected.input_ids))


def _check_pairs(pairs: Sequence[PreferencePair]) -> None:
    seen: set[str] = set()
    for pair in pairs:
        if pair.pair_id in seen:
            raise ValueError(f"pair_id {pair.pair_id!r} appears twice; preference pair ids must be unique")
        seen.add(pair.pair_id)
        if not pair.messages:
            raise ValueError(f"PreferencePair {pair.pair_id!r} has no messages; give at least the user turn")
        for role in ROLES:
            if not getattr(pair, role):
                raise ValueError(
                    f"PreferencePair {pair.pair_id!r}: {role} is empty; give a non-empty response"
                )


def _check_content_tokens(info, ids: np.ndarray, sample_id: str, side: str) -> None:
    """Response text tokens always carry bytes; a byte-less token (a pad or special token) means the
    tokenizer added tokens of its own to the continuation, which would corrupt scores and spans."""
    empty = ids[info.table.byte_lengths[ids] == 0] if ids.shape[0] else ids
    if empty.shape[0]:
        raise ValueError(
            f"{sample_id}: the {side} tokenization of the response holds byte-less tokens {sorted(set(empty.tolist()))} "
            f"(tokenizer {info.path}): the tokenizer adds tokens of its own to a continuation (e.g. a "
            "post-processor template). Fix: save the tokenizer without them, or report it as a bug"
        )


def _student_rollouts(pairs: Sequence[PreferencePair], mapper: TokenMapper) -> list[Rollout]:
    """Each response as a finished student "rollout" (the form `TokenMapper.teacher_requests` takes)."""
    student = mapper.student
    texts = [getattr(p, role) for p in pairs for role in ROLES]
    contents = student.encode_continuations(texts)
    stop_id = student.stop_token_to_append
    stop = np.zeros(0, np.int32) if stop_id is None else np.array([stop_id], np.int32)
    rollouts = []
    for i, pair in enumerate(pairs):
        prompt = Prompt(prompt_id=pair.pair_id, messages=[dict(m) for m in pair.messages])
        prompt_ids = student.render_prompt_ids(pair.messages)
        for j, role in enumerate(ROLES):
            response = np.concatenate([contents[2 * i + j], stop])
            rollouts.append(
                Rollout(
                    sample_id=f"{pair.pair_id}/{role}",
                    prompt=prompt,
                    prompt_ids=prompt_ids,
                    response_ids=response,
                    logprobs=np.zeros(response.shape[0], np.float32),
                    weight_version=0,
                    finish_reason="stop" if stop_id is not None else "length",
                )
            )
    return rollouts


def encode_pairs(pairs: Sequence[PreferencePair], mapper: TokenMapper) -> list[EncodedPair]:
    """Student sequences, teacher requests and aligned spans of every response (module docstring)."""
    _check_pairs(pairs)
    if not pairs:
        return []
    student, teacher = mapper.student, mapper.teacher
    rollouts = _student_rollouts(pairs, mapper)
    requests = mapper.teacher_requests(rollouts)
    n = len(rollouts)
    has_student_stop = student.stop_token_to_append is not None

    s_content, t_content, covered, mismatch, bridged = [], [], [], [], []
    for rollout, request in zip(rollouts, requests):
        s_ids = np.asarray(rollout.response_ids[: len(rollout.response_ids) - int(has_student_stop)])
        t_ids = np.asarray(request.input_ids[request.response_start :])
        t_stop = (
            has_student_stop
            and t_ids.shape[0] > 0
            and int(t_ids[-1]) in teacher.stop_ids
            and int(teacher.table.byte_lengths[int(t_ids[-1])]) == 0
        )
        t_ids = t_ids[: len(t_ids) - int(t_stop)]
        _check_content_tokens(student, s_ids, rollout.sample_id, "student")
        _check_content_tokens(teacher, t_ids, rollout.sample_id, "teacher")
        s_bytes, t_bytes = student.table.join(s_ids), teacher.table.join(t_ids)
        t_lens = teacher.table.byte_lengths[t_ids].astype(np.int64)
        covered_b = len(s_bytes)
        if t_bytes != s_bytes:
            if t_bytes[:1] == b" " and t_bytes[1:] == s_bytes:  # phantom prefix space on the first token
                t_lens[int(np.argmax(t_lens > 0))] -= 1
            else:
                covered_b = common_prefix_len(t_bytes, s_bytes)
        s_content.append(student.table.byte_lengths[s_ids].astype(np.int64))
        t_content.append(t_lens)
        covered.append(covered_b)
        mismatch.append(covered_b < len(s_bytes))
        bridged.append(bool(t_stop) and covered_b == len(s_bytes))

    s_off = np.concatenate(([0], np.cumsum([x.shape[0] for x in s_content])))
    t_off = np.concatenate(([0], np.cumsum([x.shape[0] for x in t_content])))
    flat = align_flat(
        np.concatenate(s_content), s_off, np.concatenate(t_content), t_off, np.asarray(covered, np.int64)
    )
    first_chunk_B = np.searchsorted(flat.chunk_sample, np.arange(n + 1))  # chunks of b: [first_b, first_b+1)

    encoded: list[EncodedResponse] = []
    for b, (rollout, request) in enumerate(zip(rollouts, requests)):
        base, k = int(first_chunk_B[b]), int(first_chunk_B[b + 1] - first_chunk_B[b])

        def local(chunk: np.ndarray, base: int = base) -> np.ndarray:
            return np.where(chunk >= 0, chunk - base, -1).astype(np.int64)

        span = local(flat.student_chunk[s_off[b] : s_off[b + 1]])
        t_span = local(flat.teacher_chunk[t_off[b] : t_off[b + 1]])
        n_t = request.input_ids.shape[0] - request.response_start
        if has_student_stop:  # the stop tokens are one more span when bridged, else no span
            span = np.append(span, k if bridged[b] else -1)
        t_span = np.append(t_span, np.full(n_t - t_span.shape[0], k if bridged[b] else -1, np.int64))
        encoded.append(
            EncodedResponse(
                sample_id=rollout.sample_id,
                input_ids=np.concatenate([rollout.prompt_ids, rollout.response_ids]).astype(np.int32),
                response_start=int(rollout.prompt_ids.shape[0]),
                span_index=span,
                teacher_request=request,
                teacher_span_index=t_span,
                num_spans=k + int(bridged[b]),
                teacher_mismatch=mismatch[b],
            )
        )
    return [EncodedPair(pair.pair_id, encoded[2 * i], encoded[2 * i + 1]) for i, pair in enumerate(pairs)]


def responses_of(pairs: Sequence[EncodedPair]) -> list[EncodedResponse]:
    """All responses in row order: chosen_0, rejected_0, chosen_1, rejected_1, ..."""
    return [r for p in pairs for r in p.responses]


def teacher_requests(pairs: Sequence[EncodedPair]) -> list[TeacherRequest]:
    """The teacher requests of `responses_of(pairs)`, in that order."""
    return [r.teacher_request for r in responses_of(pairs)]


def attach_teacher_scores(pairs: Sequence[EncodedPair], scores: Sequence[TeacherScores]) -> None:
    """Set each response's teacher span logprobs ``τ_k`` from its `TeacherScores` (in `teacher_requests`
    order): ``τ_k = Σ_{j: teacher_span_index[j] = k} token_logprobs[j]``."""
    responses = responses_of(pairs)
    if len(scores) != len(responses):
        raise ValueError(f"got {len(scores)} teacher scores for {len(responses)} responses")
    for response, score in zip(responses, scores):
        if score.sample_id != response.sample_id:
            raise ValueError(
                f"teacher scores for {score.sample_id!r} arrived where {response.sample_id!r} was expected; "
                "pass the scores in teacher_requests(pairs) order"
            )
        lp = np.asarray(score.token_logprobs, dtype=np.float64)
        if lp.shape[0] != response.teacher_span_index.shape[0]:
            raise ValueError(
                f"{response.sample_id}: teacher scored {lp.shape[0]} positions, the request has "
                f"{response.teacher_span_index.shape[0]} response tokens"
            )
        if not np.isfinite(lp).all():
            raise ValueError(f"{response.sample_id}: teacher logprobs contain inf/NaN")
        in_span = response.teacher_span_index >= 0
        response.teacher_span_logprobs = np.bincount(
            response.teacher_span_index[in_span], weights=lp[in_span], minlength=response.num_spans
        )
        response.teacher_logprob = float(lp.sum())


def student_sequences(pairs: Sequence[EncodedPair]) -> tuple[list[np.ndarray], list[int]]:
    """(input ids, response starts) of `responses_of(pairs)`: what `LearnerRank.compute_logprobs` takes."""
    responses = responses_of(pairs)
    return [r.input_ids for r in responses], [r.response_start for r in responses]


def span_stats(pairs: Sequence[EncodedPair]) -> dict[str, float]:
    """Mean spans per response, student / teacher tokens per span, share of responses with a teacher
    byte mismatch (their tail has no spans)."""
    rows = responses_of(pairs)
    spans = np.array([max(r.num_spans, 1) for r in rows], dtype=np.float64)
    student = np.array([(r.span_index >= 0).sum() for r in rows], dtype=np.float64)
    teacher = np.array([(r.teacher_span_index >= 0).sum() for r in rows], dtype=np.float64)
    return {
        "spans/per_response": float(spans.mean()),
        "spans/student_tokens_per_span": float((student / spans).mean()),
        "spans/teacher_tokens_per_span": float((teacher / spans).mean()),
        "spans/teacher_mismatch": float(np.mean([r.teacher_mismatch for r in rows])),
    }


def attach_reference(pairs: Sequence[EncodedPair], logprobs: Sequence[np.ndarray]) -> None:
    """Set each response's frozen-reference token logprobs (float32[R], in `responses_of` order)."""
    responses = responses_of(pairs)
    if len(logprobs) != len(responses):
        raise ValueError(f"got {len(logprobs)} reference logprob arrays for {len(responses)} responses")
    for response, lp in zip(responses, logprobs):
        lp = np.asarray(lp, dtype=np.float32)
        if lp.shape[0] != response.num_response_tokens:
            raise ValueError(
                f"{response.sample_id}: {lp.shape[0]} reference logprobs for "
                f"{response.num_response_tokens} response tokens"
            )
        response.reference_logprobs = lp


__all__ = [
    "ROLES",
    "EncodedPair",
    "EncodedResponse",
    "attach_reference",
    "attach_teacher_scores",
    "encode_pairs",
    "responses_of",
    "span_stats",
    "student_sequences",
    "teacher_requests",
]
