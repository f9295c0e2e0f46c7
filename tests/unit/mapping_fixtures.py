"""Small test tokenizers for the token-mapping tests, trained locally with the `tokenizers` library.

Four styles, each saved as a directory that `transformers.AutoTokenizer.from_pretrained` loads (with a
chat template, and for one of them a generation_config.json):

- ``bl_group``: ByteLevel BPE, digits grouped by 1-3 (Llama-3 style), end-of-turn ``<|eot_id|>``.
- ``bl_single``: ByteLevel BPE, one digit per pre-token (Qwen style), end-of-turn ``<|im_end|>``.
- ``sp_prefix``: Metaspace + byte-fallback BPE with the dummy prefix space (Llama-2 style).
- ``sp_plain``: ``" "``→``▁`` normaliser + byte-fallback BPE without a dummy prefix (Gemma style).

Once ``tokenbridge_zoo`` exists, :func:`zoo_tokenizer_dirs` adds its tokenizers to the pairs.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from functools import lru_cache
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

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
    "be",
    "at",
    "by",
    "this",
    "not",
    "are",
    "but",
    "from",
    "or",
    "have",
    "they",
    "which",
    "one",
    "you",
    "were",
    "all",
    "there",
    "would",
    "their",
    "we",
    "has",
    "when",
    "who",
    "will",
    "more",
    "if",
    "out",
    "so",
    "what",
    "up",
    "about",
    "into",
    "than",
    "can",
    "only",
    "other",
    "new",
    "some",
    "time",
    "two",
    "then",
    "first",
    "any",
    "now",
    "like",
    "over",
    "even",
    "most",
    "made",
    "after",
    "also",
    "did",
    "many",
    "before",
    "must",
    "answer",
    "compute",
    "model",
    "user",
    "step",
    "result",
    "value",
    "sum",
    "total",
    "add",
    "number",
    "equals",
    "check",
]
_EXTRA = [
    "café",
    "naïve",
    "über",
    "señor",
    "déjà",
    "Zürich",
    "東京",
    "中文",
    "日本語",
    "数学",
    "答案",
    "你好",
    "世界",
    "한국어",
    "🙂",
    "🚀",
    "✨",
    "👍",
]
_CODE = (
    "def f(x, y):\n    return x + y\n",
    "for i in range(10):\n\tprint(i)\n",
    "if total >= 42:\n    value = total - 7\r\n",
    "items = [x * 2 for x in data]  # double\n",
)


def training_corpus(num_lines: int = 1500, seed: int = 0) -> list[str]:
    """Mixed prose / arithmetic / code / non-ASCII lines (deterministic)."""
    rng = random.Random(seed)
    lines = []
    for _ in range(num_lines):
        roll = rng.random()
        if roll < 0.5:
            words = [rng.choice(_WORDS) for _ in range(rng.randint(4, 14))]
            if rng.random() < 0.3:
                words.insert(rng.randrange(len(words)), rng.choice(_EXTRA))
            lines.append(" ".join(words).capitalize() + rng.choice([".", "!", "?", ","]))
        elif roll < 0.8:
            a, b = rng.randint(0, 99999), rng.randint(0, 999)
            lines.append(f"Compute {a} + {b} = {a + b}. Answer: {a + b}")
        else:
            lines.append(rng.choice(_CODE))
    return lines


_LLAMA3_SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_QWEN_SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"

_TEMPLATE_HEADER = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
_TEMPLATE_CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_TEMPLATE_INST = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'assistant' %}{{ m['content'] }}{{ eos_token }}"
    "{% else %}[INST] {{ m['content'] }} [/INST]{% endif %}{% endfor %}"
)
_TEMPLATE_TURN = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}"
    "\n{{ m['content'] }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def _byte_level(split_regex: str, specials: list[str], vocab_size: int, corpus: list[str]) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(split_regex), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    return tok


def _sentencepiece_style(
    dummy_prefix: bool, specials: list[str], vocab_size: int, corpus: list[str]
) -> Tokenizer:
    """BPE over ``▁``-marked text with ``<0xNN>`` byte-fallback tokens in the model vocabulary."""
    trainer_tok = Tokenizer(models.BPE())
    trainer_tok.normalizer = normalizers.Replace(" ", "▁")
    trainer_tok.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, limit_alphabet=120, show_progress=False)
    trainer_tok.train_from_iterator(corpus, trainer)
    model_json = json.loads(trainer_tok.to_str())["model"]
    trained = sorted(model_json["vocab"].items(), key=lambda kv: kv[1])
    vocab = {tok: i for i, tok in enumerate(specials)}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for piece, _ in trained:
        if piece not in vocab:
            vocab[piece] = len(vocab)
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model_json["merges"]]
    tok = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, byte_fallback=True, unk_token="<unk>", fuse_unk=True)
    )
    if dummy_prefix:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
        tok.decoder = decoders.Sequence(
            [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
        )
    else:
        tok.normalizer = normalizers.Replace(" ", "▁")
        tok.decoder = decoders.Sequence(
            [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
        )
    tok.add_special_tokens(specials)
    return tok


def _save(
    tok: Tokenizer, out: Path, *, template: str, bos: str | None, eos: str, gen_eos: list[str] | None
) -> Path:
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, chat_template=template)
    out.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(str(out))
    if gen_eos is not None:
        ids = [tok.token_to_id(t) for t in gen_eos]
        (out / "generation_config.json").write_text(json.dumps({"eos_token_id": ids}))
    return out


FIXTURE_NAMES = ("bl_group", "bl_single", "sp_prefix", "sp_plain")


def build_fixture(name: str, out: Path) -> Path:
    corpus = training_corpus()
    if name == "bl_group":
        specials = [
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eot_id|>",
        ]
        tok = _byte_level(_LLAMA3_SPLIT, specials, 900, corpus)
        return _save(
            tok,
            out,
            template=_TEMPLATE_HEADER,
            bos="<|begin_of_text|>",
            eos="<|end_of_text|>",
            gen_eos=["<|end_of_text|>", "<|eot_id|>"],
        )
    if name == "bl_single":
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        tok = _byte_level(_QWEN_SPLIT, specials, 700, corpus)
        return _save(tok, out, template=_TEMPLATE_CHATML, bos=None, eos="<|endoftext|>", gen_eos=None)
    if name == "sp_prefix":
        specials = ["<unk>", "<s>", "</s>"]
        tok = _sentencepiece_style(True, specials, 600, corpus)
        return _save(tok, out, template=_TEMPLATE_INST, bos="<s>", eos="</s>", gen_eos=None)
    if name == "sp_plain":
        specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
        tok = _sentencepiece_style(False, specials, 800, corpus)
        return _save(tok, out, template=_TEMPLATE_TURN, bos="<bos>", eos="<eos>", gen_eos=None)
    raise ValueError(f"unknown fixture tokenizer {name!r}; choose from {FIXTURE_NAMES}")


@lru_cache(maxsize=1)
def fixture_tokenizer_dirs() -> dict[str, str]:
    """Build (once per process) every fixture tokenizer into a temporary directory."""
    cache = os.environ.get("TOKENBRIDGE_TEST_TOKENIZERS")
    root = Path(cache) if cache else Path(tempfile.mkdtemp(prefix="tb_mapping_tok_"))
    dirs = {}
    for name in FIXTURE_NAMES:
        path = root / name
        if not (path / "tokenizer.json").exists():
            build_fixture(name, path)
        dirs[name] = str(path)
    return dirs


@lru_cache(maxsize=1)
def zoo_tokenizer_dirs() -> dict[str, str]:
    """The zoo's tokenizers when ``tokenbridge_zoo`` provides them, else an empty dict."""
    try:
        from tokenbridge_zoo import FAMILIES, tokenizer_path
    except ImportError:
        return {}
    return {f"zoo_{family}": str(tokenizer_path(family)) for family in FAMILIES}


