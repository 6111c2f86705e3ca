"""tokens per CPU-second of base / GenARM / TARo through llama.cpp and through TaroGenerator, one
thread, same run: for a machine whose cores other jobs keep busy, where wall-clock tokens/s
measure the scheduler's share rather than the engines. Each call is timed by the process's CPU
time (``time.process_time``: one thread, so CPU time = the time the call would take on an idle
core, up to cache effects from the other jobs) and by wall time. Same models, prompts and
settings as ``bench/test_bench_llamacpp.py`` (64 new tokens, greedy, chat template).

    OMP_NUM_THREADS=1 python bench/llamacpp_cpu_time.py --out bench/results/llamacpp_cpu_time.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_bench_llamacpp import GENARM_ALPHA, NEW_TOKENS, PROMPTS  # noqa: E402


def _timed(gen, prompts):
    gen.generate(prompts[:1], max_new_tokens=2, chat=True)  # warm-up
    cpu, wall = time.process_time(), time.perf_counter()
    out = gen.generate(prompts, max_new_tokens=NEW_TOKENS, chat=True)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    tokens = sum(len(t) for t in out.token_ids)
    return dict(tokens=tokens, cpu_s=cpu, wall_s=wall, tokens_per_cpu_s=tokens / cpu, tokens_per_wall_s=tokens / wall)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="bench/results/llamacpp_cpu_time.json")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    args = p.parse_args()
    torch.set_num_threads(1)
    import taro_ext
    from taro_ext import TaroGenerator
    from taro_ext.gguf_export import cached_gguf
    from taro_ext.llamacpp import LlamaCppTaroGenerator, load_gguf
    from taro_ext.models import load_model, load_smollm2, smollm2_gguf_path
    from taro_ext.router import load_router

    assets = os.path.join(os.path.dirname(taro_ext.__file__), "assets")
    uptime = lambda: subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()  # noqa: E731
    result = dict(command=" ".join(["python"] + sys.argv), uptime_start=uptime(), rows=[])
    router = load_router(os.path.join(assets, "smollm2_router"))
    base, tok = load_smollm2()
    reward, reward_tok = load_model(os.path.join(assets, "smollm2_reward"))
    base_gguf, reward_gguf = load_gguf(smollm2_gguf_path()), load_gguf(cached_gguf(os.path.join(assets, "smollm2_reward")))
    for batch in args.batches:
        for mode in ("base", "genarm", "taro"):
            r = router if mode == "taro" else None
            engines = {
                "transformers": TaroGenerator(base, reward, r, tok, mode=mode, alpha=GENARM_ALPHA, backend="cpu",
                                              reward_tokenizer=reward_tok),
                "llama.cpp": LlamaCppTaroGenerator(base_gguf, reward_gguf, r, mode=mode, alpha=GENARM_ALPHA),
            }
            for engine, gen in engines.items():
                row = dict(batch=batch, mode=mode, engine=engine, **_timed(gen, PROMPTS[:batch]))
                if engine == "llama.cpp":
                    t = gen.timings
                    row["step_share"] = t["step_s"] / (t["forward_s"] + t["step_s"])
                    gen.close()
                result["rows"].append(row)
                print(json.dumps(row), flush=True)
    result["uptime_end"] = uptime()
    reward_gguf.close()
    base_gguf.close()
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
