"""Training on tiny models: ARM loss, reward trainer, router trainer, resume, 2-process DDP.

Run as a script (``python tests/test_training.py OUT``, under torchrun) this file is the
DDP worker of ``test_ddp_matches_single_process``.
"""
import json
import math
import os
import random
import re
import socket
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from taro_ext import TopKRouter, load_router
from taro_ext.data import StepPair
from taro_ext.tiny import char_tokenizer, tiny_llama
from taro_ext.training import (ArmTrainer, LoraSettings, RouterTrainer, TrainConfig, arm_loss, format_alpha_table,
                               train_causal_lm)
from taro_ext.training.checkpoints import list_checkpoints, trainable_state
from taro_ext.training.loop import cosine_with_warmup, global_batch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def quiet(**kw) -> TrainConfig:
    return TrainConfig(progress=False, **kw)


# --- fixtures: a separable pair set, and bigram "models" whose right alpha depends on the token --

def letter_pairs(n: int, seed: int) -> list[StepPair]:
    """Chosen repeats the prompt's last letter, rejected the other one: separable from the prompt."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        c = rng.choice("ab")
        noise = "".join(rng.choice("xyz") for _ in range(5))
        out.append(StepPair(prompt=noise + c, initial_reason_steps="", chosen=c * 3,
                            rejected=("b" if c == "a" else "a") * 3))
    return out


class BigramLM(nn.Module):
    """A causal "LM" whose next-token logits are a fixed table row of the current token."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.register_buffer("table", table)

    def forward(self, input_ids, logits_to_keep=0, **_):
        logits = self.table[input_ids]
        return SimpleNamespace(logits=logits[:, -logits_to_keep:] if logits_to_keep else logits)


LETTERS, DIGITS = "abcdefgh", "01234567"


def bigram_task(tok):
    """Sequences alternate letter, digit, letter, ... Each next token is the "right" one w.p.
    0.6 (digit i after letter i; letter i+1 after digit i), uniform in its class otherwise.
    The base model is under-confident everywhere; the reward model is sharp and right before
    digits (alpha > 0 helps) and sharp and wrong before letters (any alpha > 0 hurts)."""
    v = len(tok)
    L = tok.convert_tokens_to_ids(list(LETTERS))
    D = tok.convert_tokens_to_ids(list(DIGITS))
    base = torch.full((v, v), -30.0)
    reward = torch.full((v, v), -30.0)
    for i in range(8):
        base[L[i], D] = 0.0
        base[L[i], D[i]] = math.log(3.0)
        reward[L[i], D] = 0.0
        reward[L[i], D[i]] = 4.0
        base[D[i], L] = 0.0
        base[D[i], L[(i + 1) % 8]] = math.log(3.0)
        reward[D[i], L] = 0.0
        reward[D[i], L[(i + 3) % 8]] = 4.0
    return BigramLM(base), BigramLM(reward)


def bigram_examples(n: int, seed: int, length: int = 24) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        cur = rng.randrange(8)
        prompt, target = LETTERS[cur], []
        for t in range(length):
            if t % 2 == 0:
                cur = cur if rng.random() < 0.6 else rng.randrange(8)
                target.append(DIGITS[cur])
            else:
                cur = (cur + 1) % 8 if rng.random() < 0.6 else rng.randrange(8)
                target.append(LETTERS[cur])
        out.append((prompt, "".join(target)))
    return out


# --- ARM loss -----------------------------------------------------------------------------------

def test_arm_loss_matches_hand_computation():
    chosen = torch.tensor([-3.0, -10.0, -1.5])
    rejected = torch.tensor([-5.0, -4.0, -1.5])
    beta = 0.1
    by_hand = [math.log(1 + math.exp(-beta * (c - r))) for c, r in zip(chosen.tolist(), rejected.tolist())]
    torch.testing.assert_close(arm_loss(chosen, rejected, beta, reduction="none"), torch.tensor(by_hand))
    torch.testing.assert_close(arm_loss(chosen, rejected, beta), torch.tensor(sum(by_hand) / 3))
    with pytest.raises(ValueError, match="beta"):
        arm_loss(chosen, rejected, 0.0)
    with pytest.raises(ValueError, match="rejected_logps"):
        arm_loss(chosen, rejected[:2], beta)


