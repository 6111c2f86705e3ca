"""Timing and correctness helpers shared by the benchmark modules."""
from __future__ import annotations

import time

import torch

HAS_GPU = torch.cuda.is_available()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_timed(benchmark, fn, *, label: str, baseline: str, tokens, budget_s: float = 1.0, warmups: int = 1,
              max_rounds: int = 50, min_rounds: int = 3, **extra):
    """Time ``fn`` (which must finish its device work before returning) with pytest-benchmark.

    ``warmups`` untimed calls come first (caches, allocator; 2 where the first compiles); the
    number of rounds is sized from the last of them so that a benchmark spends about
    ``budget_s`` (at least ``min_rounds``), which keeps the slow PyTorch baselines affordable
    on a 2-core machine. ``tokens`` is the number of tokens one call produces, or a function
    of the warm-up call's result that returns it. Returns the result of the last timed call
    for the caller's correctness check.
    """
    for _ in range(warmups):
        start = time.perf_counter()
        first = fn()
        once = time.perf_counter() - start
    if callable(tokens):
        tokens = tokens(first)
    rounds = max(min_rounds, min(max_rounds, int(budget_s / max(once, 1e-6))))
    benchmark.extra_info.update(label=label, baseline=baseline, tokens=tokens, **extra)
    return benchmark.pedantic(fn, rounds=rounds, warmup_rounds=0, iterations=1)


def assert_tokens_match(tokens, ref_tokens, ref_logprobs, temperature, uniform, margin=1e-4):
    """Tokens equal the reference's, except in rows where the reference's own decision margin
    is below ``margin`` (TARO_SPEC.md: top-2 gap of s for greedy; distance of u * sum(p)
    from the chosen token's prefix-sum boundaries for sampling)."""
    tokens, ref_tokens = tokens.cpu(), ref_tokens.cpu()
    lp = ref_logprobs.double().cpu()
    if temperature == 0:
        top2 = lp.topk(2, dim=-1).values
        row_margin = top2[:, 0] - top2[:, 1]
    else:
        p = lp.exp()
        cdf = p.cumsum(-1)
        thr = uniform.double().cpu() * cdf[:, -1]
        after = cdf.gather(-1, ref_tokens[:, None])[:, 0]
        before = torch.where(ref_tokens > 0, cdf.gather(-1, (ref_tokens - 1).clamp_min(0)[:, None])[:, 0],
                             torch.zeros_like(after))
        row_margin = torch.minimum((after - thr).abs(), (thr - before).abs())
    decided = row_margin >= margin
    mismatch = (tokens != ref_tokens) & decided
    assert not mismatch.any(), f"tokens differ from the reference in rows {mismatch.nonzero().flatten().tolist()}"


def natural_pick(s, temperature: float, uniform):
    """The pick a user writes: argmax, or inverse-CDF sampling with the caller's uniform (what
    ``torch.multinomial`` does with its own generator; the caller's draw makes it checkable)."""
    if temperature == 0:
        return torch.argmax(s, dim=-1)
    p = torch.softmax(s / temperature, dim=-1)
    cdf = torch.cumsum(p, dim=-1)
    return torch.searchsorted(cdf, (uniform * cdf[:, -1])[:, None], right=True)[:, 0].clamp_max(s.shape[-1] - 1)


def natural_taro_step(base, reward, weights: dict, k: int, vocab: int, temperature: float, uniform):
    """The TARo step as a performance engineer writes it in eager PyTorch: log_softmax,
    entropy, ``torch.topk`` (no stable sort), the router MLP, the mixed score and the pick.
    Returns (tokens, alpha)."""
    lp_b = torch.log_softmax(base[:, :vocab].float(), dim=-1)
    lp_r = torch.log_softmax(reward[:, :vocab].float(), dim=-1)
    # Entropy as torch.distributions.Categorical computes it: -(p * log p), log p clamped so that a
    # masked (-inf) entry gives 0 * finite (special.entr(p) would take the log again: 4 of the 10 ms).
    floor = torch.finfo(lp_b.dtype).min
    h_b = -(lp_b.exp() * lp_b.clamp_min(floor)).sum(-1)
    h_r = -(lp_r.exp() * lp_r.clamp_min(floor)).sum(-1)
    v_b, i_b = lp_b.topk(k, dim=-1)
    v_r, i_r = lp_r.topk(k, dim=-1)
    emb = weights["embed"].float()
    x = torch.cat([v_b.clamp_min(-100.0), v_r.clamp_min(-100.0), h_b[:, None], h_r[:, None],
                   emb[i_b].flatten(1), emb[i_r].flatten(1)], dim=-1)
    h = torch.nn.functional.silu(x @ weights["w1"].t() + weights["b1"])
    alpha = weights["alpha_max"] * torch.sigmoid(h @ weights["w2"] + weights["b2"])
    return natural_pick(lp_b + alpha[:, None] * lp_r, temperature, uniform), alpha


def natural_genarm_step(base, reward, alpha: float, vocab: int, temperature: float, uniform):
    """GenARM's step as its public code writes it: (log pi_b + alpha log pi_r), then the pick."""
    s = (torch.log_softmax(base[:, :vocab].float(), dim=-1)
         + alpha * torch.log_softmax(reward[:, :vocab].float(), dim=-1))
    return natural_pick(s, temperature, uniform)
