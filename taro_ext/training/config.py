"""``TrainConfig``: the optimisation settings every trainer takes."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class TrainConfig:
    """Optimisation settings shared by all trainers.

    ``batch_size`` is the global batch (items per optimizer step, over all processes);
    ``micro_batch_size`` bounds how many items one forward pass holds (gradient
    accumulation covers the rest). ``max_steps`` (if set) overrides ``epochs``.
    ``bf16=None`` means bf16 autocast exactly when training on a GPU.
    """

    learning_rate: float = 1e-4
    batch_size: int = 16
    micro_batch_size: int = 4
    epochs: float = 1.0
    max_steps: Optional[int] = None
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: Optional[float] = 1.0
    seed: int = 0
    bf16: Optional[bool] = None
    output_dir: Optional[str] = None
    checkpoint_every: Optional[int] = None
    keep_checkpoints: int = 2
    resume_from: Optional[str] = None
    progress: bool = True
    device: Optional[str] = None

    def __post_init__(self):
        for name in ("batch_size", "micro_batch_size", "keep_checkpoints"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name in ("max_steps", "checkpoint_every"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive int or None, got {value!r}")
        if not (isinstance(self.learning_rate, (int, float)) and self.learning_rate > 0):
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate!r}")
        if not (isinstance(self.epochs, (int, float)) and self.epochs > 0):
            raise ValueError(f"epochs must be positive, got {self.epochs!r}")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be a non-negative int, got {self.warmup_steps!r}")
        if self.checkpoint_every is not None and self.output_dir is None:
            raise ValueError("checkpoint_every needs output_dir (where checkpoints are written)")
