"""The three tokenizer families of the zoo: special tokens and chat templates in the style of the real
Llama-3, Qwen2 (ChatML) and Gemma releases. The templates are written for this project (Jinja, as
Hugging Face ``apply_chat_template`` expects), they mimic the published formats' layout only.
"""

from __future__ import annotations

from dataclasses import dataclass

FAMILIES: tuple[str, ...] = ("llama3", "qwen", "gemma")

# GPT-2/Llama-3 style pre-tokenization: contractions, letter runs with one leading non-letter,
# digit groups of up to 3, punctuation runs, newlines, whitespace runs (a trailing space stays
# attached to the next word).
LLAMA3_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Qwen2 style: the same, but every digit is its own pre-token.
QWEN_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

_LLAMA3_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- endif %}"
)

_QWEN_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- endif %}"
)

# Gemma has no system role: a system message is folded into the first user turn.
_GEMMA_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if messages[0]['role'] == 'system' %}"
    "{%- set first_user_prefix = messages[0]['content'] + '\\n\\n' %}"
    "{%- set loop_messages = messages[1:] %}"
    "{%- else %}"
    "{%- set first_user_prefix = '' %}"
    "{%- set loop_messages = messages %}"
    "{%- endif %}"
    "{%- for message in loop_messages %}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif %}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{- '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '')"
    " + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<start_of_turn>model\\n' }}"
    "{%- endif %}"
)


@dataclass(frozen=True)
class FamilyStyle:
    """What distinguishes one family's tokenizer: its special tokens and chat template.

    ``special_tokens`` lists every control token in id order; ``specials_first`` puts them at the
    start of the vocabulary (SentencePiece style) instead of after the learned tokens.
    """

    family: str
    kind: str  # "bytelevel" (GPT-2 style, Ġ = space) or "metaspace" (SentencePiece style, ▁ = space)
    special_tokens: tuple[str, ...]
    specials_first: bool
    bos_token: str | None
    eos_token: str
    eot_token: str  # end-of-turn token the chat template closes every turn with
    pad_token: str
    unk_token: str | None
    assistant_header: str  # what add_generation_prompt=True appends
    chat_template: str

    @property
    def stop_tokens(self) -> tuple[str, ...]:
        """Generation stops on the end-of-turn token and on EOS (generation_config ``eos_token_id``)."""
        return (self.eot_token, self.eos_token)


STYLES: dict[str, FamilyStyle] = {
    "llama3": FamilyStyle(
        family="llama3",
        kind="bytelevel",
        special_tokens=(
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|reserved_special_token_0|>",
            "<|reserved_special_token_1|>",
            "<|finetune_right_pad_id|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eom_id|>",
            "<|eot_id|>",
        ),
        specials_first=False,
        bos_token="<|begin_of_text|>",
        eos_token="<|end_of_text|>",
        eot_token="<|eot_id|>",
        pad_token="<|finetune_right_pad_id|>",
        unk_token=None,
        assistant_header="<|start_header_id|>assistant<|end_header_id|>\n\n",
        chat_template=_LLAMA3_TEMPLATE,
    ),
    "qwen": FamilyStyle(
        family="qwen",
        kind="bytelevel",
        special_tokens=("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        specials_first=False,
        bos_token=None,
        eos_token="<|endoftext|>",
        eot_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        assistant_header="<|im_start|>assistant\n",
        chat_template=_QWEN_TEMPLATE,
    ),
    "gemma": FamilyStyle(
        family="gemma",
        kind="metaspace",
        special_tokens=("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"),
        specials_first=True,
        bos_token="<bos>",
        eos_token="<eos>",
        eot_token="<end_of_turn>",
        pad_token="<pad>",
        unk_token="<unk>",
        assistant_header="<start_of_turn>model\n",
        chat_template=_GEMMA_TEMPLATE,
    ),
}


def style(family: str) -> FamilyStyle:
    if family not in STYLES:
        raise ValueError(f"unknown tokenizer family {family!r}; use one of {FAMILIES}")
    return STYLES[family]


__all__ = ["FAMILIES", "LLAMA3_SPLIT_PATTERN", "QWEN_SPLIT_PATTERN", "STYLES", "FamilyStyle", "style"]
