"""Parity of every fused backend (cpu, triton, cuda) with the PyTorch reference.

One file for the whole kernel family: each test runs on every fused backend that can run
on the test device (``available_backends(device)`` minus ``torch``). Tolerances are the
spec's (TARO_SPEC.md): tokens identical except where the reference's own margin is below
1e-4; alpha abs 1e-4 (fp32) / 2e-3 (bf16, fp16); logprobs abs 1e-4 / 2e-2.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

import pytest
import torch

import taro_ext
from taro_ext import TopKRouter, genarm_step, taro_step
from taro_ext import reference

TOKEN_MARGIN = 1e-4
# Triton on CPU tensors runs in the interpreter, which is very slow (BUILD_NOTES.md).
INTERPRETER_MAX_VOCAB = 4096
INTERPRETER_MAX_BATCH = 3  # row 0 random u, rows 1 and 2 the u = 0 and u -> 1 edge rows (make_inputs)


def _devices() -> list[str]:
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def fused_backends(device: str) -> list[str]:
    return [b for b in taro_ext.available_backends(device) if b != "torch"]


BACKENDS = [pytest.param(d, b, id=f"{b}-{d}") for d in _devices() for b in fused_backends(d)]


@dataclasses.dataclass(frozen=True)
class Case:
    batch: int
    vocab: int
    k: int
    dtype: torch.dtype
    temperature: float
    alpha_override: Optional[float] = None  # None: the router picks alpha
    rows: str = "plain"  # "plain", "masked" (-inf entries), "sparse" (fewer than K finite) or "ties"
    width: Optional[int] = None  # logits width; None: vocab
    embed_bf16: bool = False

    def __str__(self):
        dt = str(self.dtype).removeprefix("torch.")
        alpha = "router" if self.alpha_override is None else f"alpha{self.alpha_override}"
        width = "" if self.width is None else f"w{self.width}"
        emb = "-embbf16" if self.embed_bf16 else ""
        return f"B{self.batch}-V{self.vocab}{width}-K{self.k}-{dt}-T{self.temperature}-{alpha}-{self.rows}{emb}"


F32, BF16, F16 = torch.float32, torch.bfloat16, torch.float16

# A covering set, not the cartesian product: every dtype, vocab size, batch size, K,
# temperature, alpha source and row kind appears, and each with several of the others.
# The router path sorts whole rows in the reference, so the largest rows use small batches.
CASES = [
    Case(1, 7, 1, F32, 0.0, rows="ties"),
    Case(3, 7, 7, BF16, 0.7, rows="masked", width=9),
    Case(64, 7, 1, F16, 1.0, alpha_override=0.5, rows="ties"),
    Case(8, 1000, 16, BF16, 0.7, rows="masked", embed_bf16=True),
    Case(64, 1000, 64, F16, 1.0, rows="ties"),
    Case(3, 1000, 64, F32, 0.0, rows="plain", width=1003),
    Case(3, 3000, 16, F32, 1.0, rows="ties", width=3011),
    Case(3, 32000, 16, F32, 0.7, alpha_override=0.5, rows="masked"),
    Case(64, 32000, 1, BF16, 0.0, alpha_override=0.0, rows="masked"),
    Case(8, 32000, 64, F16, 0.0, rows="ties"),
    Case(1, 49152, 64, BF16, 0.0, rows="ties"),
    Case(3, 49152, 16, F32, 1.0, rows="masked"),
    Case(8, 128256, 16, F32, 0.0, rows="plain"),
    Case(1, 128256, 16, F16, 0.7, rows="masked"),
    Case(3, 128256, 16, BF16, 0.7, alpha_override=1.5, rows="plain"),
    Case(3, 151936, 16, BF16, 1.0, rows="ties", width=152064),
    Case(8, 151936, 64, F32, 0.7, alpha_override=1.0, rows="plain", width=152064),
    Case(1, 151936, 1, F32, 0.0, rows="masked", width=152064, embed_bf16=True),
    Case(3, 49152, 64, BF16, 0.7, rows="sparse"),
    # Wide enough that the CPU kernel splits a row across threads (at least 131072 logits per
    # thread; the threads=4 sweep below).
    Case(1, 300000, 16, F32, 0.0, rows="sparse"),
    Case(1, 300000, 64, BF16, 0.0, rows="ties"),
    Case(3, 300000, 16, F32, 0.7, rows="masked"),
]


def cases_for(backend: str, device: str) -> list[Case]:
    """The cases a backend runs on a device: all of them, except for Triton's CPU interpreter."""
    if backend == "triton" and device == "cpu":
        return [dataclasses.replace(c, batch=min(c.batch, INTERPRETER_MAX_BATCH))
                for c in CASES if c.vocab <= INTERPRETER_MAX_VOCAB]
    return CASES


