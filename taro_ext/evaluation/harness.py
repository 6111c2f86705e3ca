"""Run decoding methods over evaluation items and report: per-item JSON, a markdown table, a plot.

A method is ``base`` (the base model alone), ``genarm:ALPHA`` (GenARM: one fixed alpha),
``taro`` (the learned top-K router's per-token alpha) or ``taro-full`` (the full-logits router,
the paper's expensive baseline, through the same engine). Every method decodes greedily through the
same ``TaroGenerator`` with the same prompts, so the methods differ only in how the reward
model's log-probs are weighted. For TARo the harness keeps each generated token's alpha and
its class (digit, operator, whitespace, letter, other; ``training.router_training.token_class``)
to show where the router leans on the reward model.
"""
from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass
from typing import Optional, Sequence

from ..atomic import write_text
from ..reference import MAX_ALPHA
from ..training.router_training import TOKEN_CLASSES, token_class
from .datasets import EvalItem, write_alpaca_eval_outputs
from .graders import grade
from .stats import accuracy_interval

@dataclass(frozen=True)
class Method:
    name: str  # as written on the command line: "base", "genarm:0.5", "taro"
    mode: str  # TaroGenerator mode: "base", "genarm", "taro"
    alpha: Optional[float] = None  # GenARM's fixed alpha


