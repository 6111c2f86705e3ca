"""Tokenised ``(context, completion)`` pairs as left-padded batches, and the log-probabilities of
their completion tokens: what every trainer's loss is computed from."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


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


def encode_completion(tokenizer, context: str, completion: str, max_length: int,
                      truncate: bool = True) -> tuple[list[int], list[int]]:
    """Token ids of ``context`` and ``completion``, tokenised separately (the completion is what a
    decoder appends after the context's tokens). With an empty context the completion's first
    token is the context. Over ``max_length`` (training, ``truncate``): the context loses tokens
    from the left, and a completion longer than ``max_length - 1`` is cut on the right, so a long
    completion keeps no context at all. Evaluations pass ``truncate=False``: a text that does not
    fit is then an error, since a score of a cut text is not the score of the text."""
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2 (a context token and a scored token), got {max_length}")
    ctx = tokenizer(context, add_special_tokens=True)["input_ids"] if context else []
    comp = tokenizer(completion, add_special_tokens=False)["input_ids"]
    if not ctx:  # the first token has nothing to be predicted from: it becomes the context
        ctx, comp = comp[:1], comp[1:]
    if not truncate and len(ctx) + len(comp) > max_length:
        raise ValueError(f"a text of {len(ctx) + len(comp)} tokens (context {len(ctx)}, completion {len(comp)}) "
                         f"exceeds max_length={max_length}, and an evaluation cuts nothing: raise max_length "
                         f"(completion {completion[:40]!r})")
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
