"""The generation engine (taro_ext/generation.py) and its CLI, on tiny random Llama models saved
to disk and loaded back. References: transformers' own ``generate`` and an uncached loop that
recomputes both models' full forward on the whole prefix at every step.
"""
import json
import re
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import taro_ext
from taro_ext import TaroGenerator, TaroLogitsProcessor, TopKRouter, load_router
from taro_ext.generation import check_tokenizers
from taro_ext.tiny import char_tokenizer, tiny_llama

PROMPTS = ["12+7=", "what is 3*4? answer:", "a"]  # different lengths: left padding is exercised
STEPS = 12


def _backends():
    out = [pytest.param("torch")]
    if "cpu" in taro_ext.available_backends("cpu"):
        out.append(pytest.param("cpu"))
    else:
        out.append(pytest.param("cpu", marks=pytest.mark.skip(reason="taro_ext._C (cpu backend) not built")))
    return out


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """Tokenizer, models and router written with save_pretrained and loaded back from disk."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("tiny_models")
    tok = char_tokenizer()
    vocab = len(tok)
    built = {
        "base": tiny_llama(vocab, seed=0, tokenizer=tok),
        "reward": tiny_llama(vocab, seed=1, tokenizer=tok),
        # Weak-to-strong: a wider, deeper base, and a reward model with a padded embedding.
        "large_base": tiny_llama(vocab, seed=2, tokenizer=tok, hidden_size=96, num_layers=3, num_heads=6,
                                 num_kv_heads=3),
        "padded_reward": tiny_llama(vocab + 13, seed=3, tokenizer=tok, hidden_size=32, num_heads=2, num_kv_heads=1),
    }
    dirs = {}
    for name, model in built.items():
        dirs[name] = str(root / name)
        model.save_pretrained(dirs[name])
        tok.save_pretrained(dirs[name])
    torch.manual_seed(5)
    router = TopKRouter(vocab, k=8, embed_dim=4, hidden=16)
    # A spread-out output layer so alpha varies visibly from token to token.
    with torch.no_grad():
        router.w2.mul_(8.0)
    dirs["router"] = str(root / "router")
    router.save_pretrained(dirs["router"])
    loaded = {name: AutoModelForCausalLM.from_pretrained(dirs[name]).eval() for name in built}
    return SimpleNamespace(tok=AutoTokenizer.from_pretrained(dirs["base"]), vocab=vocab, dirs=dirs,
                           router=load_router(dirs["router"]), **loaded)


@torch.no_grad()
def uncached_loop(base, reward, tok, prompt, steps, vocab, *, alpha=None, router=None):
    """Greedy argmax(lp_b + alpha lp_r), one prompt, full forward of both models on the whole prefix."""
    ids = tok(prompt)["input_ids"]
    out, alphas = [], []
    for _ in range(steps):
        x = torch.tensor([ids])
        lb = base(input_ids=x).logits[:, -1, :vocab].float()
        lr = reward(input_ids=x).logits[:, -1, :vocab].float()
        a = router(lb, lr, vocab_size=vocab)[0] if router is not None else torch.tensor(alpha)
        s = F.log_softmax(lb[0], -1) + a * F.log_softmax(lr[0], -1)
        token = int(s.argmax())
        out.append(token)
        alphas.append(float(a))
        ids.append(token)
        if token == tok.eos_token_id:
            break
    return out, alphas


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("cache", ["dynamic", "static"])
@pytest.mark.parametrize("mode", ["base", "genarm"])
def test_base_and_genarm_alpha0_match_hf_generate(tiny, mode, cache, backend):
    enc = tiny.tok(PROMPTS, return_tensors="pt", padding=True)
    assert enc["attention_mask"].min() == 0  # the batch really is padded
    hf = tiny.base.generate(**enc, max_new_tokens=STEPS, do_sample=False, pad_token_id=tiny.tok.pad_token_id)
    gen = TaroGenerator(tiny.base, tiny.reward, None, tiny.tok, mode=mode, alpha=0.0, backend=backend, cache=cache)
    out = gen.generate(PROMPTS, max_new_tokens=STEPS)
    for row, ids in enumerate(out.token_ids):
        expected = hf[row, enc["input_ids"].shape[1]:].tolist()
        if tiny.tok.eos_token_id in expected:
            expected = expected[:expected.index(tiny.tok.eos_token_id) + 1]
        assert ids == expected
        assert out.alphas[row] == [0.0] * len(ids)
        assert out.texts[row] == tiny.tok.decode(ids, skip_special_tokens=True)


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_genarm_greedy_matches_uncached_loop(tiny, cache):
    gen = TaroGenerator(tiny.base, tiny.reward, None, tiny.tok, mode="genarm", alpha=1.5, backend="torch", cache=cache)
    out = gen.generate(PROMPTS, max_new_tokens=STEPS)
    plain = TaroGenerator(tiny.base, None, None, tiny.tok, mode="base", backend="torch").generate(PROMPTS, STEPS)
    assert out.token_ids != plain.token_ids  # the reward model changes the text
    for row, prompt in enumerate(PROMPTS):
        ids, _ = uncached_loop(tiny.base, tiny.reward, tiny.tok, prompt, STEPS, tiny.vocab, alpha=1.5)
        assert out.token_ids[row] == ids
        assert out.alphas[row] == [1.5] * len(ids)


@pytest.mark.parametrize("backend", _backends())
def test_taro_greedy_matches_uncached_loop_with_router(tiny, backend):
    gen = TaroGenerator(tiny.base, tiny.reward, tiny.router, tiny.tok, mode="taro", backend=backend)
    out = gen.generate(PROMPTS, max_new_tokens=STEPS)
    for row, prompt in enumerate(PROMPTS):
        ids, alphas = uncached_loop(tiny.base, tiny.reward, tiny.tok, prompt, STEPS, tiny.vocab, router=tiny.router)
        assert out.token_ids[row] == ids
        assert out.alphas[row] == pytest.approx(alphas, abs=1e-4)
    spread = [a for row in out.alphas for a in row]
    assert max(spread) - min(spread) > 0.05  # alpha really varies per token


def test_sampling_is_reproducible_and_the_same_for_every_backend_and_cache(tiny):
    def run(seed, backend="torch", cache="dynamic", steps=STEPS):
        gen = TaroGenerator(tiny.base, tiny.reward, tiny.router, tiny.tok, backend=backend, cache=cache)
        return gen.generate(PROMPTS, max_new_tokens=steps, temperature=1.0, seed=seed).token_ids

    first = run(0)
    assert run(0) == first
    assert run(1) != first
    greedy = TaroGenerator(tiny.base, tiny.reward, tiny.router, tiny.tok, backend="torch").generate(PROMPTS, STEPS)
    assert first != greedy.token_ids
    assert run(0, cache="static") == first
    for backend in taro_ext.available_backends("cpu"):
        # The Triton interpreter is slow: a few steps only (the stream of uniforms is the same prefix).
        steps = 4 if backend == "triton" else STEPS
        assert run(0, backend=backend, steps=steps) == [row[:steps] for row in first], backend


def test_per_prompt_seeds_make_a_prompts_sample_independent_of_its_batch(tiny):
    seeds = [11, 12, 13]

    def run(prompts, seed, cache="dynamic"):
        gen = TaroGenerator(tiny.base, tiny.reward, tiny.router, tiny.tok, backend="torch", cache=cache)
        return gen.generate(prompts, max_new_tokens=STEPS, temperature=1.0, seed=seed).token_ids

    batch = run(PROMPTS, seeds)
    for i, prompt in enumerate(PROMPTS):
        assert run([prompt], [seeds[i]]) == [batch[i]]  # alone, in slot 0, without padding
    assert run(PROMPTS[::-1], seeds[::-1]) == batch[::-1]
    assert run(PROMPTS, seeds, cache="static") == batch
    # The same prompt twice with two seeds gives two samples.
    twice = run([PROMPTS[0]] * 2, [1, 2])
    assert twice[0] != twice[1]


def test_stop_strings_and_eos_finish_rows_without_stalling_others(tiny, tmp_path):
    from transformers import AutoModelForCausalLM

    gen = TaroGenerator(tiny.base, tiny.reward, None, tiny.tok, mode="genarm", alpha=0.5, backend="torch")
    full = gen.generate(PROMPTS, max_new_tokens=STEPS)
    # Stop string: a piece of row 0's text starting at its 4th character.
    stop = full.texts[0][3:5]
    cut = full.texts[0].find(stop)
    out = gen.generate(PROMPTS, max_new_tokens=STEPS, stop=[stop])
    assert out.texts[0] == full.texts[0][:cut]
    assert tiny.tok.decode(out.token_ids[0]).find(stop) >= 0  # tokens run through the stop string
    assert len(out.token_ids[0]) < len(full.token_ids[0])
    for row in range(1, len(PROMPTS)):
        if stop not in full.texts[row]:
            assert out.token_ids[row] == full.token_ids[row]
    # EOS: declare row 1's 5th token an end-of-sequence token.
    base = AutoModelForCausalLM.from_pretrained(tiny.dirs["base"]).eval()
    eos = full.token_ids[1][4]
    base.generation_config.eos_token_id = [tiny.tok.eos_token_id, eos]
    out = TaroGenerator(base, tiny.reward, None, tiny.tok, mode="genarm", alpha=0.5,
                        backend="torch").generate(PROMPTS, max_new_tokens=STEPS)
    for row in range(len(PROMPTS)):
        ids = full.token_ids[row]
        expected = ids[:ids.index(eos) + 1] if eos in ids else ids
        assert out.token_ids[row] == expected
    assert len(out.token_ids[1]) <= 5


def test_finished_rows_leave_the_dynamic_batch_with_the_same_tokens_as_the_static_cache(tiny):
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny.dirs["base"]).eval()
    greedy = TaroGenerator(base, tiny.reward, tiny.router, tiny.tok, backend="torch").generate(PROMPTS, STEPS)
    # Row 1 ends at its 3rd token; rows that generate that token earlier end with it.
    base.generation_config.eos_token_id = [tiny.tok.eos_token_id, greedy.token_ids[1][2]]
    batch_sizes = []
    base.register_forward_hook(lambda module, args, kwargs, out: batch_sizes.append(kwargs["input_ids"].shape[0]),
                               with_kwargs=True)
    for temperature in (0.0, 1.0):
        outs = {}
        for cache in ("dynamic", "static"):
            batch_sizes.clear()
            gen = TaroGenerator(base, tiny.reward, tiny.router, tiny.tok, backend="torch", cache=cache)
            outs[cache] = gen.generate(PROMPTS, STEPS, temperature=temperature, seed=3)
            if cache == "dynamic":
                finished = [len(ids) < STEPS for ids in outs[cache].token_ids]
                assert any(finished) and not all(finished)
                assert batch_sizes[0] == len(PROMPTS) and batch_sizes[-1] == len(PROMPTS) - sum(finished)
            else:
                assert set(batch_sizes) == {len(PROMPTS)}
        assert outs["dynamic"].token_ids == outs["static"].token_ids, temperature
        for dynamic, static in zip(outs["dynamic"].alphas, outs["static"].alphas):
            assert dynamic == pytest.approx(static, abs=1e-5)


def test_chat_mode_uses_the_chat_template(tiny):
    gen = TaroGenerator(tiny.base, None, None, tiny.tok, mode="base", backend="torch")
    out = gen.generate(["hi", "2+2"], max_new_tokens=3, chat=True)
    # The character tokenizer has one token per character.
    assert out.prompt_lengths == [len("<user>hi\n<assistant>"), len("<user>2+2\n<assistant>")]


def test_weak_to_strong_small_reward_and_router_guide_a_larger_base(tiny):
    assert tiny.large_base.config.hidden_size != tiny.padded_reward.config.hidden_size
    assert tiny.padded_reward.get_output_embeddings().weight.shape[0] == tiny.vocab + 13
    for cache in ("dynamic", "static"):
        gen = TaroGenerator(tiny.large_base, tiny.padded_reward, tiny.router, tiny.tok, backend="torch", cache=cache)
        out = gen.generate(PROMPTS, max_new_tokens=STEPS)
        for row, prompt in enumerate(PROMPTS):
            ids, alphas = uncached_loop(tiny.large_base, tiny.padded_reward, tiny.tok, prompt, STEPS, tiny.vocab,
                                        router=tiny.router)
            assert out.token_ids[row] == ids
            assert out.alphas[row] == pytest.approx(alphas, abs=1e-4)


def test_mismatched_tokenizers_fail_before_any_compute(tiny):
    other = char_tokenizer(extra_chars="\u00e9\u00fc")
    with pytest.raises(ValueError, match="base and reward tokenizers differ"):
        TaroGenerator(tiny.base, tiny.reward, tiny.router, tiny.tok, reward_tokenizer=other)
    small = tiny_llama(tiny.vocab - 5, seed=0)
    with pytest.raises(ValueError, match="reward_model produces .* logits but the tokenizer has"):
        TaroGenerator(tiny.base, small, tiny.router, tiny.tok)
    assert check_tokenizers(tiny.tok, char_tokenizer(), base_model=tiny.base, reward_model=tiny.padded_reward) \
        == tiny.vocab


def test_bad_arguments_are_clear_errors(tiny):
    with pytest.raises(ValueError, match="mode"):
        TaroGenerator(tiny.base, tiny.reward, tiny.router, tiny.tok, mode="best")
    with pytest.raises(TypeError, match="router"):
        TaroGenerator(tiny.base, tiny.reward, None, tiny.tok, mode="taro")
    with pytest.raises(ValueError, match="reward_model"):
        TaroGenerator(tiny.base, None, None, tiny.tok, mode="genarm")
    with pytest.raises(ValueError, match="cuda_graph"):
        TaroGenerator(tiny.base, tiny.reward, tiny.router, tiny.tok, cache="static", cuda_graph=True)
    with pytest.raises(ValueError, match="backend"):
        TaroGenerator(tiny.base, tiny.reward, tiny.router, tiny.tok, backend="cuda")
    with pytest.raises(ValueError, match="vocab_size"):
        TaroGenerator(tiny.base, tiny.reward, tiny.router, tiny.tok, vocab_size=tiny.vocab + 1)
    gen = TaroGenerator(tiny.base, tiny.reward, tiny.router, tiny.tok, backend="torch")
    with pytest.raises(ValueError, match="max_new_tokens"):
        gen.generate(PROMPTS, max_new_tokens=0)
    with pytest.raises(ValueError, match="temperature"):
        gen.generate(PROMPTS, temperature=-1.0)
    with pytest.raises(ValueError, match="chat_template"):
        tok = char_tokenizer()
        tok.chat_template = None
        TaroGenerator(tiny.base, tiny.reward, tiny.router, tok, backend="torch").generate(["x"], chat=True)
    for prompts in (None, 5, [], ["ok", 3], [None]):
        with pytest.raises(TypeError, match="prompts"):
            gen.generate(prompts)
    for stop in (5, [5], ["ok", None]):
        with pytest.raises(TypeError, match="stop"):
            gen.generate(PROMPTS, stop=stop)
    with pytest.raises(ValueError, match="stop"):
        gen.generate(PROMPTS, stop=[""])
    for seed, exc in ((2 ** 70, ValueError), (-1, ValueError), (1.5, TypeError), (True, TypeError)):
        with pytest.raises(exc, match="seed"):
            gen.generate(PROMPTS, seed=seed)
    with pytest.raises(ValueError, match=r"seed: a list of 2 seeds for 3 prompts"):
        gen.generate(PROMPTS, seed=[1, 2])
    with pytest.raises(ValueError, match=r"seed\[1\]"):
        gen.generate(PROMPTS, seed=[1, -2, 3])
    for temperature in (1e-40, 1e39, float("nan")):
        with pytest.raises(ValueError, match="temperature"):
            gen.generate(PROMPTS, temperature=temperature)
    with pytest.raises(TypeError, match="max_new_tokens"):
        gen.generate(PROMPTS, max_new_tokens=True)
    for alpha in (1e300, float("nan"), -1.0):
        with pytest.raises(ValueError, match="alpha"):
            TaroGenerator(tiny.base, tiny.reward, None, tiny.tok, mode="genarm", alpha=alpha)
    with pytest.raises(TypeError, match="vocab_size"):
        TaroGenerator(tiny.base, tiny.reward, tiny.router, tiny.tok, vocab_size=True)
    # The largest seed torch takes works, and a NumPy integer is a seed.
    np = pytest.importorskip("numpy")
    gen.generate(PROMPTS[:1], max_new_tokens=1, seed=2 ** 64 - 1, temperature=0.5)
    gen.generate(PROMPTS[:1], max_new_tokens=1, seed=np.int64(3), temperature=0.5)


def test_logits_processor_bad_arguments_are_clear_errors(tiny):
    for kwargs, exc, text in ((dict(alpha=1e300, vocab_size=tiny.vocab), ValueError, "alpha"),
                              (dict(alpha=float("nan"), vocab_size=tiny.vocab), ValueError, "alpha"),
                              (dict(alpha=1.0, vocab_size=True), TypeError, "vocab_size"),
                              (dict(alpha=1.0, vocab_size=tiny.vocab, backend="tpu"), ValueError, "backend"),
                              (dict(router=object()), TypeError, "router")):
        with pytest.raises(exc, match=text):
            TaroLogitsProcessor(tiny.reward, **kwargs)
    with pytest.raises(TypeError, match="reward_model"):
        TaroLogitsProcessor(None, alpha=1.0, vocab_size=tiny.vocab)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_a_prompt_past_the_context_is_an_error_or_truncated_when_asked(tiny, family):
    from transformers import GPT2Config, GPT2LMHeadModel

    if family == "llama":
        base = tiny_llama(tiny.vocab, seed=0, tokenizer=tiny.tok, hidden_size=32, num_layers=1,
                          max_position_embeddings=24)
    else:
        torch.manual_seed(0)
        base = GPT2LMHeadModel(GPT2Config(vocab_size=tiny.vocab, n_positions=24, n_embd=32, n_layer=1,
                                          n_head=2)).eval()
    gen = TaroGenerator(base, None, None, tiny.tok, mode="base", backend="torch")
    assert gen.context_length() == 24
    long_prompt = "0123456789" * 2  # 20 tokens (one per character)
    assert len(tiny.tok(long_prompt)["input_ids"]) == 20
    with pytest.raises(ValueError, match=r"prompt 1 has 20 tokens; with max_new_tokens=8 .* 24 positions"):
        gen.generate(["ok", long_prompt], max_new_tokens=8)
    with pytest.raises(ValueError, match="leaves no room"):
        gen.generate(["ok"], max_new_tokens=24)
    if family == "gpt2":
        return  # the error comes before any forward; decoding GPT-2 is not this test's subject
    out = gen.generate(["ok", long_prompt], max_new_tokens=8, truncate_prompts=True)
    assert out.prompt_lengths == [2, 16] and len(out.token_ids[1]) == 8
    kept = gen.generate([long_prompt[-16:]], max_new_tokens=8)
    assert out.token_ids[1] == kept.token_ids[0]


@pytest.mark.parametrize("steering", ["taro", "genarm"])
def test_logits_processor_greedy_matches_generator(tiny, steering):
    from transformers import LogitsProcessorList

    router, alpha = (tiny.router, None) if steering == "taro" else (None, 1.5)
    proc = TaroLogitsProcessor(tiny.reward, router, alpha=alpha, vocab_size=tiny.vocab,
                               pad_token_id=tiny.tok.pad_token_id, backend="torch")
    enc = tiny.tok(PROMPTS, return_tensors="pt", padding=True)
    hf = tiny.base.generate(**enc, max_new_tokens=STEPS, do_sample=False, pad_token_id=tiny.tok.pad_token_id,
                            logits_processor=LogitsProcessorList([proc]))
    gen = TaroGenerator(tiny.base, tiny.reward, router, tiny.tok, mode=steering, alpha=alpha or 1.0, backend="torch")
    out = gen.generate(PROMPTS, max_new_tokens=STEPS)
    for row, ids in enumerate(out.token_ids):
        assert hf[row, enc["input_ids"].shape[1]:].tolist()[:len(ids)] == ids
    if steering == "taro":
        alphas = torch.stack(proc.alphas, dim=1)  # [B, steps]
        assert alphas[0, :len(out.alphas[0])].tolist() == pytest.approx(out.alphas[0], abs=1e-4)


class _UncachedGenArmProcessor:
    """GenARM scores from a full reward forward on the whole prefix at every call (no cache)."""

    def __init__(self, reward, alpha, vocab, pad_id):
        self.reward, self.alpha, self.vocab, self.pad_id = reward, alpha, vocab, pad_id

    @torch.no_grad()
    def __call__(self, input_ids, scores):
        mask = (input_ids != self.pad_id).long().cummax(-1).values
        pos = (mask.cumsum(-1) - 1).clamp_min(0)
        lr = self.reward(input_ids=input_ids, attention_mask=mask, position_ids=pos).logits[:, -1, :self.vocab]
        s = F.log_softmax(scores[:, :self.vocab].float(), -1) + self.alpha * F.log_softmax(lr.float(), -1)
        out = torch.full_like(scores, float("-inf"))
        out[:, :self.vocab] = F.log_softmax(s, -1)
        return out


def test_logits_processor_follows_beam_reordering(tiny):
    from transformers import LogitsProcessorList

    enc = tiny.tok(PROMPTS[:2], return_tensors="pt", padding=True)
    pad = tiny.tok.pad_token_id
    kwargs = dict(max_new_tokens=8, do_sample=False, num_beams=3, pad_token_id=pad, early_stopping=False)
    proc = TaroLogitsProcessor(tiny.reward, alpha=2.0, vocab_size=tiny.vocab, pad_token_id=pad, backend="torch")
    got = tiny.base.generate(**enc, logits_processor=LogitsProcessorList([proc]), **kwargs)
    ref = tiny.base.generate(**enc, logits_processor=LogitsProcessorList(
        [_UncachedGenArmProcessor(tiny.reward, 2.0, tiny.vocab, pad)]), **kwargs)
    plain = tiny.base.generate(**enc, **kwargs)
    assert got.tolist() == ref.tolist()
    assert got.tolist() != plain.tolist()


def test_cli_generate_and_explain(tiny, tmp_path, capsys):
    from taro_ext.cli import main

    args = ["--base", tiny.dirs["base"], "--reward", tiny.dirs["padded_reward"], "--router", tiny.dirs["router"],
            "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--max-new-tokens", "6", "--backend", "torch"]
    assert main(["generate", *args, "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    gen = TaroGenerator(tiny.base, tiny.padded_reward, tiny.router, tiny.tok, backend="torch")
    expected = gen.generate(PROMPTS[:2], max_new_tokens=6)
    assert got["token_ids"] == expected.token_ids
    assert got["texts"] == expected.texts

    page = tmp_path / "explain.html"
    assert main(["explain", *args, "--out", str(page)]) == 0
    html = page.read_text()
    titles = re.findall(r"title='id (\d+), alpha ([0-9.]+)'", html)
    assert [int(i) for i, _ in titles] == expected.token_ids[0] + expected.token_ids[1]
    assert [float(a) for _, a in titles] == pytest.approx(expected.alphas[0] + expected.alphas[1], abs=1e-3)
