"""Calling a causal LM in a decode loop: where its input and output layers live (a model may be
sharded over devices), and one forward pass returning the last position's logits."""
from __future__ import annotations

import torch


def device_of(module: torch.nn.Module, output: bool) -> torch.device:
    """The device of ``module``'s output embedding (``output=True``) or input embedding."""
    emb = module.get_output_embeddings() if output else module.get_input_embeddings()
    return emb.weight.device


def forward_last(model, cache, ids, mask, positions) -> torch.Tensor:
    """Logits at the last position, ``[B, V]``; inputs are moved to the model's input device."""
    dev = device_of(model, output=False)
    out = model(input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=positions.to(dev), cache=cache,
                use_cache=True, logits_to_keep=1)
    return out.logits[:, -1]
