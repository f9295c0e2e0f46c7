"""Start-up checks: what can be checked on the driver is checked before Ray or any actor starts.

Without them a broken input surfaces only once the actors are up (minutes on a real pair), inside an
actor's traceback. :func:`check_before_start` runs after the model folders are resolved
(:func:`framework.models.resolve_pair`: folders, weights, safetensors) and the prompts are loaded
(:func:`framework.data.load_prompts`: record format), and checks:

1. **Tokenizers and chat templates.** Each side's tokenizer loads from its local folder as a fast
   tokenizer (the token mapping needs ``tokenizer.json``), has a chat template, and that template
   renders the first train prompt the way the run will render it: the student's with
   :func:`framework.data.chat.render_prompt_ids` (what the rollout engines call), the teacher's as
   :meth:`framework.mapping.render.TokenizerInfo.render_prompt_ids` does (template text, then the
   backend tokenizer without added special tokens; ``tests/unit/test_preflight.py`` checks that the
   two agree). The student must also have a stop token (the rollout engines refuse to start without
   one). An http teacher's tokenizer is local too, so it is checked the same way.
2. **Prompt lengths.** Every train and eval prompt is rendered for both sides (one batched
   tokenization per side) and measured against the limits the run applies: the student prompt against
   ``data.max_prompt_tokens`` (the rollout skips longer ones; start-up validation keeps it within
   ``rollout.max_model_len - rollout.max_new_tokens``); with the vLLM teacher, the teacher prompt plus
   a response of ``rollout.max_new_tokens`` against ``teacher.max_model_len`` (the teacher refuses a
   sequence that leaves no room for its one generated token); for ``algo=sft_teacher`` the train
   prompts are written by the teacher's engines, which skip teacher prompts over
   ``data.max_prompt_tokens``. A prompt the chat template rejects (``raise_exception``) is skipped at
   run time like a too-long one. When some prompts do not fit, one warning line per reason says how
   many and the longest; when no train prompt (or no eval prompt) fits, a :class:`ConfigError`
   names the key to raise. The hf and http teachers have no length limit known here. With several
   teachers (``teachers:``), each is checked on the prompts routed to it, against its own options.
3. **The output folder** is created (with its parents) and a probe file is written and removed in it.

Every refusal is a :class:`~framework.config.ConfigError` naming the config key and the fix, which
``tokenbridge-train`` prints as one line before exiting with status 2. Preference runs (``dpo`` /
``ctpd``) score offline pairs whose responses are in the data: they get checks 1 and 3 only.
No Ray, vLLM or DeepSpeed is imported here.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from framework.config import Config, ConfigError, TeacherEntry
from framework.data.chat import render_prompt_ids, stop_token_ids
from framework.data.prompts import DataError
from framework.data.routing import teacher_slots
from framework.types import Message, Prompt

_TEMPLATE_FILES = "a `chat_template.jinja` file or `chat_template` in tokenizer_config.json"


def _one_line(err: BaseException, limit: int = 300) -> str:
    message = " ".join(str(err).split())
    text = f"{type(err).__name__}: {message}" if message else type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _rejected_by_template(err: BaseException) -> bool:
    """A template's ``raise_exception(...)``: it rejects this conversation, and the run skips the sample
    as a data error (``framework.actors.failures.classify`` reads it the same way)."""
    return type(err).__name__ == "TemplateError" and type(err).__module__.startswith("jinja2")


@dataclass
class _Side:
    """One model's tokenizer as the run uses it."""

    key: str  # pair.student / pair.teacher
    role: str  # student / teacher
    path: str
    tokenizer: Any

    @classmethod
    def load(cls, key: str, role: str, path: str, trust_remote_code: bool) -> _Side:
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        except Exception as err:  # a broken or missing tokenizer file: transformers raises many types
            raise ConfigError(
                key, f"the {role} tokenizer in {path} cannot be loaded ({_one_line(err)})",
                "give a folder with the model's tokenizer files (tokenizer.json, tokenizer_config.json), "
                "or set pair.trust_remote_code=true if its tokenizer needs its own code and you trust it",
            ) from None  # fmt: skip
        if getattr(tokenizer, "backend_tokenizer", None) is None:
            raise ConfigError(
                key, f"the {role} tokenizer in {path} is a slow (Python) tokenizer; the token mapping needs "
                "a fast one (tokenizer.json)",
                "load it once with transformers (use_fast=True) and save_pretrained it into the folder",
            )  # fmt: skip
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError(
                key, f"the {role} tokenizer in {path} has no chat template, so prompts cannot be rendered "
                "for it",
                f"use a chat/instruct model, or add its chat template ({_TEMPLATE_FILES})",
            )  # fmt: skip
        return cls(key, role, path, tokenizer)

    def render_text(self, messages: list[Message]) -> str:
        text = self.tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
        if not isinstance(text, str):
            raise TypeError(f"the chat template returned {type(text).__name__}, not text")
        return text

    def render_ids(self, messages: list[Message]) -> list[int]:
        """One prompt exactly as the run renders it for this side."""
        if self.role == "student":  # the rollout engines' function
            return render_prompt_ids(self.tokenizer, messages, sys.maxsize).tolist()
        # framework.mapping.render.TokenizerInfo.render_prompt_ids (its byte tables take seconds to build)
        text = self.render_text(messages)
        return list(self.tokenizer.backend_tokenizer.encode(text, add_special_tokens=False).ids)

    def count_tokens(self, texts: list[str]) -> np.ndarray:
        """Token counts of rendered prompts, batched: the student through the tokenizer call that
        ``apply_chat_template(tokenize=True)`` makes, the teacher through its backend as the mapping does."""
        if not texts:
            return np.zeros(0, np.int64)
        if self.role == "student":
            ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
            return np.fromiter((len(x) for x in ids), np.int64, len(ids))
        encodings = self.tokenizer.backend_tokenizer.encode_batch_fast(texts, add_special_tokens=False)
        return np.fromiter((len(e.ids) for e in encodings), np.int64, len(encodings))

    def check_sample(self, prompt: Prompt) -> None:
        try:
            ids = self.render_ids(prompt.messages)
        except Exception as err:  # DataError included (render_prompt_ids)
            raise ConfigError(
                self.key, f"the {self.role}'s chat template fails on the first train prompt "
                f"(id {prompt.prompt_id!r}): {_one_line(err)}",
                f"fix the chat template in {self.path} ({_TEMPLATE_FILES}) or the prompts in data.train",
            ) from None  # fmt: skip
        if not ids:
            raise ConfigError(
                self.key, f"the {self.role}'s chat template renders the first train prompt "
                f"(id {prompt.prompt_id!r}) as no tokens at all",
                f"fix the chat template in {self.path} ({_TEMPLATE_FILES})",
            )  # fmt: skip

    def lengths(self, prompts: Sequence[Prompt]) -> tuple[np.ndarray, list[tuple[Prompt, str]]]:
        """Token count of each prompt's rendering (-1 where the template rejects it) and the rejections.

        A template error other than a rejection fails every sample it meets at run time (the run
        stops), so it is a :class:`ConfigError` here.
        """
        texts, where, rejected = [], [], []
        for i, prompt in enumerate(prompts):
            try:
                texts.append(self.render_text(prompt.messages))
                where.append(i)
            except Exception as err:
                if not _rejected_by_template(err):
                    raise ConfigError(
                        self.key, f"the {self.role}'s chat template fails on prompt {prompt.prompt_id!r}: "
                        f"{_one_line(err)}",
                        f"fix the chat template in {self.path} or that prompt in data.train / data.eval",
                    ) from None  # fmt: skip
                rejected.append((prompt, _one_line(err)))
        counts = np.full(len(prompts), -1, np.int64)
        counts[np.asarray(where, np.int64)] = self.count_tokens(texts)
        return counts, rejected


