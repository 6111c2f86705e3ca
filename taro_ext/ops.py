"""torch.library registration of the fused kernels, so ``torch.compile`` and CUDA graphs see
each step as one opaque op with a fake (meta) implementation.

``taro_ext::fused_step`` is defined in C++ (csrc/bindings/taro_ops.cpp) with CPU and CUDA
kernels; ``taro_ext::triton_step`` is defined here around the Triton launcher. Both take
the same arguments and return ``(tokens, alpha, token_logprobs, logprobs)``, where
``logprobs`` is [B, V] when requested and [B, 0] otherwise.
"""
from __future__ import annotations

from typing import Optional

import torch

from .step import _native


def _fake_step(base_logits, reward_logits, embed, w1, b1, w2, b2, alpha_max, k, vocab_size, temperature,
               uniform, alpha_override, return_logprobs):
    batch = base_logits.shape[0]
    f32 = dict(dtype=torch.float32, device=base_logits.device)
    return (torch.empty(batch, dtype=torch.int64, device=base_logits.device), torch.empty(batch, **f32),
            torch.empty(batch, **f32), torch.empty(batch, vocab_size if return_logprobs else 0, **f32))


if _native() is not None:
    torch.library.register_fake("taro_ext::fused_step")(_fake_step)


@torch.library.custom_op("taro_ext::triton_step", mutates_args=())
def triton_step(base_logits: torch.Tensor, reward_logits: torch.Tensor, embed: Optional[torch.Tensor],
                w1: Optional[torch.Tensor], b1: Optional[torch.Tensor], w2: Optional[torch.Tensor],
                b2: Optional[torch.Tensor], alpha_max: float, k: int, vocab_size: int, temperature: float,
                uniform: Optional[torch.Tensor], alpha_override: Optional[float], return_logprobs: bool
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from .triton_step import triton_fused_step

    return triton_fused_step(base_logits, reward_logits, embed, w1, b1, w2, b2, alpha_max, k, vocab_size,
                             temperature, uniform, alpha_override, return_logprobs)


triton_step.register_fake(_fake_step)


def fused_step(backend: str, base_logits, reward_logits, weights: Optional[dict], *, k: int, vocab_size: int,
               temperature: float, uniform, alpha_override, return_logprobs: bool):
    """Run one fused backend ("cpu", "cuda" or "triton"); ``weights`` from ``router.weights()`` or None."""
    w = weights or {}
    args = (base_logits, reward_logits, w.get("embed"), w.get("w1"), w.get("b1"), w.get("w2"), w.get("b2"),
            float(w.get("alpha_max", 0.0)), k, vocab_size, temperature, uniform, alpha_override,
            return_logprobs)
    if backend == "triton":
        out = triton_step(*args)
    else:
        out = torch.ops.taro_ext.fused_step(*args)
    tokens, alpha, token_logprobs, logprobs = out
    if not return_logprobs:  # the CPU kernel then skips the mixed score's normaliser
        return tokens, alpha, None, None
    return tokens, alpha, token_logprobs, logprobs
