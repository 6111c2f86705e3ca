"""Embedding ``taro_step`` in a hand-written decode loop (no TaroGenerator).

Two causal LMs with their own KV caches, a batch of left-padded prompts, and one
``taro_step`` call per generated token. Runs on CPU in a second with tiny random models;
``--smollm2`` uses the embedded SmolLM2-135M-Instruct as base and reward model instead.

    python python/decode_loop.py [--smollm2] [--steps 24]
"""
import argparse

import torch
from transformers import DynamicCache

import taro_ext
from taro_ext.tiny import char_tokenizer, tiny_llama


def load(smollm2: bool):
    if smollm2:
        from taro_ext.models import load_smollm2

        model, tok = load_smollm2()
        return model, model, tok  # the same model as its own reward model: a stand-in
    tok = char_tokenizer()
    return tiny_llama(len(tok), seed=0, tokenizer=tok), tiny_llama(len(tok), seed=1, tokenizer=tok), tok


@torch.inference_mode()
def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--smollm2", action="store_true")
    parser.add_argument("--steps", type=int, default=24)
    args = parser.parse_args()
    base, reward, tok = load(args.smollm2)
    vocab = len(tok)
    router = taro_ext.TopKRouter(vocab)  # untrained; load a trained one with taro_ext.load_router(dir)

    prompts = ["2+3=", "The answer to 17*3 is"]
    rows = [tok(p)["input_ids"] for p in prompts]
    width = max(map(len, rows))
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])  # left padding
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    caches = [DynamicCache(config=base.config), DynamicCache(config=reward.config)]
    rng = torch.Generator().manual_seed(0)

    generated = []
    for step in range(args.steps):
        logits = [m(input_ids=ids, attention_mask=mask, position_ids=positions, cache=c, use_cache=True,
                    logits_to_keep=1).logits[:, -1] for m, c in zip((base, reward), caches)]
        # One fused step: router alpha per row, mixed score, token pick. Value checks on the first step only.
        out = taro_ext.taro_step(logits[0], logits[1], router, temperature=0.7,
                                 uniform=torch.rand(len(rows), generator=rng), vocab_size=vocab,
                                 check_inputs=step == 0)
        generated.append(out.tokens)
        ids = out.tokens[:, None]
        mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=1)
        positions = positions[:, -1:] + 1
    tokens = torch.stack(generated, dim=1)
    for prompt, row in zip(prompts, tokens):
        print(f"{prompt!r} -> {tok.decode(row, skip_special_tokens=True)!r}")


if __name__ == "__main__":
    main()