@dataclass
class _Limit:
    """One reason a prompt cannot be used, evaluated for every prompt of train + eval."""

    key: str  # the config key that sets the limit
    hits: np.ndarray  # bool per prompt: this reason drops it
    lengths: np.ndarray | None  # the token counts compared with the limit (None: not a length)
    unit: str  # what ``lengths`` counts
    condition: str  # "<prompts> {condition}"
    consequence: str  # what the run does with them
    fix: str

    def extent(self, mask: np.ndarray, shortest: bool = False) -> str:
        if self.lengths is None:
            return ""
        values = self.lengths[self.hits & mask]
        low, high = int(values.min()), int(values.max())
        if shortest and low == high:
            return f" ({low} {self.unit})"
        return (
            f" (shortest: {low}, longest: {high} {self.unit})"
            if shortest
            else f" (longest: {high} {self.unit})"
        )


def _limits(
    cfg: Config, student: _Side, teachers: list[_Teacher], prompts: list[Prompt], n_train: int
) -> list[_Limit]:
    s_counts, s_rejected = student.lengths(prompts)
    new = cfg.rollout.max_new_tokens
    # validate() keeps data.max_prompt_tokens + max_new_tokens <= rollout.max_model_len; min() all the same
    student_limit = min(cfg.data.max_prompt_tokens, cfg.rollout.max_model_len - new)
    longer = "raise data.max_prompt_tokens (and rollout.max_model_len with it) or shorten the prompts"
    limits = [
        _Limit(
            "data.max_prompt_tokens", s_counts > student_limit, s_counts, "student tokens",
            f"render to more than data.max_prompt_tokens={student_limit} student tokens",
            "the rollout skips them as data errors (skipped_prompt_too_long)", longer,
        )
    ]  # fmt: skip
    if s_rejected:
        limits.append(_rejected(student, s_counts, s_rejected))
    in_train = np.arange(len(prompts)) < n_train
    for teacher in teachers:
        t_counts, t_rejected = teacher.side.lengths(prompts)
        t_counts = np.where(teacher.routed, t_counts, 0)  # a prompt routed elsewhere is not its concern
        still = {prompts[i].prompt_id for i in np.flatnonzero(t_counts < 0)}
        t_rejected = [r for r in t_rejected if r[0].prompt_id in still]
        if cfg.algo.teacher_generates:  # the teacher's engines write the train responses
            limits.append(
                _Limit(
                    "data.max_prompt_tokens", in_train & (t_counts > student_limit), t_counts, "teacher tokens",
                    f"render to more than data.max_prompt_tokens={student_limit} teacher tokens",
                    "the teacher's engines skip them as data errors", longer,
                )
            )  # fmt: skip
        if teacher.settings.backend == "vllm":
            # the teacher scores prompt + response and must fit one generated token: Lt <= max_model_len - 1
            max_len, key = teacher.settings.max_model_len, f"{teacher.key}.max_model_len"
            scored = ~in_train if cfg.algo.teacher_generates else np.ones(len(prompts), bool)
            limits.append(
                _Limit(
                    key, scored & (t_counts > max_len - 1 - new), t_counts, "teacher tokens",
                    f"with a response of rollout.max_new_tokens={new} tokens exceed {key}={max_len}",
                    "their samples that do not fit are skipped as data errors (skipped_teacher_input_too_long)",
                    f"raise {key} (up to what the teacher model supports), lower "
                    "rollout.max_new_tokens, or shorten the prompts",
                )
            )  # fmt: skip
        if t_rejected:
            limits.append(_rejected(teacher.side, t_counts, t_rejected))
    return limits


