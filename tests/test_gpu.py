"""Checks that need a CUDA device (marker ``gpu``; skipped without one). bench/gpu_check.sh
runs them on the GPU machine; parity of every shape and dtype is test_fused_step.py's.

- smoke: B in {1, 64, 600} at V = 128256, cuda and triton against the reference, under
  ``torch.cuda.set_sync_debug_mode("error")`` (a host synchronisation inside a step is an error);
- exactly one kernel launch per step (torch.profiler);
- 32 dependent decode steps captured in a CUDA graph replay the eager tokens and alphas;
- ``TaroGenerator(cache="static", cuda_graph=True)`` generates what the eager decode loop does;
- the CUDA paths where one CTA handles several (row, slice) items and the router loops
  over several rows (B above the resident CTAs, or the grid capped by TARO_CUDA_MAX_CTAS).
"""
from __future__ import annotations

import contextlib

import pytest
import torch

import taro_ext
from taro_ext import TopKRouter, taro_step

from test_fused_step import BF16, F32, Case, assert_matches_reference, make_inputs, run_step

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

FUSED = [pytest.param(b, marks=pytest.mark.skipif(
    not torch.cuda.is_available() or b not in taro_ext.available_backends("cuda"), reason=f"{b} not available"))
    for b in ("cuda", "triton")]


@contextlib.contextmanager
def no_host_sync():
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)


def check_parity(backend, case):
    base, reward, router, uniform = make_inputs(case, "cuda")
    want = run_step("torch", base, reward, router, case, uniform)
    with no_host_sync():
        got = taro_step(base, reward, router, temperature=case.temperature,
                        uniform=uniform if case.temperature > 0 else None, vocab_size=case.vocab,
                        alpha_override=case.alpha_override, return_logprobs=True, check_inputs=False,
                        backend=backend)
    assert_matches_reference(got, want, base, reward, case, uniform)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("batch", [1, 64, 600])
@pytest.mark.parametrize("temperature,alpha_override", [(0.0, None), (0.7, None), (0.7, 1.0)])
def test_smoke(backend, batch, temperature, alpha_override):
    check_parity(backend, Case(batch, 128256, 16, BF16, temperature, alpha_override=alpha_override))


@pytest.mark.parametrize("batch,vocab,cap", [(600, 4096, None), (300, 32000, None), (8, 32000, 5), (3, 1000, 2)])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_cuda_several_items_per_cta(monkeypatch, batch, vocab, cap, temperature):
    """B above the resident CTAs (S = 1, CTAs loop over rows in every phase, the router too),
    and a capped grid (TARO_CUDA_MAX_CTAS: as under MPS) that forces the same at small B."""
    if "cuda" not in taro_ext.available_backends("cuda"):
        pytest.skip("cuda backend not built")
    if cap is not None:
        monkeypatch.setenv("TARO_CUDA_MAX_CTAS", str(cap))
    check_parity("cuda", Case(batch, vocab, 16, F32, temperature, rows="masked"))
    check_parity("cuda", Case(batch, vocab, 8, BF16, temperature, alpha_override=0.5, rows="ties"))


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("temperature,logprobs", [(0.0, False), (1.0, True)])
@pytest.mark.parametrize("alpha_override", [None, 0.5])
def test_one_kernel_launch_per_step(backend, temperature, logprobs, alpha_override):
    from torch.profiler import ProfilerActivity, profile

    batch, vocab = 4, 32000
    torch.manual_seed(0)
    router = TopKRouter(vocab).cuda().eval()
    base, reward = torch.randn(batch, vocab, device="cuda"), torch.randn(batch, vocab, device="cuda")
    uniform = torch.rand(batch, device="cuda")

    def step():
        return taro_step(base, reward, router, temperature=temperature, uniform=uniform, return_logprobs=logprobs,
                         alpha_override=alpha_override, check_inputs=False, backend=backend)

    step()  # compile / warm up (and allocate the Triton row counters) outside the profile
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    kernels = [e.name for e in prof.events() if e.device_type.name == "CUDA"
               and "memcpy" not in e.name.lower() and "memset" not in e.name.lower()]
    assert len(kernels) == 1, kernels


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_cuda_graph_replay_matches_eager(backend, temperature):
    batch, vocab, steps = 8, 32000, 32
    torch.manual_seed(0)
    router = TopKRouter(vocab).cuda().eval()
    g = torch.Generator(device="cuda").manual_seed(0)
    logits_b = (3 * torch.randn(steps, batch, vocab, device="cuda", generator=g)).bfloat16()
    logits_r = (3 * torch.randn(steps, batch, vocab, device="cuda", generator=g)).bfloat16()
    uniforms = torch.rand(steps, batch, device="cuda", generator=g)
    bump = torch.full((batch, 1), 2.0, dtype=torch.bfloat16, device="cuda")

    def decode():
        """Dependent steps: each step's base logits get a bump at the previous token."""
        prev = torch.zeros(batch, dtype=torch.long, device="cuda")
        tokens, alphas = [], []
        for i in range(steps):
            b = logits_b[i].clone().scatter_add_(1, prev[:, None], bump)
            out = taro_step(b, logits_r[i], router, temperature=temperature, uniform=uniforms[i],
                            check_inputs=False, backend=backend)
            prev = out.tokens
            tokens.append(out.tokens)
            alphas.append(out.alpha)
        return torch.stack(tokens), torch.stack(alphas)

    eager_tokens, eager_alpha = decode()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        decode()  # warm-up on a side stream, as torch.cuda.graphs asks
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        graph_tokens, graph_alpha = decode()
    for _ in range(2):
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(graph_tokens, eager_tokens)
        assert torch.equal(graph_alpha, eager_alpha)
    assert graph_tokens.unique().numel() > 1


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_static_cache_cuda_graph_generator_matches_eager(backend, temperature):
    from taro_ext import TaroGenerator
    from taro_ext.tiny import char_tokenizer, tiny_llama

    tok = char_tokenizer()
    vocab = len(tok)
    base = tiny_llama(vocab, seed=0, tokenizer=tok).cuda()
    reward = tiny_llama(vocab, seed=1, tokenizer=tok).cuda()
    torch.manual_seed(5)
    router = TopKRouter(vocab, k=8, embed_dim=4, hidden=16).cuda().eval()
    prompts = ["12+7=", "what is 3*4? answer:", "a"]

    def run(cuda_graph):
        gen = TaroGenerator(base, reward, router, tok, backend=backend, cache="static", cuda_graph=cuda_graph)
        return gen.generate(prompts, max_new_tokens=12, temperature=temperature, seed=3)

    eager, graphed = run(False), run(True)
    assert graphed.token_ids == eager.token_ids
    assert graphed.texts == eager.texts
    for a, b in zip(graphed.alphas, eager.alphas):
        assert a == pytest.approx(b, abs=1e-5)
