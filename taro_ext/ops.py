"""The backends of the decode step and their ``torch.library`` ops (the leaf every other module
imports: it loads the compiled extension once, at ``import taro_ext``).

The fused step is one op family, ``fused_step``: ``torch.ops.taro_ext.fused_step`` is defined in
C++ (csrc/bindings/taro_ops.cpp) with CPU and CUDA kernels, and
``torch.ops.taro_ext.fused_step_triton`` is defined here around the Triton launcher
(``triton_step.fused_step_triton``). Both take the same arguments and return
``(tokens, alpha, token_logprobs, logprobs)``, where ``logprobs`` is [B, V] when requested and
[B, 0] otherwise; both have a fake (meta) implementation, so ``torch.compile`` and CUDA graphs
see each step as one opaque op. The backend ``torch`` is the reference (``reference.py``).
"""
from __future__ import annotations

import os
from typing import Callable, NamedTuple, Optional

import torch

try:
    from . import _C  # importing it registers torch.ops.taro_ext.fused_step
except ImportError:  # the extension was not built: only the torch and triton backends exist
    _C = None


def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _triton_runs_on(kind: str) -> bool:
    # On CPU tensors only under the Triton interpreter (for testing).
    if kind == "cuda":
        return torch.cuda.is_available() and _triton_importable()
    return os.environ.get("TRITON_INTERPRET") == "1" and _triton_importable()


class Backend(NamedTuple):
    runs_on: Callable[[str], bool]  # device type ("cpu", "cuda") -> can it run on such tensors here
    op: Optional[str]  # its torch.ops.taro_ext op, None for the reference


BACKEND_TABLE = {
    "torch": Backend(lambda kind: True, None),
    "cpu": Backend(lambda kind: kind == "cpu" and _C is not None, "fused_step"),
    "triton": Backend(_triton_runs_on, "fused_step_triton"),
    "cuda": Backend(lambda kind: kind == "cuda" and _C is not None and _C.compiled_with_cuda
                    and torch.cuda.is_available(), "fused_step"),
}
BACKENDS = tuple(BACKEND_TABLE)
# What backend="auto" picks, by the logits' device type: the first that runs there.
AUTO_PREFERENCE = {"cuda": ("cuda", "triton", "torch"), "cpu": ("cpu", "torch")}


def available_backends(device: str | torch.device | None = None) -> list[str]:
    """Backends that can run here; with ``device``, those that run on tensors of that device.

    ``torch`` (the reference) always; ``cpu`` when the extension is built; ``cuda`` when it
    was compiled with nvcc and a GPU is visible; ``triton`` with a GPU, or on CPU tensors
    under the Triton interpreter (``TRITON_INTERPRET=1``, for testing).
    """
    kinds = ("cpu", "cuda") if device is None else (torch.device(device).type,)
    return [name for name, b in BACKEND_TABLE.items() if any(b.runs_on(kind) for kind in kinds)]


def _fake_step(base_logits, reward_logits, embed, w1, b1, w2, b2, alpha_max, k, vocab_size, temperature,
               uniform, alpha_override, return_logprobs):
    batch = base_logits.shape[0]
    f32 = dict(dtype=torch.float32, device=base_logits.device)
    return (torch.empty(batch, dtype=torch.int64, device=base_logits.device), torch.empty(batch, **f32),
            torch.empty(batch, **f32), torch.empty(batch, vocab_size if return_logprobs else 0, **f32))


if _C is not None:
    torch.library.register_fake("taro_ext::fused_step")(_fake_step)


@torch.library.custom_op("taro_ext::fused_step_triton", mutates_args=())
def _fused_step_triton(base_logits: torch.Tensor, reward_logits: torch.Tensor, embed: Optional[torch.Tensor],
                       w1: Optional[torch.Tensor], b1: Optional[torch.Tensor], w2: Optional[torch.Tensor],
                       b2: Optional[torch.Tensor], alpha_max: float, k: int, vocab_size: int, temperature: float,
                       uniform: Optional[torch.Tensor], alpha_override: Optional[float], return_logprobs: bool
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from .triton_step import fused_step_triton  # imports triton: only when the backend runs

    return fused_step_triton(base_logits, reward_logits, embed, w1, b1, w2, b2, alpha_max, k, vocab_size,
                             temperature, uniform, alpha_override, return_logprobs)


_fused_step_triton.register_fake(_fake_step)


NO_ROUTER_ARGS = (None, None, None, None, None, 0.0)


def router_args(weights: dict) -> tuple:
    """``router.weights()`` as the ops' router arguments ``(embed, w1, b1, w2, b2, alpha_max)``
    (a full-logits router has no ``embed``; it never reaches a fused op, whose checks say so)."""
    return (weights.get("embed"), weights["w1"], weights["b1"], weights["w2"], weights["b2"],
            float(weights["alpha_max"]))


# Each backend's OpOverload, resolved on first use: calling the overload itself skips the
# packet's lookup on every decode step.
_OVERLOADS: dict = {}


def fused_step(backend: str, base_logits, reward_logits, router: tuple, *, k: int, vocab_size: int,
               temperature: float, uniform, alpha_override, return_logprobs: bool):
    """Run one fused backend ("cpu", "cuda" or "triton"); ``router`` from ``router_args`` or
    ``NO_ROUTER_ARGS``."""
    op = _OVERLOADS.get(backend)
    if op is None:
        op = _OVERLOADS[backend] = getattr(torch.ops.taro_ext, BACKEND_TABLE[backend].op).default
    tokens, alpha, token_logprobs, logprobs = op(base_logits, reward_logits, *router, k, vocab_size, temperature,
                                                 uniform, alpha_override, return_logprobs)
    if not return_logprobs:  # the CPU kernel then skips the mixed score's normaliser
        return tokens, alpha, None, None
    return tokens, alpha, token_logprobs, logprobs
