"""The benchmark suite's hooks: the ``gpu`` marker (skipped without a GPU) and the machine
and command stored in the pytest-benchmark JSON. The timing and checking helpers are in
``benchlib.py``.

Every benchmark records in ``extra_info``: ``label`` (what is timed, the row name in the
report), ``baseline`` (the label the group's ratios are taken against) and ``tokens`` (tokens
produced by one timed call), so ``python -m taro_ext.benchreport`` turns the JSON into
tokens/s and ratios measured in the same run. GPU step benchmarks add ``bytes_read`` (the
logits bytes one timed call must read), from which the report derives achieved bandwidth.
"""
from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys

import pytest
import torch

from benchlib import HAS_GPU


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped without one)")
    # On a CPU shared with other jobs, OpenMP threads that spin while waiting for a busy core
    # slow small ops down tenfold; TARO_BENCH_THREADS=1 gives stable (single-core) ratios.
    threads = os.environ.get("TARO_BENCH_THREADS")
    if threads:
        torch.set_num_threads(int(threads))


def pytest_collection_modifyitems(config, items):
    if HAS_GPU:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown"
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["cpu_model"] = _cpu_model()
    machine_info["cpu_count"] = os.cpu_count()
    machine_info["torch"] = torch.__version__
    machine_info["torch_threads"] = torch.get_num_threads()
    machine_info["gpu"] = torch.cuda.get_device_name(0) if HAS_GPU else None
    # Free text for what the JSON cannot know, e.g. "shared with other jobs during the run".
    machine_info["note"] = os.environ.get("TARO_BENCH_NOTE", "")


def pytest_benchmark_update_json(config, benchmarks, output_json):
    # What reproduces the run: the arguments quoted as a shell would need them, and the variables it read.
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(os.environ.items()) if k.startswith("TARO_BENCH_"))
    output_json["command"] = (env + " " if env else "") + shlex.join(["pytest"] + sys.argv[1:])
    # The load when the run ends (the start's can go in TARO_BENCH_NOTE): the machine may be shared.
    try:
        output_json["uptime_end"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        pass
