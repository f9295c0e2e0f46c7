"""The built-in tiny model zoo: tokenizers in the styles of three real families (Llama-3, Qwen,
Gemma), tiny causal LMs, a verifiable arithmetic task, trained teachers and weaker student
initialisations — all built locally (nothing is downloaded) and cached under
``$TOKENBRIDGE_HOME/zoo/<settings digest>`` (default home ``~/.cache/tokenbridge``).
"""

from tokenbridge_zoo.build import (
    build_zoo,
    model_path,
    read_manifest,
    remove_zoo,
    resolve_model,
    tokenizer_path,
    zoo_root,
)
from tokenbridge_zoo.families import FAMILIES

__all__ = [
    "FAMILIES",
    "build_zoo",
    "model_path",
    "read_manifest",
    "remove_zoo",
    "resolve_model",
    "tokenizer_path",
    "zoo_root",
]
