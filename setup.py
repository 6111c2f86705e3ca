"""Builds taro_ext._C: the CPU kernel always, the CUDA kernel whenever nvcc is found.

Environment:
  TARO_EXT_CUDA=0/1        force the CUDA part off/on (default: on when nvcc is found)
  TORCH_CUDA_ARCH_LIST     CUDA archs (default: the visible GPUs' own, as torch chooses, with PTX
                           for the newest; with no GPU visible "8.0+PTX;9.0a", whose compute_80
                           PTX lets any newer GPU, Blackwell included, JIT-compile the kernels)
  TARO_EXT_NATIVE=0        do not compile the CPU kernel with -march=native
  MAX_JOBS                 parallel compile jobs (ninja)
Build with `pip install --no-build-isolation -e .` so the extension is compiled
against the torch that will import it (see README).
"""
import glob
import os
import shutil

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _rel(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def _cuda_home():
    # /usr/local/bin/nvcc may be a wrapper script, which makes torch guess CUDA_HOME=/usr/local.
    for cand in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if cand and os.path.exists(os.path.join(cand, "bin", "nvcc")):
            return cand
    nvcc = shutil.which("nvcc")
    return os.path.dirname(os.path.dirname(os.path.realpath(nvcc))) if nvcc else None


def _want_cuda():
    flag = os.environ.get("TARO_EXT_CUDA")
    if flag is not None:
        return flag not in ("0", "false", "False", "")
    return _cuda_home() is not None


def _extensions():
    want_cuda = _want_cuda()
    if want_cuda:
        home = _cuda_home()
        if home is None:
            raise RuntimeError("TARO_EXT_CUDA=1 but no nvcc was found; set CUDA_HOME")
        os.environ["CUDA_HOME"] = home
    # Import after CUDA_HOME is settled: torch reads it at import time.
    from torch.utils import cpp_extension

    if want_cuda and "TORCH_CUDA_ARCH_LIST" not in os.environ:
        import torch

        # With a GPU, torch builds for it (and embeds PTX). Without one its arch detection fails:
        # SASS for A100 and H100-class GPUs, plus compute_80 PTX, which the driver JIT-compiles
        # on any other GPU from sm_80 up (sm_100 and sm_120 have no SASS here, and without the
        # PTX they would get "no kernel image is available").
        if not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0+PTX;9.0a"

    if want_cuda:
        cpp_extension.CUDA_HOME = os.environ["CUDA_HOME"]
        # ATen/cuda headers include cusparse.h etc., which ship in the nvidia wheels.
        import torch

        nv_inc = glob.glob(os.path.join(os.path.dirname(torch.__file__), "..", "nvidia", "cu*", "include"))
        os.environ["CPATH"] = os.pathsep.join(nv_inc + [os.environ.get("CPATH", "")]).strip(os.pathsep)

    # C++20: torch >= 2.13 headers require it. -fno-trapping-math: the kernels never trap on
    # FP exceptions, so GCC may if-convert. The CPU kernel's threads are its own (no OpenMP).
    cxx = ["-O3", "-fno-trapping-math", "-std=c++20"]
    if os.environ.get("TARO_EXT_NATIVE", "1") != "0":
        cxx.append("-march=native")
    sources = _rel("csrc/cpu/*.cpp") + _rel("csrc/bindings/taro_ops.cpp") + _rel("csrc/bindings/module.cpp")
    include_dirs = [os.path.join(ROOT, "csrc")]
    if not want_cuda:
        return [
            cpp_extension.CppExtension(
                "taro_ext._C", sources, include_dirs=include_dirs,
                extra_compile_args={"cxx": cxx},
            )
        ]
    sources += _rel("csrc/cuda/*.cu") + _rel("csrc/bindings/taro_ops_cuda.cpp")
    nvcc = ["-O3", "-std=c++17", "-lineinfo", "--expt-relaxed-constexpr"]
    return [
        cpp_extension.CUDAExtension(
            "taro_ext._C", sources, include_dirs=include_dirs,
            define_macros=[("TARO_WITH_CUDA", "1")],
            extra_compile_args={"cxx": cxx + ["-DTARO_WITH_CUDA=1"], "nvcc": nvcc},
        )
    ]


def _cmdclass():
    from torch.utils.cpp_extension import BuildExtension

    return {"build_ext": BuildExtension.with_options(use_ninja=True)}


setup(
    name="taro_ext",
    version="0.1.0",
    description="TARo (Token-level Adaptive Routing) decode step for PyTorch: fused CPU/CUDA/Triton kernels",
    packages=find_packages(include=["taro_ext", "taro_ext.*"]),
    # The demo's trained reward-model adapters and router (taro_ext/assets).
    package_data={"taro_ext": ["assets/*/*"]},
    python_requires=">=3.10",
    ext_modules=_extensions(),
    cmdclass=_cmdclass(),
    entry_points={"console_scripts": ["taro-ext=taro_ext.cli:main"]},
    # The llama.cpp engine (taro_ext.llamacpp): llama-cpp-python compiles llama.cpp from source.
    extras_require={"llamacpp": open(os.path.join(ROOT, "requirements-llamacpp.txt")).read().split()},
)