def _rejected(side: _Side, counts: np.ndarray, rejected: list) -> _Limit:
    return _Limit(
        side.key, counts < 0, None, "",
        f"are rejected by the {side.role}'s chat template (first: {rejected[0][0].prompt_id!r}: {rejected[0][1]})",
        "they are skipped as data errors",
        f"fix the chat template in {side.path} or those prompts in data.train / data.eval",
    )  # fmt: skip


@dataclass
class _Teacher:
    side: _Side
    settings: TeacherEntry
    key: str  # its options' prefix: teacher / teachers.<i>
    routed: np.ndarray  # bool[prompts], the prompts it scores


def _check_prompt_lengths(
    cfg: Config,
    student: _Side,
    teachers: list[_Side],
    train_prompts: list[Prompt],
    eval_prompts: list[Prompt],
) -> list[str]:
    """Warning lines for prompts some limit drops; ConfigError when none of train (or of eval) is left."""
    prompts = list(train_prompts) + list(eval_prompts)
    entries = cfg.teacher_list()
    slots = np.asarray(
        teacher_slots(prompts, cfg.data.route_field, [t.route for t in entries], [t.weight for t in entries])
    )
    routed = [
        _Teacher(side, entry, cfg.teacher_key(k), slots == k)
        for k, (side, entry) in enumerate(zip(teachers, entries))
    ]
    limits = _limits(cfg, student, routed, prompts, len(train_prompts))
    dropped = np.zeros(len(prompts), bool)
    for limit in limits:
        dropped |= limit.hits
    is_train = np.arange(len(prompts)) < len(train_prompts)
    for split, mask in (("train", is_train), ("eval", ~is_train)):
        total = int(mask.sum())
        if not total or not dropped[mask].all():
            continue
        counted = sorted(((int((limit.hits & mask).sum()), limit) for limit in limits), key=lambda h: -h[0])
        worst = counted[0][1]
        if counted[0][0] == total:  # one reason drops them all
            problem = f"all {total} {split} prompts {worst.condition}{worst.extent(mask, shortest=True)}"
        else:
            problem = f"none of the {total} {split} prompts can be used: " + "; ".join(
                f"{n} {limit.condition}{limit.extent(mask)}" for n, limit in counted if n
            )
        raise ConfigError(worst.key, problem, worst.fix)
    everything = np.ones(len(prompts), bool)
    return [
        f"[tokenbridge] warning: {int(limit.hits.sum())} of {len(prompts)} prompts {limit.condition}"
        f"{limit.extent(everything)}; {limit.consequence}"
        for limit in limits
        if limit.hits.any()
    ]


