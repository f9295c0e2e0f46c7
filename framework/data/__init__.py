"""Datasets (zoo task, JSONL/Parquet prompt files), validation and student prompt rendering."""

from framework.data.prompts import (
    DataError,
    LoadReport,
    PromptCursor,
    PromptQueue,
    load_prompt_file,
    load_prompts,
)

__all__ = ["DataError", "LoadReport", "PromptCursor", "PromptQueue", "load_prompt_file", "load_prompts"]