def all_tokenizer_dirs() -> dict[str, str]:
    return {**fixture_tokenizer_dirs(), **zoo_tokenizer_dirs()}


# ---------------------------------------------------------------------------------------------- helpers
DEFAULT_MESSAGES = [{"role": "user", "content": "Compute 12 + 30 and explain."}]
_FIXTURE_NAMES_ALL: tuple[str, ...] | None = None


def tokenizer_names() -> tuple[str, ...]:
    """Fixture names, plus ``zoo_<family>`` names when tokenbridge_zoo can be imported."""
    global _FIXTURE_NAMES_ALL
    if _FIXTURE_NAMES_ALL is None:
        try:
            from tokenbridge_zoo import FAMILIES

            zoo = tuple(f"zoo_{f}" for f in FAMILIES)
        except ImportError:
            zoo = ()
        _FIXTURE_NAMES_ALL = FIXTURE_NAMES + zoo
    return _FIXTURE_NAMES_ALL


def tokenizer_dir(name: str) -> str:
    if name.startswith("zoo_"):
        return zoo_tokenizer_dirs()[name]
    return fixture_tokenizer_dirs()[name]


def make_rollout(mapper, response_ids, finish_reason: str, rng, messages=None, sample_id: str = "p#0"):
    """A Rollout of the mapper's student with random behaviour logprobs (in (-3, 0])."""
    import numpy as np

    from framework.types import Prompt, Rollout

    messages = messages or DEFAULT_MESSAGES
    prompt = Prompt(prompt_id=sample_id.split("#")[0], messages=messages)
    prompt_ids = mapper.student.render_prompt_ids(messages)
    ids = np.asarray(response_ids, dtype=np.int32)
    logprobs = -3.0 * rng.random(ids.shape[0]).astype(np.float32)
    return Rollout(sample_id, prompt, prompt_ids, ids, logprobs, 0, finish_reason)


