"""TARo through llama.cpp (taro_ext.llamacpp) against the transformers engine (TaroGenerator), same run.

Models: SmolLM2-135M-Instruct as base, the shipped LoRA reward model (taro_ext/assets/smollm2_reward)
and router (taro_ext/assets/smollm2_router). llama.cpp decodes the Q4_1 base GGUF and the reward
model's GGUF export (Q8_0, ``taro_ext.gguf_export``'s default); transformers decodes the dequantised
fp32 checkpoint and the merged reward model. Greedy, chat template, 64 new tokens (with the prompt's
prefill in the time: 16 new tokens would time mostly the prefill).

One group per batch size (B=1, B=8) and thread count (1, 2: llama.cpp threads per model, torch
intra-op threads); baseline ``taro (transformers)``, so ``vs baseline`` of ``taro (llama.cpp)`` is the
speed-up the issue asks for. tokens/s counts the tokens generated (rows that finish early stop
counting, in both engines). llama.cpp rows record ``step_share``: the fraction of the decode loop's
forward + step time spent in the step (the rest is llama.cpp's forwards). The ``eager PyTorch step``
rows run the same llama.cpp forwards with the step a user writes in eager PyTorch
(``benchlib.natural_taro_step`` / ``natural_genarm_step``) instead of our fused kernel: what fusing
the step is worth once the forward is fast.

Opt-in (loads SmolLM2 twice, minutes on 2 cores): ``TARO_BENCH_LLAMACPP=1 TARO_BENCH_NOTE="$(uptime)"
pytest -q bench/test_bench_llamacpp.py --benchmark-only --benchmark-json bench/results/llamacpp-wall.json``,
then ``python -m taro_ext.benchreport bench/results/llamacpp-wall.json --out bench/results/llamacpp-wall.md``
(``llamacpp.md`` is the hand-written summary of every llama.cpp measurement).
"""
from __future__ import annotations

import importlib.util
import os

import pytest
import torch

from benchlib import natural_genarm_step, natural_taro_step, run_timed

OPT_IN = "TARO_BENCH_LLAMACPP"
NEW_TOKENS = 64
PROMPTS = ["What is 17 * 24? Think step by step.", "A shop sells pens at 3 dollars each. How much do 12 pens cost?",
           "Solve for x: 2x + 6 = 20.", "Name three prime numbers and say why they are prime.",
           "Explain why the sky is blue.", "Write a short poem about the sea.",
           "Give two tips for learning to program.", "What is the capital of France and what is it known for?"]
BASELINE = "taro (transformers)"
GENARM_ALPHA = 1.0

pytestmark = [
    pytest.mark.skipif(os.environ.get(OPT_IN) != "1", reason=f"llama.cpp vs transformers is opt-in: set {OPT_IN}=1"),
    pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python is not installed"),
]


@pytest.fixture(scope="module")
def models():
    import taro_ext

    assets = os.path.join(os.path.dirname(taro_ext.__file__), "assets")  # the demo's reward model and router
    DEMO_REWARD, DEMO_ROUTER = os.path.join(assets, "smollm2_reward"), os.path.join(assets, "smollm2_router")
    from taro_ext.gguf_export import cached_gguf
    from taro_ext.llamacpp import load_gguf
    from taro_ext.models import load_model, load_smollm2, smollm2_gguf_path
    from taro_ext.router import load_router

    base, tok = load_smollm2()
    reward, reward_tok = load_model(DEMO_REWARD)
    base_gguf, reward_gguf = load_gguf(smollm2_gguf_path()), load_gguf(cached_gguf(DEMO_REWARD))
    yield dict(base=base, reward=reward, tok=tok, reward_tok=reward_tok, router=load_router(DEMO_ROUTER),
               base_gguf=base_gguf, reward_gguf=reward_gguf)
    reward_gguf.close()
    base_gguf.close()


def _generated(out):
    return sum(len(t) for t in out.token_ids)


def _eager_step(gen):
    """Replaces ``gen.mix`` (our fused step) with the step a user writes in eager PyTorch."""
    from taro_ext.step import StepResult

    weights = gen.router.weights() if gen.mode == "taro" else None

    def mix(base_logits, reward_logits, temperature, uniform, check_inputs):
        if gen.mode == "taro":
            tokens, alpha = natural_taro_step(base_logits, reward_logits, weights, gen.router.k, gen.vocab_size,
                                              temperature, uniform)
        else:
            tokens = natural_genarm_step(base_logits, reward_logits, gen.alpha, gen.vocab_size, temperature, uniform)
            alpha = torch.full((base_logits.shape[0],), gen.alpha)
        return StepResult(tokens, alpha, None, None)

    gen.mix = mix


CASES = [(b, t) for b in (1, 8) for t in (1, 2)]
ROWS = [("base", "transformers"), ("genarm", "transformers"), ("taro", "transformers"),
        ("base", "llama.cpp"), ("genarm", "llama.cpp"), ("taro", "llama.cpp"),
        ("genarm", "llama.cpp, eager PyTorch step"), ("taro", "llama.cpp, eager PyTorch step")]


@pytest.mark.parametrize("mode,engine", ROWS, ids=[f"{m}-{e.replace(', ', '-').replace(' ', '_')}" for m, e in ROWS])
@pytest.mark.parametrize("batch,threads", CASES, ids=[f"B{b}-t{t}" for b, t in CASES])
def test_engine(benchmark, models, batch, threads, mode, engine):
    from taro_ext import TaroGenerator
    from taro_ext.llamacpp import LlamaCppTaroGenerator

    router = models["router"] if mode == "taro" else None
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        if engine == "transformers":
            gen = TaroGenerator(models["base"], models["reward"], router, models["tok"], mode=mode, backend="cpu",
                                alpha=GENARM_ALPHA, reward_tokenizer=models["reward_tok"])
        else:
            gen = LlamaCppTaroGenerator(models["base_gguf"], models["reward_gguf"], router, mode=mode,
                                        alpha=GENARM_ALPHA, n_threads=threads)
            if "eager" in engine:
                _eager_step(gen)
        prompts = PROMPTS[:batch]
        benchmark.group = f"llama.cpp vs transformers, SmolLM2 B={batch} threads={threads} {NEW_TOKENS} new tokens"
        out = run_timed(benchmark, lambda: gen.generate(prompts, max_new_tokens=NEW_TOKENS, chat=True),
                        label=f"{mode} ({engine})", baseline=BASELINE, tokens=_generated, budget_s=2.0,
                        min_rounds=2)
        if engine != "transformers":
            t = gen.timings
            benchmark.extra_info["step_share"] = t["step_s"] / (t["forward_s"] + t["step_s"])
            gen.close()
    finally:
        torch.set_num_threads(torch_threads)
    assert len(out.token_ids) == batch and all(1 <= len(t) <= NEW_TOKENS for t in out.token_ids)
