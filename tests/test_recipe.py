"""The SmolLM2 recipe's parts on tiny models: graded arithmetic problems, the data files,
the reward model's SFT warm start and NLL term, and the CLI flow make-data -> train-reward ->
train-router."""
import json
import re

import pytest
import torch

from taro_ext import arithmetic
from taro_ext.training import ArmTrainer, TrainConfig
from taro_ext.training import recipe_data
from taro_ext.tiny import char_tokenizer, tiny_llama


def _evaluate_step(step: str) -> tuple[float, float]:
    """(value of the step's left side, the number after '=') computed here, independently."""
    lhs, rhs = step.split("=")
    expr = re.sub(r"[A-Za-z,.]", " ", lhs)
    return float(eval(expr)), float(re.match(r"\s*(\d+)", rhs).group(1))


def test_graded_problems_are_deterministic_exact_and_cycle_levels():
    problems = arithmetic.graded_problems(40, seed=7)
    assert problems == arithmetic.graded_problems(40, seed=7)
    assert [lv for lv, _ in problems] == [1, 2, 3, 4] * 10
    assert problems != arithmetic.graded_problems(40, seed=8)
    for level, sol in problems:
        results = []
        for step in sol.steps[:-1]:
            value, stated = _evaluate_step(step)
            assert value == stated, step
            results.append(stated)
        assert sol.steps[-1] == f"The answer is {sol.answer}."
        assert float(sol.answer) == results[-1] and float(sol.answer) >= 0
        assert len(sol.steps) - 1 == (1 if level <= 2 else len(sol.steps) - 1)
        assert sol.question.endswith("?")
    # A problem does not depend on the others in the list.
    assert arithmetic.graded_problems(8, seed=7) == problems[:8]


def test_graded_problems_reject_bad_arguments():
    with pytest.raises(ValueError, match="n must"):
        arithmetic.graded_problems(-1, seed=0)
    with pytest.raises(ValueError, match="n must"):
        arithmetic.graded_problems(True, seed=0)
    with pytest.raises(ValueError, match="levels"):
        arithmetic.graded_problems(4, seed=0, levels=(5,))
    with pytest.raises(ValueError, match="level"):
        arithmetic.word_problem(0, 0, 0)


def test_recipe_sets_use_disjoint_seeds_and_real_corruptions():
    sft = {r["question"] for r in recipe_data.sft_examples(200)}
    pairs = recipe_data.preference_pairs(200, 0)
    assert len(pairs) == 200
    assert not sft & {p.prompt for p in pairs}
    for p in pairs:
        assert p.chosen != p.rejected and re.search(r"\d", p.rejected)
        assert p.full_chosen.startswith(p.initial_reason_steps + p.chosen)


def test_read_examples_names_file_line_and_field(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a"}\n')
    with pytest.raises(ValueError, match=r"x.jsonl:2: missing field .completion."):
        recipe_data.read_examples(str(path), ("prompt", "completion"))
    path.write_text('{"prompt": "a", "completion": "b"}\n[1]\n')
    with pytest.raises(ValueError, match=r"x.jsonl:2: a record must be a JSON object"):
        recipe_data.read_examples(str(path), ("prompt",))
    path.write_text('{"prompt": \n')
    with pytest.raises(ValueError, match=r"x.jsonl:1: invalid JSON"):
        recipe_data.read_examples(str(path), ("prompt",))


def _quiet(**kw):
    return TrainConfig(progress=False, warmup_steps=0, **kw)


def test_warm_start_trains_only_the_adapters_and_lowers_solution_nll():
    from taro_ext.training import LoraSettings

    tok = char_tokenizer()
    model = tiny_llama(len(tok), tokenizer=tok, hidden_size=32, num_layers=1)
    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters()}
    problems = [s for _, s in arithmetic.graded_problems(8, seed=0)]
    examples = [(s.question, s.text) for s in problems]
    trainer = ArmTrainer(model, tok, recipe_data.preference_pairs(4, 0), beta=0.5, chat=True, max_length=256,
                         lora=LoraSettings(rank=4, alpha=8), config=_quiet(learning_rate=5e-2, batch_size=8,
                                                                            micro_batch_size=8, max_steps=30))
    history = trainer.warm_start(examples)
    assert history[-1]["loss"] < history[0]["loss"] - 0.1
    base_weights = {n.replace("base_model.model.", "").replace(".base_layer", ""): p
                    for n, p in trainer.model.named_parameters() if "lora_" not in n}
    assert all(torch.equal(base_weights[n], frozen_before[n]) for n in frozen_before)


