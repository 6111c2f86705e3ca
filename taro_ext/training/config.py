"""``TrainConfig``: the optimisation settings every trainer takes."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch

from ..validate import as_bool, as_float, as_int

# Seeds feed torch.Generator.manual_seed(seed + epoch), which takes at most 2**64 - 1.
MAX_SEED = 2 ** 63 - 1


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
        # Every field is checked (and NumPy numbers become Python ones): a config that cannot be
        # right (lr inf, a negative clipping norm that reverses the gradient, batch_size=True)
        # is an error here, not a silently wrong run.
        for name in ("batch_size", "micro_batch_size", "keep_checkpoints"):
            setattr(self, name, as_int(name, getattr(self, name), minimum=1))
        for name in ("max_steps", "checkpoint_every"):
            if getattr(self, name) is not None:
                setattr(self, name, as_int(name, getattr(self, name), minimum=1))
        self.warmup_steps = as_int("warmup_steps", self.warmup_steps, minimum=0)
        self.seed = as_int("seed", self.seed, minimum=0, maximum=MAX_SEED)
        self.learning_rate = as_float("learning_rate", self.learning_rate, above=0.0)
        self.epochs = as_float("epochs", self.epochs, above=0.0)
        self.weight_decay = as_float("weight_decay", self.weight_decay, minimum=0.0)
        if self.max_grad_norm is not None:
            self.max_grad_norm = as_float("max_grad_norm", self.max_grad_norm, above=0.0)
        if self.bf16 is not None and not isinstance(self.bf16, bool):
            raise TypeError(f"bf16 must be True, False or None, got {self.bf16!r}")
        as_bool("progress", self.progress)
        for name in ("output_dir", "resume_from"):
            value = getattr(self, name)
            if value is not None:
                if not isinstance(value, (str, os.PathLike)) or not str(value):
                    raise TypeError(f"{name} must be a path (str) or None, got {value!r}")
                setattr(self, name, os.fspath(value))
        if self.device is not None:
            try:
                torch.device(self.device)
            except (RuntimeError, TypeError):
                raise ValueError(f"device must name a torch device ('cpu', 'cuda', 'cuda:1'), "
                                 f"got {self.device!r}") from None
            self.device = str(self.device)
        if self.checkpoint_every is not None and self.output_dir is None:
            raise ValueError("checkpoint_every needs output_dir (where checkpoints are written)")
        if self.resume_from == "latest" and self.output_dir is None:
            raise ValueError("resume_from='latest' needs output_dir (where checkpoints are looked for)")
