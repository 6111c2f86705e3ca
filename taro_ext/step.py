"""The public decode-step API: ``taro_step``, ``genarm_step``, ``available_backends``.

Validation that costs no device synchronisation (shapes, dtypes, devices, router
layout) always runs; checks that read values (NaN, rows with no finite logit,
``uniform`` range) run when ``check_inputs=True`` and can be turned off for CUDA-graph
capture and ``torch.compile``.
"""
from __future__ import annotations

import math
import weakref
from typing import NamedTuple, Optional

import torch

from . import reference
from .ops import (AUTO_PREFERENCE, BACKEND_TABLE, BACKENDS, NO_ROUTER_ARGS, available_backends, fused_step,
                  router_args)
from .router import FullLogitsRouter, TopKRouter, _RouterBase
from .validate import as_bool, as_float, as_int

_LOGITS_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


class StepResult(NamedTuple):
    tokens: torch.Tensor  # [B] int64
    alpha: torch.Tensor  # [B] fp32
    token_logprobs: Optional[torch.Tensor]  # [B] fp32, log-prob of the chosen token, when return_logprobs
    logprobs: Optional[torch.Tensor]  # [B, V] fp32 when return_logprobs, else None


def _pick_backend(backend: str, device: torch.device, design: str) -> str:
    if backend != "auto" and backend not in BACKEND_TABLE:
        raise ValueError(f"backend must be one of {('auto',) + BACKENDS}, got {backend!r}")
    if design == "full":
        if backend not in ("auto", "torch"):
            raise ValueError(f"backend={backend!r}: the full-logits router runs only on backend='torch'")
        return "torch"
    # Only the backends asked about are probed (each probe may read the environment): the
    # available list is built for the error message alone.
    if backend == "auto":
        return next(b for b in AUTO_PREFERENCE.get(device.type, ("torch",)) if BACKEND_TABLE[b].runs_on(device.type))
    if not BACKEND_TABLE[backend].runs_on(device.type):
        raise ValueError(f"backend={backend!r} cannot run on {device.type} tensors here "
                         f"(available: {available_backends(device)})")
    return backend


def _check_logits(base_logits, reward_logits, vocab_size):
    for name, t in (("base_logits", base_logits), ("reward_logits", reward_logits)):
        if t.dim() != 2:
            raise ValueError(f"{name} must be 2-D [B, V], got shape {tuple(t.shape)}")
        if t.dtype not in _LOGITS_DTYPES:
            raise TypeError(f"{name} must be float32, bfloat16 or float16, got {t.dtype}")
        if t.shape[1] > 1 and t.stride(1) != 1:
            raise ValueError(f"{name} rows must be contiguous in the last dim (stride(1) == 1)")
        if t.shape[1] < vocab_size:
            raise ValueError(f"{name} has width {t.shape[1]}, below vocab_size={vocab_size}")
    if base_logits.shape[0] != reward_logits.shape[0]:
        raise ValueError(f"base_logits and reward_logits batch sizes differ: "
                         f"{base_logits.shape[0]} vs {reward_logits.shape[0]}")
    if base_logits.device != reward_logits.device:
        raise ValueError(f"base_logits and reward_logits are on different devices: "
                         f"{base_logits.device} vs {reward_logits.device}")
    if base_logits.shape[0] == 0:
        raise ValueError("base_logits has batch size 0")


def check_temperature(temperature) -> float:
    """``temperature`` as a float: 0 (greedy) or in ``[MIN_TEMPERATURE, MAX_TEMPERATURE]`` (what the
    fp32 kernels compute ``s / T`` in without overflow; README "Spec choices")."""
    temperature = as_float("temperature", temperature, minimum=0.0)
    if temperature != 0 and not reference.MIN_TEMPERATURE <= temperature <= reference.MAX_TEMPERATURE:
        raise ValueError(f"temperature must be 0 (greedy) or in [{reference.MIN_TEMPERATURE:g}, "
                         f"{reference.MAX_TEMPERATURE:g}] (s / T is computed in fp32), got {temperature:g}")
    return temperature


