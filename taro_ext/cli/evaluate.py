"""``taro-ext eval``: base vs GenARM (fixed alphas) vs TARo on an evaluation set."""
from __future__ import annotations

import argparse

from ..evaluation.datasets import EVAL_TASKS
from .args import CliError, device, directory_to_write, positive_int


def add_commands(subparsers) -> None:
    p = subparsers.add_parser(
        "eval", help="evaluate base / GenARM / TARo on a task",
        description="Greedy-decode each item with every method, grade it, and write <out>/<stem>.json "
                    "(per-item results), .md (table) and .png (accuracy, alpha per token class).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--task", required=True, choices=EVAL_TASKS)
    p.add_argument("--methods", default="base,genarm:0.5,genarm:1,genarm:2,taro",
                   help="comma-separated: base, genarm:ALPHA, taro")
    p.add_argument("--limit", type=positive_int, default=None,
                   help="first N items (synthetic: N generated items, default 200)")
    p.add_argument("--data", default=None, help="data file (default: ../shared/data/<the task's file>)")
    p.add_argument("--base", default="smollm2", help="base model: 'smollm2' or a checkpoint directory")
    p.add_argument("--reward", default=None, help="reward model checkpoint directory (genarm and taro)")
    p.add_argument("--router", default=None, help="router directory (taro)")
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


def _run_eval(args) -> int:
    import torch

    from ..evaluation.datasets import load_items
    from ..evaluation.harness import markdown_table, parse_methods, run_methods, write_report
    from ..models import load_model
    from ..router import load_router

    methods = parse_methods(args.methods)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype)
    if any(m.mode != "base" for m in methods) and args.reward is None:
        raise CliError("--reward is required for genarm and taro methods")
    if any(m.mode == "taro" for m in methods) and args.router is None:
        raise CliError("--router is required for the taro method")
    items = load_items(args.task, args.data, args.limit)
    base, tokenizer = load_model(args.base, dtype=dtype, device=device)
    reward = load_model(args.reward, dtype=dtype, device=device)[0] if args.reward else None
    router = load_router(args.router, map_location=device) if args.router else None
    results = run_methods(args.task, items, methods, base_model=base, reward_model=reward, router=router,
                          tokenizer=tokenizer, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                          chat=not args.no_chat, backend=args.backend, stop=args.stop,
                          progress=not args.no_progress)
    results["config"] = {k: v for k, v in vars(args).items() if k != "func"}
    paths = write_report(results, args.out, args.stem, items)
    print(markdown_table(results))
    print("wrote " + ", ".join(paths.values()))
    return 0