def test_pair_logps_match_unpadded_forward():
    """The batched, left-padded, logits_to_keep path sums the same token log-probs as one plain
    forward per sequence."""
    tok = char_tokenizer()
    model = tiny_llama(len(tok), tokenizer=tok, hidden_size=32, num_layers=1)
    pairs = [StepPair("12+3", "step: ", "15", "16 and more"), StepPair("a much longer prompt?", "", "ok", "no")]
    trainer = ArmTrainer(model, tok, pairs, beta=0.1, config=quiet(device="cpu"))
    chosen, rejected = trainer.pair_logps(trainer.model, trainer.encoded)
    for i, p in enumerate(pairs):
        for completion, got in ((p.chosen, chosen[i]), (p.rejected, rejected[i])):
            ctx = tok(p.prompt + "\n" + p.initial_reason_steps)["input_ids"]
            comp = tok(completion, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                lp = torch.log_softmax(model(torch.tensor([ctx + comp])).logits[0].float(), -1)
            expected = sum(lp[len(ctx) - 1 + j, t].item() for j, t in enumerate(comp))
            assert got.item() == pytest.approx(expected, abs=1e-4)
    loss = arm_loss(chosen, rejected, 0.1)
    by_hand = sum(math.log(1 + math.exp(-0.1 * (c - r))) for c, r in zip(chosen.tolist(), rejected.tolist())) / 2
    assert loss.item() == pytest.approx(by_hand, rel=1e-6)


def test_cosine_schedule_with_warmup():
    f = cosine_with_warmup(total_steps=10, warmup_steps=2)
    assert [f(0), f(1), f(2)] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert f(6) == pytest.approx(0.5)
    assert f(10) == pytest.approx(0.0)


def test_global_batches_cover_each_epoch_once():
    seen = [i for step in range(4) for i in global_batch(step, 10, 3, seed=5)]  # 4 steps = 1 epoch
    assert sorted(seen) == list(range(10))
    assert global_batch(4, 10, 3, seed=5) != global_batch(0, 10, 3, seed=5)  # epoch 2 reshuffles


# --- reward trainer -----------------------------------------------------------------------------

def test_reward_trainer_learns_separable_pairs(tmp_path):
    tok = char_tokenizer()
    model = tiny_llama(len(tok), tokenizer=tok, hidden_size=32, num_layers=1)
    trainer = ArmTrainer(model, tok, letter_pairs(64, seed=0), beta=0.5,
                         config=quiet(learning_rate=1e-2, batch_size=16, micro_batch_size=8, max_steps=30,
                                      warmup_steps=3, device="cpu"))
    held_out = letter_pairs(64, seed=1)
    assert trainer.evaluate(held_out)["pair_acc"] < 0.75
    history = trainer.train()
    assert history[-1]["pair_acc"] > 0.9
    result = trainer.evaluate(held_out)
    assert result["pair_acc"] > 0.9
    trainer.save(str(tmp_path / "rm"))
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "rm"))
    ids = torch.tensor([tok("xyzab")["input_ids"]])
    torch.testing.assert_close(reloaded(ids).logits, trainer.model(ids).logits)


def test_lora_reward_model_saves_adapters_that_load_model_merges(tmp_path):
    from taro_ext.models import load_model

    tok = char_tokenizer()
    base_dir = tmp_path / "base"
    tiny_llama(len(tok), tokenizer=tok, hidden_size=32, num_layers=1).save_pretrained(base_dir)
    tok.save_pretrained(base_dir)
    model, _ = load_model(str(base_dir))
    trainer = ArmTrainer(model, tok, letter_pairs(16, seed=0), beta=0.5, lora=LoraSettings(rank=4),
                         config=quiet(learning_rate=1e-2, batch_size=8, micro_batch_size=8, max_steps=3,
                                      warmup_steps=1, device="cpu"))
    trainer.train()
    ids = torch.tensor([tok("xyzab")["input_ids"]])
    with torch.no_grad():
        trained = trainer.model(ids).logits
    trainer.save(str(tmp_path / "rm"), base_model=str(base_dir))
    assert (tmp_path / "rm" / "adapter_config.json").is_file()
    assert not (tmp_path / "rm" / "model.safetensors").exists()  # adapters only, not the whole model
    reloaded, reloaded_tok = load_model(str(tmp_path / "rm"))
    assert len(reloaded_tok) == len(tok)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, trained)
        assert not torch.allclose(load_model(str(base_dir))[0](ids).logits, trained)  # training changed it


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    tok = char_tokenizer()
    pairs = letter_pairs(24, seed=2)

    def trainer(out, resume=None):
        model = tiny_llama(len(tok), tokenizer=tok, hidden_size=32, num_layers=1, seed=1)
        torch.manual_seed(123 if resume else 0)  # a resumed run must not depend on its fresh LoRA init
        cfg = quiet(learning_rate=5e-3, batch_size=8, micro_batch_size=4, max_steps=6, warmup_steps=2,
                    output_dir=str(out), checkpoint_every=3, resume_from=resume, device="cpu")
        return ArmTrainer(model, tok, pairs, beta=0.5, config=cfg, lora=LoraSettings(rank=4, alpha=8))

    full = trainer(tmp_path / "a")
    full_history = full.train()
    assert [os.path.basename(p) for p in list_checkpoints(str(tmp_path / "a"))] == ["checkpoint-3"]
    resumed = trainer(tmp_path / "a", resume="latest")
    resumed_history = resumed.train()
    assert [r["step"] for r in resumed_history] == [4, 5, 6]
    assert [r["loss"] for r in resumed_history] == pytest.approx([r["loss"] for r in full_history[3:]], abs=1e-6)
    a, b = trainable_state(full.model), trainable_state(resumed.model)
    assert a.keys() == b.keys() and all("lora" in k for k in a)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


# --- router trainer -----------------------------------------------------------------------------

