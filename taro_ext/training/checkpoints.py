"""Training checkpoints: ``output_dir/checkpoint-<step>/trainer_state.pt`` with the trainable
parameters, optimizer, schedule and RNG states, written atomically; listing and resuming."""
from __future__ import annotations

import os
import random
import shutil
from typing import Optional

import torch
import torch.distributed as dist

from .distributed import DistributedContext

CHECKPOINT_PREFIX = "checkpoint-"
TRAINER_STATE_NAME = "trainer_state.pt"


def trainable_state(module: torch.nn.Module) -> dict:
    return {name: p.detach().cpu().clone() for name, p in module.named_parameters() if p.requires_grad}


def save_checkpoint(output_dir: str, step: int, module, optimizer, scheduler, ctx: DistributedContext,
                    keep: int) -> None:
    """``output_dir/checkpoint-<step>/trainer_state.pt``: trainable parameters, optimizer,
    schedule and RNG states (written by rank 0; the older ones beyond ``keep`` are removed)."""
    if ctx.is_main:
        path = os.path.join(output_dir, f"{CHECKPOINT_PREFIX}{step}")
        os.makedirs(path, exist_ok=True)
        state = {"step": step, "trainable": trainable_state(module), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "torch_rng": torch.get_rng_state(),
                 "python_rng": random.getstate()}
        tmp = os.path.join(path, TRAINER_STATE_NAME + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, os.path.join(path, TRAINER_STATE_NAME))
        for old in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old)
    if ctx.world_size > 1:
        dist.barrier()


def list_checkpoints(output_dir: str) -> list[str]:
    """Checkpoint directories under ``output_dir``, oldest first."""
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        path = os.path.join(output_dir, name)
        if name.startswith(CHECKPOINT_PREFIX) and name[len(CHECKPOINT_PREFIX):].isdigit() and \
                os.path.isfile(os.path.join(path, TRAINER_STATE_NAME)):
            found.append((int(name[len(CHECKPOINT_PREFIX):]), path))
    return [p for _, p in sorted(found)]


def resolve_checkpoint(resume_from: str, output_dir: Optional[str]) -> str:
    """``"latest"`` means the newest checkpoint under ``output_dir``; anything else is a path."""
    if resume_from == "latest":
        found = list_checkpoints(output_dir) if output_dir else []
        if not found:
            raise FileNotFoundError(f"resume_from='latest': no checkpoint under output_dir={output_dir!r}")
        return found[-1]
    if not os.path.isfile(os.path.join(resume_from, TRAINER_STATE_NAME)):
        raise FileNotFoundError(f"resume_from={resume_from!r} holds no {TRAINER_STATE_NAME}")
    return resume_from


def load_checkpoint(path: str, module, optimizer, scheduler) -> int:
    """Restore what ``save_checkpoint`` wrote; returns the step to continue from."""
    state = torch.load(os.path.join(path, TRAINER_STATE_NAME), map_location="cpu", weights_only=False)
    params = dict(module.named_parameters())
    unknown = sorted(set(state["trainable"]) - {n for n, p in params.items() if p.requires_grad})
    if unknown:
        raise ValueError(f"checkpoint {path} holds parameters this model does not train: {unknown[:5]}")
    with torch.no_grad():
        for name, value in state["trainable"].items():
            params[name].copy_(value)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    random.setstate(state["python_rng"])
    return int(state["step"])
