"""The one training loop every trainer runs: ``TrainingTask`` and ``run_training``.

A trainer describes its job as a ``TrainingTask``: the module whose trainable parameters
are optimised, a number of items, each item's weight (1 per preference pair, the number
of target tokens for token-level losses) and a function that returns the summed loss of
a list of items. ``run_training`` owns the rest: data order, micro-batches and gradient
accumulation, data-parallel processes under ``torchrun``, bf16 autocast on GPU, AdamW with a
cosine schedule after a linear warm-up, gradient clipping, a progress bar, checkpoints
(``checkpoints.py``) and resuming.

How a step is split, and why the result does not depend on the number of processes:
every process draws the same global batch (a permutation seeded by ``seed`` and the
epoch); process ``r`` of ``W`` takes items ``r, r+W, ...`` of it and runs them in
micro-batches. Each micro-batch backpropagates ``summed loss * W / (total weight of the
global batch)``; ``DistributedDataParallel`` averages gradients over the ``W`` processes,
so the update is the gradient of the global batch's weighted mean loss, the same as one
process running the whole batch. A process with fewer micro-batches than the others runs
a zero-weighted one so every process joins every gradient all-reduce.
"""
from __future__ import annotations

import contextlib
import math
import random
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch
import torch.distributed as dist

from .checkpoints import load_checkpoint, resolve_checkpoint, save_checkpoint
from .config import TrainConfig
from .distributed import DistributedContext, distributed_context


def cosine_with_warmup(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """Learning-rate factor: linear from 1/(warmup+1) to 1 over ``warmup_steps``, then cosine to 0
    at ``total_steps``."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return factor


@dataclass
class TrainingTask:
    """What a trainer hands to ``run_training``.

    ``loss(module, indices)`` returns ``(summed loss, {metric: summed value})`` over the items
    ``indices``; ``module`` is ``self.module`` or its DDP wrapper (call it, do not use
    ``self.module`` inside, or gradients are not synchronised). Metrics are reported divided
    by the batch's total weight.
    """

    module: torch.nn.Module
    num_items: int
    item_weight: Callable[[int], float]
    loss: Callable[[torch.nn.Module, list[int]], tuple[torch.Tensor, dict]]
    description: str = "train"
    metric_names: Sequence[str] = field(default_factory=tuple)
    # Per-parameter learning-rate factors (by parameter name in ``module``); 1 for the others.
    lr_scales: dict[str, float] = field(default_factory=dict)


def steps_per_epoch(num_items: int, batch_size: int) -> int:
    return math.ceil(num_items / batch_size)


def global_batch(step: int, num_items: int, batch_size: int, seed: int) -> list[int]:
    """Item indices of optimizer step ``step``: epoch ``e`` walks ``randperm(seed + e)`` in order."""
    per_epoch = steps_per_epoch(num_items, batch_size)
    epoch, position = divmod(step, per_epoch)
    order = torch.randperm(num_items, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
    return order[position * batch_size:(position + 1) * batch_size]


def total_steps(config: TrainConfig, num_items: int) -> int:
    if config.max_steps is not None:
        return config.max_steps
    return max(1, math.ceil(config.epochs * steps_per_epoch(num_items, config.batch_size)))


def _autocast(ctx: DistributedContext, config: TrainConfig):
    use_bf16 = config.bf16 if config.bf16 is not None else ctx.device.type == "cuda"
    if not use_bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=ctx.device.type, dtype=torch.bfloat16)


def run_training(task: TrainingTask, config: TrainConfig, ctx: Optional[DistributedContext] = None) -> list[dict]:
    """Optimise ``task.module``'s trainable parameters; returns one log record per step
    (``step``, ``loss``, ``lr`` and the task's metrics, each a global-batch weighted mean)."""
    ctx = ctx or distributed_context(config.device)
    if task.num_items < 1:
        raise ValueError("the training set is empty")
    module = task.module
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("the module has no trainable parameters")
    unknown = set(task.lr_scales) - {n for n, _ in named}
    if unknown:
        raise ValueError(f"lr_scales names parameters the module does not train: {sorted(unknown)}")
    params = [p for _, p in named]
    model = module
    if ctx.world_size > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            module, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    # One group per factor, the factor-1 group first (its lr is the one logged).
    factors = sorted({task.lr_scales.get(n, 1.0) for n, _ in named}, key=lambda f: f != 1.0)
    groups = [{"params": [p for n, p in named if task.lr_scales.get(n, 1.0) == f], "lr": config.learning_rate * f}
              for f in factors]
    optimizer = torch.optim.AdamW(groups, lr=config.learning_rate, weight_decay=config.weight_decay)
    n_steps = total_steps(config, task.num_items)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup(n_steps, config.warmup_steps))

    start = 0
    if config.resume_from is not None:
        start = load_checkpoint(resolve_checkpoint(config.resume_from, config.output_dir), module, optimizer,
                                scheduler)
    else:
        torch.manual_seed(config.seed)
        random.seed(config.seed)

    progress = _progress_bar(ctx, config, n_steps, start, task.description)
    history = []
    model.train()
    for step in range(start, n_steps):
        indices = global_batch(step, task.num_items, config.batch_size, config.seed)
        total_weight = float(sum(task.item_weight(i) for i in indices))
        mine = indices[ctx.rank::ctx.world_size]
        per_rank = math.ceil(len(indices) / ctx.world_size)
        n_micro = math.ceil(per_rank / config.micro_batch_size)
        sums = torch.zeros(1 + len(task.metric_names), dtype=torch.float64)
        for m in range(n_micro):
            micro = mine[m * config.micro_batch_size:(m + 1) * config.micro_batch_size]
            # A process short of items still runs (a zero-weighted copy of) one so that every
            # process joins every DDP all-reduce.
            scale = ctx.world_size / total_weight if micro else 0.0
            sync = ctx.world_size == 1 or m == n_micro - 1
            with (contextlib.nullcontext() if sync else model.no_sync()), _autocast(ctx, config):
                loss_sum, metrics = task.loss(model, micro or indices[:1])
            (loss_sum * scale).backward()
            if micro:
                sums += torch.tensor([loss_sum.item()] + [float(metrics[k]) for k in task.metric_names],
                                     dtype=torch.float64)
        if config.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        if ctx.world_size > 1:
            dist.all_reduce(sums)
        values = (sums / total_weight).tolist()
        if not math.isfinite(values[0]):
            # The optimizer has already applied it: the weights are no longer trustworthy.
            raise ValueError(f"the training loss is {values[0]} at step {step + 1}: stopping "
                                     f"(lower learning_rate, or check the data and max_grad_norm)")
        record = {"step": step + 1, "loss": values[0], "lr": lr,
                  **dict(zip(task.metric_names, values[1:]))}
        history.append(record)
        if progress is not None:
            progress.set_postfix({k: f"{v:.4g}" for k, v in record.items() if k not in ("step", "lr")})
            progress.update(1)
        done = step + 1
        if config.checkpoint_every and done % config.checkpoint_every == 0 and done < n_steps:
            save_checkpoint(config.output_dir, done, module, optimizer, scheduler, ctx, config.keep_checkpoints)
    if progress is not None:
        progress.close()
    model.eval()
    return history


def _progress_bar(ctx, config, n_steps, start, description):
    if not (config.progress and ctx.is_main):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=n_steps, initial=start, desc=description, dynamic_ncols=True)
