"""The learned routers: ``TopKRouter`` (design ``topk``) and ``FullLogitsRouter`` (``full``).

Both hold exactly the spec's parameters and save to a directory with a JSON config
(``router_config.json``, with a format version) and safetensors weights
(``router.safetensors``). ``forward`` computes alpha differentiably from the two
logits rows (the training path); the decode step itself goes through ``taro_step``.
"""
from __future__ import annotations

import json
import math
import os
from typing import Optional

import torch
from torch import nn

from . import reference
from .atomic import replace_directory
from .validate import as_float, as_int

CONFIG_NAME = "router_config.json"
WEIGHTS_NAME = "router.safetensors"
FORMAT_VERSION = 1
# Bounds checked before any allocation (a config saying vocab_size 1e9 must not allocate 64 GB):
# no tokenizer has 2**24 tokens, and 2**28 parameters (1 GiB in fp32) is far beyond any router.
MAX_VOCAB_SIZE = 2 ** 24
MAX_PARAMETERS = 2 ** 28
# What a trainer keeps in its output directory beside the artifact (carried over by a new save).
TRAINING_RUN_ENTRIES = ("checkpoint-*", "train_log.json")


class _RouterBase(nn.Module):
    design: str = ""

    def __init__(self, vocab_size: int, hidden: int, alpha_max: float, in_features: int, embed_size: int = 0):
        super().__init__()
        count = hidden * in_features + 2 * hidden + 1 + embed_size
        if count > MAX_PARAMETERS:
            raise ValueError(f"this router would hold {count:,} parameters ({count * 4 / 2**30:.1f} GiB in fp32), "
                             f"more than the {MAX_PARAMETERS:,} allowed: check vocab_size, hidden, k and embed_dim")
        self.vocab_size = vocab_size
        self.hidden = hidden
        self.alpha_max = alpha_max
        self.in_features = in_features  # the router input width the config implies
        self.w1 = nn.Parameter(torch.randn(hidden, in_features) / math.sqrt(in_features))
        self.b1 = nn.Parameter(torch.zeros(hidden))
        self.w2 = nn.Parameter(torch.randn(hidden) / math.sqrt(hidden))
        # b2 = 0: alpha starts near alpha_max / 2.
        self.b2 = nn.Parameter(torch.zeros(()))

    # --- what subclasses define -------------------------------------------------
    def config(self) -> dict:
        raise NotImplementedError

    def features(self, stats: reference.RowStats) -> torch.Tensor:
        raise NotImplementedError

    @property
    def topk(self) -> Optional[int]:
        """The top-K size the features need (None for the full-logits design)."""
        return None

    # --- shared -------------------------------------------------------------------
    def weights(self) -> dict:
        """The router's tensors by the spec's names, plus ``alpha_max``: detached (the decode step
        is inference and never builds an autograd graph through the router) and contiguous (the
        kernels read raw rows; a contiguous parameter is returned as is, not copied)."""
        # _parameters directly: named_parameters() walks submodules and dedups, which costs more
        # than a small decode step's kernel (the router has no submodules).
        w = {name: p.detach().contiguous() for name, p in self._parameters.items()}
        w["alpha_max"] = self.alpha_max
        return w

    def forward(self, base_logits: torch.Tensor, reward_logits: torch.Tensor,
                vocab_size: Optional[int] = None) -> torch.Tensor:
        """alpha [B] for logits rows [B, >= V], differentiable in the router's parameters.

        The log-softmax and top-K are computed without gradient: the models are frozen.
        """
        v = self.vocab_size if vocab_size is None else vocab_size
        with torch.no_grad():
            stats = reference.row_stats(base_logits, reward_logits, v, self.topk)
        x = self.features(stats)
        return reference.router_mlp(x, self.w1, self.b1, self.w2, self.b2, self.alpha_max)

    @torch.no_grad()
    def start_at_alpha(self, alpha: float) -> None:
        """Set ``b2`` so that alpha is ``alpha`` where ``w2 . h`` is 0 (training starts there)."""
        alpha = as_float("alpha", alpha, above=0.0)
        if not alpha < self.alpha_max:
            raise ValueError(f"alpha must lie in (0, alpha_max={self.alpha_max:g}), got {alpha:g}")
        self.b2.fill_(math.log(alpha / (self.alpha_max - alpha)))

    def input_features(self, base_logits: torch.Tensor, reward_logits: torch.Tensor,
                       vocab_size: Optional[int] = None) -> torch.Tensor:
        """The router input ``x`` [B, in_features] of logits rows [B, >= V] (spec step 4), without gradient."""
        v = self.vocab_size if vocab_size is None else vocab_size
        with torch.no_grad():
            return self.features(reference.row_stats(base_logits, reward_logits, v, self.topk))

    @torch.no_grad()
    def standardise_first_layer(self, x: torch.Tensor) -> None:
        """Data-dependent initialisation (as weight normalisation's, Salimans & Kingma 2016): rescale
        each row of ``w1`` and set ``b1`` so that hidden unit's pre-activation has mean 0 and
        standard deviation 1 over the router inputs ``x`` [N, in_features] (training positions)."""
        pre = x.float() @ self.w1.float().t()
        std = pre.std(dim=0, unbiased=False).clamp_min(1e-6)
        self.w1.div_(std[:, None].to(self.w1.dtype))
        self.b1.copy_((-pre.mean(dim=0) / std).to(self.b1.dtype))

    def save_pretrained(self, directory: str) -> None:
        """Write ``directory`` (config and weights), atomically: a kill at any moment leaves the
        previous router there or this one (``atomic.replace_directory``; a trainer's checkpoints
        and ``train_log.json`` in it are kept)."""
        from safetensors.torch import save_file

        cfg = {"format_version": FORMAT_VERSION, "design": self.design, **self.config()}
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}

        def fill(tmp: str) -> None:
            save_file(tensors, os.path.join(tmp, WEIGHTS_NAME))
            with open(os.path.join(tmp, CONFIG_NAME), "w") as f:
                json.dump(cfg, f, indent=2)

        replace_directory(directory, fill, is_artifact=lambda d: os.path.isfile(os.path.join(d, CONFIG_NAME)),
                          carry=TRAINING_RUN_ENTRIES)

    @classmethod
    def from_pretrained(cls, directory: str, *, vocab_size: Optional[int] = None,
                        map_location: str | torch.device = "cpu") -> "_RouterBase":
        """Load a router saved by ``save_pretrained``.

        ``vocab_size``, when given, must equal the saved router's (a router trained for
        one tokenizer is meaningless with another). Called on the base class
        (``taro_ext.load_router``), the saved design picks the class.
        """
        cfg = _read_config(directory)
        design = cfg.get("design")
        target = _DESIGNS.get(design)
        if target is None:
            raise ValueError(f"{os.path.join(directory, CONFIG_NAME)}: unknown router design {design!r}")
        if cls is not _RouterBase and target is not cls:
            raise ValueError(f"{directory} holds a {design!r} router, not a {cls.design!r} one; "
                             f"use taro_ext.load_router")
        kwargs = {k: v for k, v in cfg.items() if k not in ("format_version", "design")}
        try:
            router = target(**kwargs)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{os.path.join(directory, CONFIG_NAME)}: bad router config: {e}") from None
        if vocab_size is not None and vocab_size != router.vocab_size:
            raise ValueError(f"vocab_size mismatch: the router in {directory} was built for "
                             f"vocab_size={router.vocab_size}, the caller expects {vocab_size}")
        path = os.path.join(directory, WEIGHTS_NAME)
        state = _read_weights(directory)
        expected = router.state_dict()
        missing = sorted(set(expected) - set(state))
        extra = sorted(set(state) - set(expected))
        if missing or extra:
            raise ValueError(f"{path}: missing tensors {missing}, unexpected tensors {extra}")
        for name, t in state.items():
            if tuple(t.shape) != tuple(expected[name].shape):
                raise ValueError(f"{path}: tensor {name!r} has shape {tuple(t.shape)}, the config implies "
                                 f"{tuple(expected[name].shape)}")
            # Rule: floating tensors load, converted to the router's fp32 parameters; integer or
            # bool tensors are refused (nothing save_pretrained writes; a silent cast hides a bug).
            if not t.is_floating_point():
                raise ValueError(f"{path}: tensor {name!r} has dtype {t.dtype}; router weights are floating "
                                 f"point (float32, or any float dtype, converted to float32)")
            if not bool(torch.isfinite(t.to(expected[name].dtype)).all()):
                raise ValueError(f"{path}: tensor {name!r} contains NaN or inf (in {expected[name].dtype})")
        router.load_state_dict(state)
        return router.to(map_location)


