"""One prepared GPU session: parity tests, launch count, CUDA-graph replay, timings and
compute-sanitizer, written to one markdown report.

Run after building the extension (``pip install -e . --no-build-isolation``)::

    python bench/gpu_check.py bench/results/gpu_check_h100.md [--parts a,b,c,d,e] [--budget-s 600]

Parts: (a) ``pytest tests/test_fused_step.py`` on the GPU; (b) torch.profiler: one
``taro_step`` call launches exactly one kernel (backends cuda and triton); (c) 32 decode
steps captured in a CUDA graph replay the eager tokens exactly; (d) step time for B in
{1, 8, 64} x V in {32000, 128256} x {bf16, fp32} for cuda, triton, the eager reference and
``torch.compile`` of the reference, next to the memory floor (both rows' bytes / measured
device-to-device copy bandwidth); (e) compute-sanitizer memcheck and racecheck over a tiny
script (and synccheck when time allows). Parts run in the order a, b, c, e, d by default.
Each part is guarded: one failure is reported and the others still run. Parts
stop starting new measurements once ``--budget-s`` is spent. Without a GPU the script says
so, writes that to the report and exits 0.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARTS = ("a", "b", "c", "d", "e")
DEFAULT_ORDER = "a,b,c,e,d"  # the open-ended timings last, so the budget cuts them, not the sanitizer
FUSED = ("cuda", "triton")


class Report:
    def __init__(self, path: str, deadline: float):
        self.path = path
        self.deadline = deadline
        self.lines: list[str] = []

    def add(self, text: str = "") -> None:
        print(text, flush=True)
        self.lines.append(text)

    def time_left(self) -> float:
        return self.deadline - time.monotonic()

    def write(self) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        with open(self.path, "w") as f:
            f.write("\n".join(self.lines) + "\n")


def guarded(report: Report, title: str, fn) -> None:
    report.add(f"\n## {title}\n")
    start = time.monotonic()
    try:
        fn(report)
    except Exception:  # noqa: BLE001  (one part failing must not lose the others)
        report.add("FAILED with:\n```\n" + traceback.format_exc() + "```")
    report.add(f"\n({time.monotonic() - start:.1f} s)")
    report.write()


def _router(vocab: int, k: int = 16):
    import torch

    from taro_ext import TopKRouter

    torch.manual_seed(0)
    return TopKRouter(vocab, k=k, embed_dim=16, hidden=64).cuda().eval()


def _logits(batch: int, vocab: int, dtype, seed: int = 0):
    import torch

    g = torch.Generator(device="cuda").manual_seed(seed)
    base = (torch.randn(batch, vocab, device="cuda", generator=g) * 3).to(dtype)
    reward = (torch.randn(batch, vocab, device="cuda", generator=g) * 3).to(dtype)
    return base, reward


# ---------------------------------------------------------------- (a)

def part_tests(report: Report) -> None:
    cmd = [sys.executable, "-m", "pytest", "-q", "--maxfail=10", "--no-header", "-p", "no:cacheprovider",
           "tests/test_fused_step.py"]
    report.add(f"`{' '.join(cmd)}`")
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                          timeout=max(60.0, report.time_left()))
    tail = (proc.stdout + proc.stderr)[-6000:]
    report.add(f"exit code {proc.returncode}\n```\n{tail}\n```")


# ---------------------------------------------------------------- (b)

def part_launch_count(report: Report) -> None:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from taro_ext import available_backends, taro_step

    batch, vocab = 4, 32000
    router = _router(vocab)
    base, reward = _logits(batch, vocab, torch.bfloat16)
    uniform = torch.rand(batch, device="cuda")
    report.add("| backend | temperature | logprobs | kernels launched | names |")
    report.add("|---|---|---|---|---|")
    for backend in FUSED:
        if backend not in available_backends("cuda"):
            report.add(f"| {backend} | - | - | not available | |")
            continue
        for temperature, logprobs in ((0.0, False), (1.0, True)):
            def step():
                return taro_step(base, reward, router, temperature=temperature, uniform=uniform,
                                 return_logprobs=logprobs, check_inputs=False, backend=backend)

            step()  # compile / warm up outside the profile
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                step()
                torch.cuda.synchronize()
            kernels = [e.name for e in prof.events() if e.device_type.name == "CUDA"
                       and "memcpy" not in e.name.lower() and "memset" not in e.name.lower()]
            verdict = "OK" if len(kernels) == 1 else "NOT ONE"
            names = ", ".join(sorted(set(n[:60] for n in kernels)))
            report.add(f"| {backend} | {temperature} | {logprobs} | {len(kernels)} ({verdict}) | {names} |")


# ---------------------------------------------------------------- (c)

def part_graph(report: Report) -> None:
    import torch

    from taro_ext import available_backends, taro_step

    batch, vocab, steps = 8, 32000, 32
    router = _router(vocab)
    logits_b = torch.stack([_logits(batch, vocab, torch.bfloat16, seed=i)[0] for i in range(steps)])
    logits_r = torch.stack([_logits(batch, vocab, torch.bfloat16, seed=100 + i)[1] for i in range(steps)])
    uniforms = torch.rand(steps, batch, device="cuda")
    bump = torch.full((batch, 1), 2.0, dtype=torch.bfloat16, device="cuda")

    def decode(backend, temperature):
        """32 dependent steps: each step's base logits get a bump at the previous token."""
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

    for backend in FUSED:
        if backend not in available_backends("cuda"):
            report.add(f"- {backend}: not available")
            continue
        for temperature in (0.0, 1.0):
            eager_tokens, eager_alpha = decode(backend, temperature)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                decode(backend, temperature)  # warm-up on a side stream, as torch.cuda.graphs asks
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                graph_tokens, graph_alpha = decode(backend, temperature)
            graph.replay()
            graph.replay()
            torch.cuda.synchronize()
            same = torch.equal(graph_tokens, eager_tokens) and torch.equal(graph_alpha, eager_alpha)
            report.add(f"- {backend}, T={temperature}: {steps} captured steps, replay "
                       f"{'identical to eager (tokens and alpha)' if same else 'DIFFERS from eager'}"
                       f"; distinct tokens {graph_tokens.unique().numel()}")


