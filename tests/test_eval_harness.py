"""The evaluation harness and the ``taro-ext eval`` command on tiny random models."""
import json
import os

import pytest

from taro_ext.evaluation.datasets import EvalItem, load_items
from taro_ext.evaluation.harness import parse_methods, run_methods, write_report


def test_parse_methods():
    methods = parse_methods("base, genarm:0.5,genarm:2,taro")
    assert [(m.name, m.mode, m.alpha) for m in methods] == [
        ("base", "base", None), ("genarm:0.5", "genarm", 0.5), ("genarm:2", "genarm", 2.0), ("taro", "taro", None)]
    for bad in ("", "genarm:x", "genarm:-1", "beam", "base,base"):
        with pytest.raises(ValueError, match="methods"):
            parse_methods(bad)


def test_load_items_builds_graded_prompts():
    gsm = load_items("gsm8k", limit=3)
    assert len(gsm) == 3 and "\\boxed" in gsm[0].prompt and gsm[0].gold.rstrip().endswith("#### 18")
    math = load_items("math500", limit=2)
    assert math[0].gold == "\\left( 3, \\frac{\\pi}{2} \\right)"
    med = load_items("medxpertqa", limit=2)
    assert "(J)" in med[0].prompt and med[0].gold == ["J"]
    synthetic = load_items("synthetic", limit=4)
    assert len(synthetic) == 4 and synthetic[0].gold.isdigit()
    alpaca = load_items("alpaca_eval", limit=2)
    assert alpaca[0].gold is None and alpaca[0].meta["dataset"] == "helpful_base"
    with pytest.raises(ValueError, match="task"):
        load_items("mmlu")
    with pytest.raises(ValueError, match="limit"):
        load_items("gsm8k", limit=0)


@pytest.fixture(scope="module")
def tiny_setup():
    from taro_ext.router import TopKRouter
    from taro_ext.tiny import char_tokenizer, tiny_llama

    tok = char_tokenizer()
    base = tiny_llama(len(tok), seed=0, tokenizer=tok)
    reward = tiny_llama(len(tok), seed=1, tokenizer=tok)
    return tok, base, reward, TopKRouter(len(tok), k=4, embed_dim=4, hidden=8)


def test_run_methods_and_report(tiny_setup, tmp_path):
    tok, base, reward, router = tiny_setup
    items = [EvalItem("a", "2+2=", "4"), EvalItem("b", "3+4=", "7")]
    results = run_methods("synthetic", items, parse_methods("base,genarm:1,taro"), base_model=base,
                          reward_model=reward, router=router, tokenizer=tok, max_new_tokens=6, batch_size=1,
                          chat=False, backend="torch", progress=False)
    assert results["methods"] == ["base", "genarm:1", "taro"]
    assert len(results["items"]) == 6
    for r in results["items"]:
        assert isinstance(r["correct"], bool) and 1 <= r["n_tokens"] <= 6
    taro_items = [r for r in results["items"] if r["method"] == "taro"]
    assert all(len(r["alphas"]) == r["n_tokens"] == len(r["token_classes"]) for r in taro_items)
    assert all(0 < a < router.alpha_max for r in taro_items for a in r["alphas"])
    summary = results["summary"]["taro"]
    assert summary["n"] == 2 and summary["correct"] == sum(r["correct"] for r in taro_items)
    assert sum(c["count"] for c in summary["alpha_by_class"].values()) == sum(r["n_tokens"] for r in taro_items)
    assert results["summary"]["genarm:1"]["mean_alpha"] == 1.0
    paths = write_report(results, str(tmp_path), "synthetic")
    with open(paths["json"]) as f:
        assert json.load(f)["summary"]["base"]["n"] == 2
    assert "| genarm:1 |" in open(paths["markdown"]).read()
    assert os.path.getsize(paths["plot"]) > 0


def test_batches_by_prompt_length_keep_item_order_and_outputs(tiny_setup):
    tok, base, reward, router = tiny_setup
    # Longest first, so length-sorted batches reorder the items.
    items = [EvalItem(str(i), p, "0") for i, p in enumerate(["what is 12+30?", "1+1=", "7*6 =", "99-9", "5"])]
    run = lambda batch_size: run_methods("synthetic", items, parse_methods("base,taro"), base_model=base,
                                         reward_model=reward, router=router, tokenizer=tok, max_new_tokens=5,
                                         batch_size=batch_size, chat=False, backend="torch", progress=False)
    one_by_one, batched = run(1), run(2)
    assert [(r["method"], r["id"]) for r in batched["items"]] == [(m, it.id) for m in ("base", "taro") for it in items]
    for a, b in zip(one_by_one["items"], batched["items"]):
        assert (a["id"], a["output"], a["n_tokens"]) == (b["id"], b["output"], b["n_tokens"])


def test_alpaca_eval_outputs_layout(tiny_setup, tmp_path):
    tok, base, _, _ = tiny_setup
    items = load_items("alpaca_eval", limit=2)
    results = run_methods("alpaca_eval", items, parse_methods("base"), base_model=base, reward_model=None,
                          router=None, tokenizer=tok, max_new_tokens=3, chat=False, backend="torch", progress=False)
    paths = write_report(results, str(tmp_path), "alpaca", items)
    with open(paths["alpaca_eval:base"]) as f:
        records = json.load(f)
    assert [sorted(r) for r in records] == [["dataset", "generator", "instruction", "output"]] * 2
    assert records[0]["instruction"] == items[0].prompt and records[0]["generator"] == "taro_ext-base"


def test_eval_cli_end_to_end(tiny_setup, tmp_path):
    from taro_ext.cli import main

    tok, base, reward, router = tiny_setup
    for name, obj in (("base", base), ("reward", reward)):
        obj.save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
    router.save_pretrained(str(tmp_path / "router"))
    out = tmp_path / "out"
    assert main(["eval", "--task", "synthetic", "--limit", "2", "--methods", "base,genarm:2,taro",
                 "--base", str(tmp_path / "base"), "--reward", str(tmp_path / "reward"), "--router",
                 str(tmp_path / "router"), "--max-new-tokens", "4", "--no-chat", "--backend", "torch",
                 "--out", str(out), "--no-progress"]) == 0
    with open(out / "eval_synthetic.json") as f:
        saved = json.load(f)
    assert saved["methods"] == ["base", "genarm:2", "taro"] and saved["config"]["limit"] == 2
    assert main(["eval", "--task", "synthetic", "--methods", "taro", "--base", str(tmp_path / "base")]) == 2
    # A router given for a method not asked for is not read (here: no such directory).
    assert main(["eval", "--task", "synthetic", "--limit", "1", "--methods", "base", "--base", str(tmp_path / "base"),
                 "--full-router", str(tmp_path / "no_router"), "--max-new-tokens", "2", "--no-chat",
                 "--backend", "torch", "--out", str(out), "--no-progress"]) == 0
