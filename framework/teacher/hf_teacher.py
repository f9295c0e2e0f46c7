"""Teacher scoring with an exact Hugging Face ``transformers`` forward (the reference backend)."""

from __future__ import annotations

import numpy as np
import torch

from framework.teacher.base import check_request, check_top_k, empty_scores
from framework.types import TeacherRequest, TeacherScores


class HFTeacher:
    """``log_softmax`` of a transformers forward, in float32, one request at a time.

    Only the response positions' logits are materialised (``logits_to_keep``), so a large teacher
    vocabulary does not blow up memory. Slow next to vLLM but exact: the reference the vLLM and
    HTTP backends are tested against, and a fallback where vLLM is unavailable.
    """

    def __init__(
        self,
        model_path: str,
        *,
        device: str = "cpu",
        dtype: torch.dtype | str = torch.float32,
        trust_remote_code: bool = False,
    ):
        from transformers import AutoModelForCausalLM

        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        self.device = torch.device(device)
        model = AutoModelForCausalLM.from_pretrained(
            model_path, dtype=dtype, trust_remote_code=trust_remote_code
        )
        self.model = model.to(self.device)  # type: ignore[arg-type]  # transformers' stub types .to oddly
        self.model.eval()

    @torch.inference_mode()
    def logprobs_at(self, ids: np.ndarray, response_start: int) -> torch.Tensor:
        """float32[Rt, V]: ``log p(. | ids[:p])`` for p = response_start .. Lt-1."""
        rt = len(ids) - response_start
        input_ids = torch.as_tensor(ids, device=self.device).unsqueeze(0)
        # Logits at positions response_start-1 .. Lt-1 (the last one predicts past the end: dropped).
        logits = self.model(input_ids=input_ids, logits_to_keep=rt + 1).logits[0, :-1]
        return torch.log_softmax(logits.float(), dim=-1)

    def score(self, requests: list[TeacherRequest], top_k: int) -> list[TeacherScores]:
        check_top_k(top_k, int(self.model.config.get_text_config().vocab_size))
        out: list[TeacherScores] = []
        for req in requests:
            ids = check_request(req)
            start = req.response_start
            if start == len(ids):
                out.append(empty_scores(req.sample_id, top_k))
                continue
            logprobs_R_V = self.logprobs_at(ids, start)
            targets = torch.as_tensor(ids[start:], device=logprobs_R_V.device)
            token_lp = logprobs_R_V.gather(1, targets[:, None])[:, 0]
            topk_ids = topk_lp = None
            if top_k:
                values, indices = torch.topk(logprobs_R_V, top_k, dim=-1, sorted=True)
                topk_ids = indices.to(torch.int32).cpu().numpy()
                topk_lp = values.cpu().numpy().astype(np.float32)
            out.append(
                TeacherScores(req.sample_id, token_lp.cpu().numpy().astype(np.float32), topk_ids, topk_lp)
            )
        return out
