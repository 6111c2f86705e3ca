"""The decode step alone: tokens/s = B / step time, over B x V x dtype x K x temperature.

Each group is one shape; every row in it picks the next token from the same logits, and the
report's ratios are tokens/s against ``taro reference (torch eager)`` (``taro_step`` with
``backend="torch"``, the spec in plain PyTorch). Rows:

* ``base pick (torch)``: what the base model alone costs: softmax, then argmax or
  ``torch.multinomial`` (``flashinfer sampling`` is FlashInfer's fused kernel for the same,
  on a GPU where the package is installed).
* ``genarm (torch)``: GenARM's step as its public code writes it, in plain PyTorch;
  ``genarm fused <backend>``: the same through our kernel (``genarm_step``).
* ``taro full-logits (torch)``: the paper's expensive router, whose input is both whole rows.
* ``taro reference (torch eager)``, ``taro reference (torch.compile)``, ``taro fused <backend>``.

All rows call with ``check_inputs=False`` (what a decoder loop does once its inputs are
trusted), and each checks its tokens against the reference.

The CPU grid is the subset ``make bench`` runs here (under 10 minutes on 2 cores); the GPU grid
(``-m gpu``) is the full product and adds the achieved bandwidth of the fused kernels
(``bytes_read``) and the GPU's copy bandwidth as the roofline.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest
import torch

from taro_ext import FullLogitsRouter, TopKRouter, available_backends, genarm_step, reference, taro_step

from benchlib import HAS_GPU, assert_tokens_match, run_timed, sync

BASELINE = "taro reference (torch eager)"
GENARM_ALPHA = 1.0
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# Steps per timed call on a GPU, so that the host synchronisation is amortised.
GPU_STEPS_PER_CALL = 20


@dataclass(frozen=True)
class Shape:
    device: str
    batch: int
    vocab: int
    dtype: str
    k: int
    temperature: float
    compile: bool = False  # time torch.compile here (a cold compile costs minutes on 2 cores)

    @property
    def id(self) -> str:
        return f"{self.device}-B{self.batch}-V{self.vocab}-{self.dtype}-K{self.k}-T{self.temperature:g}"

    @property
    def group(self) -> str:
        return (f"step {self.device} B={self.batch} V={self.vocab} {self.dtype} K={self.k} "
                f"T={self.temperature:g}")


# V = 49152: SmolLM2; 128256: Llama 3; 152064: Qwen2.5.
CPU_SHAPES = [
    Shape("cpu", 1, 128256, "fp32", 16, 0.0),
    Shape("cpu", 8, 128256, "fp32", 16, 0.0, compile=True),
    Shape("cpu", 8, 128256, "fp32", 16, 1.0),
    Shape("cpu", 8, 128256, "bf16", 16, 0.0),
    Shape("cpu", 8, 128256, "fp32", 64, 0.0),
    Shape("cpu", 8, 49152, "fp32", 16, 0.0),
]
GPU_SHAPES = [
    Shape("cuda", b, v, dt, k, t, compile=(b == 8 and t == 0.0 and k == 16))
    for b, v, dt, k, t in itertools.product((1, 8, 64), (49152, 128256, 152064), ("bf16", "fp32"), (16, 64),
                                            (0.0, 1.0))
    if k == 16 or (v == 128256 and dt == "bf16")
]
SHAPES = [pytest.param(s, id=s.id) for s in CPU_SHAPES] + [
    pytest.param(s, id=s.id, marks=pytest.mark.gpu) for s in GPU_SHAPES]


class Case:
    """One shape's inputs, routers and reference outputs, shared by every row of its group."""

    def __init__(self, shape: Shape):
        self.shape = shape
        self.device = torch.device(shape.device)
        gen = torch.Generator().manual_seed(0)
        B, V = shape.batch, shape.vocab
        # Gaussian logits (std 2) in random order: the kernels' cost depends on the values only
        # through how often a top-K insertion happens, which random order keeps realistic.
        base = torch.randn(B, V, generator=gen) * 2.0
        reward = torch.randn(B, V, generator=gen) * 2.0
        dtype = DTYPES[shape.dtype]
        self.base = base.to(self.device, dtype)
        self.reward = reward.to(self.device, dtype)
        self.uniform = torch.rand(B, generator=gen).to(self.device) if shape.temperature > 0 else None
        torch.manual_seed(0)
        self.topk_router = TopKRouter(V, k=shape.k).to(self.device)
        self.full_router = FullLogitsRouter(V).to(self.device)
        self.steps = GPU_STEPS_PER_CALL if self.device.type == "cuda" else 1
        self.sample_gen = torch.Generator(self.device).manual_seed(0)
        self.ref = taro_step(self.base, self.reward, self.topk_router, temperature=shape.temperature,
                             uniform=self.uniform, return_logprobs=True, backend="torch")
        self.genarm_ref = genarm_step(self.base, self.reward, GENARM_ALPHA, temperature=shape.temperature,
                                      uniform=self.uniform, return_logprobs=True, backend="torch")

    def loop(self, step):
        """A timed call: ``steps`` decode steps, then the device work is waited for."""
        def call():
            for _ in range(self.steps):
                out = step()
            sync(self.device)
            return out
        return call

    def check_taro(self, out):
        assert_tokens_match(out.tokens, self.ref.tokens, self.ref.logprobs, self.shape.temperature, self.uniform)
        tol = 1e-4 if self.shape.dtype == "fp32" else 2e-3
        torch.testing.assert_close(out.alpha.cpu(), self.ref.alpha.cpu(), atol=tol, rtol=0)

    def check_genarm(self, tokens):
        assert_tokens_match(tokens, self.genarm_ref.tokens, self.genarm_ref.logprobs, self.shape.temperature,
                            self.uniform)

    def check_sampled(self, tokens, logits):
        """A token drawn by a sampler we cannot replay: in range and of nonzero probability."""
        tokens = tokens.long().cpu()
        assert ((tokens >= 0) & (tokens < self.shape.vocab)).all()
        picked = logits.float().cpu().gather(-1, tokens[:, None])
        assert torch.isfinite(picked).all()


