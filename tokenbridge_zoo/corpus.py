"""Locally generated tokenizer-training corpus (nothing is downloaded).

Mixes the arithmetic task text with English-like prose, code-like lines and some non-ASCII text
(accented Latin, CJK, emoji). Frequent non-ASCII strings get learned merges; rare ones are left to
bytes (ByteLevel) or byte fallback (SentencePiece style), so both paths are exercised.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from framework.data.arith import random_problem

_WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "it",
    "that",
    "for",
    "on",
    "with",
    "as",
    "was",
    "he",
    "be",
    "at",
    "by",
    "this",
    "had",
    "not",
    "are",
    "but",
    "from",
    "or",
    "have",
    "an",
    "they",
    "which",
    "one",
    "you",
    "were",
    "her",
    "all",
    "she",
    "there",
    "would",
    "their",
    "we",
    "him",
    "been",
    "has",
    "when",
    "who",
    "will",
    "more",
    "no",
    "if",
    "out",
    "so",
    "said",
    "what",
    "up",
    "its",
    "about",
    "into",
    "than",
    "them",
    "can",
    "only",
    "other",
    "new",
    "some",
    "could",
    "time",
    "these",
    "two",
    "may",
    "then",
    "do",
    "first",
    "any",
    "my",
    "now",
    "such",
    "like",
    "our",
    "over",
    "man",
    "me",
    "even",
    "most",
    "made",
    "after",
    "also",
    "did",
    "many",
    "before",
    "must",
    "through",
    "back",
    "years",
    "where",
    "much",
    "your",
    "way",
    "well",
    "down",
    "should",
    "because",
    "each",
    "just",
    "those",
    "people",
    "how",
    "too",
    "little",
    "state",
    "good",
    "very",
    "make",
    "world",
    "still",
    "own",
    "see",
    "men",
    "work",
    "long",
    "get",
    "here",
    "between",
    "both",
    "life",
    "being",
    "under",
    "never",
    "day",
    "same",
    "another",
    "know",
    "while",
    "last",
    "might",
    "us",
    "great",
    "old",
    "year",
    "off",
    "come",
    "since",
    "against",
    "go",
    "came",
    "right",
    "used",
    "take",
    "three",
    "number",
    "answer",
    "compute",
    "model",
    "user",
    "assistant",
    "system",
    "step",
    "result",
    "value",
    "sum",
    "total",
    "add",
    "subtract",
    "plus",
    "minus",
    "equals",
    "check",
    "first",
    "second",
]
_SYLLABLES = [
    "ka",
    "to",
    "ri",
    "ne",
    "so",
    "ma",
    "lu",
    "vi",
    "de",
    "po",
    "sa",
    "ku",
    "mi",
    "ta",
    "re",
    "no",
    "fe",
    "gi",
    "ba",
    "zo",
]
_ACCENTED = [
    "café",
    "naïve",
    "über",
    "señor",
    "façade",
    "résumé",
    "déjà",
    "élan",
    "coöperate",
    "Ærø",
    "smörgåsbord",
    "jalapeño",
    "crème",
    "Zürich",
    "São",
]
_CJK = [
    "東京",
    "中文",
    "日本語",
    "学习",
    "数学",
    "答案",
    "计算",
    "你好",
    "世界",
    "한국어",
    "안녕하세요",
    "問題",
    "加法",
    "減法",
]
_EMOJI = ["🙂", "🚀", "✨", "👍", "🎉", "🔥", "❤️", "🤖", "✅", "😀"]
_RARE = ["Ωmega", "Ελληνικά", "русский", "עברית", "العربية", "हिन्दी", "ไทย", "Ⅻ", "∑∫√", "𝔘𝔫𝔦"]
_CODE = (
    "def {f}({a}, {b}):\n    return {a} + {b}",
    "for {a} in range({n}):\n\tprint({a})",
    "if {a} >= {n}:\n    {b} = {a} - {n}",
    "{f} = [{a} * 2 for {a} in {b}]  # {w}",
    'print(f"{{{a}}} + {{{b}}} = {{{a} + {b}}}")',
    "const {f} = ({a}) => {a} * {n};",
    "{a}[{n}] = {b}.get('{w}', {n})\r\n",
    "while {a} != {b}: {a} += 1",
)
_NAMES = ("x", "y", "total", "value", "count", "items", "result", "acc", "i", "j")
_FUNCS = ("add", "compute", "step", "check_answer", "parse", "main", "run_task")


def _word(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.75:
        word = rng.choice(_WORDS)
    elif roll < 0.9:
        word = "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4)))
    elif roll < 0.96:
        word = rng.choice(_ACCENTED)
    elif roll < 0.985:
        word = rng.choice(_CJK)
    elif roll < 0.995:
        word = rng.choice(_EMOJI)
    else:
        word = rng.choice(_RARE)
    return word.capitalize() if rng.random() < 0.1 else word


def _prose(rng: random.Random) -> str:
    words = [_word(rng) for _ in range(rng.randint(4, 16))]
    if rng.random() < 0.3:
        words.insert(rng.randrange(len(words)), str(rng.randint(0, 100_000)))
    sentence = " ".join(words)
    return sentence[0].upper() + sentence[1:] + rng.choice([".", "!", "?", ",", ";", ":", "..."])


def _code(rng: random.Random) -> str:
    template = rng.choice(_CODE)
    a, b = rng.sample(_NAMES, 2)
    return template.format(a=a, b=b, f=rng.choice(_FUNCS), n=rng.randint(0, 999), w=rng.choice(_WORDS))


def generate_corpus(num_lines: int, seed: int) -> Iterator[str]:
    """Deterministic corpus: ~1/3 task text, ~1/2 prose, the rest code; lines joined by newlines."""
    rng = random.Random(f"corpus/{seed}")
    for _ in range(num_lines):
        roll = rng.random()
        if roll < 0.33:
            problem = random_problem(rng)
            text = problem.question if rng.random() < 0.5 else problem.worked_answer()
            # Chat roles as they follow a turn header, so role names get learned tokens.
            yield rng.choice(["user\n", "assistant\n\n", "model\n", ""]) + text
        elif roll < 0.83:
            yield _prose(rng) if rng.random() < 0.85 else _prose(rng) + "\n" + _prose(rng)
        else:
            yield _code(rng)


__all__ = ["generate_corpus"]