class TopKRouter(_RouterBase):
    """Design ``topk``: features are both top-K lists, both entropies and an index embedding."""

    design = "topk"

    def __init__(self, vocab_size: int, k: int = 16, embed_dim: int = 16, hidden: int = 64,
                 alpha_max: float = 2.0):
        vocab_size, hidden, alpha_max = _check_sizes(vocab_size, hidden, alpha_max)
        k = as_int("k", k, minimum=1)
        embed_dim = as_int("embed_dim", embed_dim, minimum=1)
        if k > vocab_size:
            raise ValueError(f"k={k} exceeds vocab_size={vocab_size}")
        super().__init__(vocab_size, hidden, alpha_max, 2 * k + 2 + 2 * k * embed_dim, vocab_size * embed_dim)
        self.k = k
        self.embed_dim = embed_dim
        self.embed = nn.Parameter(torch.randn(vocab_size, embed_dim) * 0.02)

    @property
    def topk(self) -> int:
        return self.k

    def config(self) -> dict:
        return {"vocab_size": self.vocab_size, "k": self.k, "embed_dim": self.embed_dim,
                "hidden": self.hidden, "alpha_max": self.alpha_max}

    def features(self, stats):
        return reference.topk_features(stats, self.embed)


class FullLogitsRouter(_RouterBase):
    """Design ``full`` (the paper's expensive baseline): features are both whole log-prob rows."""

    design = "full"

    def __init__(self, vocab_size: int, hidden: int = 64, alpha_max: float = 2.0):
        vocab_size, hidden, alpha_max = _check_sizes(vocab_size, hidden, alpha_max)
        super().__init__(vocab_size, hidden, alpha_max, 2 * vocab_size)

    def config(self) -> dict:
        return {"vocab_size": self.vocab_size, "hidden": self.hidden, "alpha_max": self.alpha_max}

    def features(self, stats):
        return reference.full_features(stats)


_DESIGNS = {"topk": TopKRouter, "full": FullLogitsRouter}


def _check_sizes(vocab_size, hidden, alpha_max) -> tuple[int, int, float]:
    return (as_int("vocab_size", vocab_size, minimum=1, maximum=MAX_VOCAB_SIZE),
            as_int("hidden", hidden, minimum=1),
            as_float("alpha_max", alpha_max, above=0.0, maximum=reference.MAX_ALPHA))


def load_router(directory: str, *, vocab_size: Optional[int] = None,
                map_location: str | torch.device = "cpu"):
    """Load whichever router design ``directory`` holds."""
    return _RouterBase.from_pretrained(directory, vocab_size=vocab_size, map_location=map_location)


def _read_config(directory: str) -> dict:
    path = os.path.join(directory, CONFIG_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no router config at {path} (expected a directory written by "
                                f"save_pretrained)")
    try:
        with open(path) as f:
            cfg = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{path} must hold a JSON object")
    version = cfg.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {version!r} is not supported (this taro_ext reads "
                         f"{FORMAT_VERSION})")
    return cfg


def _read_weights(directory: str) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = os.path.join(directory, WEIGHTS_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no router weights at {path}")
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{path} is not a readable safetensors file: {e}") from None
