"""The decode step alone: tokens/s = B / step time, over B x V x dtype x K x temperature.

Each group is one shape; every row in it picks the next token from the same logits, and the
report's ratios are tokens/s against ``taro natural (torch eager)``: the step a performance
engineer writes in eager PyTorch (``log_softmax``, ``torch.topk``, the router MLP, argmax or
inverse-CDF sampling with the caller's uniform; ``benchlib.natural_taro_step``). Rows:

* ``taro natural (torch eager)``, ``taro natural (torch.compile)`` (at the shapes marked
  ``compile``), ``taro fused <backend>``;
* ``genarm natural (torch eager)`` (GenARM's step as its public code writes it) and
  ``genarm fused <backend>`` (``genarm_step``);
* ``base pick (torch)``: what the base model alone costs (``flashinfer sampling`` on a GPU
  where FlashInfer is installed);
* ``taro reference (torch eager)``: the spec in plain PyTorch (stable sort for the tie rule):
  the correctness anchor, timed for completeness, not the baseline;
* ``taro full-logits (torch)``: the paper's expensive router, whose input is both whole rows;
* floors, measured in the same run: ``floor: read both rows`` (one ``sum`` of each row) and
  ``floor: exp both rows`` (one ``torch.exp`` of each row into a preallocated output).

All rows call with ``check_inputs=False`` (what a decoder loop does once its inputs are
trusted), and each checks its tokens (and alpha) against the reference.

``test_fused_threads`` (CPU): the fused step on 1 and 2 threads, with the machine as it is and
with the other core kept busy by a second process spinning.

The CPU grid is the subset ``make bench`` runs here (about 10 minutes on 2 cores); the GPU grid
(``-m gpu``) is the full product and adds the achieved bandwidth of the fused kernels
(``bytes_read``) and the GPU's copy bandwidth as the roofline.
"""
from __future__ import annotations

import itertools
import subprocess
import sys
from dataclasses import dataclass

import pytest
import torch

from taro_ext import FullLogitsRouter, TopKRouter, available_backends, genarm_step, taro_step

from benchlib import (HAS_GPU, assert_tokens_match, natural_genarm_step, natural_taro_step, run_timed, sync)

BASELINE = "taro natural (torch eager)"
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
    Shape("cpu", 1, 128256, "fp32", 16, 0.0, compile=True),
    Shape("cpu", 8, 128256, "fp32", 16, 0.0, compile=True),
    Shape("cpu", 64, 128256, "fp32", 16, 0.0, compile=True),
    Shape("cpu", 8, 128256, "fp32", 16, 1.0),
    Shape("cpu", 8, 128256, "bf16", 16, 0.0),
    Shape("cpu", 8, 128256, "fp32", 64, 0.0),
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
        self.check_taro_tokens(out.tokens, out.alpha)

    def check_taro_tokens(self, tokens, alpha, alpha_rows=slice(None)):
        """Tokens against the reference; alpha on ``alpha_rows`` (all rows unless given)."""
        assert_tokens_match(tokens, self.ref.tokens, self.ref.logprobs, self.shape.temperature, self.uniform)
        tol = 1e-4 if self.shape.dtype == "fp32" else 2e-3
        torch.testing.assert_close(alpha.cpu()[alpha_rows], self.ref.alpha.cpu()[alpha_rows], atol=tol, rtol=0)

    def check_natural_taro(self, tokens, alpha):
        """The natural step's ``torch.topk`` does not apply the lowest-id tie rule, so where a
        row's top K+1 log-probs hold a tie (common in bf16) its candidate ids, hence its alpha,
        may differ from the reference's by design: alpha is checked on the rows without ties."""
        untied = torch.ones(self.shape.batch, dtype=torch.bool)
        for logits in (self.base, self.reward):
            top = logits[:, :self.shape.vocab].float().cpu().topk(self.shape.k + 1, dim=-1).values
            untied &= (top[:, 1:] != top[:, :-1]).all(-1)
        self.check_taro_tokens(tokens, alpha, untied)

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


