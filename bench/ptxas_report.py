"""Registers, shared memory, stack and spills of every CUDA step kernel, from ptxas's own
report (no GPU needed): each csrc/cuda/taro_step_cuda_*.cu compiled with ``nvcc -Xptxas -v``
for sm_80 and sm_90a (every K bucket of every dtype). Writes bench/results/ptxas.md; exits
1 if any kernel spills. ``--log`` tabulates saved ``nvcc -Xptxas -v`` output instead.

    CUDA_HOME=/usr/local/cuda nice -n 10 python bench/ptxas_report.py [--jobs 2]
"""
from __future__ import annotations

import argparse
import concurrent.futures
import glob
import os
import re
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARCHS = ("80", "90a")
ENTRY = re.compile(r"Compiling entry function '(?P<name>[^']+)' for '(?P<arch>sm_\w+)'")
FRAME = re.compile(r"(?P<stack>\d+) bytes stack frame, (?P<stores>\d+) bytes spill stores, (?P<loads>\d+) bytes spill loads")
USED = re.compile(r"Used (?P<regs>\d+) registers")
SMEM = re.compile(r"(?P<smem>\d+) bytes smem")  # absent when the kernel has no static shared memory


def parse_ptxas(text: str) -> list[dict]:
    """Entry functions of a ``ptxas -v`` log: name, arch, registers, smem, stack and spills.
    (Frames of non-entry device functions, which ptxas prints after an entry's line, are
    added to the spills of the entry they follow.)"""
    kernels, cur = [], None
    for line in text.splitlines():
        m = ENTRY.search(line)
        if m:
            cur = dict(name=m["name"], arch=m["arch"], regs=None, smem=0, stack=0, spill_stores=0, spill_loads=0)
            kernels.append(cur)
            continue
        if cur is None:
            continue
        m = FRAME.search(line)
        if m:
            cur["stack"] = max(cur["stack"], int(m["stack"]))
            cur["spill_stores"] += int(m["stores"])
            cur["spill_loads"] += int(m["loads"])
            continue
        m = USED.search(line)
        if m:
            cur["regs"] = int(m["regs"])
            smem = SMEM.search(line)
            cur["smem"] = int(smem["smem"]) if smem else 0
    return kernels


def demangle(names: list[str]) -> dict:
    tool = shutil.which("c++filt")
    if tool is None:
        return {n: n for n in names}
    out = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    return dict(zip(names, out))


def nvcc_report(source: str, arch: str) -> list[dict]:
    cuda_home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    cmd = [os.path.join(cuda_home, "bin", "nvcc"), "-O3", "-std=c++17", "--expt-relaxed-constexpr",
           f"-I{os.path.join(ROOT, 'csrc')}", f"-gencode=arch=compute_{arch},code=sm_{arch}", "-Xptxas", "-v",
           "-c", source, "-o", os.devnull]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    rows = parse_ptxas(proc.stderr)
    for r in rows:
        r["source"] = os.path.relpath(source, ROOT)
    return rows


def markdown(rows: list[dict], command: str) -> str:
    lines = ["# Kernel resources from ptxas -v", "",
             f"Regenerate: `{command}` (no GPU needed). 256 threads per CTA, `__launch_bounds__(256, 2)`"
             " (at most 128 registers: two CTAs per SM). Kernel template arguments: logits dtype, K bucket"
             " (1 also serves GenARM).", "",
             "| source | kernel | arch | registers | smem bytes | stack bytes | spill stores | spill loads |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['source']} | {r['name']} | {r['arch']} | {r['regs']} | {r['smem']} | {r['stack']} | "
                     f"{r['spill_stores']} | {r['spill_loads']} |")
    spills = [r for r in rows if r["spill_stores"] or r["spill_loads"]]
    lines += ["", f"Kernels that spill: {len(spills)} of {len(rows)}."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=int(os.environ.get("MAX_JOBS", "2")))
    parser.add_argument("--log", action="append", default=[],
                        help="tabulate this saved `nvcc -Xptxas -v` output instead of compiling (repeatable)")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "ptxas.md"))
    args = parser.parse_args(argv)
    if args.log:
        rows = []
        for path in args.log:
            with open(path) as f:
                rows += [dict(r, source=os.path.basename(path)) for r in parse_ptxas(f.read())]
    else:
        sources = sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "taro_step_cuda_*.cu")))
        with concurrent.futures.ThreadPoolExecutor(max(1, args.jobs)) as pool:
            jobs = [pool.submit(nvcc_report, s, a) for s in sources for a in ARCHS]
            rows = [r for j in jobs for r in j.result()]
    names = demangle([r["name"] for r in rows])
    for r in rows:
        r["name"] = re.sub(r"^void taro::cuda_detail::", "", names[r["name"]]).replace("taro::StepParams", "StepParams")
    command = "CUDA_HOME=/usr/local/cuda python bench/ptxas_report.py" + "".join(f" --log {p}" for p in args.log)
    text = markdown(rows, command)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    print(text)
    return 1 if any(r["spill_stores"] or r["spill_loads"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