# ---------------------------------------------------------------- (d)

def _time_cuda(fn, *, min_time_s=0.2, repeats=5) -> float:
    """Median microseconds per call over `repeats` timed loops (CUDA events)."""
    import torch

    fn()
    torch.cuda.synchronize()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    stop.record()
    stop.synchronize()
    once_ms = max(start.elapsed_time(stop), 1e-3)
    iters = max(3, min(2000, int(min_time_s * 1e3 / repeats / once_ms)))
    results = []
    for _ in range(repeats):
        start.record()
        for _ in range(iters):
            fn()
        stop.record()
        stop.synchronize()
        results.append(start.elapsed_time(stop) * 1e3 / iters)
    return statistics.median(results)


def _copy_bandwidth() -> float:
    """Device-to-device copy bandwidth in bytes/s, counting the bytes read plus written."""
    import torch

    n = 1 << 28
    src = torch.empty(n, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    us = _time_cuda(lambda: dst.copy_(src), min_time_s=0.3)
    return 2 * n / (us * 1e-6)


def part_timings(report: Report) -> None:
    import torch

    from taro_ext import available_backends, reference, taro_step

    bandwidth = _copy_bandwidth()
    report.add(f"device-to-device copy bandwidth: {bandwidth / 1e12:.2f} TB/s (read + write bytes)\n")
    report.add("Step time in microseconds (median of 5 CUDA-event loops; `check_inputs=False`, router "
               "K=16 d=16 H=64). floor = bytes of both logits rows / copy bandwidth.\n")
    backends = [b for b in FUSED if b in available_backends("cuda")]
    header = ["B", "V", "dtype", "floor"] + [f"{b} T=0" for b in backends] + [f"{b} T=1" for b in backends]
    header += ["eager T=0", "compile T=0"]
    report.add("| " + " | ".join(header) + " |")
    report.add("|" + "---|" * len(header))
    compile_budget_left = True
    for vocab in (32000, 128256):
        router = _router(vocab)
        weights = router.weights()
        for dtype in (torch.bfloat16, torch.float32):
            for batch in (1, 8, 64):
                if report.time_left() < 30:
                    report.add("| (budget spent: remaining shapes skipped) |")
                    return
                base, reward = _logits(batch, vocab, dtype)
                uniform = torch.rand(batch, device="cuda")
                floor_us = 2 * base.numel() * base.element_size() / bandwidth * 1e6
                cells = [str(batch), str(vocab), str(dtype).removeprefix("torch."), f"{floor_us:.2f}"]
                for temperature in (0.0, 1.0):
                    for b in backends:
                        try:
                            us = _time_cuda(lambda: taro_step(base, reward, router, temperature=temperature,
                                                              uniform=uniform, check_inputs=False, backend=b))
                            cells.append(f"{us:.1f}")
                        except Exception as exc:  # noqa: BLE001
                            cells.append(f"error: {type(exc).__name__}")

                def eager():
                    return reference.reference_step(base, reward, vocab_size=vocab, k=router.k,
                                                    router_weights=weights, temperature=0.0)

                cells.append(f"{_time_cuda(eager):.1f}")
                if compile_budget_left and report.time_left() > 180:
                    try:
                        compiled = torch.compile(eager, dynamic=False)
                        compiled()
                        cells.append(f"{_time_cuda(compiled):.1f}")
                    except Exception as exc:  # noqa: BLE001
                        cells.append(f"error: {type(exc).__name__}")
                else:
                    compile_budget_left = False
                    cells.append("skipped (budget)")
                report.add("| " + " | ".join(cells) + " |")
                report.write()


# ---------------------------------------------------------------- (e)

SANITIZER_SCRIPT = textwrap.dedent('''
    import torch
    from taro_ext import TopKRouter, genarm_step, taro_step

    torch.manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for vocab, width, k in ((1000, 1003, 16), (77, 77, 64), (5, 9, 1)):
            router = TopKRouter(vocab, k=k, embed_dim=4, hidden=8).cuda()
            base = torch.randn(3, width + 1, device="cuda").to(dtype)[:, 1:]  # misaligned rows
            reward = torch.randn(3, width, device="cuda").to(dtype)
            reward[0, : vocab // 2] = float("-inf")
            uniform = torch.tensor([0.0, 0.5, 0.999999], device="cuda")
            for temperature in (0.0, 0.7):
                taro_step(base, reward, router, temperature=temperature, uniform=uniform, vocab_size=vocab,
                          return_logprobs=True, check_inputs=False, backend="cuda")
                genarm_step(base, reward, 0.5, vocab_size=vocab, temperature=temperature, uniform=uniform,
                            return_logprobs=False, check_inputs=False, backend="cuda")
    torch.cuda.synchronize()
    print("sanitizer script done")
''')


def part_sanitizer(report: Report) -> None:
    tool = shutil.which("compute-sanitizer") or "/usr/local/cuda/bin/compute-sanitizer"
    if not os.path.exists(tool):
        report.add("compute-sanitizer not found")
        return
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(SANITIZER_SCRIPT)
        script = f.name
    env = dict(os.environ, PYTORCH_NO_CUDA_MEMORY_CACHING="1")
    for check in ("memcheck", "racecheck", "synccheck"):
        if report.time_left() < (30 if check != "synccheck" else 120):
            report.add(f"- {check}: skipped (budget)")
            continue
        cmd = [tool, "--tool", check, "--error-exitcode", "17", sys.executable, script]
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=max(30.0, report.time_left()))
        tail = (proc.stdout + proc.stderr)[-3000:]
        report.add(f"- `{check}`: exit code {proc.returncode} ({'clean' if proc.returncode == 0 else 'ERRORS'})"
                   f"\n```\n{tail}\n```")