def test_genarm_natural(benchmark, case):
    T, V = case.shape.temperature, case.shape.vocab
    tokens = _bench(benchmark, case, lambda: natural_genarm_step(case.base, case.reward, GENARM_ALPHA, V, T,
                                                                 case.uniform), "genarm natural (torch eager)")
    case.check_genarm(tokens)


def test_taro_natural(benchmark, case):
    T, V = case.shape.temperature, case.shape.vocab
    weights = case.topk_router.weights()
    tokens, alpha = _bench(benchmark, case, lambda: natural_taro_step(case.base, case.reward, weights, case.shape.k,
                                                                      V, T, case.uniform), BASELINE)
    case.check_natural_taro(tokens, alpha)


def test_taro_natural_compiled(benchmark, case):
    if not case.shape.compile:
        pytest.skip("torch.compile is timed at the shapes marked compile (each is a fresh compile)")
    T, V = case.shape.temperature, case.shape.vocab
    weights = case.topk_router.weights()
    compiled = torch.compile(natural_taro_step, fullgraph=True, dynamic=False)
    tokens, alpha = _bench(benchmark, case, lambda: compiled(case.base, case.reward, weights, case.shape.k, V, T,
                                                             case.uniform), "taro natural (torch.compile)",
                           warmups=2)
    case.check_natural_taro(tokens, alpha)


def test_floor_read(benchmark, case):
    V = case.shape.vocab
    base, reward = case.base[:, :V], case.reward[:, :V]
    sums = _bench(benchmark, case, lambda: (base.sum(-1), reward.sum(-1)), "floor: read both rows")
    torch.testing.assert_close(sums[0].float(), base.float().sum(-1), rtol=1e-2, atol=1e-2)


def test_floor_exp(benchmark, case):
    V = case.shape.vocab
    base, reward = case.base[:, :V], case.reward[:, :V]
    out_b, out_r = torch.empty_like(base), torch.empty_like(reward)

    def step():
        torch.exp(base, out=out_b)
        torch.exp(reward, out=out_r)
        return out_b

    _bench(benchmark, case, step, "floor: exp both rows")
    torch.testing.assert_close(out_r, reward.exp())


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
                 "taro reference (torch eager)")
    case.check_taro(out)


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


# B=8: whole rows per thread. B=3: rows cut into chunks (3 rows do not spread evenly over 2 threads).
# B=1: the kernel keeps a 128256-logit row on the calling thread whatever the thread count (a batch is
# split from 2 x kMinItemLogits = 262144 logits up), so its two settings run the same code (the pool is
# not touched) and their ratio shows this machine's jitter.
THREADS_SHAPES = [Shape("cpu", b, 128256, "fp32", 16, 0.0) for b in (1, 3, 8)]


@pytest.fixture(scope="module", params=THREADS_SHAPES, ids=lambda s: f"B{s.batch}")
def threads_case(request):
    return Case(request.param)


@pytest.mark.skipif("cpu" not in available_backends("cpu"), reason="the CPU kernel is not built")
@pytest.mark.parametrize("busy", [False, True], ids=["as-is", "other-core-busy"])
@pytest.mark.parametrize("threads", [1, 2])
def test_fused_threads(benchmark, threads_case, threads, busy):
    """The fused CPU step on 1 and 2 threads; ``busy``: a second process spins on a core meanwhile."""
    case = threads_case
    benchmark.group = f"threads cpu B={case.shape.batch} V={case.shape.vocab} fp32 K={case.shape.k} T=0"
    label = f"taro fused cpu, {threads} thread{'s' if threads > 1 else ''}" + (", other core busy" if busy else "")
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = run_timed(benchmark, case.loop(lambda: taro_step(case.base, case.reward, case.topk_router,
                                                               check_inputs=False, backend="cpu")),
                        label=label, baseline="taro fused cpu, 1 thread", tokens=case.shape.batch, budget_s=1.5,
                        min_rounds=20)
    finally:
        torch.set_num_threads(saved)
        if spinner is not None:
            spinner.kill()
            spinner.wait()
    case.check_taro(out)
