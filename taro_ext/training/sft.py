"""Plain next-token fine-tuning, through the shared loop: how the synthetic experiments train
tiny base and reward models from scratch."""
from __future__ import annotations

from typing import Optional, Sequence, Union

from ..validate import as_int
from .batches import collate_completions, completion_logits, encode_completion, token_logprobs
from .config import TrainConfig
from .distributed import distributed_context
from .loop import TrainingTask, run_training


def train_causal_lm(model, tokenizer, examples: Sequence[Union[str, tuple[str, str]]],
                    config: Optional[TrainConfig] = None, max_length: int = 512, *,
                    train_all: bool = True, description: str = "causal LM") -> list[dict]:
    """Train ``model`` (in place) on next-token NLL, averaged over tokens.

    ``examples`` are texts (every token after the first is a target) or ``(prompt, target)``
    pairs (only target tokens are). ``train_all`` makes every weight trainable; ``False`` keeps
    the model's own trainable set (e.g. a peft model's adapters: the reward model's SFT warm
    start). Returns the per-step log of ``run_training``.
    """
    max_length = as_int("max_length", max_length, minimum=2)
    if config is not None and not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    config = config or TrainConfig()
    ctx = distributed_context(config.device)
    pairs = []
    for n, ex in enumerate(examples):
        if isinstance(ex, str):
            ex = ("", ex)
        if not (isinstance(ex, (tuple, list)) and len(ex) == 2 and all(isinstance(x, str) for x in ex)):
            raise TypeError(f"examples[{n}] must be a text or a (prompt, target) pair of strings, got {ex!r:.60}")
        pairs.append(ex)
    encoded = [encode_completion(tokenizer, p, t, max_length) for p, t in pairs]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if train_all:
        model.requires_grad_(True)
    model.to(ctx.device)

    def loss(module, indices):
        batch = collate_completions([encoded[i] for i in indices], pad_id, ctx.device)
        logps = token_logprobs(completion_logits(module, batch), batch.targets)
        return -(logps * batch.target_mask).sum(), {}

    task = TrainingTask(model, len(encoded), lambda i: float(len(encoded[i][1])), loss, description=description)
    return run_training(task, config, ctx)
