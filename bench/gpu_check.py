"""The Python half of bench/gpu_check.sh (the one prepared GPU run): environment record,
CUDA-graph replay timings with their verdicts, the small probe that ncu and
compute-sanitizer run, and the summary of every step's verdict.

    python bench/gpu_check.py env OUT          # OUT/env.json
    python bench/gpu_check.py timings OUT      # OUT/timings.json (+ timings.md)
    python bench/gpu_check.py probe [--batch B --vocab V --dtype bf16 --steps N --backend cuda]
    python bench/gpu_check.py summarize OUT    # OUT/summary.json; exit status = the run's verdict

Correctness checks are pytest tests (tests/test_gpu.py, marker ``gpu``, and the CUDA cases of
tests/test_fused_step.py and tests/test_triton_step.py); the shell script runs them and
this file only reads their JUnit XML. The summary's logic (parsing, verdicts, exit codes)
is tested on CPU by tests/test_gpu_check.py.

Exit codes of ``summarize`` (and so of gpu_check.sh): 0 every check passed; 1 a check
failed (build, test, sanitizer, profiler, timeout); 3 only speed goals were missed.
gpu_check.sh exits 2 at once on a machine without a GPU.
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Speed goals (issue 13): a step at B = 1 within 10 us in a CUDA graph; at B = 64 within
# 1.5x the time to read both logits rows once at the bandwidth measured in the same run.
GOAL_B1_US = 10.0
GOAL_B64_FLOOR_RATIO = 1.5
VOCAB = 128256
BATCHES = (1, 8, 64, 256)

EXIT_OK, EXIT_FAILED, EXIT_NO_GPU, EXIT_SLOW = 0, 1, 2, 3


# ---------------------------------------------------------------- verdicts (CPU-testable)

def speed_verdict(batch: int, step_us: float, floor_us: float) -> dict:
    """PASS/FAIL of one timing against the goal for its batch size (``n/a``: no goal)."""
    if batch == 1:
        return {"goal": f"<= {GOAL_B1_US:g} us", "verdict": "PASS" if step_us <= GOAL_B1_US else "FAIL"}
    if batch == 64:
        ratio = step_us / floor_us
        return {"goal": f"<= {GOAL_B64_FLOOR_RATIO:g}x read floor ({floor_us:.2f} us)", "ratio": round(ratio, 3),
                "verdict": "PASS" if ratio <= GOAL_B64_FLOOR_RATIO else "FAIL"}
    return {"goal": None, "verdict": "n/a"}


def parse_junit(path: str) -> dict:
    """Counts and failing test ids of a pytest ``--junitxml`` file."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    failed = []
    for suite in suites:
        for key in counts:
            counts[key] += int(suite.get(key, 0))
        for case in suite.iter("testcase"):
            if case.find("failure") is not None or case.find("error") is not None:
                failed.append(f"{case.get('classname', '')}::{case.get('name', '')}")
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    counts["failed_tests"] = failed
    return counts


def step_verdict(record: dict, out_dir: str) -> dict:
    """Verdict of one shell step (``steps/NAME.json``: name, rc, seconds, limit_s, timed_out,
    optional junit), reading its JUnit XML when it ran pytest."""
    verdict = dict(record)
    if record.get("timed_out"):
        verdict["verdict"] = "FAIL"
        verdict["why"] = f"timed out after {record.get('limit_s')} s (hang watchdog)"
        return verdict
    junit = record.get("junit")
    if junit:
        path = os.path.join(out_dir, junit)
        if os.path.exists(path):
            counts = parse_junit(path)
            verdict["tests"] = counts
            if counts["failures"] or counts["errors"]:
                verdict["verdict"] = "FAIL"
                verdict["why"] = f"{counts['failures'] + counts['errors']} failing tests"
                return verdict
            if counts["passed"] == 0:
                verdict["verdict"] = "FAIL"
                verdict["why"] = "no test ran (all skipped: is the GPU visible to torch?)"
                return verdict
        elif record.get("rc") == 0:
            verdict["verdict"] = "FAIL"
            verdict["why"] = f"{junit} missing"
            return verdict
    verdict["verdict"] = "PASS" if record.get("rc") == 0 else "FAIL"
    if verdict["verdict"] == "FAIL":
        verdict.setdefault("why", f"exit status {record.get('rc')}")
    return verdict


