"""`TokenMapper`: the student↔teacher token mapping of one tokenizer pair (docs/design.md §3).

Two calls per sample, both batched for throughput (Python overhead is paid per batch, not per token):

1. ``teacher_requests(rollouts)`` — the teacher's input: the conversation in the teacher's chat
   template, then the student response re-tokenized by the teacher (+ the teacher's end-of-turn token
   if the student stopped). See :mod:`framework.mapping.render`.
2. ``map_samples(rollouts, requests, scores)`` — align both tokenizations by byte offsets
   (:mod:`align`), credit chunk advantages to student tokens (:mod:`credit`), project the teacher's
   top-k rows at shared boundaries onto the student vocabulary (:mod:`topk`): direct student ids, and
   byte-prefix groups whose mass the learner's loss splits by the student's own probabilities.

Identical tokenizers (same vocabulary, merges, normalizer, pre-tokenizer and added tokens) take an exact
identity fast path: the teacher scores the student's own ids and every target is passed through, so
results equal same-tokenizer on-policy distillation bit for bit.

A mapper pickles as its constructor arguments (paths) and is rebuilt, once per process, on arrival.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from framework.mapping.align import align_flat, boundary_pairs
from framework.mapping.boundary import BOUNDARY_MODES, BoundaryTables, chunk_boundary_shift, chunk_end_logmass
from framework.mapping.credit import CREDIT_MODES, bridged_stop_logprob, chunk_credit
from framework.mapping.render import (
    StudentResponse,
    TokenizerInfo,
    check_ids,
    load_tokenizer_info,
    split_student_responses,
)
from framework.mapping.topk import (
    MAX_GROUP_SIZE,
    ProjectionMap,
    build_projection_map,
    identity_projection,
    pack_groups,
    project_topk_groups,
)
from framework.types import DenseTarget, MappedSample, Prompt, Rollout, TeacherRequest, TeacherScores

_MAPPER_CACHE: dict[tuple, TokenMapper] = {}
_RECENT_SPLITS = 8192  # samples whose student bytes a mapper keeps between request and scores


def common_prefix_len(a: bytes, b: bytes) -> int:
    """Length of the longest common byte prefix of ``a`` and ``b``."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.frombuffer(a, np.uint8, n) != np.frombuffer(b, np.uint8, n)
    return int(np.argmax(diff)) if diff.any() else n


@dataclass
class _TeacherSide:
    """How one sample's teacher response tokens line up with the student bytes."""

    ids: np.ndarray  # int32[Rt] teacher response ids (incl. the appended stop token)
    covered: int  # bytes aligned (valid student prefix on which the teacher bytes agree)
    phantom: int  # 1 if the first teacher token carries a phantom leading space
    bridged: bool  # the student stop token is scored against the appended teacher stop token
    mismatch: bool  # teacher bytes disagree with the student bytes before the end of the valid prefix