# ---------------------------------------------------------------- main

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", help="markdown report to write, e.g. bench/results/gpu_check.md")
    parser.add_argument("--parts", default=DEFAULT_ORDER,
                        help="comma-separated subset of a (tests), b (launch count), c (CUDA graph), "
                             "d (timings), e (compute-sanitizer)")
    parser.add_argument("--budget-s", type=float, default=600.0,
                        help="wall-clock budget; parts stop starting new work once it is spent")
    args = parser.parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown parts {unknown}; choose from {PARTS}")

    report = Report(args.report, time.monotonic() + args.budget_s)
    report.add("# taro_ext GPU check\n")
    report.add(f"command: `{' '.join([os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:])}`  ")
    import torch

    report.add(f"python {platform.python_version()}, torch {torch.__version__}, host {platform.node()}  ")
    if not torch.cuda.is_available():
        report.add("no GPU: torch.cuda.is_available() is False; nothing to check here.")
        report.write()
        return 0
    props = torch.cuda.get_device_properties(0)
    report.add(f"device: {props.name}, {props.multi_processor_count} SMs, "
               f"{props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}  ")
    try:
        import triton

        report.add(f"triton {triton.__version__}  ")
    except ImportError:
        report.add("triton: not installed  ")
    sys.path.insert(0, ROOT)
    import taro_ext

    report.add(f"backends on cuda: {taro_ext.available_backends('cuda')}")
    titles = {"a": ("(a) parity tests on the GPU", part_tests),
              "b": ("(b) kernels launched per step", part_launch_count),
              "c": ("(c) CUDA graph: 32 captured decode steps vs eager", part_graph),
              "d": ("(d) step time vs memory floor", part_timings),
              "e": ("(e) compute-sanitizer", part_sanitizer)}
    for part in parts:
        guarded(report, *titles[part])
    report.write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
