"""Quick supervised fine-tuning of the zoo models on the arithmetic task, and greedy evaluation.

SFT loss (assistant tokens only, the end-of-turn token included so the model learns to stop):

    L(θ) = − (1 / |A|) Σ_{t ∈ A} log p_θ(x_t | x_<t)

over the assistant positions A of a batch, less the tokens of a practice response's slips (a wrong
intermediate value that the response then corrects, ``framework.data.arith.practice_response``): the
model is taught what follows a slip, never to make one. Plain torch, AdamW, linear warm-up then cosine decay.
Each conversation is tokenized the way a chat model sees it: prompt = chat template with the
generation prompt; response = the rest of the full rendered conversation up to and including the
first stop token.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from framework.data.arith import make_problems, practice_response, reference_response, verify
from framework.types import Prompt


@dataclass
class EncodedExample:
    prompt_ids: list[int]
    response_ids: list[int]  # ends with a stop id
    trained: list[bool] | None = None  # per response token: in the loss (None: every one)


def render_prompt(tokenizer: PreTrainedTokenizerBase, prompt: Prompt) -> str:
    text = tokenizer.apply_chat_template(prompt.messages, add_generation_prompt=True, tokenize=False)
    if not isinstance(text, str):  # tokenize=False returns the text
        raise TypeError(f"apply_chat_template returned {type(text).__name__}, expected str")
    return text


def encode_examples(
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[Prompt],
    responses: list[str],
    stop_ids: list[int],
    untrained_spans: list[list[tuple[int, int]]] | None = None,
) -> list[EncodedExample]:
    """Tokenize each (prompt, response) conversation (texts rendered one by one, tokenized in a batch).

    ``untrained_spans`` (character ranges of each response): every token that overlaps one is kept out
    of the loss, found through the fast tokenizer's offsets into the rendered conversation."""
    prompt_texts = [render_prompt(tokenizer, p) for p in prompts]
    full_texts = [
        str(tokenizer.apply_chat_template([*p.messages, {"role": "assistant", "content": r}], tokenize=False))
        for p, r in zip(prompts, responses)
    ]
    prompt_ids_list = tokenizer(prompt_texts, add_special_tokens=False)["input_ids"]
    full = tokenizer(full_texts, add_special_tokens=False, return_offsets_mapping=untrained_spans is not None)
    full_ids_list = full["input_ids"]
    stop_set = set(stop_ids)
    examples = []
    for row, (prompt, prompt_ids, full_ids) in enumerate(zip(prompts, prompt_ids_list, full_ids_list)):
        if full_ids[: len(prompt_ids)] != prompt_ids:
            raise ValueError(
                f"prompt {prompt.prompt_id!r}: the tokenized prompt is not a prefix of the tokenized "
                "conversation (a merge crosses the prompt/response boundary); change the chat template"
            )
        response_ids = full_ids[len(prompt_ids) :]
        stop_positions = [j for j, token in enumerate(response_ids) if token in stop_set]
        if not stop_positions:
            raise ValueError(f"prompt {prompt.prompt_id!r}: rendered response has no stop token {stop_ids}")
        response_ids = response_ids[: stop_positions[0] + 1]
        trained = None
        if untrained_spans is not None and untrained_spans[row]:
            at = full_texts[row].rindex(responses[row], len(prompt_texts[row]) - 1)
            offsets = full["offset_mapping"][row][len(prompt_ids) : len(prompt_ids) + len(response_ids)]
            trained = [
                not any(a < at + end and at + start < b for start, end in untrained_spans[row])
                for a, b in offsets
            ]
        examples.append(EncodedExample(prompt_ids, response_ids, trained))
    return examples