def check_output_dir(output_dir: str | Path) -> None:
    """Create ``output_dir`` (and its parents) and write and remove a probe file in it."""
    path = Path(output_dir)
    probe = path / f".tokenbridge-write-probe-{os.getpid()}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as err:
        what = err.strerror or type(err).__name__
        where = f" ({err.filename})" if err.filename and str(err.filename) != str(path) else ""
        raise ConfigError(
            "trainer.output_dir", f"{path} cannot be created or written: {what}{where}",
            "set trainer.output_dir (or hydra.run.dir when it is auto) to a folder you can write to",
        ) from None  # fmt: skip


def check_before_start(
    cfg: Config,
    student_dir: str,
    teacher_dirs: str | list[str],
    train_prompts: list[Prompt],
    eval_prompts: list[Prompt],
    output_dir: str | Path,
) -> list[str]:
    """Run the checks of the module doc; raise :class:`ConfigError` on the first failure.

    ``teacher_dirs``: one folder per teacher of :meth:`Config.teacher_list` (a str: the one teacher). Returns the warning lines
    (prompts that will be skipped) for the caller to ``say`` once the run log is open.
    """
    trust = cfg.pair.trust_remote_code
    student = _Side.load("pair.student", "student", student_dir, trust)
    teachers = []
    for k, teacher_dir in enumerate([teacher_dirs] if isinstance(teacher_dirs, str) else teacher_dirs):
        key = f"teachers.{k}.model" if cfg.teachers else "pair.teacher"
        if teacher_dir == student_dir:
            teachers.append(_Side(key, "teacher", teacher_dir, student.tokenizer))
        else:
            teachers.append(_Side.load(key, "teacher", teacher_dir, trust))
    if not train_prompts:
        raise ConfigError("data.train", "no train prompts", "point data.train at prompts (or zoo:arith)")
    sample = train_prompts[0]
    student.check_sample(sample)
    for teacher in teachers:
        teacher.check_sample(sample)
    try:
        stop_token_ids(student.tokenizer, student_dir)
    except DataError as err:
        problem, _, fix = str(err).partition(". Fix: ")
        raise ConfigError("pair.student", problem, fix or "set eos_token in tokenizer_config.json") from None
    warnings: list[str] = []
    if not cfg.algo.trains_on_pairs:
        warnings = _check_prompt_lengths(cfg, student, teachers, train_prompts, eval_prompts)
    check_output_dir(output_dir)
    return warnings


__all__ = ["check_before_start", "check_output_dir"]
