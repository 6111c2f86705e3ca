"""Bootstrap intervals over evaluation items (problems, texts, questions)."""
from __future__ import annotations

from typing import Callable

import torch

BOOTSTRAP_SAMPLES = 2000


def bootstrap_interval(n: int, statistic: Callable[[torch.Tensor], float], *, samples: int = BOOTSTRAP_SAMPLES,
                       seed: int = 0, level: float = 0.95) -> list[float]:
    """Percentile bootstrap interval of ``statistic(indices)`` over ``n`` items resampled with
    replacement (``statistic`` takes a LongTensor of item indices)."""
    if n < 1:
        raise ValueError("bootstrap_interval needs at least one item")
    g = torch.Generator().manual_seed(seed)
    values = torch.tensor([statistic(torch.randint(n, (n,), generator=g)) for _ in range(samples)],
                          dtype=torch.float64)
    tail = (1 - level) / 2
    low, high = torch.quantile(values, torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
    return [low, high]


def accuracy_interval(correct: list[bool], **kwargs) -> list[float]:
    """Bootstrap interval of the mean of ``correct``."""
    c = torch.tensor([float(x) for x in correct], dtype=torch.float64)
    return bootstrap_interval(len(c), lambda idx: c[idx].mean().item(), **kwargs)


def paired_difference_interval(a: list[bool], b: list[bool], **kwargs) -> list[float]:
    """Bootstrap interval of mean(a) - mean(b) over the same items (resampled together)."""
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length ({len(a)} vs {len(b)})")
    d = torch.tensor([float(x) - float(y) for x, y in zip(a, b)], dtype=torch.float64)
    return bootstrap_interval(len(d), lambda idx: d[idx].mean().item(), **kwargs)