def random_scores(request, teacher_vocab: int, k: int, rng, stop_ids=()):
    """TeacherScores with random realised logprobs and a random top-k (a sub-probability vector)."""
    import numpy as np

    from framework.types import TeacherScores

    n = request.input_ids.shape[0] - request.response_start
    token_lp = np.log(rng.uniform(0.01, 1.0, n)).astype(np.float32)
    ids = (
        np.stack([rng.choice(teacher_vocab, size=k, replace=False) for _ in range(n)])
        if n
        else np.zeros((0, k))
    )
    if stop_ids and n:
        ids[-1, -1] = sorted(stop_ids)[0]
    probs = rng.dirichlet(np.ones(k + 1), size=n)[:, :k] if n else np.zeros((0, k))
    probs = -np.sort(-probs, axis=1)
    return TeacherScores(request.sample_id, token_lp, ids.astype(np.int32), np.log(probs).astype(np.float32))


# ------------------------------------------------------------------------------- hypothesis texts
_FRAGMENTS = [
    "東京",
    "数学の答え",
    "한국어",
    "🙂",
    "👩‍💻",  # ZWJ sequence
    "🇫🇷",
    "é",
    "e\u0301",  # combining acute
    "  ",
    "\t\t",
    "\r\n",
    "\n\n\n",
    "   \n ",
    "12345",
    "3.14159",
    "-42",
    "0007",
    "def f(x):\n    return x**2",
    "if (a<=b) { c += 1; }",
    "<|eot_id|>",
    "</s>",
    "<end_of_turn>",
    "naïve café",
    " the",
    "The answer is 42.",
]


def unicode_text(max_pieces: int = 12):
    """Adversarial response texts: CJK, emoji, combining marks, whitespace runs, digits, code, CRLF,
    special-token strings. Excludes surrogates and U+2581 ('▁', which SentencePiece-style tokenizers
    cannot represent faithfully; tested separately)."""
    from hypothesis import strategies as st

    chars = st.characters(blacklist_categories=("Cs",), blacklist_characters="\u2581")
    piece = st.one_of(st.sampled_from(_FRAGMENTS), st.text(chars, min_size=1, max_size=6))
    return st.lists(piece, max_size=max_pieces).map("".join)


def stop_target(mapper, scores) -> float:
    """logsumexp of the realised teacher stop logprob and the other teacher stop ids in the top-k row:
    what the mapper's stop bridge should put on the student's stop token."""
    import numpy as np

    terms = [float(scores.token_logprobs[-1])]
    seen = {int(mapper.teacher.stop_token_to_append)}
    for tid, lp in zip(scores.topk_ids[-1].tolist(), scores.topk_logprobs[-1].tolist()):
        if tid in mapper.teacher.stop_ids and tid not in seen:
            seen.add(tid)
            terms.append(lp)
    return float(np.logaddexp.reduce(terms))