def test_router_beats_alpha_zero_and_best_fixed_alpha(tmp_path):
    tok = char_tokenizer()
    base, reward = bigram_task(tok)
    torch.manual_seed(0)
    router = TopKRouter(len(tok), k=4, embed_dim=4, hidden=16)
    trainer = RouterTrainer(base, reward, tok, router, bigram_examples(64, seed=0), cache="memory",
                            config=quiet(learning_rate=3e-2, batch_size=16, micro_batch_size=16, max_steps=60,
                                         device="cpu"))
    trainer.train()
    grid = [i / 10 for i in range(21)]
    result = trainer.evaluate(bigram_examples(32, seed=1), fixed_alphas=grid)
    best_fixed = min(result["nll_fixed"].values())
    assert result["nll"] < best_fixed - 0.02
    assert best_fixed < result["nll_fixed"][0.0]
    stats = result["alpha"]
    assert stats["digit"]["count"] == stats["letter"]["count"] == 32 * 12
    # The reward model helps before digits only: the router learnt to use it there.
    assert stats["digit"]["mean"] > 0.25 and stats["letter"]["mean"] < 0.05
    assert "digit" in format_alpha_table(stats)
    trainer.save(str(tmp_path / "router"))
    reloaded = load_router(str(tmp_path / "router"))
    rows = torch.randn(5, len(tok)), torch.randn(5, len(tok))
    torch.testing.assert_close(reloaded(*rows), router(*rows))


def test_top1_loss_is_a_smoothed_greedy_miss():
    from taro_ext.training.router_training import mixed_top1_loss

    base = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 0.0]])
    reward = torch.tensor([[0.0, 2.0, 0.0], [1.0, 0.0, 0.0]])
    alpha, targets = torch.tensor([1.0, 0.5]), torch.tensor([1, 0])
    lp_b, lp_r = torch.log_softmax(base, -1), torch.log_softmax(reward, -1)
    s = lp_b + alpha[:, None] * lp_r
    margins = [max(s[i, j] for j in range(3) if j != t) - s[i, t] for i, t in enumerate(targets)]
    want = [1 / (1 + math.exp(-m)) for m in margins]
    got = mixed_top1_loss(base, reward, alpha, targets, 3)
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float32))
    assert got[0] < 0.5 < got[1]  # row 0's target is the greedy pick, row 1's is not
    # Bounded: a miss by a wide margin costs at most 1 (the NLL and a hinge grow with the margin).
    far = mixed_top1_loss(torch.tensor([[30.0, 0.0, 0.0]]), torch.tensor([[30.0, 0.0, 0.0]]), torch.tensor([4.0]),
                          torch.tensor([1]), 3)
    assert 0.99 < far.item() <= 1.0
    # Only alpha carries a gradient, and it lowers the loss where the reward model prefers the target.
    a = torch.tensor([1.0, 0.5], requires_grad=True)
    mixed_top1_loss(base, reward, a, targets, 3).sum().backward()
    assert a.grad[0] < 0 and a.grad[1] < 0
    # scale tau divides the margin: sigmoid(margin / tau), by hand; a wide miss keeps a gradient.
    torch.testing.assert_close(mixed_top1_loss(base, reward, alpha, targets, 3, scale=4.0),
                               torch.tensor([1 / (1 + math.exp(-m / 4)) for m in margins]))
    grads = []
    for scale in (1.0, 4.0):
        a = torch.tensor([0.1], requires_grad=True)  # a miss by about 6 nats at alpha 0.1
        mixed_top1_loss(torch.tensor([[6.0, 0.0, 0.0]]), torch.tensor([[0.0, 6.0, 0.0]]), a, torch.tensor([1]), 3,
                        scale=scale).sum().backward()
        grads.append(a.grad.item())
    assert grads[1] < 5 * grads[0] < 0  # the slope toward a larger alpha is over 5x steeper at tau = 4 (9x)


def test_alpha_target_loss_regresses_onto_the_largest_alpha_that_picks_the_target():
    from taro_ext.training.router_training import ALPHA_GRID, mixed_alpha_target_loss

    alpha_max = 4.0
    # Row 0: base and reward agree on token 1: every alpha picks it, goal alpha_max (fraction 1).
    # Row 1: the base picks 0 (the target, 5 nats ahead of token 2), the reward 2 (3 nats ahead of 0):
    #   the mix picks 0 for small alpha only, so the goal is a fraction strictly between 0 and 1.
    # Row 2: neither model nor any mix picks token 1: no goal, no loss, no gradient.
    base = torch.tensor([[0.0, 5.0, 0.0], [5.0, 0.0, 0.0], [5.0, 0.0, 0.0]])
    reward = torch.tensor([[0.0, 5.0, 0.0], [0.0, -1.0, 3.0], [5.0, 0.0, 0.0]])
    targets = torch.tensor([1, 0, 1])
    lp_b, lp_r = torch.log_softmax(base, -1), torch.log_softmax(reward, -1)
    goals = []
    for i, t in enumerate(targets.tolist()):  # by hand: the largest grid fraction whose mix picks t
        hits = [f for f in ALPHA_GRID if int((lp_b[i] + f * alpha_max * lp_r[i]).argmax()) == t]
        goals.append(max(hits) if hits else None)
    assert goals[0] == 1.0 and 0.0 < goals[1] < 1.0 and goals[2] is None  # the three cases above
    a = torch.tensor([2.0, 2.0, 2.0], requires_grad=True)
    got = mixed_alpha_target_loss(base, reward, a, targets, 3, alpha_max=alpha_max)
    want = [-(g * math.log(0.5) + (1 - g) * math.log(0.5)) if g is not None else 0.0 for g in goals]
    torch.testing.assert_close(got, torch.tensor(want), check_dtype=False)
    got.sum().backward()
    # Gradient descent raises alpha toward alpha_max on row 0, lowers it on row 1 (goal below 1/2 of
    # alpha_max), and leaves row 2 alone.
    assert a.grad[0] < 0 and a.grad[2] == 0
    assert (a.grad[1] > 0) == (goals[1] < 0.5)
    # The loss is lowest at the goal (binary cross-entropy against it).
    shares = torch.linspace(0.01, 0.99, 99)
    curve = mixed_alpha_target_loss(base[1:2].expand(99, 3), reward[1:2].expand(99, 3), shares * alpha_max,
                                    targets[1:2].expand(99), 3, alpha_max=alpha_max)
    assert abs(shares[curve.argmin()].item() - goals[1]) < 0.011
    # decisive_only drops row 0 (every alpha picks its target) and keeps row 1's loss as it is.
    a.grad = None
    decisive = mixed_alpha_target_loss(base, reward, a, targets, 3, alpha_max=alpha_max, decisive_only=True)
    torch.testing.assert_close(decisive, torch.tensor([0.0, want[1], 0.0]), check_dtype=False)
    decisive.sum().backward()
    assert a.grad[0] == 0 and a.grad[2] == 0 and a.grad[1] != 0


