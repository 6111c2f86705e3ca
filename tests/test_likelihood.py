"""Teacher-forced scoring under each method's distribution, and the bootstrap intervals."""
import pytest
import torch

from taro_ext.evaluation import likelihood
from taro_ext.evaluation.harness import parse_methods
from taro_ext.evaluation.stats import accuracy_interval, bootstrap_interval, paired_difference_interval
from taro_ext.router import TopKRouter
from taro_ext.tiny import char_tokenizer, tiny_llama


def test_method_logprobs_follow_the_spec_mix():
    torch.manual_seed(0)
    V = 40
    base, reward = torch.randn(5, V), torch.randn(5, V)
    targets = torch.randint(V, (5,))
    router = TopKRouter(V, k=4, embed_dim=4, hidden=8)
    methods = parse_methods("base,genarm:0.5,taro")
    out = likelihood.method_logprobs(base, reward, targets, methods, {"taro": router}, V)
    lp_b, lp_r = torch.log_softmax(base, -1), torch.log_softmax(reward, -1)
    rows = torch.arange(5)
    assert torch.allclose(out["base"], lp_b[rows, targets], atol=1e-6)
    assert torch.allclose(out["genarm:0.5"], torch.log_softmax(lp_b + 0.5 * lp_r, -1)[rows, targets], atol=1e-6)
    alpha = router(base, reward, V)
    want = torch.log_softmax(lp_b + alpha[:, None] * lp_r, -1)[rows, targets]
    assert torch.allclose(out["taro"], want, atol=1e-6)


def _models():
    tok = char_tokenizer()
    return tiny_llama(len(tok), tokenizer=tok, hidden_size=32, num_layers=1, seed=0), \
        tiny_llama(len(tok), tokenizer=tok, hidden_size=32, num_layers=1, seed=1), tok


def test_score_texts_matches_an_unbatched_forward():
    base, reward, tok = _models()
    texts = [("Q: hi\n", "hello there"), ("A much longer context line\n", "ok")]
    scores = likelihood.score_texts(base, reward, tok, texts, parse_methods("base,genarm:1"), {}, batch_size=2)
    for (ctx, cont), s in zip(texts, scores):
        c_ids = tok(ctx)["input_ids"]
        t_ids = tok(cont, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([c_ids + t_ids])
        with torch.no_grad():
            lp_b = torch.log_softmax(base(ids).logits[0, len(c_ids) - 1:-1], -1)
            lp_r = torch.log_softmax(reward(ids).logits[0, len(c_ids) - 1:-1], -1)
        t = torch.tensor(t_ids)
        assert torch.allclose(s["base"], lp_b[torch.arange(len(t)), t], atol=1e-4)
        mixed = torch.log_softmax(lp_b + lp_r, -1)
        assert torch.allclose(s["genarm:1"], mixed[torch.arange(len(t)), t], atol=1e-4)


def test_a_text_longer_than_max_length_is_an_error_not_cut():
    # Cut to fit, a long completion kept no context at all (82 of 100 AlpacaEval texts at 384 tokens):
    # the scores of two texts with different instructions were then the same.
    base, reward, tok = _models()
    texts = [("Q: first\n", "abcdefghij" * 3), ("Q: other zz\n", "abcdefghij" * 3)]
    with pytest.raises(ValueError, match="exceeds max_length=16, and an evaluation cuts nothing"):
        likelihood.score_texts(base, reward, tok, texts, parse_methods("base"), {}, max_length=16)
    first, other = likelihood.score_texts(base, reward, tok, texts, parse_methods("base"), {}, max_length=64)
    assert first["base"].shape == other["base"].shape == (30,)
    assert not torch.equal(first["base"], other["base"])  # the instruction is seen


def test_split_choices_reads_medqa_options():
    stem, options = likelihood.split_choices("What is it?\nAnswer Choices: (A) a cat (B) a dog (C) two (D) none")
    assert stem == "What is it?"
    assert options == [("A", "a cat"), ("B", "a dog"), ("C", "two"), ("D", "none")]
    with pytest.raises(ValueError, match="Answer Choices"):
        likelihood.split_choices("no options here")


def test_choice_accuracy_picks_the_highest_summed_logprob():
    base, reward, tok = _models()
    records = [{"question": "Pick one\nAnswer Choices: (A) aaaa (B) b (C) zq", "label": ["B"]},
               {"question": "Again\nAnswer Choices: (A) x (B) yy", "label": "A"}]
    methods = parse_methods("base,genarm:1")
    result = likelihood.choice_accuracy(base, reward, tok, records, methods, {}, chat=True, progress=False)
    for m in methods:
        expected = []
        for r in records:
            stem, options = likelihood.split_choices(r["question"])
            ctx = tok.apply_chat_template([{"role": "user", "content": stem}], tokenize=False, add_generation_prompt=True)
            s = likelihood.score_texts(base, reward, tok, [(ctx, t) for _, t in options], [m], {})
            totals = [x[m.name].sum().item() for x in s]
            gold = r["label"][0] if isinstance(r["label"], list) else r["label"]
            expected.append(float(options[totals.index(max(totals))][0] == gold))
        assert result["methods"][m.name]["per_item"] == expected


def test_alpaca_nll_relative_to_base():
    base, reward, tok = _models()
    records = [{"instruction": "Say hi", "output": "hi there friend"}, {"instruction": "Count", "output": "1 2 3"}]
    r = likelihood.alpaca_nll(base, reward, tok, records, parse_methods("base,genarm:1"), {}, progress=False)
    assert r["methods"]["base"]["relative_to_base"] == 0.0
    low, high = r["methods"]["genarm:1"]["ci95"]
    assert low <= r["methods"]["genarm:1"]["nll"] <= high
    assert r["tokens"] == sum(len(tok(x["output"], add_special_tokens=False)["input_ids"]) for x in records)


def test_bootstrap_intervals():
    values = [True] * 30 + [False] * 70
    low, high = accuracy_interval(values)
    assert low < 0.3 < high and high - low < 0.25
    assert accuracy_interval([True] * 10) == [1.0, 1.0]
    assert paired_difference_interval(values, values) == [0.0, 0.0]
    low, high = paired_difference_interval([True] * 50, [False] * 50)
    assert low == high == 1.0
    wide = bootstrap_interval(10, lambda idx: (idx < 3).double().mean().item())
    narrow = bootstrap_interval(1000, lambda idx: (idx < 300).double().mean().item())
    assert wide[1] - wide[0] > narrow[1] - narrow[0]
    with pytest.raises(ValueError):
        paired_difference_interval([True], [True, False])


def test_choice_record_checks_options_and_label_naming_the_line(tmp_path):
    from taro_ext.data import DataError, read_records

    path = tmp_path / "mc.jsonl"
    path.write_text('{"question": "Q?\\nAnswer Choices: (A) x (B) y", "label": ["B"]}\n'
                    '{"question": "Q?\\nAnswer Choices: (A) x (B) y", "label": ["C"]}\n'
                    '{"question": "no options", "label": "A"}\n')
    records = read_records(str(path))
    assert likelihood.choice_record(records[0]) == {"question": "Q?\nAnswer Choices: (A) x (B) y", "label": "B"}
    with pytest.raises(DataError, match=r"mc.jsonl:2: label \['C'\] is not one of the options"):
        likelihood.choice_record(records[1])
    with pytest.raises(DataError, match=r"mc.jsonl:3: .*Answer Choices"):
        likelihood.choice_record(records[2])