@pytest.fixture(scope="module", params=SHAPES)
def case(request):
    return Case(request.param)


def _bench(benchmark, case, step, label, warmups=1, **extra):
    benchmark.group = case.shape.group
    return run_timed(benchmark, case.loop(step), label=label, baseline=BASELINE,
                     tokens=case.shape.batch * case.steps, warmups=warmups, budget_s=1.5, **extra)


def _bandwidth(case):
    """On a GPU, the logits bytes the timed steps must read at least once (both rows), from
    which the report derives the fused kernels' achieved bandwidth."""
    if case.device.type != "cuda":
        return {}
    return {"bytes_read": case.steps * 2 * case.base.numel() * case.base.element_size()}


def test_base_pick(benchmark, case):
    T, V = case.shape.temperature, case.shape.vocab

    def step():
        probs = torch.softmax(case.base[:, :V].float() / (T if T > 0 else 1.0), dim=-1)
        if T == 0:
            return torch.argmax(probs, dim=-1)
        return torch.multinomial(probs, 1, generator=case.sample_gen)[:, 0]

    tokens = _bench(benchmark, case, step, "base pick (torch)")
    if T == 0:
        assert torch.equal(tokens, torch.argmax(case.base[:, :V].float(), dim=-1))
    else:
        case.check_sampled(tokens, case.base)


@pytest.mark.gpu
def test_flashinfer_sampling(benchmark, case):
    if case.device.type != "cuda" or case.shape.temperature == 0:
        pytest.skip("FlashInfer's peer kernel is timed for sampling on a GPU")
    sampling = pytest.importorskip("flashinfer.sampling", reason="flashinfer is not installed")
    T = case.shape.temperature
    logits = case.base.float() / T

    tokens = _bench(benchmark, case, lambda: sampling.sampling_from_logits(logits, generator=case.sample_gen),
                    "flashinfer sampling (base)")
    case.check_sampled(tokens, case.base)


def test_genarm_torch(benchmark, case):
    T, V = case.shape.temperature, case.shape.vocab

    def step():
        # GenARM's public code: (log pi_b + alpha log pi_r), temperature T / (1 + alpha) after
        # dividing by 1 + alpha, which is softmax((lp_b + alpha lp_r) / T).
        s = (torch.log_softmax(case.base[:, :V].float(), -1)
             + GENARM_ALPHA * torch.log_softmax(case.reward[:, :V].float(), -1))
        if T == 0:
            return torch.argmax(s, dim=-1)
        return torch.multinomial(torch.softmax(s / T, dim=-1), 1, generator=case.sample_gen)[:, 0]

    tokens = _bench(benchmark, case, step, "genarm (torch)")
    if T == 0:
        case.check_genarm(tokens)
    else:
        case.check_sampled(tokens, case.base)