def summarize(out_dir: str) -> tuple[dict, int]:
    """Collects every verdict of the run under ``out_dir`` into one dict and its exit code."""
    steps = []
    for path in sorted(glob.glob(os.path.join(out_dir, "steps", "*.json")), key=os.path.getmtime):
        with open(path) as f:
            steps.append(step_verdict(json.load(f), out_dir))
    speed = []
    timings_path = os.path.join(out_dir, "timings.json")
    if os.path.exists(timings_path):
        with open(timings_path) as f:
            timings = json.load(f)
        speed = [dict(name=f"{r['backend']} B={r['batch']} {r['dtype']} {r['mode']}", us=r.get("us"),
                      goal=r.get("goal"), verdict=r.get("verdict", "FAIL"), ratio=r.get("ratio"))
                 for r in timings.get("rows", []) if r["kind"] == "fused"]
    failed = [s["name"] for s in steps if s["verdict"] == "FAIL"]
    slow = [s["name"] for s in speed if s["verdict"] == "FAIL"]
    if not steps:
        failed.append("no steps recorded")
    code = EXIT_FAILED if failed else (EXIT_SLOW if slow else EXIT_OK)
    summary = {"verdict": {EXIT_OK: "PASS", EXIT_FAILED: "FAIL", EXIT_SLOW: "SLOW"}[code], "exit_code": code,
               "failed_checks": failed, "missed_speed_goals": slow, "steps": steps, "speed": speed}
    env_path = os.path.join(out_dir, "env.json")
    if os.path.exists(env_path):
        with open(env_path) as f:
            summary["env"] = json.load(f)
    return summary, code


# ---------------------------------------------------------------- GPU parts

def cmd_env(out_dir: str) -> int:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
            "host": platform.node(), "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    try:
        info["git_rev"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                         timeout=10).stdout.strip()
        info["git_dirty"] = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                                capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        info["git_rev"] = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["device"] = {"name": props.name, "sms": props.multi_processor_count,
                          "memory_gib": round(props.total_memory / 2**30, 1),
                          "l2_bytes": getattr(props, "L2_cache_size", None),
                          "capability": f"{props.major}.{props.minor}"}
    sys.path.insert(0, ROOT)
    import taro_ext

    info["backends_cuda"] = taro_ext.available_backends("cuda") if torch.cuda.is_available() else []
    info["taro_ext"] = taro_ext.__file__
    with open(os.path.join(out_dir, "env.json"), "w") as f:
        json.dump(info, f, indent=1)
    print(json.dumps(info, indent=1))
    return 0


def _router(vocab: int):
    import torch

    from taro_ext import TopKRouter

    torch.manual_seed(0)
    return TopKRouter(vocab, k=16, embed_dim=16, hidden=64).cuda().eval()


def _event_us(fn, repeats: int = 5) -> float:
    """Median microseconds of fn() (which runs `per_call` steps; the caller divides)."""
    import torch

    fn()
    torch.cuda.synchronize()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    results = []
    for _ in range(repeats):
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        results.append(start.elapsed_time(stop) * 1e3)
    return statistics.median(results)


def read_bandwidth() -> float:
    """Bytes per second that a read-only reduction (amax over 1 GiB) achieves here."""
    import torch

    x = torch.empty(1 << 28, dtype=torch.float32, device="cuda").uniform_()
    us = _event_us(lambda: x.amax())
    return x.numel() * 4 / (us * 1e-6)


