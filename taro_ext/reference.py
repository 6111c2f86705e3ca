"""The TARo decode step in plain PyTorch: the ground truth every backend is tested against.

Everything here follows ../shared/TARO_SPEC.md step by step, in fp32, written for
reading rather than speed. Points where the spec is silent, and what we chose:

* Router features clamp log-prob values from below at ``FEATURE_LOGPROB_FLOOR``
  (-100) so that masked (-inf) or huge negative entries inside a top-K list (or the
  full-logits router's input) give finite features instead of NaN.
* In the mixed score ``s = lp_b + alpha * lp_r`` the reward term is 0 when
  ``alpha == 0`` (so ``alpha_override=0`` is exactly the base model even where the
  reward model masks a token with -inf; 0 * -inf would be NaN).
* ``temperature`` is 0 (greedy) or in ``[MIN_TEMPERATURE, MAX_TEMPERATURE]`` and every alpha
  (``alpha_override``, GenARM's alpha, a router's ``alpha_max``) at most ``MAX_ALPHA``: the
  kernels compute ``s / T`` and ``alpha * lp_r`` in fp32, and outside these bounds ordinary
  logits overflow (NaN log-probs, token 0) or ``1 / T`` leaves fp32's normal range (masked
  tokens picked). Values outside are errors, not rounded.
* Sampling's prefix sums are taken in float64 here (the kernels use fp32 with a
  different summation order; the spec's 1e-4 margin covers the difference).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

FEATURE_LOGPROB_FLOOR = -100.0
MIN_TEMPERATURE = 1e-4
MAX_TEMPERATURE = 1e4
MAX_ALPHA = 1e4


@dataclass
class RowStats:
    """Per-row quantities of pass 1: log-probs, entropies and both top-K lists."""

    lp_b: torch.Tensor  # [B, V] fp32
    lp_r: torch.Tensor  # [B, V] fp32
    h_b: torch.Tensor  # [B]
    h_r: torch.Tensor  # [B]
    v_b: Optional[torch.Tensor] = None  # [B, K] top-K log-probs, descending (None: not needed)
    i_b: Optional[torch.Tensor] = None  # [B, K] their token ids
    v_r: Optional[torch.Tensor] = None
    i_r: Optional[torch.Tensor] = None


def log_softmax_rows(logits: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Spec step 1: fp32 log-softmax over the first ``vocab_size`` columns."""
    return torch.log_softmax(logits[:, :vocab_size].float(), dim=-1)


def entropy(lp: torch.Tensor) -> torch.Tensor:
    """Spec step 2: ``-sum exp(lp) * lp`` in nats; a -inf entry contributes 0."""
    terms = torch.where(torch.isfinite(lp), lp.exp() * lp, torch.zeros_like(lp))
    return -terms.sum(dim=-1)


