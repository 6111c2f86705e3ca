"""``taro-ext train-reward``, ``taro-ext train-router`` and the recipe's data commands (``make-data``,
``make-corrections``).

Both run single-process or under ``torchrun`` (``python -m torch.distributed.run
--nproc_per_node=N -m taro_ext.cli train-reward ...``). Rank 0 prints and writes the
outputs: the model (or router) with ``save_pretrained``, and ``train_log.json`` with the
settings, the per-step log, the held-out evaluation and wall-clock times.
"""
from __future__ import annotations

import json
import os
import random
import time

from .args import (CliError, directory_to_write, existing_file, file_to_write, non_negative_int, positive_float,
                   positive_int)

DATA_SOURCES = ("gsm8k", "math", "synthetic", "arithmetic")


def _add_model_args(p, names):
    for name in names:
        p.add_argument(f"--{name}", required=True,
                       help=f"{name} model: a transformers checkpoint directory or 'smollm2'")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                   help="model weights dtype (default: bfloat16 on GPU, float32 on CPU)")


def _add_data_args(p, what):
    p.add_argument("--source", choices=DATA_SOURCES, default="gsm8k",
                   help=f"where the {what} come from (GSM8K/MATH train solutions, or synthetic arithmetic)")
    p.add_argument("--data-path", default=None, help="GSM8K/MATH JSONL file (default: ../shared/data train set)")
    p.add_argument("--num-train", type=positive_int, default=256, help=f"number of training {what}")
    p.add_argument("--num-val", type=non_negative_int, default=64, help=f"held-out {what} evaluated after training")
    p.add_argument("--chat", action="store_true", help="wrap prompts in the tokenizer's chat template")
    p.add_argument("--max-length", type=positive_int, default=512,
                   help="tokens per sequence (context is cut on the left)")