PARITY = [pytest.param(d, b, c, id=f"{b}-{d}-{c}") for d in _devices() for b in fused_backends(d)
          for c in cases_for(b, d)]


def seeded_router(seed: int, vocab: int, **kwargs) -> TopKRouter:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TopKRouter(vocab, **kwargs)


def make_inputs(case: Case, device: str, seed: int = 0):
    """Logits [B, width] (padding past vocab holds NaN: it must never be read), router, uniform."""
    g = torch.Generator().manual_seed(seed)
    B, V = case.batch, case.vocab
    width = case.width or V
    logits = [torch.randn(B, width, generator=g) * 3 for _ in range(2)]
    if case.rows == "masked":
        for x in logits:
            x[torch.rand(B, width, generator=g) < 0.1] = -math.inf
            x[0, : V // 4] = -math.inf  # a long masked run at the start of a row
    elif case.rows == "sparse":
        # Fewer finite logits than K (the same ids in both rows): the top-K lists hold -inf
        # entries, which every slice of a row split across threads must still offer.
        keep = torch.randperm(V, generator=g)[: max(case.k // 2, 1)]
        for x in logits:
            finite = x[:, keep].clone()
            x[:, :V] = -math.inf
            x[:, keep] = finite
    elif case.rows == "ties":
        # Duplicated maxima at the same ids in both rows (so the mixed score ties exactly
        # there; one of them is the last id), and duplicated values inside each top-K.
        top = torch.cat([torch.randint(0, max(V - 1, 1), (1,), generator=g), torch.tensor([V - 1])])
        for x in logits:
            peak = x[:, :V].max()
            x[:, torch.randperm(V, generator=g)[: 2 * case.k + 2]] = peak + 0.5
            x[:, top] = peak + 1.0
    for x in logits:
        x[:, V:] = math.nan
    base, reward = (x.to(case.dtype).to(device) for x in logits)
    router = None
    if case.alpha_override is None:
        router = seeded_router(seed, V, k=case.k)
        with torch.no_grad():
            router.b1.normal_(generator=g)
            router.b2.fill_(0.3)
        if case.embed_bf16:
            router.embed.data = router.embed.data.bfloat16()
        router = router.to(device)
    uniform = torch.rand(B, generator=g)
    if B >= 3:
        uniform[1] = 0.0
        uniform[2] = 1.0 - 2.0 ** -24  # the largest float32 below 1
    return base, reward, router, uniform.to(device)


def run_step(backend, base, reward, router, case, uniform, return_logprobs=True):
    return taro_step(base, reward, router, temperature=case.temperature,
                     uniform=uniform if case.temperature > 0 else None, vocab_size=case.vocab,
                     alpha_override=case.alpha_override, return_logprobs=return_logprobs, backend=backend)


def reference_margins(base, reward, vocab, alpha, temperature, uniform) -> torch.Tensor:
    """Per row, how far the reference's token is from flipping (TARO_SPEC.md, tolerances).

    Greedy: gap between the top score and the next distinct score (exact ties are decided
    by the tie rule, identically in every backend). Sampling: distance of u * sum(p) from
    the nearest prefix-sum boundary between two tokens of positive probability, with p in
    the reference's own units (p = exp(s/T - max), so the likeliest token has p = 1); 0 and
    sum(p) separate nothing (u = 0 takes the first such token, u just below 1 the last).
    """
    stats = reference.row_stats(base, reward, vocab, None)
    s = reference.mixed_score(stats.lp_b, stats.lp_r, alpha).double()
    if temperature == 0:
        top = s.max(dim=-1, keepdim=True).values
        below = torch.where(s < top, s, torch.full_like(s, -math.inf)).max(dim=-1).values
        return (top[:, 0] - below).nan_to_num(math.inf)
    scaled = (s / temperature).float()
    p = torch.exp(scaled - scaled.max(dim=-1, keepdim=True).values).double()
    cdf = torch.cumsum(p, dim=-1)
    total = cdf[:, -1:]
    ids = torch.arange(p.shape[-1], device=p.device)
    positive = p > 0
    first = torch.argmax(positive.int(), dim=-1, keepdim=True)
    last = p.shape[-1] - 1 - torch.argmax(positive.flip(-1).int(), dim=-1, keepdim=True)
    distance = (cdf - uniform.double()[:, None] * total).abs()
    inner = (ids >= first) & (ids < last)
    return torch.where(inner, distance, torch.full_like(distance, math.inf)).min(dim=-1).values


def assert_matches_reference(got, want, base, reward, case, uniform):
    half = case.dtype != F32
    alpha_tol = 2e-3 if half else 1e-4
    lp_tol = 2e-2 if half else 1e-4
    torch.testing.assert_close(got.alpha, want.alpha, atol=alpha_tol, rtol=0)
    margins = reference_margins(base, reward, case.vocab, want.alpha, case.temperature, uniform)
    decided = margins >= TOKEN_MARGIN
    assert decided.any(), "every row is a near-tie: the case tests nothing"
    assert torch.equal(got.tokens[decided], want.tokens[decided]), (got.tokens, want.tokens, margins)
    assert bool(((got.tokens >= 0) & (got.tokens < case.vocab)).all())
    torch.testing.assert_close(got.logprobs, want.logprobs, atol=lp_tol, rtol=0)
    # The token's log-prob is that row's log-prob at the backend's own token.
    own = want.logprobs.gather(1, got.tokens[:, None])[:, 0]
    torch.testing.assert_close(got.token_logprobs, own, atol=lp_tol, rtol=0)
    # A sampled token never has zero probability.
    assert bool(torch.isfinite(own).all())


@pytest.mark.parametrize("device,backend,case", PARITY)
def test_step_matches_reference(device, backend, case):
    base, reward, router, uniform = make_inputs(case, device)
    want = run_step("torch", base, reward, router, case, uniform)
    got = run_step(backend, base, reward, router, case, uniform)
    assert got.tokens.dtype == torch.int64 and got.alpha.dtype == torch.float32
    assert got.logprobs.shape == (case.batch, case.vocab) and got.logprobs.dtype == torch.float32
    assert got.tokens.device == base.device
    assert_matches_reference(got, want, base, reward, case, uniform)


@pytest.mark.parametrize("device,backend", BACKENDS)
def test_logprobs_only_when_asked(device, backend):
    case = Case(3, 1000, 16, F32, 0.7)
    base, reward, router, uniform = make_inputs(case, device)
    without = run_step(backend, base, reward, router, case, uniform, return_logprobs=False)
    with_lp = run_step(backend, base, reward, router, case, uniform, return_logprobs=True)
    assert without.logprobs is None and without.token_logprobs is None
    assert torch.equal(without.tokens, with_lp.tokens)
    assert torch.equal(without.alpha, with_lp.alpha)


@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("shift", [1e4, -7777.7, 3001.3])
def test_router_features_hold_fp32_precision_at_large_logits(device, backend, shift):
    """Rows moved to |x| ~ 1e4, where fp32's grid is 1e-3 wide: the log-prob features must come
    from x - max (exact near the max), not from x - (max + log sum) or a rounded max * log2(e), which
    are off by up to 5e-4 there. The router reads the top-1 base log-prob through one unsaturated
    unit, so alpha moves about 1.3x its error (the CPU kernel's was 2e-4 to 7e-4 before the fix)."""
    V = 4096
    g = torch.Generator().manual_seed(3)
    base = torch.rand(3, V, generator=g) * 6 - 3
    reward = torch.rand(3, V, generator=g) * 6 - 3
    base[:, [V // 3, V // 2]] = 5.0
    base, reward = (base + shift).to(device), (reward + 0.5 * shift).to(device)
    router = TopKRouter(V, k=1, embed_dim=1, hidden=1, alpha_max=4.0)
    with torch.no_grad():
        for p in router.parameters():
            p.zero_()
        router.w1[0, 0] = 1.0  # x = [lp_b top-1, lp_r top-1, H_b, H_r, embeddings]
        router.b1.fill_(5.0)
        router.w2.fill_(2.0)
        router.b2.fill_(-0.35)
    router = router.to(device)
    want = taro_step(base, reward, router, backend="torch")
    got = taro_step(base, reward, router, backend=backend)
    assert 0.5 < float(want.alpha.min()) and float(want.alpha.max()) < 3.5  # the sigmoid is not saturated
    torch.testing.assert_close(got.alpha, want.alpha, atol=1e-4, rtol=0)


# (logit shift, spread, temperature): logits near 1e4 (fp32's grid 1e-3 there), logits near 30
# sampled at T = 1e-3 (s / T near 3e4 from raw sums), and a negative shift at a low T.
SCORE_PRECISION_ROWS = [(1e4, 3.0, 0.0), (1e4, 3.0, 1.0), (30.0, 0.005, 1e-3), (-3e3, 0.3, 0.05)]


def float64_pick(base, reward, vocab, alpha, temperature, uniform):
    """The step in float64 at a given alpha: (tokens, margins, log-probs), margins as in
    ``reference_margins`` (greedy: top-2 gap of s; sampling: distance of u * sum(p) from a boundary)."""
    lp_b = torch.log_softmax(base[:, :vocab].double(), -1)
    lp_r = torch.log_softmax(reward[:, :vocab].double(), -1)
    s = lp_b + alpha.double()[:, None] * lp_r
    z = s / temperature if temperature > 0 else s
    logprobs = torch.log_softmax(z, -1)
    if temperature == 0:
        top2 = z.topk(2, dim=-1).values
        return z.argmax(-1), top2[:, 0] - top2[:, 1], logprobs
    cdf = torch.cumsum(logprobs.exp(), -1)
    threshold = uniform.double()[:, None] * cdf[:, -1:]
    tokens = torch.argmax((cdf > threshold).int(), dim=-1)
    return tokens, (cdf - threshold).abs()[:, :-1].min(-1).values, logprobs


@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("alpha_override", [None, 1.5], ids=["taro", "genarm"])
@pytest.mark.parametrize("shift,spread,temperature", SCORE_PRECISION_ROWS)
def test_mixed_score_holds_fp32_precision(device, backend, alpha_override, shift, spread, temperature):
    """The pick and the log-probs come from z = s / T, which fp32 rounds on the grid of |z|. Mixing
    raw logits (x_b + alpha x_r, an algebraically equal shift of s) put z near 2e4 or 6e4 for these
    rows, where greedy tokens flipped at margins of 1e-3 and log-probs were off by up to 4e-3 (CPU;
    Triton's GenARM). Held to the step in float64 at the backend's own alpha (the fp32 reference is
    itself off by ulp(|s|) / T: 2e-3 at T = 1e-3 and V = 2048): tokens above the spec's margin,
    log-probs within 1e-4 where they are above -30."""
    batch = INTERPRETER_MAX_BATCH if backend == "triton" and device == "cpu" else 16
    V = 2048
    g = torch.Generator().manual_seed(11)
    base = (torch.randn(batch, V, generator=g) * spread + shift).to(device)
    reward = (torch.randn(batch, V, generator=g) * spread + 0.5 * shift).to(device)
    uniform = torch.rand(batch, generator=g).to(device) if temperature > 0 else None
    router = None
    if alpha_override is None:
        router = seeded_router(4, V, k=4, alpha_max=3.0).to(device)
    kwargs = dict(temperature=temperature, uniform=uniform, vocab_size=V, alpha_override=alpha_override,
                  return_logprobs=True)
    want = taro_step(base, reward, router, backend="torch", **kwargs)
    got = taro_step(base, reward, router, backend=backend, **kwargs)
    torch.testing.assert_close(got.alpha, want.alpha, atol=1e-4, rtol=0)
    tokens, margins, logprobs = float64_pick(base, reward, V, got.alpha, temperature, uniform)
    decided = margins >= TOKEN_MARGIN
    assert int(decided.sum()) >= batch // 2, margins
    assert torch.equal(got.tokens[decided], tokens[decided]), (got.tokens, tokens, margins)
    near = logprobs > -30.0
    torch.testing.assert_close(got.logprobs[near].double(), logprobs[near], atol=1e-4, rtol=0)


@pytest.mark.skipif("cpu" not in fused_backends("cpu"), reason="the CPU kernel is not built")
@pytest.mark.parametrize("alpha_override", [None, 1.5], ids=["taro", "genarm"])
def test_mixed_score_precision_with_rows_split_across_threads(alpha_override):
    """The CPU kernel cuts 3 rows of 300000 logits into chunks on 4 threads; a GenARM row whose raw
    scores are too large is then mixed again relative to its maxima on the calling thread."""
    B, V = 3, 300000
    g = torch.Generator().manual_seed(12)
    base = torch.randn(B, V, generator=g) * 3 + 1e4
    reward = torch.randn(B, V, generator=g) * 3 + 5e3
    uniform = torch.rand(B, generator=g)
    router = None if alpha_override is not None else seeded_router(4, V, k=4, alpha_max=3.0)
    saved = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        got = taro_step(base, reward, router, temperature=1.0, uniform=uniform, vocab_size=V,
                        alpha_override=alpha_override, return_logprobs=True, backend="cpu")
    finally:
        torch.set_num_threads(saved)
    tokens, margins, logprobs = float64_pick(base, reward, V, got.alpha, 1.0, uniform)
    decided = margins >= TOKEN_MARGIN
    assert torch.equal(got.tokens[decided], tokens[decided]), (got.tokens, tokens, margins)
    near = logprobs > -30.0
    torch.testing.assert_close(got.logprobs[near].double(), logprobs[near], atol=1e-4, rtol=0)


@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("top", [3.2e9, 5e9, -5e9])
def test_huge_finite_logits_give_the_reference_alpha(device, backend, top):
    """At |max| near 5e9 the CPU kernel's exp sweep shift (max * log2(e), rounded on a grid of 512)
    overflowed 2^err: alpha was NaN and the reward model lost to rounding against the base."""
    base = torch.tensor([[top, 0.0, 1.0, 2.0], [top, top, 0.0, -1.0]]).to(device)
    reward = torch.tensor([[0.0, 0.0, 3.0, 0.0], [0.0, 5.0, 1.0, 2.0]]).to(device)
    # K = 1: further down the lists, logits 0, 1 and 2 all round to the log-prob -5e9 (README,
    # "Spec choices" 6: the reference then ranks by id, the kernels by logit).
    router = seeded_router(2, 4, k=1, embed_dim=2, hidden=3).to(device)
    want = taro_step(base, reward, router, backend="torch", return_logprobs=True)
    got = taro_step(base, reward, router, backend=backend, return_logprobs=True)
    torch.testing.assert_close(got.alpha, want.alpha, atol=1e-4, rtol=0)
    assert got.tokens.tolist() == want.tokens.tolist()
    near = want.logprobs > -30.0  # further out both round on fp32's grid at 5e9 (512)
    torch.testing.assert_close(got.logprobs[near], want.logprobs[near], atol=1e-4, rtol=0)


@pytest.mark.parametrize("device,backend", BACKENDS)
def test_fp16_subnormals_survive_flush_to_zero(device, backend):
    """fp16 logits below 6.1e-5 are subnormal halves but normal floats: widening them must not pass
    through an fp32 denormal, which a thread with flush-to-zero (torch.set_flush_denormal) reads as 0."""
    base = torch.zeros(1, 64, dtype=torch.float16)
    base[0, 1] = 3e-6
    base[0, 7] = -2e-7
    base, reward = base.to(device), torch.zeros(1, 64, dtype=torch.float16, device=device)
    router = seeded_router(1, 64, k=1).to(device)
    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU cannot flush denormals")
    try:
        got = taro_step(base, reward, router, backend=backend)
    finally:
        torch.set_flush_denormal(False)
    want = taro_step(base, reward, router, backend="torch")
    assert got.tokens.tolist() == want.tokens.tolist() == [1]
    torch.testing.assert_close(got.alpha, want.alpha, atol=2e-3, rtol=0)


# The fast paths without log-probs (greedy: no exp in the pick; GenARM greedy: one read of both
# rows, no exp at all), over every case of the sweep (ties at the K-th value, masked rows, bf16,
# fp16), with rows split across threads (B below the thread count) and whole rows per thread.
NO_LOGPROBS = [pytest.param(d, b, c, threads, id=f"{b}-{d}-{c}-threads{threads}")
               for d in _devices() for b in fused_backends(d) for c in cases_for(b, d)
               for threads in ((1, 4) if b == "cpu" else (1,))]


@pytest.mark.parametrize("device,backend,case,threads", NO_LOGPROBS)
def test_step_without_logprobs_matches_reference(device, backend, case, threads):
    base, reward, router, uniform = make_inputs(case, device)
    want = run_step("torch", base, reward, router, case, uniform)
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = run_step(backend, base, reward, router, case, uniform, return_logprobs=False)
    finally:
        torch.set_num_threads(saved)
    assert got.logprobs is None and got.token_logprobs is None
    torch.testing.assert_close(got.alpha, want.alpha, atol=2e-3 if case.dtype != F32 else 1e-4, rtol=0)
    margins = reference_margins(base, reward, case.vocab, want.alpha, case.temperature, uniform)
    decided = margins >= TOKEN_MARGIN
    assert decided.any()
    assert torch.equal(got.tokens[decided], want.tokens[decided]), (got.tokens, want.tokens, margins)


@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("temperature", [0.5, 1.0])
def test_sampling_never_returns_zero_probability_token(device, backend, temperature):
    """u just below 1 (and u = 0) with masked tokens at both ends of every row."""
    B, V = 2, 1000
    g = torch.Generator().manual_seed(1)
    base = torch.randn(B, V + 5, generator=g)
    base[:, :7] = -math.inf
    base[:, V - 300:] = -math.inf
    base[:, V:] = math.nan
    reward = torch.randn(B, V + 5, generator=g)
    reward[:, V:] = math.nan
    uniform = torch.tensor([1.0 - 2.0 ** -24, 0.0])
    out = genarm_step(base.to(device), reward.to(device), 0.7, vocab_size=V, temperature=temperature,
                      uniform=uniform.to(device), return_logprobs=True, backend=backend)
    tokens = out.tokens.cpu()
    assert tokens[0].item() == V - 301  # the last token of positive probability
    assert tokens[1].item() == 7  # the first one
    assert bool(torch.isfinite(out.token_logprobs).all())


# --- cpu-only: fuzzing and torch.compile -------------------------------------------------

needs_cpu_kernel = pytest.mark.skipif("cpu" not in taro_ext.available_backends("cpu"),
                                      reason="taro_ext._C (the CPU kernel) is not built")


@needs_cpu_kernel
def test_fuzz_small_shapes_against_reference():
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies

    @hypothesis.settings(max_examples=40, deadline=None, derandomize=True)
    @hypothesis.given(batch=st.integers(1, 4), vocab=st.integers(1, 300), pad=st.integers(0, 5),
                      k_frac=st.floats(0, 1), dtype=st.sampled_from([F32, BF16, F16]),
                      temperature=st.sampled_from([0.0, 0.3, 1.0, 2.0]),
                      alpha=st.one_of(st.none(), st.sampled_from([0.0, 0.25, 1.0, 3.0])),
                      masked=st.floats(0, 0.9), seed=st.integers(0, 2**31 - 1))
    def check(batch, vocab, pad, k_frac, dtype, temperature, alpha, masked, seed):
        g = torch.Generator().manual_seed(seed)
        k = 1 + int(k_frac * (min(vocab, 24) - 1))
        # Values from a small grid: ties everywhere, inside and across the top-K lists.
        rows = [torch.randint(-6, 7, (batch, vocab + pad), generator=g).float() * 0.5 for _ in range(2)]
        for x in rows:
            x[torch.rand(batch, vocab + pad, generator=g) < masked] = -math.inf
            x[:, 0] = torch.where(torch.isinf(x[:, 0]), 0.0, x[:, 0])  # keep one token finite in both rows
            x[:, vocab:] = math.nan
        base, reward = (x.to(dtype) for x in rows)
        case = Case(batch, vocab, k, dtype, temperature, alpha_override=alpha)
        router = None
        if alpha is None:
            router = seeded_router(seed, vocab, k=k, embed_dim=4, hidden=8)
            with torch.no_grad():
                router.b1.normal_(generator=g)
        uniform = torch.rand(batch, generator=g)
        want = run_step("torch", base, reward, router, case, uniform)
        got = run_step("cpu", base, reward, router, case, uniform)
        torch.testing.assert_close(got.alpha, want.alpha, atol=2e-3 if dtype != F32 else 1e-4, rtol=0)
        margins = reference_margins(base, reward, vocab, want.alpha, temperature, uniform)
        decided = margins >= TOKEN_MARGIN
        assert torch.equal(got.tokens[decided], want.tokens[decided])
        assert bool(((got.tokens >= 0) & (got.tokens < vocab)).all())
        torch.testing.assert_close(got.logprobs, want.logprobs, atol=1e-4, rtol=0)
        own = want.logprobs.gather(1, got.tokens[:, None])[:, 0]
        assert bool(torch.isfinite(own).all())

    check()


@needs_cpu_kernel
@pytest.mark.parametrize("view", ["expand", "as_strided"])
def test_rows_with_stride_below_vocab(view):
    """An expanded batch (stride(0) = 0) and overlapping as_strided rows: the CPU kernel reads
    the rows where they are, as the reference does."""
    V = 5000
    g = torch.Generator().manual_seed(4)
    flat_b, flat_r = torch.randn(V + 30, generator=g) * 3, torch.randn(V + 30, generator=g) * 3
    if view == "expand":
        base, reward = flat_b[None, :V].expand(3, V), flat_r[None, :V].expand(3, V)
    else:
        base, reward = flat_b.as_strided((3, V), (10, 1)), flat_r.as_strided((3, V), (10, 1))
    router = seeded_router(4, V, k=16)
    uniform = torch.rand(3, generator=g)
    for temperature in (0.0, 0.7):
        case = Case(3, V, 16, F32, temperature)
        want = run_step("torch", base.contiguous(), reward.contiguous(), router, case, uniform)
        got = run_step("cpu", base, reward, router, case, uniform)
        assert_matches_reference(got, want, base.contiguous(), reward.contiguous(), case, uniform)


@needs_cpu_kernel
def test_torch_compile_fullgraph_matches_eager():
    router = seeded_router(2, 500, k=8)
    g = torch.Generator().manual_seed(2)
    base, reward = torch.randn(4, 512, generator=g), torch.randn(4, 512, generator=g)
    uniform = torch.rand(4, generator=g)

    def step(base, reward, uniform):
        out = taro_step(base, reward, router, temperature=0.7, uniform=uniform, vocab_size=500,
                        return_logprobs=True, check_inputs=False, backend="cpu")
        return out.tokens, out.alpha, out.token_logprobs, out.logprobs

    # aot_eager traces through the op's fake implementation without a C++ codegen step.
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    for got, want in zip(compiled(base, reward, uniform), step(base, reward, uniform)):
        torch.testing.assert_close(got, want, atol=0, rtol=0)
