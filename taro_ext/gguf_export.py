"""Llama-family transformers models, e.g. the trained reward model, written as llama.cpp GGUF files.

``write_gguf(model, path, like=BASE_GGUF)`` writes the model's tensors under llama.cpp's names and
copies everything else from the base model's GGUF: its tokenizer (tokens, merges, token types,
special ids, chat template) and metadata, with the architecture fields set from the model's
config. So a reward model fine-tuned from the base (LoRA adapters merged by
``taro_ext.models.load_model``) decodes in llama.cpp with exactly the base's tokenizer, as TARo
needs. Tensor types follow the base file by default (``types="like"``: the same quantisation,
tensor by tensor) or are one of ``f32``, ``f16``, ``q8_0``, ``q4_1``.

Without ``like`` (a model with no GGUF base, e.g. the tests' tiny character-level models) the
tokenizer is written from the transformers tokenizer instead, as a byte-level BPE vocabulary.

Written with the ``gguf`` package; the tensor name map and the q/k row order follow llama.cpp's
GGUF layout for the ``llama`` architecture (``gguf.constants.MODEL_TENSORS``).

Command line: ``python -m taro_ext.gguf_export ADAPTER_OR_CHECKPOINT_DIR OUT.gguf [--like BASE.gguf]``.
"""
from __future__ import annotations

import argparse
import hashlib
import os
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch

TYPES = ("like", "f32", "f16", "q8_0", "q4_1")

# transformers name -> GGUF name, for LlamaForCausalLM ("{i}" is the layer index).
_LLAMA_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
    "model.layers.{i}.input_layernorm.weight": "blk.{i}.attn_norm.weight",
    "model.layers.{i}.self_attn.q_proj.weight": "blk.{i}.attn_q.weight",
    "model.layers.{i}.self_attn.k_proj.weight": "blk.{i}.attn_k.weight",
    "model.layers.{i}.self_attn.v_proj.weight": "blk.{i}.attn_v.weight",
    "model.layers.{i}.self_attn.o_proj.weight": "blk.{i}.attn_output.weight",
    "model.layers.{i}.post_attention_layernorm.weight": "blk.{i}.ffn_norm.weight",
    "model.layers.{i}.mlp.gate_proj.weight": "blk.{i}.ffn_gate.weight",
    "model.layers.{i}.mlp.up_proj.weight": "blk.{i}.ffn_up.weight",
    "model.layers.{i}.mlp.down_proj.weight": "blk.{i}.ffn_down.weight",
}


def _llama_config(model):
    config = model.config
    if getattr(config, "model_type", None) != "llama":
        raise ValueError(f"only Llama-architecture models can be exported (model_type "
                         f"{getattr(config, 'model_type', None)!r})")
    return config


def _config_fields(config) -> dict:
    """The ``llama.*`` GGUF fields of a ``LlamaConfig``."""
    rope = getattr(config, "rope_parameters", None) or {}
    rope_theta = rope.get("rope_theta", getattr(config, "rope_theta", None))
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"rope_type {rope['rope_type']!r} is not supported by this exporter (only 'default')")
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return {
        "context_length": int(config.max_position_embeddings),
        "embedding_length": int(config.hidden_size),
        "block_count": int(config.num_hidden_layers),
        "feed_forward_length": int(config.intermediate_size),
        "attention.head_count": int(config.num_attention_heads),
        "attention.head_count_kv": int(config.num_key_value_heads),
        "rope.freq_base": float(rope_theta),
        "attention.layer_norm_rms_epsilon": float(config.rms_norm_eps),
        "vocab_size": int(config.vocab_size),
        "rope.dimension_count": int(head_dim),
    }