def _add_optim_args(p, lr):
    from ..training import TrainConfig

    d = TrainConfig()
    p.add_argument("--output", type=directory_to_write, required=True, help="output directory")
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="global batch (all processes)")
    p.add_argument("--micro-batch-size", type=int, default=d.micro_batch_size, help="items per forward pass")
    p.add_argument("--epochs", type=float, default=d.epochs)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--checkpoint-every", type=int, default=None, help="optimizer steps between checkpoints")
    p.add_argument("--resume", default=None, metavar="CHECKPOINT",
                   help="a checkpoint directory, or 'latest' (newest under --output)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_commands(subparsers) -> None:
    p = subparsers.add_parser("train-reward", help="train a GenARM autoregressive reward model on step-wise pairs")
    _add_model_args(p, ["model"])
    _add_data_args(p, "pairs")
    p.add_argument("--pairs", type=existing_file, default=None,
                   help="Math-Step-DPO-10K style JSON/JSONL pairs (instead of building them from --source)")
    p.add_argument("--sft", type=existing_file, default=None, metavar="JSONL",
                   help="warm start: SFT on these (question, solution) records before the pair loss")
    p.add_argument("--sft-epochs", type=float, default=1.0)
    p.add_argument("--sft-lr", type=float, default=None, help="SFT learning rate (default: --lr)")
    p.add_argument("--nll-weight", type=float, default=0.0,
                   help="add this times the chosen step's per-token NLL to the pair loss")
    p.add_argument("--beta", type=float, default=0.05, help="ARM loss beta (GenARM: 0.05 to 0.1)")
    p.add_argument("--lora-rank", type=non_negative_int, default=16, help="LoRA rank; 0 fine-tunes every weight")
    p.add_argument("--lora-alpha", type=int, default=32)
    p.add_argument("--gradient-checkpointing", action="store_true")
    _add_optim_args(p, lr=5e-4)
    p.set_defaults(func=_train_reward)

    p = subparsers.add_parser("train-router", help="train the TARo router with frozen base and reward models")
    _add_model_args(p, ["base", "reward"])
    _add_data_args(p, "solutions")
    p.add_argument("--design", choices=("topk", "full"), default="topk")
    p.add_argument("--k", type=positive_int, default=16)
    p.add_argument("--embed-dim", type=positive_int, default=16)
    p.add_argument("--hidden", type=positive_int, default=64)
    p.add_argument("--alpha-max", type=float, default=2.0)
    p.add_argument("--init-alpha", type=float, default=None,
                   help="alpha at the start of training (sets b2; default alpha_max / 20, 0.2 at --alpha-max 4). "
                        "Started near alpha_max / 2, the out-of-domain rows can drive sigmoid(u) into "
                        "saturation in the first steps, and the router stays at alpha 0")
    p.add_argument("--cache", type=_cache_location, default=None,
                   help="keep the frozen models' logits: 'memory' or a directory (small sets)")
    p.add_argument("--cache-dtype", choices=("float32", "bfloat16"), default="float32",
                   help="dtype of the cached logits (bfloat16: half the memory, features within bf16 rounding)")
    p.add_argument("--examples", type=existing_file, default=None, metavar="JSONL", nargs="+",
                   help="(prompt, completion[, domain, prefix]) records (instead of --source); several files are "
                        "shuffled together under --seed; of the first --num-train + --num-val, the last --num-val "
                        "are held out and evaluated per domain")
    p.add_argument("--domain-weight", type=_domain_weight, default=[], nargs="+", metavar="DOMAIN=W",
                   help="scale the loss of the training records of DOMAIN by W (default 1), e.g. correction=10")
    p.add_argument("--domain-loss", type=_domain_loss, default=[], nargs="+", metavar="DOMAIN=LOSS",
                   help="train the records of DOMAIN on LOSS (nll, top1, alpha_target, alpha_decisive or alpha_zero) instead of their own "
                        "(a record's 'loss' field, nll when it has none), e.g. arithmetic=top1")
    p.add_argument("--top1-scale", type=positive_float, default=1.0, metavar="TAU",
                   help="the top1 loss's margin scale: sigmoid(margin / TAU) (default 1); a larger TAU keeps a "
                        "gradient on misses by a wide margin")
    _add_optim_args(p, lr=1e-3)
    p.set_defaults(func=_train_router)

    p = subparsers.add_parser("make-data", help="write the SmolLM2 recipe's training files (SFT, pairs, router)")
    _add_model_args(p, ["base"])
    p.add_argument("--output", type=directory_to_write, required=True,
                   help="directory for sft.jsonl, pairs.jsonl, router.jsonl")
    p.add_argument("--num-sft", type=non_negative_int, default=1200, help="arithmetic SFT solutions")
    p.add_argument("--num-pairs", type=non_negative_int, default=1600, help="arithmetic step pairs")
    p.add_argument("--num-gsm8k-pairs", type=non_negative_int, default=160, help="GSM8K train step pairs")
    p.add_argument("--num-router", type=non_negative_int, default=240, help="arithmetic router solutions")
    p.add_argument("--general-prompts", type=existing_file, default=None,
                   help="general instructions file (default: the shipped list)")
    p.add_argument("--general-samples", type=non_negative_int, default=2,
                   help="sampled base answers per general instruction")
    p.add_argument("--max-new-tokens", type=positive_int, default=160, help="length of the base's general answers")
    p.set_defaults(func=_make_data)

    p = subparsers.add_parser("make-corrections",
                              help="the router's correction examples: a policy's wrong results, corrected")
    _add_model_args(p, ["base"])
    p.add_argument("--reward", default=None, help="with --router: the policy is TARo (default: the base alone)")
    p.add_argument("--router", default=None, help="the TARo policy's router")
    p.add_argument("--num-problems", type=positive_int, default=400,
                   help="graded problems the policy answers greedily; each wrong result is a row")
    p.add_argument("--seed", type=non_negative_int, default=None,
                   help="the problems' seed (default 3, the recipe's; never the evaluation's, 1234)")
    p.add_argument("--max-new-tokens", type=positive_int, default=128, help="answer length (the evaluation's)")
    p.add_argument("--output", type=file_to_write, required=True, help="the JSONL file to write")
    p.set_defaults(func=_make_corrections)


def _cache_location(value: str) -> str:
    """``memory`` or a directory (created when missing), never an existing file."""
    return value if value == "memory" else directory_to_write(value)


def _config(args):
    from ..training import TrainConfig

    return TrainConfig(learning_rate=args.lr, batch_size=args.batch_size, micro_batch_size=args.micro_batch_size,
                       epochs=args.epochs, max_steps=args.max_steps, warmup_steps=args.warmup_steps,
                       weight_decay=args.weight_decay, seed=args.seed, output_dir=args.output,
                       checkpoint_every=args.checkpoint_every, resume_from=args.resume,
                       progress=not args.no_progress)


def _load(name, args, ctx):
    import torch

    from ..models import load_model

    dtype = args.dtype or ("bfloat16" if ctx.device.type == "cuda" else "float32")
    return load_model(name, dtype=getattr(torch, dtype), device=ctx.device)


def _solutions(args, count):
    from .. import arithmetic, data

    if args.source == "synthetic":
        return data.synthetic_arithmetic(count, seed=args.seed)
    if args.source == "arithmetic":
        return [s for _, s in arithmetic.graded_problems(count, seed=args.seed)]
    load = data.load_gsm8k if args.source == "gsm8k" else data.load_math
    return load(args.data_path)


def _write_log(args, ctx, log):
    if ctx.is_main:
        from ..atomic import write_text

        write_text(os.path.join(args.output, "train_log.json"),
                   json.dumps({"args": {k: v for k, v in vars(args).items() if k != "func"}, **log}, indent=2))


def _train_reward(args) -> int:
    from .. import data
    from ..training import ArmTrainer, LoraSettings
    from ..training.distributed import distributed_context

    config = _config(args)
    ctx = distributed_context(config.device)
    t0 = time.perf_counter()
    model, tokenizer = _load(args.model, args, ctx)
    if args.pairs:
        pairs = data.read_step_pairs(args.pairs)
    else:
        pairs = data.step_pairs(_solutions(args, 2 * (args.num_train + args.num_val)), seed=args.seed,
                                limit=args.num_train + args.num_val)
    if len(pairs) <= args.num_val:
        raise CliError(f"--num-val={args.num_val} leaves no training pairs out of {len(pairs)}")
    train, val = pairs[:len(pairs) - args.num_val][:args.num_train], pairs[len(pairs) - args.num_val:]
    lora = LoraSettings(rank=args.lora_rank, alpha=args.lora_alpha) if args.lora_rank > 0 else None
    trainer = ArmTrainer(model, tokenizer, train, beta=args.beta, config=config, lora=lora, chat=args.chat,
                         max_length=args.max_length, gradient_checkpointing=args.gradient_checkpointing,
                         nll_weight=args.nll_weight)
    before = trainer.evaluate(val) if val else None
    t1 = time.perf_counter()
    sft_history, after_sft = None, None
    if args.sft:
        from dataclasses import replace

        from ..training.recipe_data import read_examples

        examples = [(r["question"], r["solution"]) for r in read_examples(args.sft, ("question", "solution"))]
        sft_config = replace(config, epochs=args.sft_epochs, max_steps=None, learning_rate=args.sft_lr or args.lr,
                             checkpoint_every=None, resume_from=None)
        sft_history = trainer.warm_start(examples, sft_config)
        after_sft = trainer.evaluate(val) if val else None
    t_sft = time.perf_counter()
    history = trainer.train()
    t2 = time.perf_counter()
    after = trainer.evaluate(val) if val else None
    trainer.save(args.output, base_model=args.model)
    times = {"setup_s": t1 - t0, "sft_s": t_sft - t1, "train_s": t2 - t_sft, "total_s": time.perf_counter() - t0}
    if ctx.is_main:
        print(f"train pairs: {len(train)}, held-out pairs: {len(val)}; SFT took {times['sft_s']:.1f} s, "
              f"pair training {times['train_s']:.1f} s")
        if val:
            mid = (f" -> {after_sft['loss']:.4f} after SFT" if after_sft else "")
            mid_acc = (f" -> {after_sft['pair_acc']:.3f} after SFT" if after_sft else "")
            print(f"held-out ARM loss {before['loss']:.4f}{mid} -> {after['loss']:.4f}, "
                  f"pair accuracy {before['pair_acc']:.3f}{mid_acc} -> {after['pair_acc']:.3f}")
        print(f"reward model written to {args.output}")
    _write_log(args, ctx, {"history": history, "sft_history": sft_history, "val_before": before,
                           "val_after_sft": after_sft, "val_after": after, "times": times})
    return 0


def _domain_weight(text: str) -> tuple[str, float]:
    import argparse

    domain, sep, value = text.partition("=")
    try:
        weight = float(value)
    except ValueError:
        weight = None
    if not (sep and domain and weight is not None and 0 < weight < float("inf")):
        raise argparse.ArgumentTypeError(f"expected DOMAIN=W with W a finite number > 0, got {text!r}")
    return domain, weight


def _domain_loss(text: str) -> tuple[str, str]:
    import argparse

    from ..training.router_training import LOSSES

    domain, sep, loss = text.partition("=")
    if not (sep and domain and loss in LOSSES):
        raise argparse.ArgumentTypeError(f"expected DOMAIN=LOSS with LOSS one of {', '.join(sorted(LOSSES))}, "
                                         f"got {text!r}")
    return domain, loss


def _train_router(args) -> int:
    from ..router import FullLogitsRouter, TopKRouter
    from ..training import RouterTrainer, format_alpha_table
    from ..training.router_training import INIT_ALPHA_FRACTION
    from ..training.distributed import distributed_context
    from ..training.recipe_data import read_examples, router_pairs

    import torch

    if args.init_alpha is None:
        args.init_alpha = args.alpha_max * INIT_ALPHA_FRACTION  # train_log.json records the start used
    elif not 0 < args.init_alpha < args.alpha_max:
        raise CliError(f"--init-alpha must lie in (0, --alpha-max={args.alpha_max:g}), got {args.init_alpha:g}")
    config = _config(args)
    ctx = distributed_context(config.device)
    t0 = time.perf_counter()
    if args.examples:
        records = [r for path in args.examples for r in read_examples(path, ("prompt", "completion"))]
        if len(args.examples) > 1:
            random.Random(args.seed).shuffle(records)
        records = records[:args.num_train + args.num_val]
    else:
        solutions = _solutions(args, args.num_train + args.num_val)[:args.num_train + args.num_val]
        records = [{"prompt": s.question, "completion": s.text} for s in solutions]
    if len(records) <= args.num_val:
        raise CliError(f"--num-val={args.num_val} leaves no training examples out of {len(records)}")
    n_train = len(records) - args.num_val
    domain_weights, domain_losses = dict(args.domain_weight), dict(args.domain_loss)
    for option, domains in (("--domain-weight", domain_weights), ("--domain-loss", domain_losses)):
        unknown = sorted(set(domains) - {r.get("domain") for r in records[:n_train]})
        if unknown:
            raise CliError(f"{option}: no training record has domain {unknown[0]!r}")
    records = [dict(r, loss=domain_losses[r["domain"]]) if r.get("domain") in domain_losses else r for r in records]
    base, tokenizer = _load(args.base, args, ctx)
    reward, _ = _load(args.reward, args, ctx)
    examples = router_pairs(records, tokenizer, args.chat)
    train, val = examples[:n_train], examples[n_train:]
    torch.manual_seed(args.seed)
    if args.design == "topk":
        router = TopKRouter(len(tokenizer), k=args.k, embed_dim=args.embed_dim, hidden=args.hidden,
                            alpha_max=args.alpha_max)
    else:
        router = FullLogitsRouter(len(tokenizer), hidden=args.hidden, alpha_max=args.alpha_max)
    router.start_at_alpha(args.init_alpha)
    trainer = RouterTrainer(base, reward, tokenizer, router, train, config=config, max_length=args.max_length,
                            cache=args.cache, cache_dtype=getattr(torch, args.cache_dtype),
                            weights=[domain_weights.get(r.get("domain"), 1.0) for r in records[:n_train]],
                            top1_scale=args.top1_scale)
    t1 = time.perf_counter()
    history = trainer.train()
    t2 = time.perf_counter()
    grid = [a for a in (0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0) if a <= args.alpha_max]
    report = trainer.evaluate(val, fixed_alphas=grid) if val else None
    domains = sorted({r["domain"] for r in records[n_train:] if "domain" in r})
    if val and len(domains) > 1:
        report["by_domain"] = {d: trainer.evaluate([e for e, r in zip(val, records[n_train:]) if r.get("domain") == d],
                                                   fixed_alphas=grid) for d in domains}
    trainer.save(args.output)
    times = {"setup_s": t1 - t0, "train_s": t2 - t1, "total_s": time.perf_counter() - t0}
    if ctx.is_main:
        print(f"train examples: {len(train)}, held-out: {len(val)}; training took {times['train_s']:.1f} s")
        for name, rep in ([("all", report)] + list(report.get("by_domain", {}).items()) if report else []):
            fixed = ", ".join(f"alpha={a:g}: {v:.4f}" for a, v in rep["nll_fixed"].items())
            print(f"held-out NLL per token ({name}, {rep['tokens']} tokens): router {rep['nll']:.4f}; fixed {fixed}")
            top1 = ", ".join(f"alpha={a:g}: {v:.3f}" for a, v in rep["top1_fixed"].items())
            print(f"held-out greedy hits ({name}): router {rep['top1']:.3f}; fixed {top1}")
            print(format_alpha_table(rep["alpha"]))
        print(f"router written to {args.output}")
    _write_log(args, ctx, {"history": history, "val": report, "times": times})
    return 0


def _make_data(args) -> int:
    from .. import data
    from ..training import recipe_data
    from ..training.distributed import distributed_context

    t0 = time.perf_counter()
    os.makedirs(args.output, exist_ok=True)
    recipe_data.write_jsonl(recipe_data.sft_examples(args.num_sft), os.path.join(args.output, "sft.jsonl"))
    pairs = recipe_data.preference_pairs(args.num_pairs, args.num_gsm8k_pairs)
    data.write_step_pairs(pairs, os.path.join(args.output, "pairs.jsonl"))
    base, tokenizer = _load(args.base, args, distributed_context(None))
    rows = recipe_data.router_examples(args.num_router, base, tokenizer,
                                       prompts=recipe_data.general_prompts(args.general_prompts),
                                       samples_per_prompt=args.general_samples, max_new_tokens=args.max_new_tokens)
    recipe_data.write_jsonl(rows, os.path.join(args.output, "router.jsonl"))
    print(f"wrote {args.num_sft} SFT solutions, {len(pairs)} pairs, {len(rows)} router examples "
          f"to {args.output} in {time.perf_counter() - t0:.1f} s")
    return 0


def _make_corrections(args) -> int:
    from ..evaluation.datasets import EVAL_SEED
    from ..generation import TaroGenerator
    from ..router import load_router
    from ..training import recipe_data
    from ..training.distributed import distributed_context

    if (args.reward is None) != (args.router is None):
        raise CliError("--reward and --router go together (the TARo policy), or neither (the base alone)")
    seed = recipe_data.CORRECTION_SEED if args.seed is None else args.seed
    if seed == EVAL_SEED:
        raise CliError(f"--seed={seed} is the evaluation's seed: its problems are the test set")
    t0 = time.perf_counter()
    ctx = distributed_context(None)
    base, tokenizer = _load(args.base, args, ctx)
    if args.router is None:
        policy = TaroGenerator(base, None, None, tokenizer, mode="base")
    else:
        reward, reward_tokenizer = _load(args.reward, args, ctx)
        policy = TaroGenerator(base, reward, load_router(args.router), tokenizer, mode="taro",
                               reward_tokenizer=reward_tokenizer)
    rows = recipe_data.correction_examples(args.num_problems, policy, seed=seed, max_new_tokens=args.max_new_tokens)
    recipe_data.write_jsonl(rows, args.output)
    print(f"wrote {len(rows)} corrections of {args.num_problems} answers to {args.output} "
          f"in {time.perf_counter() - t0:.1f} s")
    return 0
