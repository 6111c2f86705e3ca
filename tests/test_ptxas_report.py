"""bench/ptxas_report.py's parsing of ``nvcc -Xptxas -v`` output, on lines as ptxas prints them
(CUDA 13.0: sm_80 lists cmem after smem, a kernel without static shared memory has no smem)."""
from __future__ import annotations

import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load():
    spec = importlib.util.spec_from_file_location("ptxas_report", os.path.join(ROOT, "bench", "ptxas_report.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


LOG = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_ZN4taro11cuda_detail16taro_step_kernelIfLi64EEEvNS_10StepParamsEPhi' for 'sm_80'
ptxas info    : Function properties for _ZN4taro11cuda_detail16taro_step_kernelIfLi64EEEvNS_10StepParamsEPhi
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 128 registers, used 1 barriers, 35104 bytes smem, 540 bytes cmem[0]
ptxas info    : Compiling entry function '_Z6nosmemPf' for 'sm_90a'
ptxas info    : Function properties for _Z6nosmemPf
    24 bytes stack frame, 8 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 40 registers, used 0 barriers, 360 bytes cmem[0]
ptxas info    : Function properties for _Z6helperv
    16 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads
"""


def test_parse_ptxas_reads_registers_smem_and_spills():
    rows = _load().parse_ptxas(LOG)
    assert [(r["arch"], r["regs"], r["smem"], r["stack"], r["spill_stores"], r["spill_loads"]) for r in rows] == [
        ("sm_80", 128, 35104, 0, 0, 0),
        # A device function's frame after an entry counts toward that entry's spills.
        ("sm_90a", 40, 0, 24, 12, 16),
    ]
