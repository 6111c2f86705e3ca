"""``taro-ext eval``: base vs GenARM (fixed alphas) vs TARo on an evaluation set."""
from __future__ import annotations

import argparse

from ..evaluation.datasets import EVAL_TASKS
from .args import CliError, device, directory_to_write, non_negative_int, positive_int


def add_commands(subparsers) -> None:
    p = subparsers.add_parser(
        "eval", help="evaluate base / GenARM / TARo on a task",
        description="Greedy-decode each item with every method, grade it, and write <out>/<stem>.json "
                    "(per-item results), .md (table) and .png (accuracy, alpha per token class).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--task", required=True, choices=EVAL_TASKS)
    p.add_argument("--methods", default="base,genarm:0.5,genarm:1,genarm:2,taro",
                   help="comma-separated: base, genarm:ALPHA, taro, taro-full")
    p.add_argument("--limit", type=positive_int, default=None,
                   help="first N items (synthetic: N generated items, default 200)")
    p.add_argument("--data", default=None, help="data file (default: ../shared/data/<the task's file>)")
    p.add_argument("--seed", type=non_negative_int, default=None,
                   help="the generated tasks' (arithmetic, synthetic) problem seed: 1234, the test set, by default; "
                        "another for a development set")
    p.add_argument("--base", default="smollm2", help="base model: 'smollm2' or a checkpoint directory")
    p.add_argument("--reward", default=None, help="reward model checkpoint directory (genarm and taro)")
    p.add_argument("--router", default=None, help="router directory (taro)")
    p.add_argument("--full-router", default=None, help="full-logits router directory (taro-full)")
    p.add_argument("--max-new-tokens", type=positive_int, default=256)
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--no-chat", action="store_true", help="feed the prompt as plain text, not through the chat template")
    p.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    p.add_argument("--backend", default="auto", help="decode-step backend: auto, torch, cpu, triton, cuda")
    p.add_argument("--device", type=device, default=None, help="default: cuda when available, else cpu")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--out", type=directory_to_write, default="eval_results", help="output directory")
    p.add_argument("--stem", default=None, help="output file stem (default: eval_<task>)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_run_eval)

    p = subparsers.add_parser(
        "eval-likelihood", help="score given text under each method's distribution (out-of-domain checks)",
        description="alpaca_eval: per-token NLL of the reference outputs; medqa/medxpertqa: accuracy by option "
                    "log-likelihood (lm-evaluation-harness style). Writes <out>/<stem>.json and .md.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--task", required=True, choices=("alpaca_eval", "medqa", "medxpertqa"))
    p.add_argument("--methods", default="base,genarm:0.5,genarm:1,genarm:2,taro")
    p.add_argument("--limit", type=positive_int, default=None, help="first N items")
    p.add_argument("--data", default=None, help="data file (default: ../shared/data/<the task's file>)")
    p.add_argument("--base", default="smollm2")
    p.add_argument("--reward", default=None)
    p.add_argument("--router", default=None)
    p.add_argument("--full-router", default=None)
    p.add_argument("--max-length", type=positive_int, default=1024,
                   help="the most tokens of a scored text (context and completion); a longer text is an error, "
                        "not cut (AlpacaEval's first 100 outputs with their instructions: up to 917)")
    p.add_argument("--batch-size", type=positive_int, default=4)
    p.add_argument("--no-chat", action="store_true")
    p.add_argument("--out", type=directory_to_write, default="eval_results")
    p.add_argument("--stem", default=None, help="output file stem (default: likelihood_<task>)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_run_likelihood)


def _router_dirs(args) -> dict:
    return {"taro": args.router, "taro-full": args.full_router}


def _load_routers(methods, args, map_location="cpu") -> dict:
    """The routers the methods use, by method name: a router directory given for a method not asked
    for is not read (a script passing both routers can run the base and GenARM alone)."""
    from ..router import load_router

    dirs = _router_dirs(args)
    return {m.name: load_router(dirs[m.name], map_location=map_location) for m in methods if m.mode == "taro"}


def _check_models_given(methods, args) -> None:
    """Before minutes of model loading: every method has the models it needs."""
    if any(m.mode != "base" for m in methods) and args.reward is None:
        raise CliError("--reward is required for genarm and taro methods")
    for m in methods:
        if m.mode == "taro" and _router_dirs(args)[m.name] is None:
            raise CliError(f"--{'router' if m.name == 'taro' else 'full-router'} is required for the {m.name} method")


def _run_eval(args) -> int:
    import torch

    from ..evaluation.datasets import EVAL_SEED, load_items
    from ..evaluation.harness import markdown_table, parse_methods, run_methods, write_report
    from ..models import load_model

    if args.seed is not None and args.task not in ("arithmetic", "synthetic"):
        raise CliError(f"--seed is for the generated tasks (arithmetic, synthetic); {args.task} reads a file")
    methods = parse_methods(args.methods)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype)
    _check_models_given(methods, args)
    items = load_items(args.task, args.data, args.limit, synthetic_seed=EVAL_SEED if args.seed is None else args.seed)
    base, tokenizer = load_model(args.base, dtype=dtype, device=device)
    reward = load_model(args.reward, dtype=dtype, device=device)[0] if args.reward else None
    routers = _load_routers(methods, args, device)
    results = run_methods(args.task, items, methods, base_model=base, reward_model=reward, router=routers.get("taro"),
                          full_router=routers.get("taro-full"),
                          tokenizer=tokenizer, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                          chat=not args.no_chat, backend=args.backend, stop=args.stop,
                          progress=not args.no_progress)
    results["config"] = {k: v for k, v in vars(args).items() if k != "func"}
    paths = write_report(results, args.out, args.stem, items)
    print(markdown_table(results))
    print("wrote " + ", ".join(paths.values()))
    return 0


def _run_likelihood(args) -> int:
    import json
    import os

    from ..atomic import write_text
    from ..data import read_records
    from ..evaluation import likelihood
    from ..evaluation.datasets import default_path
    from ..evaluation.harness import machine_description, parse_methods
    from ..models import load_model

    methods = parse_methods(args.methods)
    _check_models_given(methods, args)
    base, tokenizer = load_model(args.base)
    reward = load_model(args.reward)[0] if args.reward else None
    routers = _load_routers(methods, args)
    records = read_records(args.data or default_path(args.task))[:args.limit]
    if args.task == "alpaca_eval":
        score, rows = likelihood.alpaca_nll, [{k: r.text(k) for k in ("instruction", "output")} for r in records]
    else:
        score, rows = likelihood.choice_accuracy, [likelihood.choice_record(r) for r in records]
    result = score(base, reward, tokenizer, rows, methods, routers, chat=not args.no_chat,
                   max_length=args.max_length, batch_size=args.batch_size, progress=not args.no_progress)
    result.update(task=args.task, machine=machine_description(),
                  config={k: v for k, v in vars(args).items() if k != "func"})
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, args.stem or f"likelihood_{args.task}")
    table = likelihood.markdown_table(result)
    write_text(stem + ".json", json.dumps(result, indent=1))
    write_text(stem + ".md", table)
    print(table)
    print(f"wrote {stem}.json, {stem}.md")
    return 0