def test_alpha_zero_loss_is_the_cross_entropy_of_alpha_share_against_zero():
    from taro_ext.training.router_training import mixed_alpha_zero_loss

    rows = torch.randn(3, 5)
    a = torch.tensor([0.0, 1.0, 3.0], requires_grad=True)
    got = mixed_alpha_zero_loss(rows, rows.flip(1), a, torch.tensor([0, 1, 2]), 5, alpha_max=4.0)
    torch.testing.assert_close(got, torch.tensor([0.0, -math.log(0.75), -math.log(0.25)]))  # -log(1 - a / 4)
    got.sum().backward()
    # Gradient descent lowers alpha wherever it is above 0, and harder the larger it is, whatever the rows.
    assert 0 < a.grad[0] < a.grad[1] < a.grad[2]


def test_router_trainer_uses_each_examples_loss():
    tok = char_tokenizer()
    base, reward = bigram_task(tok)
    examples = bigram_examples(4, seed=0)
    losses = {}
    for kind in ("nll", "top1", "alpha_target", "alpha_decisive", "alpha_zero"):
        torch.manual_seed(0)
        trainer = RouterTrainer(base, reward, tok, TopKRouter(len(tok), k=4, embed_dim=4, hidden=8),
                                [(p, t, kind) for p, t in examples], config=quiet(max_steps=1, device="cpu"))
        losses[kind] = trainer._loss(trainer.router, [0, 1])[0].item()
        from taro_ext.training.router_training import LOSSES

        b, r, t = trainer.frozen.rows([0, 1])
        extra = {"alpha_max": trainer.router.alpha_max} if kind.startswith("alpha_") else {}
        want = LOSSES[kind](b, r, trainer.router(b, r, len(tok)), t, len(tok), **extra).sum().item()
        assert losses[kind] == pytest.approx(want, rel=1e-6)
    assert len({round(v, 6) for v in losses.values()}) == 5
    torch.manual_seed(0)
    scaled = RouterTrainer(base, reward, tok, TopKRouter(len(tok), k=4, embed_dim=4, hidden=8),
                           [(p, t, "top1") for p, t in examples], config=quiet(max_steps=1, device="cpu"),
                           top1_scale=4.0)
    b, r, t = scaled.frozen.rows([0, 1])
    want = LOSSES["top1"](b, r, scaled.router(b, r, len(tok)), t, len(tok), scale=4.0).sum().item()
    assert scaled._loss(scaled.router, [0, 1])[0].item() == pytest.approx(want, rel=1e-6)
    assert want != pytest.approx(losses["top1"])
    with pytest.raises(ValueError, match="top1_scale must be > 0"):
        RouterTrainer(base, reward, tok, TopKRouter(len(tok), k=4), examples, top1_scale=0.0)
    with pytest.raises(ValueError, match=r"examples\[0\]: loss must be one of \['alpha_decisive', 'alpha_target', 'alpha_zero', 'nll', 'top1'\]"):
        RouterTrainer(base, reward, tok, TopKRouter(len(tok), k=4), [(examples[0][0], examples[0][1], "mse")])


def test_example_weights_count_like_repeated_examples():
    # Weight 3 on example 0 is the same weighted mean loss as example 0 written out three times.
    tok = char_tokenizer()
    base, reward = bigram_task(tok)
    examples = bigram_examples(2, seed=1)
    means = []
    for items, weights in (([examples[0]] * 3 + [examples[1]], None), (examples, [3.0, 1.0])):
        torch.manual_seed(0)
        trainer = RouterTrainer(base, reward, tok, TopKRouter(len(tok), k=4, embed_dim=4, hidden=8), items,
                                config=quiet(max_steps=1, device="cpu"), weights=weights)
        indices = list(range(len(items)))
        loss, metrics = trainer._loss(trainer.router, indices)
        total = sum(trainer.weights[i] * len(trainer.encoded[i][1]) for i in indices)
        means.append((loss.item() / total, metrics["alpha"] / total))
    assert means[0] == pytest.approx(means[1], rel=1e-6)
    for weights, exc, text in (([1.0], ValueError, "one per example"),
                               ([1.0, 0.0], ValueError, r"weights\[1\] must be > 0"),
                               ([float("nan"), 1.0], ValueError, r"weights\[0\] must be finite"),
                               ([True, 1.0], TypeError, r"weights\[0\] must be a number")):
        with pytest.raises(exc, match=text):
            RouterTrainer(base, reward, tok, TopKRouter(len(tok), k=4), examples, weights=weights)