def check_alpha(name: str, alpha) -> float:
    """A fixed alpha (GenARM's, ``alpha_override``): a float in ``[0, MAX_ALPHA]``."""
    return as_float(name, alpha, minimum=0.0, maximum=reference.MAX_ALPHA)


def _check_sampling(temperature, uniform, batch, device):
    if temperature == 0:
        return None
    if uniform is None:
        raise ValueError("uniform is required when temperature > 0 (draw it with your torch.Generator)")
    if not isinstance(uniform, torch.Tensor):
        raise TypeError(f"uniform must be a torch.Tensor, got {type(uniform).__name__}")
    if uniform.shape != (batch,):
        raise ValueError(f"uniform must have shape ({batch},), got {tuple(uniform.shape)}")
    if uniform.device != device:
        raise ValueError(f"uniform is on {uniform.device}, the logits on {device}")
    if not uniform.is_floating_point():
        raise TypeError(f"uniform must be a floating tensor, got {uniform.dtype}")
    return uniform


def _uniform_fp32(uniform):
    """``uniform`` in fp32 for the kernels. A float64 value just below 1 rounds up to 1.0 in fp32,
    outside [0, 1): it becomes the largest fp32 below 1 (after the range check on the caller's
    own values)."""
    if uniform is None:
        return None
    u = uniform.to(torch.float32)
    if uniform.dtype == torch.float64:
        u = u.clamp_max(_BELOW_ONE)
    return u.contiguous()


_BELOW_ONE = 1.0 - 2.0 ** -24


def _router_weights(router, vocab_size, device) -> tuple:
    """``(router.weights(), ops.router_args(weights))`` after the router checks. The layout checks
    (``_check_router_layout``) and both are cached per router until a parameter is replaced, moved or written
    in place (its ``_version``): together they cost more than the kernel of a B=1 step (about
    18 us of the 30 us of Python per call measured at V=128256). Under torch.compile nothing is
    cached (the trace sees the checks once anyway)."""
    if vocab_size > router.vocab_size:
        raise ValueError(f"vocab_size={vocab_size} exceeds the router's vocab_size={router.vocab_size}")
    if isinstance(router, TopKRouter) and router.k > vocab_size:
        raise ValueError(f"the router's k={router.k} exceeds vocab_size={vocab_size}")
    if isinstance(router, FullLogitsRouter) and vocab_size != router.vocab_size:
        # The full-logits router's input is both rows over exactly its own vocabulary.
        raise ValueError(f"vocab_size={vocab_size} must equal the full-logits router's "
                         f"vocab_size={router.vocab_size}")
    key = None
    if not torch.compiler.is_compiling():
        try:
            key = (device, router.alpha_max, [(id(p), p.data_ptr(), p._version) for p in router._parameters.values()])
        except RuntimeError:  # inference tensors keep no version counter: check every call
            pass
    if key is None:
        _check_router_layout(router, device)
        weights = router.weights()
        return weights, router_args(weights)
    cached = _ROUTER_CACHE.get(router)
    if cached is None or cached[0] != key:
        _check_router_layout(router, device)
        weights = router.weights()
        result = (weights, router_args(weights))
        # A non-contiguous parameter is copied by weights(): a write through its .data (which
        # keeps _version) would not reach a cached copy, so such a router is not cached.
        if not all(weights[name].data_ptr() == p.data_ptr() for name, p in router._parameters.items()):
            return result
        cached = (key, result)
        _ROUTER_CACHE[router] = cached
    return cached[1]


_ROUTER_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _check_router_layout(router, device):
    shapes = {"w1": (router.hidden, router.in_features), "b1": (router.hidden,), "w2": (router.hidden,), "b2": ()}
    if isinstance(router, TopKRouter):
        shapes["embed"] = (router.vocab_size, router.embed_dim)
    params = router._parameters  # the dict itself: nn.Module.__getattr__ costs more than the check
    for name, shape in shapes.items():
        p = params[name]
        if tuple(p.shape) != shape:
            raise ValueError(f"router.{name} has shape {tuple(p.shape)}, expected {shape}")
        allowed = (torch.float32, torch.bfloat16) if name == "embed" else (torch.float32,)
        if p.dtype not in allowed:
            raise TypeError(f"router.{name} must be {' or '.join(map(str, allowed))}, got {p.dtype}")
        if p.device != device:
            raise ValueError(f"router.{name} is on {p.device}, the logits on {device}")
    as_float("router.alpha_max", router.alpha_max, above=0.0, maximum=reference.MAX_ALPHA)


