"""Byte-offset chunk alignment: hand-checked examples and a brute-force reference."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from framework.mapping import align_flat, align_tokens, gpt2_unicode_to_byte

_U2B = gpt2_unicode_to_byte()


def bytelevel(piece: str) -> bytes:
    return bytes(_U2B[ch] for ch in piece)


def metaspace(piece: str) -> bytes:
    return piece.replace("▁", " ").encode()


def lens(pieces: list[bytes]) -> np.ndarray:
    return np.array([len(p) for p in pieces])


def reference_spans(s_lens, t_lens, covered):
    """Two pointers over bytes: a chunk closes where both sides have consumed the same bytes."""
    spans, i, j, s_pos, t_pos, s0, t0 = [], 0, 0, 0, 0, 0, 0
    s_lens, t_lens = list(s_lens), list(t_lens)

    def skip_empty(idx, seq):
        while idx < len(seq) and seq[idx] == 0:
            idx += 1
        return idx

    while True:
        if s_pos <= t_pos:  # advance the side that is behind (the student on a tie)
            i = skip_empty(i, s_lens)
            if i >= len(s_lens) or s_pos + s_lens[i] > covered:
                break
            s_pos += s_lens[i]
            i += 1
        else:
            j = skip_empty(j, t_lens)
            if j >= len(t_lens) or t_pos + t_lens[j] > covered:
                break
            t_pos += t_lens[j]
            j += 1
        if s_pos == t_pos:
            spans.append(((s0, i), (t0, j)))
            s0, t0 = i, j
    # The first/last chunk token of each side is the first/last non-empty token of the span.
    out = []
    for (a, b), (c, d) in spans:
        sa = [k for k in range(a, b) if s_lens[k] > 0]
        tc = [k for k in range(c, d) if t_lens[k] > 0]
        out.append(((sa[0], sa[-1] + 1), (tc[0], tc[-1] + 1)))
    return out


def test_digit_grouping_vs_single_digits():
    student = [b"123", b"45"]  # Llama-3 style: digits in groups of up to 3
    teacher = [b"1", b"2", b"3", b"4", b"5"]  # Qwen style: one digit per token
    al = align_tokens(lens(student), lens(teacher))
    assert al.spans() == [((0, 1), (0, 3)), ((1, 2), (3, 5))]
    assert al.chunk_end.tolist() == [3, 5]


def test_metaspace_vs_bytelevel_spaces():
    student = [metaspace(p) for p in ["▁the", "▁s", "um", "▁is", "▁12"]]
    teacher = [bytelevel(p) for p in ["Ġ", "the", "Ġsum", "Ġis", "Ġ", "1", "2"]]
    assert b"".join(student) == b"".join(teacher) == b" the sum is 12"
    al = align_tokens(lens(student), lens(teacher))
    assert al.spans() == [((0, 1), (0, 2)), ((1, 3), (2, 3)), ((3, 4), (3, 4)), ((4, 5), (4, 7))]


def test_split_utf8_character_is_one_chunk():
    # "東" = e6 9d b1: the student holds it whole, the teacher spells it with byte pieces.
    student = ["東".encode(), b"!"]
    teacher = [b"\xe6", b"\x9d\xb1", b"!"]
    al = align_tokens(lens(student), lens(teacher))
    assert al.spans() == [((0, 1), (0, 2)), ((1, 2), (2, 3))]


def test_zero_length_tokens_and_tail_are_unaligned():
    s_lens = np.array([2, 0, 3, 4])  # a special token (0 bytes) inside, last token runs past `covered`
    t_lens = np.array([1, 1, 3, 2, 2])
    al = align_tokens(s_lens, t_lens, covered=7)
    assert al.student_chunk.tolist() == [0, -1, 1, -1]
    # teacher tokens 3 and 4 end at 7 and 9: 7 is not a student end inside the covered bytes.
    assert al.teacher_chunk.tolist() == [0, 0, 1, -1, -1]


@st.composite
def two_tokenizations(draw):
    n_bytes = draw(st.integers(0, 60))

    def cut(with_empty: bool):
        points = sorted(draw(st.sets(st.integers(1, max(n_bytes - 1, 1)), max_size=n_bytes)))
        points = [p for p in points if p < n_bytes]
        bounds = [0, *points, n_bytes] if n_bytes else [0]
        out = list(np.diff(bounds))
        if with_empty and draw(st.booleans()):
            out.insert(draw(st.integers(0, len(out))), 0)
        return out

    s_lens, t_lens = cut(True), cut(True)
    covered = draw(st.integers(0, n_bytes))
    return s_lens, t_lens, covered


@settings(max_examples=300, deadline=None)
@given(two_tokenizations())
def test_matches_brute_force_reference(case):
    s_lens, t_lens, covered = case
    al = align_tokens(np.array(s_lens, dtype=np.int64), np.array(t_lens, dtype=np.int64), covered)
    assert al.spans() == reference_spans(s_lens, t_lens, covered)
    # Each chunk covers the same bytes on both sides, and chunks tile [0, last sync point).
    s_end, t_end = np.cumsum(s_lens), np.cumsum(t_lens)
    prev = 0
    for ((a, b), (c, d)), end in zip(al.spans(), al.chunk_end):
        assert s_end[b - 1] == t_end[d - 1] == end
        assert s_end[b - 1] - sum(s_lens[a:b]) == prev == t_end[d - 1] - sum(t_lens[c:d])
        prev = end


@settings(max_examples=100, deadline=None)
@given(st.lists(two_tokenizations(), min_size=1, max_size=5))
def test_batch_alignment_equals_per_sample(cases):
    s_all = np.concatenate([np.array(c[0], dtype=np.int64) for c in cases])
    t_all = np.concatenate([np.array(c[1], dtype=np.int64) for c in cases])
    s_off = np.concatenate(([0], np.cumsum([len(c[0]) for c in cases])))
    t_off = np.concatenate(([0], np.cumsum([len(c[1]) for c in cases])))
    flat = align_flat(s_all, s_off, t_all, t_off, np.array([c[2] for c in cases]))
    chunk_base = 0
    for b, (s_lens, t_lens, covered) in enumerate(cases):
        single = align_tokens(np.array(s_lens, dtype=np.int64), np.array(t_lens, dtype=np.int64), covered)
        want_s = np.where(single.student_chunk >= 0, single.student_chunk + chunk_base, -1)
        want_t = np.where(single.teacher_chunk >= 0, single.teacher_chunk + chunk_base, -1)
        assert flat.student_chunk[s_off[b] : s_off[b + 1]].tolist() == want_s.tolist()
        assert flat.teacher_chunk[t_off[b] : t_off[b + 1]].tolist() == want_t.tolist()
        assert (flat.chunk_sample[chunk_base : chunk_base + single.num_chunks] == b).all()
        chunk_base += single.num_chunks
    assert chunk_base == flat.num_chunks
