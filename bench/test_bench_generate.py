"""End-to-end generation: tokens/s of whole ``generate`` calls, base model alone against GenARM and
TARo with the same two models, greedy.

Scales (one benchmark group each; ratios against ``genarm fused <backend>``):

* ``tiny``: two random tiny Llamas (hidden 64, 2 layers) with the character tokenizer
  (V ~ 100): the forward and the step are both cheap, so this shows the engine's per-step overhead.
* ``tiny-wide``: the same models with a 49152-token vocabulary (SmolLM2's size; the tokenizer
  is the character one padded with CJK characters): a cheap forward under a real-size step,
  the case where the step's cost shows most.
* ``smollm2``: SmolLM2-135M-Instruct as base and as reward model, opt-in with
  ``TARO_BENCH_SMOLLM2=1`` (a few tokens/s on 2 CPU cores).

Rows: ``base (transformers generate)`` (the base model's own ``generate``, ``min_new_tokens``
so it runs every step), ``base (TaroGenerator, <backend>)`` (our loop, reward model not run),
``genarm fused <backend>``, ``taro fused <backend>`` (top-K router), ``taro full-logits (torch)``
(the paper's expensive router) and ``taro reference (torch eager)`` (top-K router, PyTorch step).
tokens/s counts the tokens generated (with the dynamic cache a finished row leaves the batch, so a
row that stops early costs nothing more and is credited nothing more; HF's ``generate`` runs every
row to ``min_new_tokens``).

``test_taro_over_genarm_alternating`` measures the acceptance ratio, TARo fused over GenARM fused
in tokens/s, from calls that alternate between the two, so that load from other processes on a
shared machine falls on both alike.
"""
from __future__ import annotations

import copy
import os
import statistics
import time

import pytest
import torch

from taro_ext import FullLogitsRouter, TopKRouter, available_backends
from taro_ext.generation import TaroGenerator
from taro_ext.tiny import CHARACTERS, SPECIAL_TOKENS, char_tokenizer, tiny_llama

from benchlib import run_timed

BASELINE_MODE = "genarm"
GENARM_ALPHA = 1.0
SMOLLM2_OPT_IN = "TARO_BENCH_SMOLLM2"
WIDE_VOCAB = 49152
PROMPTS = ["What is 17 + 25?", "Name three prime numbers.", "Write a short poem about the sea.",
           "Explain why the sky is blue."]
# Tokens the correctness check compares between a fused and the reference backend.
CHECK_TOKENS = 4


class Scale:
    def __init__(self, name, device, base, reward, tokenizer, prompts, new_tokens):
        self.name, self.device = name, torch.device(device)
        self.base, self.reward, self.tokenizer = base.to(self.device), reward.to(self.device), tokenizer
        self.prompts = prompts
        self.new_tokens = new_tokens
        self.vocab = len(tokenizer)
        torch.manual_seed(0)
        self.routers = {"topk": TopKRouter(self.vocab), "full": FullLogitsRouter(self.vocab)}
        self.fused = "cpu" if self.device.type == "cpu" else "cuda"

    @property
    def group(self):
        return (f"generate {self.name} {self.device.type} B={len(self.prompts)} V={self.vocab} "
                f"{self.new_tokens} new tokens")

    def generator(self, mode, design, backend):
        return TaroGenerator(self.base, self.reward, self.routers[design] if design else None, self.tokenizer,
                             mode=mode, alpha=GENARM_ALPHA, backend=backend)


def _tiny_scale(name, device, vocab_extra):
    tok = char_tokenizer(vocab_extra)
    return Scale(name, device, tiny_llama(len(tok), seed=0, tokenizer=tok), tiny_llama(len(tok), seed=1, tokenizer=tok),
                 tok, PROMPTS, new_tokens=32)


def _wide_chars():
    # Code points from the CJK block upwards (surrogates skipped), one token each, to pad the
    # character tokenizer to WIDE_VOCAB tokens.
    count = WIDE_VOCAB - len(SPECIAL_TOKENS) - len(CHARACTERS)
    points = (c for c in range(0x4E00, 0x30000) if not 0xD800 <= c < 0xE000)
    return "".join(chr(next(points)) for _ in range(count))


def _smollm2_scale(device):
    from taro_ext.models import load_smollm2

    base, tokenizer = load_smollm2()
    # Prompts whose answers run past the 16 tokens, so that no row stops early at EOS.
    return Scale("smollm2", device, base, copy.deepcopy(base), tokenizer, PROMPTS[2:], new_tokens=16)


SCALES = {
    "tiny": lambda: _tiny_scale("tiny", "cpu", ""),
    "tiny-wide": lambda: _tiny_scale("tiny-wide", "cpu", _wide_chars()),
    "smollm2": lambda: _smollm2_scale("cpu"),
    "tiny-wide-cuda": lambda: _tiny_scale("tiny-wide", "cuda", _wide_chars()),
}
_opt_in = pytest.mark.skipif(os.environ.get(SMOLLM2_OPT_IN) != "1",
                             reason=f"SmolLM2-135M generation is opt-in: set {SMOLLM2_OPT_IN}=1")


