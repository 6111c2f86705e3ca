"""The CUDA part of the built extension, read without a GPU: its fatbinary must carry PTX, so a GPU
newer than every SASS arch it was compiled for (sm_100, sm_120 against the default 8.0 and 9.0a) can
JIT-compile the kernels instead of failing with "no kernel image is available"."""
from __future__ import annotations

import glob
import os
import re
import subprocess

import pytest

import taro_ext
from taro_ext import ops


def _cuobjdump():
    """cuobjdump from the CUDA toolkit, else the copy Triton bundles."""
    candidates = [os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "cuobjdump")]
    try:
        import triton

        candidates.append(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump"))
    except ImportError:
        pass
    return next((c for c in candidates if os.access(c, os.X_OK)), None)


def _listing(tool, flag, library):
    out = subprocess.run([tool, flag, library], capture_output=True, text=True, check=True).stdout
    return set(re.findall(r"\.((?:sm|compute)_\d+a?)\.", out))


@pytest.mark.skipif(ops._C is None or not ops._C.compiled_with_cuda, reason="extension built without CUDA")
def test_extension_embeds_ptx_beside_its_sass():
    tool = _cuobjdump()
    if tool is None:
        pytest.skip("no cuobjdump (CUDA toolkit or Triton's bundled copy)")
    (library,) = glob.glob(os.path.join(os.path.dirname(taro_ext.__file__), "_C*.so"))
    sass = _listing(tool, "--list-elf", library)
    ptx = _listing(tool, "--list-ptx", library)
    assert sass, "no SASS in the extension"
    assert ptx, f"no PTX in the extension (SASS only: {sorted(sass)}): GPUs newer than those cannot run it"
