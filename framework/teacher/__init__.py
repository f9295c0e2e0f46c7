"""Teacher scoring backends behind one protocol (no Ray here; ``framework/actors`` wraps them).

Backends import their heavy dependencies lazily: ``make_teacher("http", ...)`` needs neither torch
nor vLLM, ``make_teacher("hf", ...)`` does not import vLLM.
"""

from __future__ import annotations

from typing import Any

from framework.teacher.base import TeacherBackend
from framework.teacher.batcher import TokenBudgetBatcher

BACKENDS = ("vllm", "hf", "http")


def make_teacher(backend: str, **kwargs: Any) -> TeacherBackend:
    """``backend``: "vllm" (VllmTeacher), "hf" (HFTeacher) or "http" (HttpTeacher); ``kwargs`` go to
    the backend's constructor."""
    if backend == "vllm":
        from framework.teacher.vllm_teacher import VllmTeacher

        return VllmTeacher(**kwargs)
    if backend == "hf":
        from framework.teacher.hf_teacher import HFTeacher

        return HFTeacher(**kwargs)
    if backend == "http":
        from framework.teacher.http_teacher import HttpTeacher

        return HttpTeacher(**kwargs)
    raise ValueError(f"unknown teacher backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def __getattr__(name: str):  # lazy re-exports, so importing the package stays cheap
    if name == "VllmTeacher":
        from framework.teacher.vllm_teacher import VllmTeacher

        return VllmTeacher
    if name == "HFTeacher":
        from framework.teacher.hf_teacher import HFTeacher

        return HFTeacher
    if name in ("HttpTeacher", "TeacherHTTPError"):
        from framework.teacher import http_teacher

        return getattr(http_teacher, name)
    raise AttributeError(name)


__all__ = [
    "BACKENDS",
    "HFTeacher",
    "HttpTeacher",
    "TeacherBackend",
    "TeacherHTTPError",
    "TokenBudgetBatcher",
    "VllmTeacher",
    "make_teacher",
]