def test_nll_weight_adds_the_chosen_steps_per_token_nll():
    tok = char_tokenizer()
    pairs = recipe_data.preference_pairs(3, 0)
    losses = {}
    for w in (0.0, 2.0):
        model = tiny_llama(len(tok), tokenizer=tok, hidden_size=32, num_layers=1, seed=5)
        trainer = ArmTrainer(model, tok, pairs, beta=0.5, nll_weight=w, config=_quiet(max_steps=1))
        losses[w] = trainer._loss(trainer.model, [0, 1, 2])[0].item()
        chosen, _ = trainer.pair_logps(trainer.model, trainer.encoded)
        per_token = sum(-c.item() / len(e[0][1]) for c, e in zip(chosen, trainer.encoded))
    assert losses[2.0] == pytest.approx(losses[0.0] + 2.0 * per_token, rel=1e-5)
    with pytest.raises(ValueError, match="nll_weight"):  # negative
        ArmTrainer(tiny_llama(len(tok), tokenizer=tok, hidden_size=32, num_layers=1), tok, pairs, nll_weight=-1.0)


def test_cli_make_data_then_reward_with_warm_start_then_router_by_domain(tmp_path, capsys):
    from taro_ext.cli import main

    tok = char_tokenizer()
    tiny_llama(len(tok), tokenizer=tok, hidden_size=32, num_layers=1).save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# comment\nWrite a poem.\nSay hello.\nName a color.\n")
    data = tmp_path / "data"
    assert main(["make-data", "--base", str(tmp_path / "base"), "--output", str(data), "--num-sft", "6",
                 "--num-pairs", "6", "--num-gsm8k-pairs", "2", "--num-router", "6", "--general-prompts",
                 str(prompts), "--max-new-tokens", "8"]) == 0
    rows = [json.loads(line) for line in (data / "router.jsonl").read_text().splitlines()]
    general = [r for r in rows if r["domain"] == "general"]
    assert sum(r["domain"] == "arithmetic" for r in rows) == 6 and 0 < len(general) <= 6  # empty samples dropped
    assert {r["prompt"] for r in general} <= {"Write a poem.", "Say hello.", "Name a color."}
    common = ["--chat", "--max-length", "256", "--batch-size", "4", "--micro-batch-size", "4", "--no-progress"]
    assert main(["train-reward", "--model", str(tmp_path / "base"), "--pairs", str(data / "pairs.jsonl"),
                 "--sft", str(data / "sft.jsonl"), "--sft-epochs", "1", "--nll-weight", "1", "--num-train", "6",
                 "--num-val", "2", "--lora-rank", "4", "--max-steps", "1", "--output", str(tmp_path / "rm"),
                 *common]) == 0
    log = json.loads((tmp_path / "rm" / "train_log.json").read_text())
    assert len(log["sft_history"]) == 2 and log["val_after_sft"] is not None
    assert main(["train-router", "--base", str(tmp_path / "base"), "--reward", str(tmp_path / "rm"),
                 "--examples", str(data / "router.jsonl"), "--num-train", str(len(rows) - 4), "--num-val", "4", "--k", "4",
                 "--embed-dim", "4", "--hidden", "8", "--cache", "memory", "--max-steps", "1",
                 "--output", str(tmp_path / "router"), *common]) == 0
    log = json.loads((tmp_path / "router" / "train_log.json").read_text())
    held_out = rows[-4:]
    domains = sorted({r["domain"] for r in held_out})
    if len(domains) > 1:
        assert sorted(log["val"]["by_domain"]) == domains
    out = capsys.readouterr().out
    assert "SFT took" in out and "held-out NLL per token (all" in out

    # make-corrections with the TARo policy just trained (a random tiny model: any rows it finds are
    # real wrong results), then a router on both files, shuffled together.
    corrections = tmp_path / "corrections.jsonl"
    assert main(["make-corrections", "--base", str(tmp_path / "base"), "--reward", str(tmp_path / "rm"),
                 "--router", str(tmp_path / "router"), "--num-problems", "4", "--seed", "7", "--max-new-tokens", "8",
                 "--output", str(corrections)]) == 0
    found = [json.loads(line) for line in corrections.read_text().splitlines()]
    # Each row's prefix ends at an "=" and the completion makes the last equation right.
    assert all(r["prefix"].endswith("=") and len(r["prefix"]) not in
               {offset for offset, _ in arithmetic.wrong_results(r["prefix"] + r["completion"])} for r in found)
    corrections.write_text("".join(json.dumps(r) + "\n" for r in found + recipe_data.corrections("Q?", "2 + 2 = 5")))
    assert main(["train-router", "--base", str(tmp_path / "base"), "--reward", str(tmp_path / "rm"),
                 "--examples", str(data / "router.jsonl"), str(corrections), "--num-train", str(len(rows)),
                 "--num-val", str(len(found) + 1), "--k", "4", "--embed-dim", "4", "--hidden", "8", "--max-steps", "1",
                 "--domain-weight", "correction=5", "--output", str(tmp_path / "router2"), *common]) == 0
    assert f"train examples: {len(rows)}, held-out: {len(found) + 1}" in capsys.readouterr().out
    assert main(["train-router", "--base", str(tmp_path / "base"), "--reward", str(tmp_path / "rm"),
                 "--examples", str(data / "router.jsonl"), "--num-val", "2", "--domain-weight", "medical=2",
                 "--output", str(tmp_path / "router3"), *common]) == 2
    assert "--domain-weight: no training record has domain 'medical'" in capsys.readouterr().err
    # --domain-loss: every record on the bounded top1 loss (at most 1 per token), against the NLL of a
    # random tiny model (about log V per token) on the same first batch.
    losses = {}
    for name, extra in (("nll", []), ("top1", ["--domain-loss", "arithmetic=top1", "general=top1"])):
        assert main(["train-router", "--base", str(tmp_path / "base"), "--reward", str(tmp_path / "rm"),
                     "--examples", str(data / "router.jsonl"), "--num-val", "2", "--k", "4", "--embed-dim", "4",
                     "--hidden", "8", "--max-steps", "1", *extra, "--output", str(tmp_path / f"router_{name}"),
                     *common]) == 0
        losses[name] = json.loads((tmp_path / f"router_{name}" / "train_log.json").read_text())["history"][0]["loss"]
    assert 0 < losses["top1"] <= 1 < losses["nll"]
    assert main(["train-router", "--base", str(tmp_path / "base"), "--reward", str(tmp_path / "rm"),
                 "--examples", str(data / "router.jsonl"), "--num-val", "2", "--domain-loss", "medical=top1",
                 "--output", str(tmp_path / "router4"), *common]) == 2
    assert "--domain-loss: no training record has domain 'medical'" in capsys.readouterr().err
    assert main(["make-corrections", "--base", str(tmp_path / "base"), "--reward", str(tmp_path / "rm"),
                 "--output", str(corrections)]) == 2
    assert "--reward and --router go together" in capsys.readouterr().err


