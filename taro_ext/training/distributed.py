"""This process's place in a (possibly ``torchrun``) training job."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist


@dataclass
class DistributedContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def distributed_context(device: Optional[str] = None) -> DistributedContext:
    """This process's place in a ``torchrun`` job (rank 0 of 1 without one).

    Under ``torchrun`` (``WORLD_SIZE`` > 1) the default process group is initialised once:
    NCCL when training on GPUs, gloo on CPU. The device defaults to ``cuda:LOCAL_RANK`` when a
    GPU is visible, else the CPU.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return DistributedContext(rank, world, local_rank, dev)