def test_start_at_alpha_sets_the_initial_alpha():
    torch.manual_seed(0)
    router = TopKRouter(50, k=4, embed_dim=4, hidden=8, alpha_max=4.0)
    router.start_at_alpha(0.2)
    with torch.no_grad():
        router.w2.zero_()  # w2 . h = 0: alpha is set by b2 alone
    assert router(torch.randn(3, 50), torch.randn(3, 50)).tolist() == pytest.approx([0.2] * 3, rel=1e-6)
    for bad in (0.0, 4.0, -1.0):
        with pytest.raises(ValueError, match="alpha"):
            router.start_at_alpha(bad)


def test_full_router_starts_unsaturated_and_learns(tmp_path):
    from taro_ext import FullLogitsRouter
    from taro_ext.reference import full_features, row_stats

    torch.manual_seed(0)
    base_rows, reward_rows = 3 * torch.randn(64, 5000), 3 * torch.randn(64, 5000)  # log-probs about -12
    router = FullLogitsRouter(5000, hidden=16, alpha_max=2.0)
    x = router.input_features(base_rows, reward_rows)
    torch.testing.assert_close(x, full_features(row_stats(base_rows, reward_rows, 5000, None)))
    router.standardise_first_layer(x)
    pre = x @ router.w1.t() + router.b1
    torch.testing.assert_close(pre.mean(0), torch.zeros(16), atol=1e-3, rtol=0)
    torch.testing.assert_close(pre.std(0, unbiased=False), torch.ones(16), atol=1e-3, rtol=0)
    alpha = router(base_rows, reward_rows)
    assert ((alpha > 0.05) & (alpha < 1.95)).all()  # sigmoid(u) is not saturated: gradients flow

    tok = char_tokenizer()
    base, reward = bigram_task(tok)
    torch.manual_seed(0)
    router = FullLogitsRouter(len(tok), hidden=16)
    trainer = RouterTrainer(base, reward, tok, router, bigram_examples(64, seed=0), cache="memory",
                            config=quiet(learning_rate=1e-2, batch_size=16, micro_batch_size=16, max_steps=60,
                                         device="cpu"))
    trainer.train()
    result = trainer.evaluate(bigram_examples(32, seed=1), fixed_alphas=[0.0])
    assert result["nll"] < result["nll_fixed"][0.0] - 0.05
    assert result["alpha"]["digit"]["mean"] > result["alpha"]["letter"]["mean"] + 0.2


def test_lr_scales_set_a_parameters_learning_rate():
    from taro_ext.training.loop import TrainingTask, run_training

    module = nn.Linear(3, 1)
    before = {n: p.detach().clone() for n, p in module.named_parameters()}

    def loss(m, indices):
        return m(torch.ones(len(indices), 3)).square().sum(), {}

    task = TrainingTask(module, 4, lambda i: 1.0, loss, lr_scales={"weight": 0.0})
    run_training(task, quiet(learning_rate=0.1, batch_size=4, micro_batch_size=4, max_steps=3, weight_decay=0.0,
                             device="cpu"))
    assert torch.equal(module.weight, before["weight"]) and not torch.equal(module.bias, before["bias"])
    with pytest.raises(ValueError, match="lr_scales names parameters the module does not train: .'w1'."):
        run_training(TrainingTask(module, 4, lambda i: 1.0, loss, lr_scales={"w1": 0.5}), quiet(max_steps=1))


def test_router_disk_cache_matches_on_the_fly(tmp_path):
    tok = char_tokenizer()
    examples = bigram_examples(8, seed=3, length=6)
    base = tiny_llama(len(tok), tokenizer=tok, hidden_size=32, num_layers=1, seed=0)
    reward = tiny_llama(len(tok), tokenizer=tok, hidden_size=32, num_layers=1, seed=1)
    results = []
    for cache in (None, str(tmp_path / "cache"), str(tmp_path / "cache")):  # compute, write, read back
        torch.manual_seed(0)
        router = TopKRouter(len(tok), k=4, embed_dim=4, hidden=8)
        trainer = RouterTrainer(base, reward, tok, router, examples, cache=cache,
                                config=quiet(learning_rate=1e-2, batch_size=4, micro_batch_size=2, max_steps=4,
                                             device="cpu"))
        results.append([r["loss"] for r in trainer.train()])
    assert results[1] == pytest.approx(results[0], abs=1e-6) and results[2] == pytest.approx(results[0], abs=1e-6)
    files = {f for f in os.listdir(tmp_path / "cache") if f.endswith(".pt")}
    assert len(files) == 8
    # More examples: the shared ones are read back, only the new one is computed.
    more = examples + bigram_examples(1, seed=4, length=6)
    trainer = RouterTrainer(base, reward, tok, TopKRouter(len(tok), k=4), more, cache=str(tmp_path / "cache"))
    assert {os.path.basename(trainer.frozen._path(i)) for i in range(8)} == files
    # Other models' logits are never read: their files have other names.
    other = RouterTrainer(reward, base, tok, TopKRouter(len(tok), k=4), examples, cache=str(tmp_path / "cache"))
    assert not {os.path.basename(other.frozen._path(i)) for i in range(8)} & files


