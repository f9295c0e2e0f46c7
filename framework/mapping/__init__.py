"""Token mapping between a student and a teacher tokenizer (docs/design.md §3): pure Python/NumPy.

Main entry point: :class:`TokenMapper` (``TokenMapper.from_paths(student, teacher)``), with
``teacher_requests`` / ``map_samples`` (batched) and ``teacher_request`` / ``map_sample``. The
per-tokenizer tables are cached on disk (:mod:`framework.mapping.cache`).
"""

from framework.mapping.align import Alignment, FlatAlignment, align_flat, align_tokens, boundary_pairs
from framework.mapping.credit import CREDIT_MODES, ChunkCredit, bridged_stop_logprob, chunk_credit
from framework.mapping.mapper import TokenMapper
from framework.mapping.render import (
    MissingChatTemplateError,
    StudentResponse,
    TokenizerInfo,
    check_ids,
    continuation_encoder,
    load_tokenizer_info,
    split_student_response,
    split_student_responses,
)
from framework.mapping.token_bytes import (
    TokenByteTable,
    UnsupportedTokenizerError,
    build_byte_table,
    detect_kind,
    gpt2_unicode_to_byte,
)
from framework.mapping.topk import ProjectionMap, build_projection_map, identity_projection, project_topk

__all__ = [
    "CREDIT_MODES",
    "Alignment",
    "ChunkCredit",
    "FlatAlignment",
    "MissingChatTemplateError",
    "ProjectionMap",
    "StudentResponse",
    "TokenByteTable",
    "TokenMapper",
    "TokenizerInfo",
    "UnsupportedTokenizerError",
    "align_flat",
    "align_tokens",
    "boundary_pairs",
    "bridged_stop_logprob",
    "build_byte_table",
    "build_projection_map",
    "check_ids",
    "chunk_credit",
    "continuation_encoder",
    "detect_kind",
    "gpt2_unicode_to_byte",
    "identity_projection",
    "load_tokenizer_info",
    "project_topk",
    "split_student_response",
    "split_student_responses",
]