def parse_methods(spec: str) -> list[Method]:
    """``"base,genarm:0.5,genarm:1,taro"`` -> methods, in order, without duplicates."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"methods must be a comma-separated list like 'base,genarm:1,taro', got {spec!r}")
    methods, seen = [], set()
    for raw in spec.split(","):
        name = raw.strip()
        if name in ("base", "taro"):
            method = Method(name, name)
        elif name == "taro-full":
            method = Method(name, "taro")
        elif name.startswith("genarm:"):
            try:
                alpha = float(name.split(":", 1)[1])
            except ValueError:
                raise ValueError(f"methods: {name!r} needs a number after 'genarm:'") from None
            if not (0 <= alpha <= MAX_ALPHA):
                raise ValueError(f"methods: {name!r}: alpha must lie in [0, {MAX_ALPHA:g}] (README, spec choice 10)")
            method = Method(name, "genarm", alpha)
        else:
            raise ValueError(f"methods: unknown method {name!r} (base, genarm:ALPHA, taro, taro-full)")
        if name in seen:
            raise ValueError(f"methods: {name!r} is listed twice")
        seen.add(name)
        methods.append(method)
    return methods


def machine_description() -> dict:
    import torch

    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def run_methods(task: str, items: Sequence[EvalItem], methods: Sequence[Method], *, base_model, reward_model,
                router, tokenizer, max_new_tokens: int = 256, batch_size: int = 8, chat: bool = True,
                backend: str = "auto", stop: Optional[Sequence[str]] = None, progress: bool = True,
                full_router=None) -> dict:
    """Decode every item with every method and grade it; returns the results dict that
    ``write_report`` writes (``summary`` per method and one record per item and method).
    ``router`` serves the ``taro`` method, ``full_router`` (a ``FullLogitsRouter``) ``taro-full``."""
    from ..generation import TaroGenerator

    if not items:
        raise ValueError("items is empty")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    needs_reward = any(m.mode != "base" for m in methods)
    if needs_reward and reward_model is None:
        raise ValueError("reward_model is required for genarm and taro methods")
    routers = {"taro": router, "taro-full": full_router}
    for m in methods:
        if m.mode == "taro" and routers[m.name] is None:
            raise ValueError(f"{'router' if m.name == 'taro' else 'full_router'} is required for the {m.name} method")
    graded = task != "alpaca_eval"
    records, summary = [], {}
    # Batches of similar prompt length waste little compute on left padding; records keep item order.
    by_length = sorted(range(len(items)), key=lambda i: len(items[i].prompt))
    for method in methods:
        generator = TaroGenerator(base_model, reward_model if method.mode != "base" else None,
                                  routers[method.name] if method.mode == "taro" else None, tokenizer, mode=method.mode,
                                  alpha=method.alpha if method.alpha is not None else 1.0, backend=backend)
        start = time.perf_counter()
        n_tokens, by_item = 0, {}
        batches = range(0, len(items), batch_size)
        if progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc=f"{task} {method.name}", dynamic_ncols=True)
        for b in batches:
            chunk = by_length[b:b + batch_size]
            out = generator.generate([items[i].prompt for i in chunk], max_new_tokens=max_new_tokens,
                                     temperature=0.0, stop=list(stop) if stop else None, chat=chat)
            for i, text, ids, alphas in zip(chunk, out.texts, out.token_ids, out.alphas):
                it = items[i]
                n_tokens += len(ids)
                record = {"id": it.id, "method": method.name, "output": text, "n_tokens": len(ids)}
                if it.meta and "level" in it.meta:
                    record["level"] = it.meta["level"]
                if graded:
                    record["gold"] = it.gold
                    record["correct"] = bool(grade(task, text, it.gold))
                if method.mode == "taro":
                    record["alphas"] = [round(float(a), 5) for a in alphas]
                    record["token_classes"] = [token_class(tokenizer.decode([t])) for t in ids]
                by_item[i] = record
        seconds = time.perf_counter() - start
        method_records = [by_item[i] for i in range(len(items))]
        records += method_records
        summary[method.name] = _summarise(method, method_records, seconds, n_tokens)
        if task == "alpaca_eval":
            summary[method.name]["outputs"] = [r["output"] for r in method_records]
    return {"task": task, "n_items": len(items), "methods": [m.name for m in methods], "summary": summary,
            "items": records, "machine": machine_description()}


def _summarise(method: Method, records: list[dict], seconds: float, n_tokens: int) -> dict:
    out = {"n": len(records), "seconds": round(seconds, 2), "generated_tokens": n_tokens,
           "tokens_per_s": round(n_tokens / seconds, 2) if seconds > 0 else None}
    if records and "correct" in records[0]:
        correct = sum(r["correct"] for r in records)
        out.update(correct=correct, accuracy=correct / len(records),
                   ci95=accuracy_interval([r["correct"] for r in records]))
        levels = sorted({r["level"] for r in records if "level" in r})
        if levels:
            out["accuracy_by_level"] = {str(lv): sum(r["correct"] for r in records if r.get("level") == lv)
                                        / sum(1 for r in records if r.get("level") == lv) for lv in levels}
    if method.mode == "genarm":
        out["mean_alpha"] = method.alpha
    elif method.mode == "taro":
        alphas = [a for r in records for a in r["alphas"]]
        out["mean_alpha"] = sum(alphas) / len(alphas) if alphas else None
        by_class = {}
        for cls in TOKEN_CLASSES:
            values = [a for r in records for a, c in zip(r["alphas"], r["token_classes"]) if c == cls]
            if values:
                by_class[cls] = {"count": len(values), "mean": sum(values) / len(values)}
        out["alpha_by_class"] = by_class
    elif method.mode == "base":
        out["mean_alpha"] = 0.0
    return out


def markdown_table(results: dict) -> str:
    """One row per method: accuracy with its 95% interval, mean alpha, speed."""
    lines = [f"Task `{results['task']}`, {results['n_items']} items, greedy decoding.", "",
             "| method | accuracy | 95% CI | correct / n | mean alpha | tokens/s | seconds |",
             "|---|---|---|---|---|---|---|"]
    for name in results["methods"]:
        s = results["summary"][name]
        alpha = "" if s.get("mean_alpha") is None else f"{s['mean_alpha']:.3f}"
        if "accuracy" in s:
            acc, ci, frac = f"{s['accuracy']:.3f}", f"[{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}]", f"{s['correct']} / {s['n']}"
        else:
            acc, ci, frac = "(judge)", "", f"- / {s['n']}"
        lines.append(f"| {name} | {acc} | {ci} | {frac} | {alpha} | {s['tokens_per_s']} | {s['seconds']} |")
    for name in results["methods"]:
        by_class = results["summary"][name].get("alpha_by_class")
        if by_class:
            cells = ", ".join(f"{c} {v['mean']:.3f} (n={v['count']})" for c, v in by_class.items())
            lines += ["", f"Mean alpha of `{name}` by token class: {cells}."]
    return "\n".join(lines) + "\n"


def plot(results: dict, path: str) -> None:
    """Accuracy per method (with 95% intervals) and, for TARo, alpha per token class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = results["methods"]
    taro_names = [n for n in names if "alpha_by_class" in results["summary"][n]]
    fig, axes = plt.subplots(1, 1 + len(taro_names), figsize=(5 + 4 * len(taro_names), 4), squeeze=False)
    ax = axes[0, 0]
    summary = results["summary"]
    if all("accuracy" in summary[n] for n in names):
        acc = [summary[n]["accuracy"] for n in names]
        err = [[a - summary[n]["ci95"][0] for a, n in zip(acc, names)],
               [summary[n]["ci95"][1] - a for a, n in zip(acc, names)]]
        ax.bar(names, acc, yerr=err, capsize=4, color="tab:blue")
        ax.set_ylabel("accuracy (95% CI)")
        ax.set_ylim(0, 1)
    ax.set_title(f"{results['task']} (n={results['n_items']})")
    ax.tick_params(axis="x", rotation=30)
    for col, name in enumerate(taro_names, start=1):
        ax = axes[0, col]
        per_class = {c: [a for r in results["items"] if r["method"] == name
                         for a, k in zip(r["alphas"], r["token_classes"]) if k == c] for c in TOKEN_CLASSES}
        present = [c for c in TOKEN_CLASSES if per_class[c]]
        if present:
            ax.boxplot([per_class[c] for c in present], showfliers=False)
            ax.set_xticks(range(1, len(present) + 1), [f"{c}\n(n={len(per_class[c])})" for c in present])
        ax.set_ylabel("alpha per token")
        ax.set_title(f"{name}: alpha by token class")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(results: dict, out_dir: str, stem: Optional[str] = None, items: Optional[Sequence[EvalItem]] = None) -> dict:
    """Write ``<stem>.json``, ``<stem>.md`` and ``<stem>.png`` under ``out_dir`` (for AlpacaEval,
    one ``model_outputs`` file per method instead of accuracies); returns the paths."""
    os.makedirs(out_dir, exist_ok=True)
    stem = stem or f"eval_{results['task']}"
    paths = {"json": os.path.join(out_dir, f"{stem}.json"), "markdown": os.path.join(out_dir, f"{stem}.md"),
             "plot": os.path.join(out_dir, f"{stem}.png")}
    if results["task"] == "alpaca_eval":
        if items is None:
            raise ValueError("items is required to write AlpacaEval outputs")
        for name in results["methods"]:
            path = os.path.join(out_dir, f"{stem}_{name.replace(':', '_')}_model_outputs.json")
            write_alpaca_eval_outputs(list(items), results["summary"][name].pop("outputs"), f"taro_ext-{name}", path)
            paths[f"alpaca_eval:{name}"] = path
    write_text(paths["json"], json.dumps(results, indent=1, ensure_ascii=False))
    write_text(paths["markdown"], markdown_table(results))
    plot(results, paths["plot"])
    return paths
