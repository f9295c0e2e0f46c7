"""The student as the learner sees it: a Hugging Face causal LM plus a chunked log-probability head.

`LogprobLM` runs the transformer body once to get final hidden states ``h`` and then evaluates the
LM head only at the positions that predict response tokens, ``chunk_size`` positions at a time, with
`framework.algo.logprobs.chunked_token_logprobs` (a custom autograd function that never holds more
than a ``[chunk, V]`` block of logits). Response token ``t`` of row ``b`` is predicted by the hidden
state at absolute position ``response_start_b - 1 + t``:

    log π_θ(y_{b,t}) = log softmax(W h_{b, s_b - 1 + t} / τ)[y_{b,t}]

No Ray, no DeepSpeed: the engine wraps this module.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from framework.algo.logprobs import chunked_token_logprobs

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# Config fields that change the logits after the LM head; the chunked head does not apply them.
_UNSUPPORTED_HEAD_FIELDS = ("logit_scale", "output_multiplier_scale")


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"float32" | "bfloat16" | "float16"`` (or a torch dtype) as a torch dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def load_student(
    model_path: str | Path,
    *,
    dtype: str | torch.dtype = "float32",
    trust_remote_code: bool = False,
    gradient_checkpointing: bool = False,
    attn_implementation: str | None = "sdpa",
) -> PreTrainedModel:
    """Load a causal LM from a local Hugging Face directory for training.

    ``dtype`` is the dtype the weights are loaded in (float32 on CPU; on GPU the DeepSpeed engine casts
    to bf16 itself and keeps float32 master weights, so loading float32 is right there too).
    ``gradient_checkpointing`` recomputes each decoder layer in backward (non-reentrant checkpoints).
    """
    path = Path(model_path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"model_path {str(path)!r} is not a Hugging Face model directory (no config.json); pass a local "
            "directory written by save_pretrained (e.g. what framework.models.resolve_model_dir gives for zoo:NAME)"
        )
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    check_logprob_head(config)
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=resolve_dtype(dtype), trust_remote_code=trust_remote_code, **kwargs
    )
    model.config.use_cache = False
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    return model


def check_logprob_head(config) -> None:
    """Raise for models whose logits are not ``lm_head(h)`` or its soft-cap (e.g. logit scaling)."""
    for name in _UNSUPPORTED_HEAD_FIELDS:
        value = getattr(config, name, None)
        if value not in (None, 1.0, 0.0):
            raise NotImplementedError(
                f"model config sets {name}={value}: the learner's chunked LM head computes logits as "
                "W h + b only; add this transform to framework/learner/model.py before training this model"
            )


def lm_head_of(model: PreTrainedModel) -> nn.Linear:
    head = model.get_output_embeddings()
    if not isinstance(head, nn.Linear):
        raise NotImplementedError(
            f"the LM head of {type(model).__name__} is {type(head).__name__}, not nn.Linear; "
            "the chunked logprob head needs a plain linear output layer"
        )
    return head


class LogprobLM(nn.Module):
    """``forward`` returns the student's per-token outputs in response coordinates ``[B, T]``.

    Returns a plain tuple ``(logprobs_B_T, entropy_B_T, support_logprobs_B_T_S | None)`` so that
    DeepSpeed ZeRO-3's hooks see every output tensor. The LM head weight is used outside the head's
    own ``forward``; under ZeRO-3 the engine registers it as an external parameter of this module.
    """

    def __init__(self, model: PreTrainedModel, *, chunk_size: int = 1024, temperature: float = 1.0):
        super().__init__()
        if chunk_size <= 0:
            raise ValueError(f"logprob chunk_size must be positive, got {chunk_size}")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.model = model
        self.chunk_size = chunk_size
        self.temperature = temperature
        # Gemma 2 style κ·tanh(logits/κ) on the output logits (None: plain lm_head)
        self.softcap = getattr(model.config, "final_logit_softcapping", None) or None

    @property
    def body(self) -> nn.Module:
        return self.model.get_decoder()

    @property
    def head(self) -> nn.Linear:
        return lm_head_of(self.model)

    def forward(
        self,
        input_ids_B_L: torch.Tensor,
        attention_mask_B_L: torch.Tensor,
        hidden_index_B_T: torch.Tensor,
        target_ids_B_T: torch.Tensor,
        token_mask_B_T: torch.Tensor,
        support_ids_B_T_S: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        out = self.body(input_ids=input_ids_B_L, attention_mask=attention_mask_B_L, use_cache=False)
        hidden_B_L_H = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        H = hidden_B_L_H.shape[-1]
        index_B_T_H = hidden_index_B_T.unsqueeze(-1).expand(-1, -1, H)
        hidden_B_T_H = torch.gather(hidden_B_L_H, 1, index_B_T_H)
        head = self.head
        student = chunked_token_logprobs(
            hidden_B_T_H,
            head.weight,
            target_ids_B_T,
            bias_V=head.bias,
            support_ids_B_T_S=support_ids_B_T_S,
            token_mask_B_T=token_mask_B_T,
            chunk_size=self.chunk_size,
            temperature=self.temperature,
            softcap=self.softcap,
        )
        assert student.entropy_B_T is not None  # chunked_token_logprobs always computes it
        return student.logprobs_B_T, student.entropy_B_T, student.support_logprobs_B_T_S