def collate(examples: list[EncodedExample], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ``input_ids_B_L``, ``attention_mask_B_L`` and ``labels_B_L`` (-100 = no loss)."""
    lengths = [len(e.prompt_ids) + len(e.response_ids) for e in examples]
    width = max(lengths)
    input_ids_B_L = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels_B_L = torch.full((len(examples), width), -100, dtype=torch.long)
    attention_mask_B_L = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (example, length) in enumerate(zip(examples, lengths)):
        ids = example.prompt_ids + example.response_ids
        input_ids_B_L[row, :length] = torch.tensor(ids)
        attention_mask_B_L[row, :length] = 1
        labels_B_L[row, len(example.prompt_ids) : length] = torch.tensor(
            [
                t if example.trained is None or example.trained[j] else -100
                for j, t in enumerate(example.response_ids)
            ]
        )
    return input_ids_B_L, attention_mask_B_L, labels_B_L


def sft_loss(model: PreTrainedModel, input_ids_B_L, attention_mask_B_L, labels_B_L) -> torch.Tensor:
    """Mean next-token cross-entropy over labelled positions.

    The output head runs only on the N positions that carry a label (position t predicts token t+1),
    which saves its FLOPs on prompt and padding positions.
    """
    hidden_B_L_H = model.get_decoder()(
        input_ids=input_ids_B_L, attention_mask=attention_mask_B_L
    ).last_hidden_state
    targets_B_Lm1 = labels_B_L[:, 1:]
    keep_B_Lm1 = targets_B_Lm1 != -100
    logits_N_V = model.get_output_embeddings()(hidden_B_L_H[:, :-1][keep_B_Lm1])
    return F.cross_entropy(logits_N_V.float(), targets_B_Lm1[keep_B_Lm1])


def _lr_factor(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))


@torch.no_grad()
def greedy_generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[Prompt],
    stop_ids: list[int],
    max_new_tokens: int,
    batch_size: int = 128,
) -> list[str]:
    """Greedy responses (special tokens removed) with HF ``generate`` on left-padded batches."""
    model.eval()
    previous_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    texts = []
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = [render_prompt(tokenizer, p) for p in prompts[start : start + batch_size]]
            batch = tokenizer(chunk, add_special_tokens=False, padding=True, return_tensors="pt").to(
                model.device
            )
            output_B_L = model.generate(  # type: ignore[operator]  # (mis-typed as a Tensor in the stubs)
                **batch,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=stop_ids,
                pad_token_id=tokenizer.pad_token_id,
            )
            new_tokens = output_B_L[:, batch["input_ids"].shape[1] :]
            texts += tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    finally:
        tokenizer.padding_side = previous_side
    return texts


def accuracy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[Prompt],
    stop_ids: list[int],
    max_new_tokens: int,
) -> float:
    """Share of prompts whose greedy response passes the task verifier."""
    responses = greedy_generate(model, tokenizer, prompts, stop_ids, max_new_tokens)
    return sum(verify(text, p.answer or "") for text, p in zip(responses, prompts)) / max(1, len(prompts))


def accuracy_by_task(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[Prompt],
    stop_ids: list[int],
    max_new_tokens: int,
) -> dict[str, float]:
    """``accuracy`` per task of the prompts (``meta["task"]``); a mixed model is judged per domain."""
    responses = greedy_generate(model, tokenizer, prompts, stop_ids, max_new_tokens)
    passed: dict[str, list[bool]] = {}
    for text, prompt in zip(responses, prompts):
        passed.setdefault(str(prompt.meta.get("task", "arith")), []).append(verify(text, prompt.answer or ""))
    return {task: sum(flags) / len(flags) for task, flags in sorted(passed.items())}


@torch.no_grad()
def recheck_probe(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, n: int = 256
) -> dict[str, float]:
    """Does a chain-task model know *when* to recheck? The mean of

        p(" Wait" | prompt, "a op b = v.")   for v = right + 1, right - 1, right

    over the first step of ``n`` held-out chain problems (keys ``"+1"``, ``"-1"``, ``"right"``). A model
    that learned only the practice responses' slip rate says "Wait" equally often after all three;
    one that checks the value it just read says it after the two slips and not after the right one.
    """
    was_training = model.training
    model.eval()
    problems = make_problems(n, seed=0, split="test", task="chain")
    wait = tokenizer(" Wait", add_special_tokens=False)["input_ids"][0]
    previous_side, tokenizer.padding_side = tokenizer.padding_side, "left"
    out = {}
    try:
        for key, delta in (("+1", 1), ("-1", -1), ("right", 0)):
            texts = []
            for p in problems:
                (a, b), op = p.meta["operands"][:2], p.meta["ops"][0]
                value = (a + b if op == "+" else a - b) + delta
                texts.append(f"{render_prompt(tokenizer, p)}{a} {op} {b} = {value}.")
            batch = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt").to(
                model.device
            )
            probs = model(**batch).logits[:, -1].float().softmax(-1)[:, wait]
            out[key] = round(probs.mean().item(), 4)
    finally:
        tokenizer.padding_side = previous_side
        model.train(was_training)
    return out


@dataclass
class TrainResult:
    steps: int
    final_loss: float
    val_accuracy: float


def train_sft(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    train_prompts: list[Prompt],
    val_prompts: list[Prompt],
    stop_ids: list[int],
    *,
    lr: float,
    batch_size: int,
    warmup_steps: int,
    min_steps: int,
    max_steps: int,
    eval_every: int,
    stop_at_val_accuracy: float,
    max_new_tokens: int,
    seed: int,
    slip_rate: float = 0.0,
    on_step: Callable[[int, float], None] | None = None,
    on_eval: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """SFT on reference responses (practice responses that slip and correct at ``slip_rate``, the slips
    out of the loss); stops early once greedy val accuracy reaches the target."""
    if slip_rate > 0:
        slip_rng = random.Random(f"slips/{seed}")  # its own stream: the batch order stays seed's
        practice = [practice_response(p, slip_rng, slip_rate) for p in train_prompts]
        examples = encode_examples(
            tokenizer,
            train_prompts,
            [text for text, _ in practice],
            stop_ids,
            [spans for _, spans in practice],
        )
    else:
        examples = encode_examples(
            tokenizer, train_prompts, [reference_response(p) for p in train_prompts], stop_ids
        )
    pad_id = tokenizer.pad_token_id
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: _lr_factor(step, warmup_steps, max_steps)
    )
    rng = random.Random(seed)
    loss_value, val_accuracy, step = float("nan"), 0.0, 0
    for step in range(1, max_steps + 1):
        model.train()
        batch = (t.to(model.device) for t in collate(rng.sample(examples, batch_size), pad_id))
        loss = sft_loss(model, *batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        loss_value = loss.item()
        if on_step is not None:
            on_step(step, loss_value)
        if step >= min_steps and (step % eval_every == 0 or step == max_steps):
            val_accuracy = accuracy(model, tokenizer, val_prompts, stop_ids, max_new_tokens)
            if on_eval is not None:
                on_eval(step, val_accuracy)
            if val_accuracy >= stop_at_val_accuracy:
                break
    model.eval()
    return TrainResult(steps=step, final_loss=loss_value, val_accuracy=val_accuracy)


__all__ = [
    "EncodedExample",
    "TrainResult",
    "accuracy",
    "accuracy_by_task",
    "collate",
    "encode_examples",
    "greedy_generate",
    "recheck_probe",
    "render_prompt",
    "sft_loss",
    "train_sft",
]