def chain_step(base, reward, weights, k, temperature, uniform, sampler=None):
    """What a user writes in eager PyTorch (the torch.topk + softmax chain peer); with
    ``sampler`` (FlashInfer's sampling_from_logits) picking the sampled token instead."""
    import torch
    import torch.nn.functional as F

    lp_b, lp_r = base.float().log_softmax(-1), reward.float().log_softmax(-1)
    v_b, i_b = lp_b.topk(k, dim=-1)
    v_r, i_r = lp_r.topk(k, dim=-1)
    h_b = -(lp_b.exp() * lp_b).nan_to_num().sum(-1, keepdim=True)
    h_r = -(lp_r.exp() * lp_r).nan_to_num().sum(-1, keepdim=True)
    emb = weights["embed"].float()
    x = torch.cat([v_b.clamp_min(-100), v_r.clamp_min(-100), h_b, h_r, emb[i_b].flatten(1), emb[i_r].flatten(1)], -1)
    alpha = weights["alpha_max"] * torch.sigmoid(F.silu(x @ weights["w1"].T + weights["b1"]) @ weights["w2"]
                                                 + weights["b2"])
    s = lp_b + alpha[:, None] * lp_r
    if temperature == 0:
        return s.argmax(-1), alpha
    if sampler is not None:
        return sampler(s / temperature), alpha
    cdf = torch.softmax(s / temperature, -1).cumsum(-1)
    return torch.searchsorted(cdf, (uniform * cdf[:, -1])[:, None]).clamp_max(s.shape[-1] - 1)[:, 0], alpha


def cmd_timings(out_dir: str, budget_s: float = 140.0) -> int:
    """CUDA-graph replay step times over rotating inputs (more bytes than L2), fused backends
    and peers, B in BATCHES, fp32 and bf16, greedy and sampling, with verdicts."""
    import torch

    sys.path.insert(0, ROOT)
    from taro_ext import available_backends, taro_step

    deadline = time.monotonic() + budget_s
    props = torch.cuda.get_device_properties(0)
    l2 = getattr(props, "L2_cache_size", 50 << 20) or (50 << 20)
    bandwidth = read_bandwidth()
    router = _router(VOCAB)
    weights = router.weights()
    fused = [b for b in ("cuda", "triton") if b in available_backends("cuda")]
    peers = {"torch chain": chain_step}
    try:
        import flashinfer

        def flashinfer_chain(*args):
            return chain_step(*args, sampler=lambda logits: flashinfer.sampling.sampling_from_logits(
                logits, deterministic=True))

        peers["flashinfer chain"] = flashinfer_chain
    except ImportError:
        pass
    rows = []
    for dtype in (torch.bfloat16, torch.float32):
        for batch in BATCHES:
            elt = torch.finfo(dtype).bits // 8
            pair_bytes = 2 * batch * VOCAB * elt
            sets = max(2, min(256, math.ceil(3 * l2 / pair_bytes)))  # > L2: every step reads from DRAM
            g = torch.Generator(device="cuda").manual_seed(batch)
            base = (3 * torch.randn(sets, batch, VOCAB, device="cuda", generator=g)).to(dtype)
            reward = (3 * torch.randn(sets, batch, VOCAB, device="cuda", generator=g)).to(dtype)
            uniform = torch.rand(sets, batch, device="cuda", generator=g)
            floor_us = pair_bytes / bandwidth * 1e6
            for mode, temperature in (("greedy", 0.0), ("sampling", 1.0)):
                candidates = [(b, "fused", lambda i, b=b: taro_step(base[i], reward[i], router, temperature=temperature,
                                                                    uniform=uniform[i], check_inputs=False, backend=b))
                              for b in fused]
                candidates += [(name, "peer", lambda i, fn=fn: fn(base[i], reward[i], weights, 16, temperature,
                                                                 uniform[i])) for name, fn in peers.items()]
                for name, kind, step in candidates:
                    row = dict(backend=name, kind=kind, batch=batch, dtype=str(dtype).removeprefix("torch."), mode=mode,
                               floor_us=round(floor_us, 3), sets=sets)
                    if time.monotonic() > deadline:
                        row.update(us=None, verdict="FAIL" if kind == "fused" else "n/a", error="time budget spent")
                        rows.append(row)
                        continue
                    try:
                        for i in range(2):
                            step(i)  # compile, warm up
                        torch.cuda.synchronize()
                        graph = torch.cuda.CUDAGraph()
                        side = torch.cuda.Stream()
                        side.wait_stream(torch.cuda.current_stream())
                        with torch.cuda.stream(side):
                            step(0)
                        torch.cuda.current_stream().wait_stream(side)
                        with torch.cuda.graph(graph):
                            for i in range(sets):
                                step(i)
                        us = _event_us(graph.replay) / sets
                        row["us"] = round(us, 3)
                        row["x_floor"] = round(us / floor_us, 3)
                        if kind == "fused":
                            row.update(speed_verdict(batch, us, floor_us))
                        del graph
                    except Exception as exc:  # noqa: BLE001  (one failure must not lose the others)
                        row.update(us=None, error=f"{type(exc).__name__}: {exc}"[:300],
                                   verdict="FAIL" if kind == "fused" else "n/a")
                    rows.append(row)
                    print(json.dumps(row), flush=True)
            del base, reward
            torch.cuda.empty_cache()
    result = {"vocab": VOCAB, "router": "K=16 d=16 H=64", "read_bandwidth_tb_s": round(bandwidth / 1e12, 3),
              "l2_bytes": l2, "device": props.name,
              "method": "CUDA graph of `sets` consecutive steps over distinct inputs (> 3x L2 in all), "
                        "median of 5 replays / sets; floor = both rows' bytes / read bandwidth (amax over 1 GiB)",
              "rows": rows}
    with open(os.path.join(out_dir, "timings.json"), "w") as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(out_dir, "timings.md"), "w") as f:
        f.write(timings_markdown(result))
    return 0