@pytest.mark.parametrize("text, expected", [
    ("Ben has 24 + 16 = 30 apples.", [(17, " 40")]),
    ("So (36 + 15 + 8) = 150 in all.", [(18, " 59")]),  # parentheses and a three-term sum
    ("First, 5 x 3 = 15. Then 15 - 4 = 12.", [(32, " 11")]),  # the first is right
    ("2 * 3 + 4 = 10 and 2 + 3 * 4 = 20", [(30, " 14")]),  # precedence
    ("12 ÷ 4 = 4, 3 × 7 = 21", [(8, " 3")]),
    ("9 - 3 =7", [(7, "6")]),  # no space after "=": none in the correction either
    ("7 / 2 = 3", []),  # not an integer: no single right way to write it
    ("1.5 + 2 = 4, 3 + 4 = 7.5", []),  # decimals are not checked
    ("On 2024-5 = 2019 no", []),  # right
    ("12 + 5 = 17, and 17 - 3 = 14", []),
])
def test_wrong_results_find_every_wrong_integer_result(text, expected):
    assert arithmetic.wrong_results(text) == expected
    assert all(text[offset - 1] == "=" for offset, _ in expected)


def test_corrections_become_router_examples_with_the_answer_as_untrained_prefix():
    tok = char_tokenizer()
    answer = "First, 5 + 3 = 9 pens.\nThen, 9 - 2 = 7 pens.\nThe answer is 7."
    rows = recipe_data.corrections("Q?", answer)
    assert rows == [{"prompt": "Q?", "prefix": "First, 5 + 3 =", "completion": " 8", "domain": "correction",
                     "loss": "top1"}]
    pairs = recipe_data.router_pairs(rows + [{"prompt": "Q?", "completion": "A"}], tok, chat=True)
    rendered = recipe_data.data.render_prompt("Q?", tok, True)
    assert pairs == [(rendered + "First, 5 + 3 =", " 8", "top1"), (rendered, "A", "nll")]
    from taro_ext.training.batches import encode_completion

    ctx, comp = encode_completion(tok, *pairs[0][:2], max_length=256)
    assert tok.decode(comp) == " 8" and tok.decode(ctx).endswith("First, 5 + 3 =")