def test_train_causal_lm_lowers_loss_on_target_tokens_only():
    tok = char_tokenizer()
    model = tiny_llama(len(tok), tokenizer=tok, hidden_size=32, num_layers=1)
    history = train_causal_lm(model, tok, [("Q: 1+1", "=2"), ("Q: 2+2", "=4")] * 4 + ["plain text"],
                              quiet(learning_rate=1e-2, batch_size=9, micro_batch_size=5, max_steps=15, device="cpu"))
    assert history[-1]["loss"] < 0.5 * history[0]["loss"]
    with pytest.raises(TypeError, match=r"examples\[0\]"):
        train_causal_lm(model, tok, [("a", "b", "c")], quiet(device="cpu"))


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="micro_batch_size"):
        TrainConfig(micro_batch_size=0)
    with pytest.raises(ValueError, match="output_dir"):
        TrainConfig(checkpoint_every=5)


def test_cli_trains_reward_then_router(tmp_path, capsys):
    from taro_ext.cli import main

    tok = char_tokenizer()
    tiny_llama(len(tok), tokenizer=tok, hidden_size=32, num_layers=1).save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    common = ["--source", "synthetic", "--max-length", "160", "--batch-size", "4", "--micro-batch-size", "4",
              "--max-steps", "2", "--no-progress"]
    assert main(["train-reward", "--model", str(tmp_path / "base"), "--num-train", "4", "--num-val", "2",
                 "--lora-rank", "4", "--output", str(tmp_path / "rm"), *common]) == 0
    assert main(["train-router", "--base", str(tmp_path / "base"), "--reward", str(tmp_path / "rm"),
                 "--num-train", "4", "--num-val", "2", "--k", "4", "--embed-dim", "4", "--hidden", "8",
                 "--cache", "memory",
                 "--output", str(tmp_path / "router"), *common]) == 0
    out = capsys.readouterr().out
    assert "pair accuracy" in out and "held-out NLL per token" in out and "digit" in out
    log = json.loads((tmp_path / "router" / "train_log.json").read_text())
    assert len(log["history"]) == 2 and set(log["val"]["nll_fixed"]) == {"0.0", "0.25", "0.5", "1.0", "1.5", "2.0"}
    # Without --init-alpha the router starts at alpha_max / 20 (--alpha-max defaults to 2), and the log says so.
    assert log["args"]["init_alpha"] == pytest.approx(0.1)
    assert load_router(str(tmp_path / "router"), vocab_size=len(tok)).k == 4


# --- data parallel ------------------------------------------------------------------------------

DDP_STEPS = 3


def ddp_runs(device="cpu"):
    """Reward (full fine-tuning, global batch 5: uneven slices, zero-weighted micro-batch on
    rank 1) and router training on fixed data; returns their trainable weights."""
    tok = char_tokenizer()
    model = tiny_llama(len(tok), tokenizer=tok, hidden_size=32, num_layers=1, seed=3)
    arm = ArmTrainer(model, tok, letter_pairs(10, seed=4), beta=0.5,
                     config=quiet(learning_rate=5e-3, batch_size=5, micro_batch_size=2, max_steps=DDP_STEPS,
                                  device=device))
    arm.train()
    base, reward = bigram_task(tok)
    torch.manual_seed(0)
    router = TopKRouter(len(tok), k=4, embed_dim=4, hidden=8)
    rt = RouterTrainer(base, reward, tok, router, bigram_examples(12, seed=5, length=8),
                       config=quiet(learning_rate=1e-2, batch_size=6, micro_batch_size=2, max_steps=DDP_STEPS,
                                    device=device))
    rt.train()
    return {"arm": trainable_state(arm.model), "router": trainable_state(rt.router)}