def _check_router_values(router):
    """Router weights are finite and cannot overflow fp32 in ``W1 x`` or ``w2 . h`` for any logits
    (device syncs; skipped with check_inputs=False).

    Every feature is bounded: log-probs lie in [FEATURE_LOGPROB_FLOOR, 0], entropies in
    [0, log V], embeddings by their largest entry. So ``|u| <= |w2| . (|W1| x_max + |b1|) + |b2|``;
    computed in fp32, this bound is finite exactly when the kernels' own sums cannot overflow.
    """
    for name, p in router.named_parameters():
        if not bool(torch.isfinite(p.detach()).all()):
            raise ValueError(f"router.{name} contains NaN or inf")
    x_max = max(-reference.FEATURE_LOGPROB_FLOOR, math.log(router.vocab_size))
    if isinstance(router, TopKRouter):
        x_max = max(x_max, float(router.embed.detach().abs().max()))
    h_bound = router.w1.detach().abs().sum(1) * x_max + router.b1.detach().abs()
    u_bound = (router.w2.detach().abs() * h_bound).sum() + router.b2.detach().abs()
    if not bool(torch.isfinite(u_bound)):
        raise ValueError("the router's weights are so large that W1 x or w2 . h can overflow fp32 "
                         "(alpha would be NaN)")


def _check_values(base_logits, reward_logits, vocab_size, uniform, mixes_reward):
    """Checks that read tensor values (one device sync each); skipped with check_inputs=False."""
    finite = {}
    for name, t in (("base_logits", base_logits), ("reward_logits", reward_logits)):
        row = t[:, :vocab_size]
        if torch.isnan(row).any():
            raise ValueError(f"{name} contains NaN")
        if (row == float("inf")).any():
            raise ValueError(f"{name} contains +inf")
        finite[name] = torch.isfinite(row)
        if not finite[name].any(dim=-1).all():
            raise ValueError(f"{name} has a row with no finite logit in its first {vocab_size} columns")
    if mixes_reward and not (finite["base_logits"] & finite["reward_logits"]).any(dim=-1).all():
        raise ValueError("base_logits and reward_logits have a row where no token is finite in both "
                         "(the mixed score would be -inf everywhere)")
    if uniform is not None and not ((uniform >= 0) & (uniform < 1)).all():
        raise ValueError("uniform must lie in [0, 1)")


