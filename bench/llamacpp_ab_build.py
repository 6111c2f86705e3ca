"""A/B of two llama-cpp-python builds (e.g. AVX2 against AVX-512): TARo and base through
``taro_ext.llamacpp`` with the shipped models, B=1 and B=8, the pytest-benchmark group's prompts and
64 new tokens, tokens/s best of 3. Run it once per build, the other build first on PYTHONPATH:

    python bench/llamacpp_ab_build.py 1                                  # the installed build
    PYTHONPATH=/path/to/other-build python bench/llamacpp_ab_build.py 1  # e.g. pip install --target

The argument is the thread count (llama.cpp's n_threads and torch's). It prints the build's CPU features.
"""
import os
import sys
import time

import llama_cpp
import torch

import taro_ext
from taro_ext.gguf_export import cached_gguf
from taro_ext.llamacpp import LlamaCppTaroGenerator, load_gguf
from taro_ext.models import smollm2_gguf_path
from taro_ext.router import load_router
from test_bench_llamacpp import NEW_TOKENS, PROMPTS

threads = int(sys.argv[1]) if len(sys.argv) > 1 else 2
torch.set_num_threads(threads)
print(llama_cpp.__file__)
print(llama_cpp.llama_print_system_info().decode())
assets = os.path.join(os.path.dirname(taro_ext.__file__), "assets")
router = load_router(os.path.join(assets, "smollm2_router"))
base, reward = load_gguf(smollm2_gguf_path()), load_gguf(cached_gguf(os.path.join(assets, "smollm2_reward")))
for batch in (1, 8):
    for mode in ("base", "taro"):
        gen = LlamaCppTaroGenerator(base, reward, router if mode == "taro" else None, mode=mode, n_threads=threads)
        best, tokens = 0.0, 0
        for _ in range(3):
            t0 = time.perf_counter()
            out = gen.generate(PROMPTS[:batch], max_new_tokens=NEW_TOKENS, chat=True)
            tokens = sum(len(t) for t in out.token_ids)
            best = max(best, tokens / (time.perf_counter() - t0))
        print(f"B={batch} threads={threads} {mode}: {best:.1f} tokens/s ({tokens} tokens)", flush=True)
        gen.close()