def topk_lowest_id_ties(lp: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Spec step 3: top-K values descending, equal values ordered by lower token id.

    A stable descending sort keeps equal values in id order, which is exactly the
    tie rule (torch.topk makes no promise about ties).
    """
    values, ids = torch.sort(lp, dim=-1, descending=True, stable=True)
    return values[:, :k], ids[:, :k]


def row_stats(base_logits: torch.Tensor, reward_logits: torch.Tensor, vocab_size: int,
              k: Optional[int]) -> RowStats:
    """Pass 1 of the step; the top-K lists only when ``k`` is given (design ``topk``)."""
    lp_b = log_softmax_rows(base_logits, vocab_size)
    lp_r = log_softmax_rows(reward_logits, vocab_size)
    stats = RowStats(lp_b, lp_r, entropy(lp_b), entropy(lp_r))
    if k is not None:
        stats.v_b, stats.i_b = topk_lowest_id_ties(lp_b, k)
        stats.v_r, stats.i_r = topk_lowest_id_ties(lp_r, k)
    return stats


def topk_features(stats: RowStats, embed: torch.Tensor) -> torch.Tensor:
    """Spec step 4: ``[v_b, v_r, H_b, H_r, E[i_b[0..K)], E[i_r[0..K)]]`` per row."""
    batch = stats.v_b.shape[0]
    emb = embed.float()
    return torch.cat(
        [
            stats.v_b.clamp_min(FEATURE_LOGPROB_FLOOR),
            stats.v_r.clamp_min(FEATURE_LOGPROB_FLOOR),
            stats.h_b[:, None],
            stats.h_r[:, None],
            emb[stats.i_b].reshape(batch, -1),
            emb[stats.i_r].reshape(batch, -1),
        ],
        dim=-1,
    )


def full_features(stats: RowStats) -> torch.Tensor:
    """Design ``full``: ``[lp_b, lp_r]`` (2V values per row)."""
    return torch.cat([stats.lp_b, stats.lp_r], dim=-1).clamp_min(FEATURE_LOGPROB_FLOOR)


def router_mlp(x: torch.Tensor, w1, b1, w2, b2, alpha_max: float) -> torch.Tensor:
    """Spec step 5: ``alpha = alpha_max * sigmoid(w2 . silu(W1 x + b1) + b2)``."""
    h = F.silu(x @ w1.float().t() + b1.float())
    u = h @ w2.float() + b2.float()
    return alpha_max * torch.sigmoid(u)


def mixed_score(lp_b: torch.Tensor, lp_r: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Spec step 6: ``s = lp_b + alpha * lp_r``; the reward term is 0 when alpha == 0."""
    a = alpha[:, None]
    return lp_b + torch.where(a == 0, torch.zeros_like(lp_r), a * lp_r)


def pick_tokens(s: torch.Tensor, temperature: float, uniform: Optional[torch.Tensor]) -> torch.Tensor:
    """Spec step 7: greedy argmax (lowest id on ties) or inverse-CDF sampling in id order."""
    if temperature == 0:
        return torch.argmax(s, dim=-1)  # torch documents the first maximal index
    scaled = s / temperature
    p = torch.exp(scaled - scaled.max(dim=-1, keepdim=True).values).double()
    cdf = torch.cumsum(p, dim=-1)
    threshold = uniform.double()[:, None] * cdf[:, -1:]
    # Smallest j with cdf_j > threshold. cdf is non-decreasing, so that j has p_j > 0.
    # If rounding leaves no such j (u close to 1), take the last token with p > 0.
    crossed = cdf > threshold
    last_positive = p.shape[-1] - 1 - torch.argmax(torch.flip(p > 0, dims=[-1]).int(), dim=-1)
    first = torch.argmax(crossed.int(), dim=-1)
    return torch.where(crossed.any(dim=-1), first, last_positive)


def output_logprobs(s: torch.Tensor, temperature: float) -> torch.Tensor:
    """Spec step 8: ``log_softmax(s / T)`` for T > 0, ``log_softmax(s)`` for T == 0."""
    return torch.log_softmax(s / temperature if temperature > 0 else s, dim=-1)


def finish_step(stats: RowStats, alpha: torch.Tensor, temperature: float, uniform, return_logprobs: bool):
    s = mixed_score(stats.lp_b, stats.lp_r, alpha)
    tokens = pick_tokens(s, temperature, uniform)
    lp = output_logprobs(s, temperature)
    token_lp = lp.gather(-1, tokens[:, None])[:, 0]
    return tokens, alpha, token_lp, (lp if return_logprobs else None)


def reference_step(
    base_logits: torch.Tensor,
    reward_logits: torch.Tensor,
    *,
    vocab_size: int,
    k: Optional[int] = None,
    router_weights: Optional[dict] = None,
    design: str = "topk",
    alpha_override: Optional[float] = None,
    temperature: float = 0.0,
    uniform: Optional[torch.Tensor] = None,
    return_logprobs: bool = False,
):
    """The whole step. ``router_weights`` holds embed (topk only), w1, b1, w2, b2, alpha_max;
    ``k`` is required for design ``topk`` and unused otherwise.

    Returns ``(tokens int64 [B], alpha fp32 [B], token_logprobs fp32 [B], logprobs fp32 [B, V] or None)``.
    """
    needs_topk = alpha_override is None and design == "topk"
    stats = row_stats(base_logits, reward_logits, vocab_size, k if needs_topk else None)
    if alpha_override is not None:
        alpha = torch.full((base_logits.shape[0],), float(alpha_override), dtype=torch.float32,
                           device=base_logits.device)
    else:
        w = router_weights
        x = topk_features(stats, w["embed"]) if design == "topk" else full_features(stats)
        alpha = router_mlp(x, w["w1"], w["b1"], w["w2"], w["b2"], float(w["alpha_max"]))
    return finish_step(stats, alpha, temperature, uniform, return_logprobs)
