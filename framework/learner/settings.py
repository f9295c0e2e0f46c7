"""A learner rank's settings, light enough for the driver to build (no DeepSpeed, no model code)."""

from __future__ import annotations

from dataclasses import dataclass, field

from framework.algo import OPD, ObjectiveConfig
from framework.config import LearnerConfig


@dataclass
class RankSettings:
    """What a learner rank needs besides its place in the process group: the run's ``learner`` section
    and objective exactly as configured (framework/config.py, the one schema), and what the run derives
    for the rank."""

    learner: LearnerConfig = field(default_factory=LearnerConfig)
    objective: ObjectiveConfig = field(default_factory=OPD)
    seed: int = 0
    temperature: float = 1.0  # sampling temperature of the rollouts: logits are divided by it
    trust_remote_code: bool = False
    device: str = "cpu"  # cluster.device: picks the process-group backend when learner.backend=auto
    pad_id: int | None = None  # None: the model config's pad_token_id, else 0
    export_bucket_bytes: int = 256 << 20
    total_steps: int = 0  # trainer.steps: where learner.lr_decay=cosine reaches its floor

    @property
    def backend(self) -> str:
        """``gloo`` (CPU) or ``nccl`` (GPU)."""
        chosen = self.learner.backend
        return chosen if chosen != "auto" else ("nccl" if self.device == "cuda" else "gloo")