def _fused_backends(device_type):
    return ("cpu",) if device_type == "cpu" else ("triton", "cuda")


def _require_backend(case, backend):
    if backend not in _fused_backends(case.device.type):
        pytest.skip(f"backend {backend!r} does not run on {case.device.type} tensors")
    if case.device.type == "cpu" and backend == "triton":
        pytest.skip("Triton runs on CPU only under its interpreter, which is for tests, not timing")
    usable = available_backends(case.device)
    if backend not in usable:
        pytest.skip(f"backend {backend!r} is not available on {case.device.type} here (available: {usable})")


@pytest.mark.parametrize("backend", ["cpu", "triton", "cuda"])
def test_genarm_fused(benchmark, case, backend):
    _require_backend(case, backend)
    T = case.shape.temperature
    out = _bench(benchmark, case, lambda: genarm_step(case.base, case.reward, GENARM_ALPHA, temperature=T,
                                                      uniform=case.uniform, check_inputs=False,
                                                      backend=backend),
                 f"genarm fused {backend}", **_bandwidth(case))
    case.check_genarm(out.tokens)


def test_taro_full_logits(benchmark, case):
    T = case.shape.temperature
    out = _bench(benchmark, case, lambda: taro_step(case.base, case.reward, case.full_router, temperature=T,
                                                    uniform=case.uniform, check_inputs=False, backend="torch"),
                 "taro full-logits (torch)")
    # The step's alpha is the router's own (training-path) forward.
    with torch.no_grad():
        alpha = case.full_router(case.base, case.reward)
    torch.testing.assert_close(out.alpha, alpha, atol=1e-4, rtol=0)
    assert ((out.tokens >= 0) & (out.tokens < case.shape.vocab)).all()


def test_taro_reference(benchmark, case):
    T = case.shape.temperature
    out = _bench(benchmark, case, lambda: taro_step(case.base, case.reward, case.topk_router, temperature=T,
                                                    uniform=case.uniform, check_inputs=False, backend="torch"),
                 BASELINE)
    case.check_taro(out)


def test_taro_compiled(benchmark, case):
    if not case.shape.compile:
        pytest.skip("torch.compile is timed at one shape per device (each shape is a fresh compile)")
    weights = case.topk_router.weights()
    compiled = torch.compile(reference.reference_step, fullgraph=True)
    T = case.shape.temperature

    def step():
        return compiled(case.base, case.reward, vocab_size=case.shape.vocab, k=case.shape.k,
                        router_weights=weights, temperature=T, uniform=case.uniform)

    tokens, alpha, _, _ = _bench(benchmark, case, step, "taro reference (torch.compile)", warmups=2)
    assert_tokens_match(tokens, case.ref.tokens, case.ref.logprobs, T, case.uniform)
    torch.testing.assert_close(alpha.cpu(), case.ref.alpha.cpu(), atol=1e-4, rtol=0)


@pytest.mark.parametrize("backend", ["cpu", "triton", "cuda"])
def test_taro_fused(benchmark, case, backend):
    _require_backend(case, backend)
    T = case.shape.temperature
    out = _bench(benchmark, case, lambda: taro_step(case.base, case.reward, case.topk_router, temperature=T,
                                                    uniform=case.uniform, check_inputs=False, backend=backend),
                 f"taro fused {backend}", **_bandwidth(case))
    case.check_taro(out)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU")
def test_gpu_copy_bandwidth(benchmark):
    """The roofline: device-to-device copy of 1 GiB (read + write), against which the report
    sets the fused kernels' achieved read bandwidth."""
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    copies = 10

    def call():
        for _ in range(copies):
            dst.copy_(src)
        torch.cuda.synchronize()

    benchmark.group = "gpu copy bandwidth"
    run_timed(benchmark, call, label="device copy", baseline="device copy", tokens=0,
              bytes_moved=copies * 2 * src.numel())
    assert torch.equal(dst[:1024], src[:1024])