def _to_gguf_rope_order(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """q/k projection rows from transformers' rotate-half order to llama.cpp's interleaved pairs.

    transformers rotates dimension j with j + d/2 within each head; llama.cpp's ``llama`` rope
    rotates pairs (2j, 2j+1). Row j of a head moves to 2j, row j + d/2 to 2j + 1.
    """
    out_dim, in_dim = weight.shape
    head_dim = out_dim // n_heads
    return weight.reshape(n_heads, 2, head_dim // 2, in_dim).swapaxes(1, 2).reshape(out_dim, in_dim)


def gguf_tensors(model) -> Iterator[tuple[str, np.ndarray]]:
    """``(gguf_name, float32 array)`` for every weight of a ``LlamaForCausalLM``, in llama.cpp's layout."""
    config = _llama_config(model)
    patterns = {}
    for hf, gg in _LLAMA_NAMES.items():
        patterns[hf] = gg
        for i in range(config.num_hidden_layers):
            patterns[hf.format(i=i)] = gg.format(i=i)
    state = model.state_dict()
    tied = bool(getattr(config, "tie_word_embeddings", False))
    for name, tensor in state.items():
        if name == "lm_head.weight" and tied:
            continue  # llama.cpp reuses token_embd when output.weight is absent
        if name not in patterns or "{i}" in name:
            raise ValueError(f"tensor {name!r} has no GGUF name in the llama architecture")
        array = tensor.detach().to(torch.float32).cpu().numpy()
        if name.endswith("q_proj.weight"):
            array = _to_gguf_rope_order(array, config.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            array = _to_gguf_rope_order(array, config.num_key_value_heads)
        yield patterns[name], np.ascontiguousarray(array)


def _tensor_type(gguf, name: str, array: np.ndarray, types: str, like_types: dict):
    qt = gguf.GGMLQuantizationType
    if array.ndim == 1:
        return qt.F32  # norms stay float, as llama.cpp expects
    if types == "like":
        wanted = like_types.get(name, qt.F16)
    else:
        wanted = {"f32": qt.F32, "f16": qt.F16, "q8_0": qt.Q8_0, "q4_1": qt.Q4_1}[types]
    block = gguf.GGML_QUANT_SIZES[wanted][0]
    if array.shape[-1] % block:
        return qt.F16  # rows not a whole number of quantisation blocks
    return wanted


def _copy_fields(writer, reader, skip: set) -> None:
    from gguf import GGUFValueType

    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name in skip:
            continue
        vtype = field.types[0]
        sub_type = field.types[-1] if vtype == GGUFValueType.ARRAY else None
        writer.add_key_value(name, field.contents(), vtype, sub_type)


def _write_tokenizer(writer, tokenizer) -> None:
    """A transformers tokenizer as a GGUF byte-level BPE vocabulary (``tokenizer.ggml.model = gpt2``).

    Byte-level BPE tokenizers are written as they are (tokens and merges); word-level tokenizers
    whose tokens are single characters (``taro_ext.tiny.char_tokenizer``) become a BPE vocabulary
    without merges, which llama.cpp splits into the same one-character tokens.
    """
    import json

    from gguf import GGUFValueType, TokenType
    from gguf.vocab import bytes_to_unicode

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    kind = spec["model"]["type"]
    special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    vocab = tokenizer.get_vocab()
    tokens = [None] * len(vocab)
    for tok, idx in vocab.items():
        tokens[idx] = tok
    if None in tokens:
        raise ValueError("the tokenizer's ids are not contiguous from 0; cannot write a GGUF vocabulary")
    if kind == "BPE":
        merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"].get("merges", [])]
    elif kind == "WordLevel":
        to_byte_level = bytes_to_unicode()
        for idx, tok in enumerate(tokens):
            if idx in special:
                continue
            if len(tok) != 1:
                raise ValueError(f"word-level token {tok!r} (id {idx}) is not one character: only character-level "
                                 f"word-level tokenizers can be written as GGUF")
            tokens[idx] = "".join(to_byte_level[b] for b in tok.encode("utf-8"))
        merges = []
    else:
        raise ValueError(f"tokenizer model {kind!r} cannot be written as GGUF here (BPE or character WordLevel)")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([TokenType.CONTROL if i in special else TokenType.NORMAL for i in range(len(tokens))])
    # llama.cpp requires the merges key; a vocabulary without merges gets one harmless entry
    # (a merge of two characters absent from a character-level vocabulary's texts is never applied).
    writer.add_key_value("tokenizer.ggml.merges", merges or ["\u0100 \u0101"], GGUFValueType.ARRAY,
                         GGUFValueType.STRING)
    for setter, value in ((writer.add_bos_token_id, tokenizer.bos_token_id),
                          (writer.add_eos_token_id, tokenizer.eos_token_id),
                          (writer.add_unk_token_id, tokenizer.unk_token_id),
                          (writer.add_pad_token_id, tokenizer.pad_token_id)):
        if value is not None:
            setter(int(value))
    writer.add_add_bos_token(False)
    if getattr(tokenizer, "chat_template", None):
        writer.add_chat_template(tokenizer.chat_template)


def write_gguf(model, path: str | os.PathLike, *, like: Optional[str | os.PathLike] = None, tokenizer=None,
               types: str = "like", name: Optional[str] = None) -> Path:
    """Write ``model`` (a ``LlamaForCausalLM``) to ``path`` as GGUF; returns the path.

    ``like``: the base model's GGUF, whose tokenizer and metadata are copied and whose tensor
    types are reused with ``types="like"``. Without it, ``tokenizer`` (a transformers tokenizer)
    is written and ``types="like"`` means f32.
    """
    import gguf

    if types not in TYPES:
        raise ValueError(f"types must be one of {TYPES}, got {types!r}")
    if like is None and tokenizer is None:
        raise ValueError("give like= (the base model's GGUF) or tokenizer= (a transformers tokenizer)")
    path = Path(path)
    fields = _config_fields(_llama_config(model))
    like_types: dict = {}
    reader = None
    if like is not None:
        reader = gguf.GGUFReader(str(like))
        arch = reader.fields["general.architecture"].contents()
        if arch != "llama":
            raise ValueError(f"{like}: architecture {arch!r}, but this exporter writes 'llama' models")
        n_tokens = len(reader.fields["tokenizer.ggml.tokens"].data)
        if fields["vocab_size"] != n_tokens:
            raise ValueError(f"the model has vocab_size {fields['vocab_size']} but {like} has {n_tokens} tokens: "
                             f"the model was not fine-tuned from this base")
        like_types = {t.name: t.tensor_type for t in reader.tensors}
    elif types == "like":
        types = "f32"
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    writer = gguf.GGUFWriter(str(tmp), "llama")
    if reader is not None:
        own = {f"llama.{k}" for k in fields} | {"general.architecture", "general.name", "general.file_type"}
        _copy_fields(writer, reader, own)
    else:
        _write_tokenizer(writer, tokenizer)
    writer.add_name(name or getattr(model.config, "_name_or_path", "") or path.stem)
    for key, value in fields.items():
        if isinstance(value, float):
            writer.add_float32(f"llama.{key}", value)
        else:
            writer.add_uint32(f"llama.{key}", value)
    for tensor_name, array in gguf_tensors(model):
        qtype = _tensor_type(gguf, tensor_name, array, types, like_types)
        if qtype == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(tensor_name, array)
        elif qtype == gguf.GGMLQuantizationType.F16:
            writer.add_tensor(tensor_name, array.astype(np.float16))
        else:
            writer.add_tensor(tensor_name, gguf.quants.quantize(array, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(path)  # an interrupted export leaves no half-written file under the final name
    return path


# A reward model fine-tuned from a quantised base has merged weights W + B A with W on the base's
# quantisation grid: re-quantised to the base's Q4_1, the small LoRA delta B A mostly rounds back to W
# and the fine-tune is lost (measured: GenARM through llama.cpp then writes the base's answers, not
# the reward model's). Q8_0's 16x finer grid keeps it (the demo's GenARM answers as in transformers).
REWARD_TYPES = "q8_0"


def export_model(model_dir: str | os.PathLike, path: str | os.PathLike, *, like: Optional[str | os.PathLike] = None,
                 types: str = REWARD_TYPES) -> Path:
    """Export a checkpoint or LoRA adapter directory (``load_model`` merges the adapters) to GGUF.

    ``like`` defaults to the embedded SmolLM2 GGUF, the base of the shipped reward model.
    """
    from .models import load_model, smollm2_gguf_path

    model, _ = load_model(str(model_dir))
    return write_gguf(model, path, like=like if like is not None else smollm2_gguf_path(), types=types,
                      name=f"taro_ext reward model {Path(model_dir).name}")


def cached_gguf(model_dir: str | os.PathLike, *, like: Optional[str | os.PathLike] = None,
                types: str = REWARD_TYPES) -> Path:
    """The GGUF export of ``model_dir`` under the cache directory, exported on first use.

    The file name is a hash of the directory's files, the base GGUF and ``types``, so a retrained
    adapter is exported again.
    """
    from .models import cache_dir, smollm2_gguf_path

    like = Path(like) if like is not None else smollm2_gguf_path()
    digest = hashlib.sha256(f"{types}|{like.resolve()}|{like.stat().st_size}".encode())
    for file in sorted(Path(model_dir).iterdir()):
        if file.is_file():
            digest.update(file.name.encode())
            digest.update(file.read_bytes())
    target = cache_dir() / "gguf" / f"{Path(model_dir).name}-{types}-{digest.hexdigest()[:16]}.gguf"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        export_model(model_dir, target, like=like, types=types)
    return target


def main(argv=None) -> int:
    # The CLI's argparse types: a mistake is one line before the model loads, not a traceback after.
    from .cli.args import existing_file, file_to_write

    p = argparse.ArgumentParser(prog="python -m taro_ext.gguf_export", description=__doc__.split("\n\n")[0])
    p.add_argument("model_dir", help="transformers checkpoint or LoRA adapter directory (adapters are merged)")
    p.add_argument("out", type=file_to_write, help="GGUF file to write")
    p.add_argument("--like", type=existing_file, help="the base model's GGUF (default: the embedded SmolLM2 GGUF)")
    p.add_argument("--types", choices=TYPES, default=REWARD_TYPES,
                   help=f"tensor types (default {REWARD_TYPES}: 'like', the base's, loses a LoRA fine-tune of a Q4 base)")
    args = p.parse_args(argv)
    if not os.path.isdir(args.model_dir):
        p.error(f"model_dir {args.model_dir}: not a directory")
    try:
        print(export_model(args.model_dir, args.out, like=args.like, types=args.types))
    except (ValueError, OSError) as e:
        p.exit(2, f"{p.prog}: error: {e}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