def test_ddp_matches_single_process(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "ddp.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           f"--master_port={port}", os.path.abspath(__file__), str(out)],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    distributed = torch.load(out)
    single = ddp_runs()
    for part in ("arm", "router"):
        assert distributed[part].keys() == single[part].keys()
        for k in single[part]:
            torch.testing.assert_close(distributed[part][k], single[part][k], rtol=1e-4, atol=1e-5)
        moved = max((single[part][k] - v).abs().max().item() for k, v in init_weights()[part].items())
        assert moved > 1e-3  # training did change the weights


def init_weights():
    tok = char_tokenizer()
    model = tiny_llama(len(tok), tokenizer=tok, hidden_size=32, num_layers=1, seed=3)
    torch.manual_seed(0)
    router = TopKRouter(len(tok), k=4, embed_dim=4, hidden=8)
    return {"arm": {k: v.detach() for k, v in model.named_parameters()},
            "router": {k: v.detach() for k, v in router.named_parameters()}}


if __name__ == "__main__":
    import torch.distributed as dist

    torch.set_num_threads(1)
    weights = ddp_runs()
    if dist.get_rank() == 0:
        torch.save(weights, sys.argv[1])
    dist.destroy_process_group()


# --- configurations that cannot be right, resuming the wrong checkpoint, loading no pickle --------

BAD_CONFIGS = [
    (dict(learning_rate=float("inf")), ValueError, "learning_rate"),
    (dict(learning_rate=float("nan")), ValueError, "learning_rate"),
    (dict(learning_rate=0.0), ValueError, "learning_rate"),
    (dict(learning_rate="1e-3"), TypeError, "learning_rate"),
    (dict(max_grad_norm=-1.0), ValueError, "max_grad_norm"),
    (dict(max_grad_norm=0.0), ValueError, "max_grad_norm"),
    (dict(max_grad_norm=float("nan")), ValueError, "max_grad_norm"),
    (dict(batch_size=True), TypeError, "batch_size"),
    (dict(batch_size=4.0), TypeError, "batch_size"),
    (dict(micro_batch_size=0), ValueError, "micro_batch_size"),
    (dict(epochs=float("inf")), ValueError, "epochs"),
    (dict(epochs=0), ValueError, "epochs"),
    (dict(max_steps=0), ValueError, "max_steps"),
    (dict(max_steps=False), TypeError, "max_steps"),
    (dict(warmup_steps=-1), ValueError, "warmup_steps"),
    (dict(weight_decay=-0.1), ValueError, "weight_decay"),
    (dict(weight_decay=float("inf")), ValueError, "weight_decay"),
    (dict(seed=-1), ValueError, "seed"),
    (dict(seed=2 ** 70), ValueError, "seed"),
    (dict(keep_checkpoints=0), ValueError, "keep_checkpoints"),
    (dict(bf16="yes"), TypeError, "bf16"),
    (dict(progress=1), TypeError, "progress"),
    (dict(device="potato"), ValueError, "device"),
    (dict(output_dir=5), TypeError, "output_dir"),
    (dict(checkpoint_every=5), ValueError, "output_dir"),
    (dict(resume_from="latest"), ValueError, "output_dir"),
]


@pytest.mark.parametrize("kwargs,exc,text", BAD_CONFIGS, ids=[str(c[0]) for c in BAD_CONFIGS])
def test_config_rejects_every_impossible_field(kwargs, exc, text):
    with pytest.raises(exc, match=text):
        TrainConfig(**kwargs)


def test_config_takes_numpy_numbers_as_python_ones():
    np = pytest.importorskip("numpy")
    cfg = TrainConfig(batch_size=np.int64(8), learning_rate=np.float32(0.5), max_grad_norm=None)
    assert type(cfg.batch_size) is int and type(cfg.learning_rate) is float and cfg.max_grad_norm is None


def test_trainer_arguments_that_cannot_be_right_are_errors(tmp_path):
    tok = char_tokenizer()
    model = tiny_llama(len(tok), tokenizer=tok, hidden_size=32, num_layers=1)
    pairs = letter_pairs(4, seed=0)
    for kwargs, exc, text in ((dict(beta=float("inf")), ValueError, "beta"), (dict(beta=True), TypeError, "beta"),
                              (dict(max_length=True), TypeError, "max_length"),
                              (dict(chat="no"), TypeError, "chat"), (dict(config={}), TypeError, "config")):
        with pytest.raises(exc, match=text):
            ArmTrainer(model, tok, pairs, **kwargs)
    for kwargs, exc, text in ((dict(rank=0), ValueError, "rank"), (dict(alpha=float("nan")), ValueError, "alpha"),
                              (dict(dropout=1.0), ValueError, "dropout"),
                              (dict(target_modules="q_proj"), TypeError, "target_modules")):
        with pytest.raises(exc, match=text):
            LoraSettings(**kwargs)
    base, reward = bigram_task(tok)
    (tmp_path / "file").write_text("x")
    for kwargs, exc, text in ((dict(cache=str(tmp_path / "file")), ValueError, "is a file"),
                              (dict(cache=5), TypeError, "cache"), (dict(cache_dtype=torch.int8), TypeError, "cache_dtype"),
                              (dict(max_length=1), ValueError, "max_length")):
        with pytest.raises(exc, match=text):
            RouterTrainer(base, reward, tok, TopKRouter(len(tok), k=4), [("a", "1")], **kwargs)
    with pytest.raises(TypeError, match="router"):
        RouterTrainer(base, reward, tok, object(), [("a", "1")])


def test_a_diverging_loss_stops_training():
    tok = char_tokenizer()
    base, reward = bigram_task(tok)
    router = TopKRouter(len(tok), k=4, embed_dim=4, hidden=8)
    trainer = RouterTrainer(base, reward, tok, router, bigram_examples(4, seed=0, length=4),
                            config=quiet(learning_rate=1e30, batch_size=4, micro_batch_size=4, max_steps=5,
                                         max_grad_norm=None, device="cpu"))
    with pytest.raises(ValueError, match="training loss is"):
        trainer.train()


def _lora_trainer(tok, out, rank=4, resume=None, targets=("q_proj", "v_proj")):
    model = tiny_llama(len(tok), tokenizer=tok, hidden_size=32, num_layers=1, seed=1)
    cfg = quiet(learning_rate=5e-3, batch_size=4, micro_batch_size=4, max_steps=2, output_dir=str(out),
                checkpoint_every=1, resume_from=resume, device="cpu")
    return ArmTrainer(model, tok, letter_pairs(4, seed=2), beta=0.5, config=cfg,
                      lora=LoraSettings(rank=rank, target_modules=targets))


def test_resuming_a_checkpoint_of_other_parameters_is_refused(tmp_path):
    tok = char_tokenizer()
    _lora_trainer(tok, tmp_path).train()
    checkpoint = os.path.join(str(tmp_path), "checkpoint-1")
    with pytest.raises(ValueError, match="parameter .* is \\(\\d+, \\d+\\), the model's is \\(\\d+, \\d+\\)"):
        _lora_trainer(tok, tmp_path, rank=8, resume=checkpoint).train()
    with pytest.raises(ValueError, match="missing .*k_proj.*unexpected \\[\\]"):
        _lora_trainer(tok, tmp_path, resume=checkpoint, targets=("q_proj", "k_proj", "v_proj")).train()
    with pytest.raises(ValueError, match="missing \\[\\], unexpected .*v_proj"):
        _lora_trainer(tok, tmp_path, resume=checkpoint, targets=("q_proj",)).train()
    # A trainable dict that lacks one parameter (or has one more) is refused, not half applied.
    path = os.path.join(checkpoint, "trainer_state.pt")
    state = torch.load(path, weights_only=True)
    dropped = sorted(state["trainable"])[0]
    del state["trainable"][dropped]
    torch.save(state, path)
    with pytest.raises(ValueError, match=f"missing \\['{re.escape(dropped)}'\\]"):
        _lora_trainer(tok, tmp_path, resume=checkpoint).train()


class _Payload:
    """Unpickling this would create a file: a checkpoint must never run it."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_checkpoints_and_logits_caches_are_loaded_without_pickle(tmp_path):
    tok = char_tokenizer()
    trainer = _lora_trainer(tok, tmp_path)
    trainer.train()
    marker = tmp_path / "code_ran"
    path = os.path.join(str(tmp_path), "checkpoint-1", "trainer_state.pt")
    torch.save({"step": 1, "trainable": {}, "evil": _Payload(str(marker))}, path)
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        _lora_trainer(tok, tmp_path, resume=os.path.dirname(path)).train()
    assert not marker.exists()
    with open(path, "wb") as f:
        f.write(b"\x80\x04garbage")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        _lora_trainer(tok, tmp_path, resume=os.path.dirname(path)).train()
    # The router trainer's disk cache: same rule.
    base, reward = bigram_task(tok)
    cache = tmp_path / "cache"
    examples = bigram_examples(2, seed=0, length=4)
    cfg = quiet(learning_rate=1e-2, batch_size=2, micro_batch_size=2, max_steps=1, device="cpu")
    RouterTrainer(base, reward, tok, TopKRouter(len(tok), k=4), examples, cache=str(cache), config=cfg).train()
    (first,) = [f for f in os.listdir(cache) if f.endswith(".pt")][:1]
    torch.save(_Payload(str(marker)), cache / first)
    with pytest.raises(ValueError, match="not a readable logits cache file"):
        RouterTrainer(base, reward, tok, TopKRouter(len(tok), k=4), examples, cache=str(cache), config=cfg).train()
    assert not marker.exists()
    for f in os.listdir(cache):  # rows of another example, in every file
        torch.save((torch.zeros(3, 2), torch.zeros(3, 2)), cache / f)
    with pytest.raises(ValueError, match="does not hold this example's logits rows"):
        RouterTrainer(base, reward, tok, TopKRouter(len(tok), k=4), examples, cache=str(cache), config=cfg).train()


def test_reward_model_save_is_atomic_and_keeps_the_training_run(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    tok = char_tokenizer()
    out = tmp_path / "rm"
    first = _lora_trainer(tok, out)
    first.train()
    first.save(str(out))  # merged full model, beside checkpoint-1
    ids = torch.tensor([tok("xyzab")["input_ids"]])
    with torch.no_grad():
        saved = AutoModelForCausalLM.from_pretrained(str(out))(ids).logits
    assert os.path.isdir(out / "checkpoint-1")

    second = ArmTrainer(tiny_llama(len(tok), tokenizer=tok, hidden_size=32, num_layers=1, seed=9), tok,
                        letter_pairs(4, seed=2), beta=0.5, config=quiet(device="cpu"))

    class Killed(BaseException):
        pass

    def killed(*args, **kwargs):
        raise Killed()

    monkeypatch.setattr(type(tok), "save_pretrained", killed)  # dies after the model files are written
    with pytest.raises(Killed):
        second.save(str(out))
    monkeypatch.undo()
    with torch.no_grad():
        torch.testing.assert_close(AutoModelForCausalLM.from_pretrained(str(out))(ids).logits, saved)
    second.save(str(out))
    with torch.no_grad():
        torch.testing.assert_close(AutoModelForCausalLM.from_pretrained(str(out))(ids).logits,
                                   second.model(ids).logits)
    assert os.path.isdir(out / "checkpoint-1") and sorted(os.listdir(tmp_path)) == ["rm"]
