"""Tiny models built locally: a character-level tokenizer and small Llama configs.

Used by the tests (random weights, saved and reloaded with ``save_pretrained`` /
``from_pretrained`` so the real loading code runs) and by the synthetic experiments,
which train such models from scratch on this machine. Nothing here touches a hub.
"""
from __future__ import annotations

import string
from typing import Optional

import torch

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]
# Printable ASCII plus newline: enough for arithmetic word problems and chat markup.
CHARACTERS = list(string.digits + string.ascii_letters + string.punctuation + " \n")

CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def char_tokenizer(extra_chars: str = ""):
    """A character-level ``PreTrainedTokenizerFast`` (one token per character).

    Token ids: the four special tokens first, then the characters in ``CHARACTERS`` order,
    then ``extra_chars``. Its length is the model vocabulary a tiny model needs.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = CHARACTERS + [c for c in extra_chars if c not in CHARACTERS]
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + chars)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", padding_side="left")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_llama_config(vocab_size: int, *, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4,
                      num_kv_heads: int = 2, intermediate_size: Optional[int] = None,
                      max_position_embeddings: int = 512, tokenizer=None):
    """A small ``LlamaConfig``; token ids of specials come from ``tokenizer`` when given."""
    from transformers import LlamaConfig

    ids = {}
    if tokenizer is not None:
        ids = dict(pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                   eos_token_id=tokenizer.eos_token_id)
    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers,
        num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
        intermediate_size=intermediate_size or 2 * hidden_size,
        max_position_embeddings=max_position_embeddings, tie_word_embeddings=False, **ids)


def tiny_llama(vocab_size: int, *, seed: int = 0, tokenizer=None, **config_kwargs):
    """A randomly initialised ``LlamaForCausalLM`` (deterministic under ``seed``), in eval mode."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_llama_config(vocab_size, tokenizer=tokenizer, **config_kwargs))
    return model.eval()