@pytest.fixture(scope="module", params=[
    "tiny", "tiny-wide", pytest.param("smollm2", marks=_opt_in), pytest.param("tiny-wide-cuda", marks=pytest.mark.gpu)])
def scale(request):
    return SCALES[request.param]()


def _tokens(out):
    """The tokens generated, over all rows."""
    return sum(len(t) for t in out.token_ids)


def _sync_after(scale, fn):
    def call():
        out = fn()
        if scale.device.type == "cuda":
            torch.cuda.synchronize(scale.device)
        return out
    return call


def test_hf_generate(benchmark, scale):
    enc = scale.tokenizer(scale.prompts, return_tensors="pt", padding=True, padding_side="left").to(scale.device)
    n = scale.new_tokens

    def call():
        return scale.base.generate(**enc, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                   pad_token_id=scale.tokenizer.pad_token_id)

    benchmark.group = scale.group
    out = run_timed(benchmark, _sync_after(scale, call), label="base (transformers generate)",
                    baseline=f"{BASELINE_MODE} fused {scale.fused}", tokens=len(scale.prompts) * n, budget_s=4.0)
    assert out.shape == (len(scale.prompts), enc["input_ids"].shape[1] + n)


ENGINE_ROWS = [
    # (mode, router design, backend: "fused" = the scale's fused backend)
    ("base", None, "fused"),
    ("genarm", None, "fused"),
    ("taro", "topk", "fused"),
    ("taro", "full", "torch"),
    ("taro", "topk", "torch"),
]


def _label(mode, design, backend):
    if mode == "base":
        return f"base (TaroGenerator, {backend})"
    if design == "full":
        return "taro full-logits (torch)"
    if backend == "torch":
        return "taro reference (torch eager)"
    return f"{mode} fused {backend}"


@pytest.mark.parametrize("mode,design,backend", ENGINE_ROWS, ids=[f"{m}-{d or 'fixed'}-{b}" for m, d, b in ENGINE_ROWS])
def test_engine(benchmark, scale, mode, design, backend):
    backend = scale.fused if backend == "fused" else backend
    if backend not in available_backends(scale.device):
        pytest.skip(f"backend {backend!r} is not available on {scale.device.type} here "
                    f"(available: {available_backends(scale.device)})")
    gen = scale.generator(mode, design, backend)

    benchmark.group = scale.group
    out = run_timed(benchmark, _sync_after(scale, lambda: gen.generate(scale.prompts, max_new_tokens=scale.new_tokens)),
                    label=_label(mode, design, backend), baseline=f"{BASELINE_MODE} fused {scale.fused}",
                    tokens=_tokens, budget_s=4.0)

    assert all(1 <= len(t) <= scale.new_tokens for t in out.token_ids)
    alphas = torch.tensor([a for row in out.alphas for a in row])
    if mode == "genarm":
        assert torch.all(alphas == GENARM_ALPHA)
    elif mode == "taro":
        assert torch.all((alphas >= 0) & (alphas <= scale.routers[design].alpha_max))
    if backend != "torch":
        # The fused loop picks what the PyTorch reference picks (first few tokens: cheap to recompute).
        ref = scale.generator(mode, design, "torch").generate(scale.prompts, max_new_tokens=CHECK_TOKENS)
        assert [t[:CHECK_TOKENS] for t in out.token_ids] == [t[:CHECK_TOKENS] for t in ref.token_ids]


def test_taro_over_genarm_alternating(benchmark, scale):
    backend = scale.fused
    if backend not in available_backends(scale.device):
        pytest.skip(f"backend {backend!r} is not available on {scale.device.type} here")
    runs = {"genarm": (scale.generator("genarm", None, backend), []),
            "taro": (scale.generator("taro", "topk", backend), [])}

    def timed(mode):
        gen, rates = runs[mode]
        start = time.perf_counter()
        out = _sync_after(scale, lambda: gen.generate(scale.prompts, max_new_tokens=scale.new_tokens))()
        rates.append(_tokens(out) / (time.perf_counter() - start))
        return out

    benchmark.group = scale.group
    genarm_out, taro_out = run_timed(benchmark, lambda: (timed("genarm"), timed("taro")),
                                     label=f"genarm + taro fused {backend}, alternating",
                                     baseline=f"{BASELINE_MODE} fused {backend}", tokens=0, budget_s=8.0,
                                     min_rounds=9)
    # The warm-up pair is dropped; each remaining pair ran back to back.
    pairs = [t / g for g, t in zip(runs["genarm"][1][1:], runs["taro"][1][1:])]
    benchmark.extra_info.update(paired_ratio=statistics.median(pairs), paired_min=min(pairs),
                                paired_max=max(pairs), pairs=len(pairs))
    assert all(a == GENARM_ALPHA for row in genarm_out.alphas for a in row)
    assert all(0 <= a <= scale.routers["topk"].alpha_max for row in taro_out.alphas for a in row)
