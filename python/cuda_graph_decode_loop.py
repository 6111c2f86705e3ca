"""A static-shape decode loop captured in a CUDA graph, in the manner of gpt-fast.

Preallocated ``StaticCache`` objects and fixed input buffers (tokens ``[B, 1]``, positions
``[B, 1]``, attention mask ``[B, max_len]``, uniforms ``[B]``) make every decode step, both
forwards plus ``taro_step(check_inputs=False)``, read and write the same memory, so it is
captured once and replayed per token. Without a GPU the same step runs eagerly.

    python python/cuda_graph_decode_loop.py [--smollm2] [--steps 24]
"""
import argparse

import torch
from transformers import StaticCache

import taro_ext
from taro_ext.tiny import char_tokenizer, tiny_llama


def load(smollm2: bool, device):
    if smollm2:
        from taro_ext.models import load_smollm2

        model, tok = load_smollm2(device=device)
        return model, model, tok  # the same model as its own reward model: a stand-in
    tok = char_tokenizer()
    return (tiny_llama(len(tok), seed=0, tokenizer=tok).to(device), tiny_llama(len(tok), seed=1, tokenizer=tok).to(device),
            tok)


@torch.inference_mode()
def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--smollm2", action="store_true")
    parser.add_argument("--steps", type=int, default=24)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    base, reward, tok = load(args.smollm2, device)
    vocab = len(tok)
    router = taro_ext.TopKRouter(vocab).to(device)

    prompts = ["2+3=", "The answer to 17*3 is"]
    rows = [tok(p)["input_ids"] for p in prompts]
    batch, width = len(rows), max(map(len, rows))
    max_len = width + args.steps
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    prompt = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)
    models = [(base, StaticCache(config=base.config, max_cache_len=max_len)),
              (reward, StaticCache(config=reward.config, max_cache_len=max_len))]

    # Static buffers: the decode step reads only these.
    mask = torch.zeros(batch, max_len, dtype=torch.long, device=device)
    mask[:, :width] = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    positions = (mask[:, :width].cumsum(-1) - 1).clamp_min(0)
    tokens = torch.zeros(batch, 1, dtype=torch.long, device=device)
    uniform = torch.zeros(batch, device=device)
    rng = torch.Generator(device=device).manual_seed(0)

    def forward_both(ids, attn, pos):
        return [m(input_ids=ids, attention_mask=attn, position_ids=pos, cache=c, use_cache=True,
                  logits_to_keep=1).logits[:, -1] for m, c in models]

    def decode_step():
        b, r = forward_both(tokens, mask, positions)
        return taro_ext.taro_step(b, r, router, temperature=0.7, uniform=uniform, vocab_size=vocab,
                                  check_inputs=False)  # value checks would sync: not allowed in a graph

    b, r = forward_both(prompt, mask[:, :width], positions)  # prefill (dynamic shape, eager)
    uniform.copy_(torch.rand(batch, generator=rng, device=device))
    out = taro_ext.taro_step(b, r, router, temperature=0.7, uniform=uniform, vocab_size=vocab)
    positions = positions[:, -1:].clone()
    graph, graph_out = None, None
    generated = [out.tokens.clone()]
    for step in range(1, args.steps):
        tokens.copy_(generated[-1][:, None])
        positions.add_(1)
        mask[:, width + step - 1] = 1
        uniform.copy_(torch.rand(batch, generator=rng, device=device))
        if device.type != "cuda":
            out = decode_step()
        else:
            if graph is None:
                # Warm up on a side stream, undo its cache writes, then capture.
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    decode_step()
                    for _, cache in models:
                        for layer in cache.layers:
                            layer.cumulative_length.sub_(1)
                torch.cuda.current_stream().wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    graph_out = decode_step()
            graph.replay()
            out = graph_out
        generated.append(out.tokens.clone())
    for prompt_text, row in zip(prompts, torch.stack(generated, dim=1)):
        print(f"{prompt_text!r} -> {tok.decode(row, skip_special_tokens=True)!r}")


if __name__ == "__main__":
    main()