def _run(base_logits, reward_logits, router, *, temperature, uniform, vocab_size, alpha_override,
         return_logprobs, check_inputs, backend, alpha_name="alpha_override") -> StepResult:
    if router is not None and not isinstance(router, _RouterBase):
        raise TypeError(f"router must be a TopKRouter or FullLogitsRouter, got {type(router).__name__}")
    for name, t in (("base_logits", base_logits), ("reward_logits", reward_logits)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    return_logprobs = as_bool("return_logprobs", return_logprobs)
    check_inputs = as_bool("check_inputs", check_inputs)
    if vocab_size is None:
        if router is None:
            raise ValueError("router is required unless alpha_override is given (and then vocab_size too)"
                             if alpha_override is None else "vocab_size is required when no router is given")
        vocab_size = router.vocab_size
    vocab_size = as_int("vocab_size", vocab_size, minimum=1)
    _check_logits(base_logits, reward_logits, vocab_size)
    device = base_logits.device
    batch = base_logits.shape[0]
    temperature = check_temperature(temperature)
    uniform = _check_sampling(temperature, uniform, batch, device)
    if alpha_override is not None:
        alpha_override = check_alpha(alpha_name, alpha_override)
    elif router is None:
        raise ValueError("router is required unless alpha_override is given")
    uses_router = router is not None and alpha_override is None
    weights, op_router = _router_weights(router, vocab_size, device) if uses_router else (None, NO_ROUTER_ARGS)
    design = router.design if uses_router else "topk"
    chosen = _pick_backend(backend, device, design)
    if check_inputs:
        if torch.compiler.is_compiling():
            raise ValueError("check_inputs=True reads tensor values (a device sync), which torch.compile cannot "
                             "trace: pass check_inputs=False under torch.compile and CUDA-graph capture")
        mixes = alpha_override is None or alpha_override > 0
        _check_values(base_logits, reward_logits, vocab_size, uniform, mixes)
        if uses_router:
            _check_router_values(router)
    uniform = _uniform_fp32(uniform)
    if base_logits.dtype != reward_logits.dtype:
        # The kernels read one dtype for both rows; promote both to fp32 (the math is fp32 anyway).
        base_logits, reward_logits = base_logits.float(), reward_logits.float()

    if chosen == "torch":
        k = router.k if isinstance(router, TopKRouter) else None
        out = reference.reference_step(
            base_logits, reward_logits, vocab_size=vocab_size, k=k, router_weights=weights,
            design=design, alpha_override=alpha_override, temperature=temperature,
            uniform=uniform, return_logprobs=return_logprobs)
        tokens, alpha, token_logprobs, logprobs = out
        return StepResult(tokens, alpha, token_logprobs if return_logprobs else None, logprobs)
    return StepResult(*fused_step(chosen, base_logits, reward_logits, op_router,
                                  k=router.k if weights is not None else 1, vocab_size=vocab_size,
                                  temperature=temperature, uniform=uniform,
                                  alpha_override=alpha_override, return_logprobs=return_logprobs))


def taro_step(base_logits: torch.Tensor, reward_logits: torch.Tensor, router, *, temperature: float = 0.0,
              uniform: Optional[torch.Tensor] = None, vocab_size: Optional[int] = None,
              alpha_override: Optional[float] = None, return_logprobs: bool = False,
              check_inputs: bool = True, backend: str = "auto") -> StepResult:
    """One TARo decode step (``../shared/TARO_SPEC.md``) over a batch of logits rows.

    ``router`` is a ``TopKRouter`` (any backend) or ``FullLogitsRouter`` (backend ``torch``);
    it may be None when ``alpha_override`` is given. ``uniform`` [B] in [0, 1) is required
    when ``temperature > 0``. Returns ``StepResult(tokens, alpha, token_logprobs, logprobs)``.
    """
    return _run(base_logits, reward_logits, router, temperature=temperature, uniform=uniform,
                vocab_size=vocab_size, alpha_override=alpha_override, return_logprobs=return_logprobs,
                check_inputs=check_inputs, backend=backend)


def genarm_step(base_logits: torch.Tensor, reward_logits: torch.Tensor, alpha: float, *,
                vocab_size: Optional[int] = None, temperature: float = 0.0,
                uniform: Optional[torch.Tensor] = None, return_logprobs: bool = False,
                check_inputs: bool = True, backend: str = "auto") -> StepResult:
    """GenARM's step with one fixed ``alpha``: ``softmax((lp_b + alpha lp_r) / T)``.

    ``vocab_size`` defaults to the width of the narrower logits tensor.
    """
    if alpha is None:
        raise ValueError("alpha is required for genarm_step")
    alpha = check_alpha("alpha", alpha)
    if vocab_size is None and isinstance(base_logits, torch.Tensor) and isinstance(reward_logits, torch.Tensor):
        vocab_size = min(base_logits.shape[-1], reward_logits.shape[-1])
    return _run(base_logits, reward_logits, None, temperature=temperature, uniform=uniform,
                vocab_size=vocab_size, alpha_override=alpha, return_logprobs=return_logprobs,
                check_inputs=check_inputs, backend=backend, alpha_name="alpha")


__all__ = ["StepResult", "taro_step", "genarm_step", "available_backends", "BACKENDS",
           "TopKRouter", "FullLogitsRouter"]
