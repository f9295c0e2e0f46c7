"""The student's vLLM rollout engine (no Ray here; ``framework/actors`` wraps it)."""

from framework.rollout.engine import GeneratedSample, StudentEngine
from framework.rollout.weight_sync import NcclWeightSync, WeightSync

__all__ = ["GeneratedSample", "NcclWeightSync", "StudentEngine", "WeightSync"]
