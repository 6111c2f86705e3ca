"""The one training loop every trainer runs, and the pieces around it.

A trainer describes its job as a ``TrainingTask``: the module whose trainable parameters
are optimised, a number of items, each item's weight (1 per preference pair, the number
of target tokens for token-level losses) and a function that returns the summed loss of
a list of items. ``run_training`` owns the rest: data order, micro-batches and gradient
accumulation, data-parallel processes under ``torchrun``, bf16 autocast on GPU, AdamW with a
cosine schedule after a linear warm-up, gradient clipping, a progress bar, checkpoints and
resuming.

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
import os
import random
import shutil
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch
import torch.distributed as dist

CHECKPOINT_PREFIX = "checkpoint-"
TRAINER_STATE_NAME = "trainer_state.pt"


# --- configuration -----------------------------------------------------------------------------

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


# --- processes and devices ---------------------------------------------------------------------

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


# --- schedule ----------------------------------------------------------------------------------

def cosine_with_warmup(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """Learning-rate factor: linear from 1/(warmup+1) to 1 over ``warmup_steps``, then cosine to 0
    at ``total_steps``."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return factor


# --- tokenised (context, completion) batches -----------------------------------------------------

@dataclass
class CompletionBatch:
    """Left-padded ``context + completion`` rows, completions right-aligned.

    ``input_ids``/``attention_mask``/``position_ids`` are ``[B, T]``; ``targets`` and
    ``target_mask`` are ``[B, C]`` with ``C`` the longest completion: row ``i``'s completion
    is the last ``c_i`` entries. The logits that predict them are the model's last ``C + 1``
    positions minus the final one (``completion_logits``).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    targets: torch.Tensor
    target_mask: torch.Tensor


def encode_completion(tokenizer, context: str, completion: str, max_length: int) -> tuple[list[int], list[int]]:
    """Token ids of ``context`` and ``completion``, tokenised separately (the completion is what a
    decoder appends after the context's tokens). Over ``max_length``, the context loses tokens
    from the left; a completion longer than ``max_length - 1`` is cut on the right. With an
    empty context the completion's first token is the context."""
    ctx = tokenizer(context, add_special_tokens=True)["input_ids"] if context else []
    comp = tokenizer(completion, add_special_tokens=False)["input_ids"]
    if not ctx:  # the first token has nothing to be predicted from: it becomes the context
        ctx, comp = comp[:1], comp[1:]
    comp = comp[:max_length - 1]
    keep = max_length - len(comp)
    ctx = ctx[len(ctx) - keep:] if len(ctx) > keep else ctx
    if not comp:
        raise ValueError(f"completion {completion[:40]!r} tokenises to nothing")
    return list(ctx), list(comp)


def collate_completions(encoded: Sequence[tuple[list[int], list[int]]], pad_id: int,
                        device: torch.device) -> CompletionBatch:
    lengths = [len(c) + len(t) for c, t in encoded]
    width, c_max = max(lengths), max(len(t) for _, t in encoded)
    ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    targets = torch.full((len(encoded), c_max), pad_id, dtype=torch.long)
    target_mask = torch.zeros((len(encoded), c_max), dtype=torch.bool)
    for i, ((ctx, comp), n) in enumerate(zip(encoded, lengths)):
        ids[i, width - n:] = torch.tensor(ctx + comp)
        mask[i, width - n:] = 1
        targets[i, c_max - len(comp):] = torch.tensor(comp)
        target_mask[i, c_max - len(comp):] = True
    position_ids = (mask.cumsum(-1) - 1).clamp_min(0)
    return CompletionBatch(ids.to(device), mask.to(device), position_ids.to(device), targets.to(device),
                           target_mask.to(device))


def completion_logits(model, batch: CompletionBatch) -> torch.Tensor:
    """``[B, C, V]`` logits predicting ``batch.targets`` (only the last ``C + 1`` positions are
    projected onto the vocabulary: that is most of the memory for large vocabularies)."""
    c_max = batch.targets.shape[1]
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
                logits_to_keep=c_max + 1, use_cache=False)
    return out.logits[:, :-1]


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """fp32 log-probability of each target under ``logits`` ([B, C, V] -> [B, C])."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, targets[..., None])[..., 0]


# --- the loop ----------------------------------------------------------------------------------

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
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the module has no trainable parameters")
    model = module
    if ctx.world_size > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            module, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
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


# --- checkpoints -------------------------------------------------------------------------------

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
