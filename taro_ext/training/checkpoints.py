"""Training checkpoints: ``output_dir/checkpoint-<step>/trainer_state.pt`` with the trainable
parameters, optimizer, schedule and RNG states, written atomically; listing and resuming."""
from __future__ import annotations

import os
import random
import shutil
from typing import Optional

import torch
import torch.distributed as dist

from ..atomic import write_file
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
        # Tensors and plain containers only, so that load_checkpoint reads it with weights_only=True.
        state = {"step": step, "trainable": trainable_state(module), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "torch_rng": torch.get_rng_state(),
                 "python_rng": random.getstate()}
        write_file(os.path.join(path, TRAINER_STATE_NAME), lambda tmp: torch.save(state, tmp))
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
    """Restore what ``save_checkpoint`` wrote; returns the step to continue from.

    The file is read with ``weights_only=True`` (tensors and plain containers: no code runs).
    Its trainable parameters must be exactly the module's, with the same shapes: a checkpoint of
    another model or another LoRA setting is refused, never half applied.
    """
    file = os.path.join(path, TRAINER_STATE_NAME)
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (UnpicklingError, RuntimeError, EOFError ...: one message)
        raise ValueError(f"{file} is not a readable checkpoint: {type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}") from None
    keys = ("step", "trainable", "optimizer", "scheduler", "torch_rng", "python_rng")
    if not isinstance(state, dict) or any(k not in state for k in keys) or not isinstance(state["trainable"], dict):
        raise ValueError(f"{file} is not a taro_ext trainer state (expected the keys {list(keys)})")
    trainable = {n: p for n, p in module.named_parameters() if p.requires_grad}
    missing = sorted(set(trainable) - set(state["trainable"]))
    extra = sorted(set(state["trainable"]) - set(trainable))
    if missing or extra:
        raise ValueError(f"checkpoint {path} does not match the model's trainable parameters: missing "
                         f"{missing[:5]}{' ...' if len(missing) > 5 else ''}, unexpected {extra[:5]}"
                         f"{' ...' if len(extra) > 5 else ''}")
    for name, value in state["trainable"].items():
        if not torch.is_tensor(value) or value.shape != trainable[name].shape:
            shape = tuple(value.shape) if torch.is_tensor(value) else type(value).__name__
            raise ValueError(f"checkpoint {path}: parameter {name!r} is {shape}, the model's is "
                             f"{tuple(trainable[name].shape)}")
    try:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        raise ValueError(f"checkpoint {path}: the optimizer or schedule state does not fit: {e}") from None
    with torch.no_grad():
        for name, value in state["trainable"].items():
            trainable[name].copy_(value)
    torch.set_rng_state(state["torch_rng"])
    random.setstate(state["python_rng"])
    return int(state["step"])