def timings_markdown(result: dict) -> str:
    lines = [f"# Step time, {result['device']}, V={result['vocab']}, router {result['router']}", "",
             f"Read bandwidth {result['read_bandwidth_tb_s']} TB/s. {result['method']}.", "",
             "| backend | B | dtype | mode | us | floor us | x floor | goal | verdict |", "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['backend']} | {r['batch']} | {r['dtype']} | {r['mode']} | {r.get('us')} | {r['floor_us']} | "
                     f"{r.get('x_floor', '')} | {r.get('goal') or ''} | {r.get('verdict', '')}{' ' + r['error'] if r.get('error') else ''} |")
    return "\n".join(lines) + "\n"


def cmd_probe(args) -> int:
    """A few steps for ncu / compute-sanitizer: router sampling with log-probs, router greedy
    and GenARM greedy, at each requested shape."""
    import torch

    sys.path.insert(0, ROOT)
    from taro_ext import genarm_step, taro_step

    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}[args.dtype]
    for spec in args.shape:
        batch, vocab = (int(v) for v in spec.split("x"))
        router = _router(vocab)
        g = torch.Generator(device="cuda").manual_seed(0)
        base = (3 * torch.randn(batch, vocab, device="cuda", generator=g)).to(dtype)
        reward = (3 * torch.randn(batch, vocab, device="cuda", generator=g)).to(dtype)
        uniform = torch.rand(batch, device="cuda", generator=g)
        for _ in range(args.steps):
            taro_step(base, reward, router, temperature=0.0, check_inputs=False, backend=args.backend)
            taro_step(base, reward, router, temperature=0.8, uniform=uniform, return_logprobs=True,
                      check_inputs=False, backend=args.backend)
            genarm_step(base, reward, 0.5, temperature=0.0, check_inputs=False, backend=args.backend)
        torch.cuda.synchronize()
        print(f"probe {args.backend} B={batch} V={vocab} {args.dtype}: done", flush=True)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("env", "timings", "summarize"):
        p = sub.add_parser(name)
        p.add_argument("out_dir")
    probe = sub.add_parser("probe")
    probe.add_argument("--shape", action="append", required=True, help="BxV, e.g. 1x128256 (repeatable)")
    probe.add_argument("--dtype", default="bf16", choices=("bf16", "fp32", "fp16"))
    probe.add_argument("--steps", type=int, default=1)
    probe.add_argument("--backend", default="cuda", choices=("cuda", "triton"))
    args = parser.parse_args(argv)
    if args.cmd == "probe":
        return cmd_probe(args)
    os.makedirs(args.out_dir, exist_ok=True)
    if args.cmd == "env":
        return cmd_env(args.out_dir)
    if args.cmd == "timings":
        return cmd_timings(args.out_dir)
    summary, code = summarize(args.out_dir)
    with open(os.path.join(args.out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(f"gpu_check: {summary['verdict']} (exit {code}); failed: {summary['failed_checks'] or 'none'}; "
          f"speed goals missed: {summary['missed_speed_goals'] or 'none'}; {args.out_dir}/summary.json")
    return code


if __name__ == "__main__":
    sys.exit(main())