class TokenMapper:
    """Maps student rollouts to teacher requests, and teacher scores back to student training targets."""

    def __init__(
        self,
        student: TokenizerInfo,
        teacher: TokenizerInfo,
        credit: str = "proportional",
        topk: bool = True,
        boundary: str = "byte_prefix",
    ) -> None:
        if credit not in CREDIT_MODES:
            raise ValueError(f"credit={credit!r}: choose one of {CREDIT_MODES}")
        if boundary not in BOUNDARY_MODES:
            raise ValueError(f"boundary={boundary!r}: choose one of {BOUNDARY_MODES}")
        self.student, self.teacher = student, teacher
        self.credit, self.topk, self.boundary = credit, topk, boundary
        self.is_identity = student.fingerprint == teacher.fingerprint
        self.same_template = self.is_identity and student.chat_template == teacher.chat_template
        self.teacher_stop_array = np.array(sorted(teacher.stop_ids), dtype=np.int64)
        self._projection: ProjectionMap | None = None
        self._boundary_tables: BoundaryTables | None = None  # built on first use (boundary.py)
        # Student bytes of the rollouts whose teacher requests were built here, reused when their
        # scores come back (map_samples), keyed by sample id and checked against the response ids.
        self._recent_splits: OrderedDict[str, tuple[np.ndarray, StudentResponse]] = OrderedDict()

    @classmethod
    def from_paths(
        cls,
        student_path: str,
        teacher_path: str,
        credit: str = "proportional",
        topk: bool = True,
        boundary: str = "byte_prefix",
    ) -> TokenMapper:
        """Build (or reuse, within this process) the mapper of a tokenizer pair."""
        key = (str(student_path), str(teacher_path), credit, topk, boundary)
        if key not in _MAPPER_CACHE:
            student = load_tokenizer_info(str(student_path))
            teacher = student if student_path == teacher_path else load_tokenizer_info(str(teacher_path))
            _MAPPER_CACHE[key] = cls(student, teacher, credit=credit, topk=topk, boundary=boundary)
        return _MAPPER_CACHE[key]

    def __reduce__(self):
        args = (self.student.path, self.teacher.path, self.credit, self.topk, self.boundary)
        return (_rebuild_mapper, args)

    @property
    def projection(self) -> ProjectionMap:
        """teacher id → student id map for the top-k projection (built on first use, or read from the
        disk cache when both tokenizers are cached)."""
        if self._projection is None:
            if self.is_identity:
                self._projection = identity_projection(self.teacher.table.vocab_size)
            else:
                self._projection = _pair_projection(self.student, self.teacher)
        return self._projection

    @property
    def boundary_tables(self) -> BoundaryTables:
        """The pair's byte-order tables for byte-prefix chunks (`boundary.BoundaryTables`)."""
        if self._boundary_tables is None:
            self._boundary_tables = BoundaryTables.of_pair(self.student.table, self.teacher.table)
        return self._boundary_tables

    # ------------------------------------------------------------------ teacher input (§3.2-3.3)
    def _splits(self, rollouts: Sequence[Rollout]) -> tuple[list[StudentResponse], np.ndarray]:
        """Student response bytes of each rollout, and all response ids concatenated (int[Ns])."""
        ids = [np.asarray(r.response_ids) for r in rollouts]
        flat = np.concatenate(ids) if ids else np.zeros(0, np.int32)
        check_ids(flat, self.student.table.vocab_size, "response_ids")
        known: list[StudentResponse | None] = []
        for rollout, arr in zip(rollouts, ids):
            hit = self._recent_splits.pop(rollout.sample_id, None)
            same = hit is not None and (hit[0] is arr or np.array_equal(hit[0], arr))
            known.append(hit[1] if hit is not None and same else None)
        missing = [b for b, split in enumerate(known) if split is None]
        if missing:
            computed = split_student_responses(
                self.student.table,
                self.student.stop_ids,
                [ids[b] for b in missing],
                [rollouts[b].finish_reason for b in missing],
            )
            for b, split in zip(missing, computed):
                known[b] = split
        splits = [split for split in known if split is not None]
        return splits, flat

    def _remember_splits(self, rollouts: Sequence[Rollout], splits: list[StudentResponse]) -> None:
        for rollout, split in zip(rollouts, splits):
            self._recent_splits[rollout.sample_id] = (np.asarray(rollout.response_ids), split)
        while len(self._recent_splits) > _RECENT_SPLITS:
            self._recent_splits.popitem(last=False)

    def teacher_requests(self, rollouts: Sequence[Rollout]) -> list[TeacherRequest]:
        """Teacher inputs for a batch of rollouts (one batched teacher tokenization)."""
        if self.is_identity:
            return [self._identity_request(r) for r in rollouts]
        splits, _ = self._splits(rollouts)
        self._remember_splits(rollouts, splits)
        responses = self.teacher.encode_continuations([s.text for s in splits])
        stop_id = self.teacher.stop_token_to_append
        prompts = self.teacher.render_prompts_ids([r.prompt.messages for r in rollouts])
        requests = []
        for rollout, split, response, prompt in zip(rollouts, splits, responses, prompts):
            parts = [prompt, response]
            if split.bridge_stop and stop_id is not None:
                parts.append(np.array([stop_id], dtype=np.int32))
            requests.append(TeacherRequest(rollout.sample_id, np.concatenate(parts), int(prompt.shape[0])))
        return requests

    def warm_up(self, response_ids: Sequence[int]) -> None:
        """Build now what the first batch would build lazily: the parsed teacher tokenizer, its
        continuation encoder, the chat-template renderer and (top-k) the projection map, by preparing
        one made-up rollout whose response is ``response_ids`` (student ids). These builds run in
        Rust and C and hold the GIL for seconds, so a worker doing them in its first batch could not
        answer its heartbeat (design.md §7.2)."""
        prompt = Prompt("warm-up", [{"role": "user", "content": "1 + 1 = ?"}])
        ids = np.asarray(response_ids, dtype=np.int32)
        rollout = Rollout(
            prompt.sample_id(0),
            prompt,
            np.zeros(0, np.int32),
            ids,
            np.zeros(len(ids), np.float32),
            0,
            "length",
        )
        self.teacher_requests([rollout])
        self._recent_splits.pop(rollout.sample_id, None)
        if self.topk:
            _ = self.projection
        if self.boundary == "byte_prefix" and not self.is_identity:
            _ = self.boundary_tables

    def teacher_request(self, rollout: Rollout) -> TeacherRequest:
        return self.teacher_requests([rollout])[0]

    def _identity_request(self, rollout: Rollout) -> TeacherRequest:
        if self.same_template:
            prompt = np.asarray(rollout.prompt_ids, dtype=np.int32)
        else:
            prompt = self.teacher.render_prompt_ids(rollout.prompt.messages)
        ids = np.concatenate([prompt, np.asarray(rollout.response_ids, dtype=np.int32)])
        return TeacherRequest(rollout.sample_id, ids, int(prompt.shape[0]))

    # ------------------------------------------------------------------ targets (§3.4-3.6)
    def map_sample(
        self, rollout: Rollout, request: TeacherRequest, scores: TeacherScores, reward: float | None = None
    ) -> MappedSample:
        return self.map_samples([rollout], [request], [scores], None if reward is None else [reward])[0]

    def map_samples(
        self,
        rollouts: Sequence[Rollout],
        requests: Sequence[TeacherRequest],
        scores: Sequence[TeacherScores],
        rewards: Sequence[float | None] | None = None,
    ) -> list[MappedSample]:
        """Per-student-token targets for a batch (see module docstring)."""
        if not (len(rollouts) == len(requests) == len(scores)):
            raise ValueError(
                f"map_samples got {len(rollouts)} rollouts, {len(requests)} requests, {len(scores)} scores"
            )
        rewards = list(rewards) if rewards is not None else [None] * len(rollouts)
        for rollout, request, score in zip(rollouts, requests, scores):
            if not (rollout.sample_id == request.sample_id == score.sample_id):
                raise ValueError(
                    f"sample ids disagree: rollout {rollout.sample_id!r}, request {request.sample_id!r}, "
                    f"scores {score.sample_id!r}"
                )
            n_resp = request.input_ids.shape[0] - request.response_start
            if score.token_logprobs.shape[0] != n_resp:
                raise ValueError(
                    f"{score.sample_id}: teacher scores have {score.token_logprobs.shape[0]} positions but "
                    f"the request has {n_resp} response tokens"
                )
        if not rollouts:
            return []
        if self.is_identity:
            return [self._map_identity(r, s, w) for r, s, w in zip(rollouts, scores, rewards)]
        return self._map_cross(rollouts, requests, scores, rewards)

    def _teacher_side(self, split: StudentResponse, ids: np.ndarray, t_bytes: bytes) -> _TeacherSide:
        """Compare the teacher response bytes (``t_bytes``, of ``ids``) with the student bytes."""
        stop_id = self.teacher.stop_token_to_append
        appended = split.bridge_stop and stop_id is not None
        if appended and (ids.shape[0] == 0 or int(ids[-1]) != stop_id):
            raise ValueError(
                "teacher request does not end with the teacher stop token although the student stopped: "
                "was it built by this mapper (teacher_requests) for this rollout?"
            )
        s_bytes = split.content[: split.valid_len]
        phantom, covered = 0, split.valid_len
        if t_bytes != s_bytes:
            if t_bytes[:1] == b" " and t_bytes[1:] == s_bytes:
                phantom = 1
            else:
                covered = common_prefix_len(t_bytes, s_bytes)
        mismatch = covered < split.valid_len
        return _TeacherSide(ids, covered, phantom, appended and not mismatch, mismatch)

    def _map_cross(self, rollouts, requests, scores, rewards) -> list[MappedSample]:
        B = len(rollouts)
        splits, s_flat = self._splits(rollouts)
        t_ids = [np.asarray(q.input_ids[q.response_start :]) for q in requests]
        s_off = np.concatenate(([0], np.cumsum([r.response_ids.shape[0] for r in rollouts])))
        t_off = np.concatenate(([0], np.cumsum([t.shape[0] for t in t_ids])))
        t_flat = np.concatenate(t_ids)
        check_ids(t_flat, self.teacher.table.vocab_size, "teacher request ids")
        t_buf, t_lens = self.teacher.table.gather(t_flat)
        t_byte_off = np.concatenate(([0], np.cumsum(t_lens)))[t_off].tolist()
        t_raw = t_buf.tobytes()
        sides = [
            self._teacher_side(splits[b], t_ids[b], t_raw[t_byte_off[b] : t_byte_off[b + 1]])
            for b in range(B)
        ]
        s_lens = self.student.table.byte_lengths[s_flat].astype(np.int64)
        # Tokens after the content (the student stop token) must not be aligned; stop tokens have
        # zero bytes already, so only the phantom space needs an adjustment.
        phantom_rows = np.array(
            [
                t_off[b] + int(np.argmax(t_lens[t_off[b] : t_off[b + 1]] > 0))
                for b in range(B)
                if sides[b].phantom
            ],
            dtype=np.int64,
        )
        t_lens[phantom_rows] -= 1  # the first teacher token with bytes carries the phantom space
        covered = np.array([t.covered for t in sides], dtype=np.int64)
        alignment = align_flat(s_lens, s_off, t_lens, t_off, covered)
        lp_s = np.concatenate([np.asarray(r.logprobs, dtype=np.float64) for r in rollouts])
        lp_t = np.concatenate([np.asarray(s.token_logprobs, dtype=np.float64) for s in scores])
        bridged = np.array([b for b in range(B) if sides[b].bridged], dtype=np.int64)
        s_stop, t_stop = s_off[bridged + 1] - 1, t_off[bridged + 1] - 1
        d_C = self._boundary_logmass(alignment, s_flat, t_flat, t_off, lp_t, scores, t_stop)
        shift = None if d_C is None else chunk_boundary_shift(d_C, alignment.chunk_sample)
        credit = chunk_credit(
            alignment.student_chunk,
            lp_s,
            alignment.teacher_chunk,
            lp_t,
            alignment.num_chunks,
            self.credit,
            teacher_shift=shift,
        )
        teacher_lp = credit.teacher_logprobs
        advantages = credit.advantages
        mask = (alignment.student_chunk >= 0).astype(np.float32)

        # Stop-token bridging: student stop token ↔ appended teacher stop token (its own 1:1 chunk).
        if bridged.shape[0]:
            has_topk = all(scores[b].topk_ids is not None for b in bridged)
            stop_lp = bridged_stop_logprob(
                lp_t[t_stop],
                t_flat[t_stop],
                self.teacher_stop_array,
                np.stack([scores[b].topk_ids[-1] for b in bridged]) if has_topk else None,
                np.stack([scores[b].topk_logprobs[-1] for b in bridged]) if has_topk else None,
            )
            if d_C is not None and d_C.shape[0]:  # the stop decides whether the last token ended there
                last = np.searchsorted(alignment.chunk_sample, bridged, side="right") - 1
                last = np.maximum(last, 0)
                stop_lp = stop_lp - np.where(alignment.chunk_sample[last] == bridged, d_C[last], 0.0)
            teacher_lp[s_stop] = stop_lp
            advantages[s_stop] = stop_lp - lp_s[s_stop]
            mask[s_stop] = 1.0

        dense_rows = self._dense_rows(alignment, s_lens, t_lens, phantom_rows, s_stop, t_stop, scores)
        return self._assemble(
            rollouts,
            splits,
            sides,
            s_off,
            alignment,
            credit,
            mask,
            teacher_lp,
            advantages,
            dense_rows,
            bridged,
            rewards,
            d_C,
        )

    def _boundary_logmass(self, alignment, s_flat, t_flat, t_off, lp_t, scores, t_stop) -> np.ndarray | None:
        """float64[C] ``d_c`` of every chunk (`boundary.chunk_end_logmass`), or None when token-level
        chunks are asked for or a sample came without its top-k rows."""
        if self.boundary != "byte_prefix" or any(
            s.topk_ids is None or s.topk_logprobs is None for s in scores
        ):
            return None
        return chunk_end_logmass(
            self.boundary_tables,
            alignment.student_chunk,
            alignment.teacher_chunk,
            alignment.num_chunks,
            s_flat,
            t_flat,
            t_off,
            lp_t,
            scores,
            t_stop,
        )

    def _dense_rows(self, alignment, s_lens, t_lens, phantom_rows, s_stop, t_stop, scores):
        """(student flat idx int64[P], support ids, support probs, group ids, other) sorted by student index."""
        if not self.topk or any(s.topk_ids is None or s.topk_logprobs is None for s in scores):
            return None
        teacher_ok = np.ones(t_lens.shape[0], dtype=bool)
        teacher_ok[phantom_rows] = False  # that row scores "▁x", not "x"
        s_idx, t_idx = boundary_pairs(alignment, s_lens, t_lens, teacher_ok)
        s_idx, t_idx = np.concatenate([s_idx, s_stop]), np.concatenate([t_idx, t_stop])
        order = np.argsort(s_idx, kind="stable")
        s_idx, t_idx = s_idx[order], t_idx[order]
        topk_ids = np.concatenate([np.asarray(s.topk_ids) for s in scores])
        topk_lp = np.concatenate([np.asarray(s.topk_logprobs) for s in scores])
        ids, probs, groups, other = project_topk_groups(topk_ids[t_idx], topk_lp[t_idx], self.projection)
        return s_idx, ids, probs, groups, other

    def _assemble(
        self,
        rollouts,
        splits,
        sides,
        s_off,
        alignment,
        credit,
        mask,
        teacher_lp,
        advantages,
        dense_rows,
        bridged,
        rewards,
        d_C,
    ) -> list[MappedSample]:
        B = len(rollouts)

        def per_sample(weights: np.ndarray | None = None) -> np.ndarray:  # float64[B] sums over chunks
            return np.bincount(alignment.chunk_sample, weights=weights, minlength=B).astype(np.float64)

        is_bridged = np.zeros(B, dtype=np.float64)
        is_bridged[bridged] = 1.0  # the stop token is a 1:1 chunk of its own
        one_to_one = (credit.chunk_num_student == 1) & (credit.chunk_num_teacher == 1)
        n_chunks = per_sample() + is_bridged
        chunks = np.maximum(n_chunks, 1.0)
        R_B = np.diff(s_off)
        mask_cum = np.concatenate(([0.0], np.cumsum(mask, dtype=np.float64)))
        aligned_B = mask_cum[s_off[1:]] - mask_cum[s_off[:-1]]
        columns = {
            "map/chunks": n_chunks,
            "map/one_to_one_frac": (per_sample(one_to_one) + is_bridged) / chunks,
            "map/chunk_student_tokens": (per_sample(credit.chunk_num_student) + is_bridged) / chunks,
            "map/chunk_teacher_tokens": (per_sample(credit.chunk_num_teacher) + is_bridged) / chunks,
            "map/masked_frac": 1.0 - aligned_B / np.maximum(R_B, 1),
            "map/dense_frac": np.zeros(B),
            "map/stop_bridged": is_bridged,
            "map/cut_bytes": np.array([len(s.content) - s.valid_len for s in splits], dtype=np.float64),
            "map/teacher_mismatch": np.array([t.mismatch for t in sides], dtype=np.float64),
            "map/phantom_space": np.array([t.phantom for t in sides], dtype=np.float64),
            # mean d_c per chunk (boundary.py): nats of "the teacher token ends here" moved to the
            # next chunk (>= 0), and of "the bytes stop continuing the student's token" moved into
            # the chunk whose student token decided it (<= 0)
            "map/boundary_nats": per_sample(np.maximum(d_C, 0.0)) / chunks
            if d_C is not None
            else np.zeros(B),
            "map/student_end_nats": per_sample(np.minimum(d_C, 0.0)) / chunks
            if d_C is not None
            else np.zeros(B),
        }
        if dense_rows is not None:
            dense_cuts = np.searchsorted(dense_rows[0], s_off)
            columns["map/dense_frac"] = np.diff(dense_cuts) / np.maximum(R_B, 1)
        rows = [dict(zip(columns, values)) for values in zip(*(c.tolist() for c in columns.values()))]
        teacher_lp32, advantages32 = teacher_lp.astype(np.float32), advantages.astype(np.float32)
        samples = []
        for b, rollout in enumerate(rollouts):
            lo, hi = s_off[b], s_off[b + 1]
            dense = None
            if dense_rows is not None:
                d0, d1 = dense_cuts[b], dense_cuts[b + 1]
                dense = DenseTarget(
                    positions=(dense_rows[0][d0:d1] - lo).astype(np.int32),
                    support_ids=dense_rows[1][d0:d1],
                    support_probs=dense_rows[2][d0:d1],
                    other_prob=dense_rows[4][d0:d1],
                )
                packed = pack_groups(dense_rows[3][d0:d1], self.projection)
                if packed is not None:
                    dense.group_index, dense.group_members, dense.group_bounds = packed
            samples.append(
                self._sample(
                    rollout, teacher_lp32[lo:hi], advantages32[lo:hi], mask[lo:hi], dense, rewards[b], rows[b]
                )
            )
        return samples

    @staticmethod
    def _sample(rollout, teacher_lp, advantages, mask, dense, reward, diagnostics) -> MappedSample:
        prompt = np.asarray(rollout.prompt_ids, dtype=np.int32)
        return MappedSample(
            sample_id=rollout.sample_id,
            input_ids=np.concatenate([prompt, np.asarray(rollout.response_ids, dtype=np.int32)]),
            response_start=int(prompt.shape[0]),
            behaviour_logprobs=np.asarray(rollout.logprobs, dtype=np.float32),
            teacher_logprobs=np.asarray(teacher_lp, dtype=np.float32),
            advantages=np.asarray(advantages, dtype=np.float32),
            mask=np.asarray(mask, dtype=np.float32),
            weight_version=rollout.weight_version,
            dense=dense,
            reward=reward,
            diagnostics=diagnostics,
        )

    def _map_identity(self, rollout: Rollout, scores: TeacherScores, reward: float | None) -> MappedSample:
        """Same tokenizer: every token is its own chunk and every target passes through unchanged."""
        behaviour = np.asarray(rollout.logprobs, dtype=np.float32)
        teacher_lp = np.asarray(scores.token_logprobs, dtype=np.float32)
        R = behaviour.shape[0]
        dense = None
        if self.topk and scores.topk_ids is not None and scores.topk_logprobs is not None:
            probs = np.exp(np.asarray(scores.topk_logprobs, dtype=np.float64))
            probs /= np.maximum(probs.sum(axis=1, keepdims=True), 1.0)
            dense = DenseTarget(
                positions=np.arange(R, dtype=np.int32),
                support_ids=np.asarray(scores.topk_ids, dtype=np.int32),
                support_probs=probs.astype(np.float32),
                other_prob=np.clip(1.0 - probs.sum(axis=1), 0.0, 1.0).astype(np.float32),
            )
        diagnostics = {
            "map/chunks": float(R),
            "map/one_to_one_frac": 1.0,
            "map/chunk_student_tokens": 1.0,
            "map/chunk_teacher_tokens": 1.0,
            "map/masked_frac": 0.0,
            "map/dense_frac": 1.0 if dense is not None else 0.0,
        }
        return self._sample(
            rollout, teacher_lp, teacher_lp - behaviour, np.ones(R, np.float32), dense, reward, diagnostics
        )


def _pair_projection(student: TokenizerInfo, teacher: TokenizerInfo) -> ProjectionMap:
    """`build_projection_map` of a pair, through the disk cache (a pair entry keyed by both tokenizers'
    entries and the stop ids, :mod:`framework.mapping.cache`)."""
    from framework.mapping import cache as disk

    args = (teacher.stop_ids, student.stop_token_to_append)
    key = None
    if student.cache_key and teacher.cache_key:
        key = disk.projection_key(student.cache_key, teacher.cache_key, *args, MAX_GROUP_SIZE)
    projection = disk.load_projection(key, student.table, teacher.table) if key else None
    if projection is None:
        projection = build_projection_map(student.table, teacher.table, *args, max_group_size=MAX_GROUP_SIZE)
        if key:
            disk.save_projection(key, projection)
    return projection


def _rebuild_mapper(
    student_path: str, teacher_path: str, credit: str, topk: bool, boundary: str
) -> TokenMapper:
    return TokenMapper.from_paths(student_path, teacher_path, credit=credit, topk=topk, boundary=boundary)
