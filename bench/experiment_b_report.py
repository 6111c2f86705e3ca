"""Experiment B's summary: reads the per-part JSON files that ``bench/experiment_b.sh`` writes
and prints one markdown report (in-domain accuracy with paired bootstrap intervals against the
base and the best fixed alpha, the out-of-domain checks, the alpha partition, speed).

    python bench/experiment_b_report.py bench/results/experiment_b > bench/results/experiment_b.md
"""
from __future__ import annotations

import json
import os
import sys

from taro_ext.evaluation.stats import paired_difference_interval
from taro_ext.training import recipe_data


# The later routers' files, in order: "_round2" holds the round-2 router's rows, and so on; "_full" the
# full-logits router retrained with round 3's data (eighth session); "_whole" the likelihood parts rerun
# on whole texts (tenth session: before, --max-length 384 cut long AlpacaEval outputs to their first 383
# tokens and dropped their instruction, and cut 9 MedQA stems).
# "_round8": the round-8 router (twelfth session), scored on whole texts like "_whole".
ROUNDS = ("_round2", "_round3", "_full", "_whole", "_round8")
ROUND_NOTES = {"_full": "the retrained full-logits router, with GenARM 8 and the round-3 router rerun",
               "_whole": "whole texts, nothing cut; supersedes the tables above, which scored cut texts",
               "_round8": "the round-8 router, shipped now; whole texts, the base rerun"}
# Fixed alphas added after the first run, in-domain only ("_genarm8": alpha 8, eighth session).
ADDED_FIXED = ("_genarm8",)
# The confirmation set's generator seed (thirteenth session): no recipe, development or test command draws from it.
CONFIRM_SEED = 2026


def _load(directory: str, stem: str):
    path = os.path.join(directory, f"{stem}.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _correct(results: dict, method: str) -> list[bool]:
    return [r["correct"] for r in results["items"] if r["method"] == method]


def generation_section(results: list[dict], title: str) -> list[str]:
    """One table over the methods of several runs on the same items (e.g. split across calls)."""
    summary = {m: r["summary"][m] for r in results for m in r["methods"]}
    correct = {m: _correct(r, m) for r in results for m in r["methods"]}
    n = results[0]["n_items"]
    levels = sorted({lv for s in summary.values() for lv in s.get("accuracy_by_level", {})})
    lines = [f"### {title} ({n} items, greedy)", "",
             "| method | accuracy | 95% CI | " + "".join(f"level {lv} | " for lv in levels)
             + "mean alpha | tokens/s |", "|---" * (5 + len(levels)) + "|"]
    for m, s in summary.items():
        alpha = "" if s.get("mean_alpha") is None else f"{s['mean_alpha']:.3f}"
        lines.append(f"| {m} | {s['accuracy']:.3f} | [{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}] | "
                     + "".join(f"{s['accuracy_by_level'][lv]:.2f} | " for lv in levels)
                     + f"{alpha} | {s['tokens_per_s']} |")
    fixed = [m for m in summary if m.startswith("genarm:")]
    if "base" in correct and fixed:
        top = max(summary[m]["accuracy"] for m in fixed)
        best = [m for m in fixed if summary[m]["accuracy"] == top]  # every fixed alpha tied for the best
        lines += ["", f"Best fixed alpha here: {', '.join(f'`{m}`' for m in best)}. Paired differences (95% bootstrap "
                  "over items) against the base and every fixed alpha:", ""]
        for m in [x for x in summary if x.startswith("taro")]:
            for ref in ["base"] + fixed:
                low, high = paired_difference_interval(correct[m], correct[ref])
                diff = summary[m]["accuracy"] - summary[ref]["accuracy"]
                lines.append(f"- `{m}` - `{ref}`: {100 * diff:+.1f} points [{100 * low:+.1f}, {100 * high:+.1f}]")
    for m, s in summary.items():
        if s.get("alpha_by_class"):
            cells = ", ".join(f"{c} {v['mean']:.3f} (n={v['count']})" for c, v in s["alpha_by_class"].items())
            lines += ["", f"Mean alpha of `{m}` on its generated tokens, by class: {cells}."]
    return lines + [""]


# The problems the shipped models were trained on (bench/smollm2_recipe.sh): generator seed -> how many
# problems were drawn (SFT solutions; the problems the step pairs came from, all drawn; the router's
# arithmetic rows; the corrections of rounds 1 and 3, the latter drawn with --seed 5). The seeds are
# recipe_data's; the counts the recipe script's flags (preference_pairs draws two problems per pair).
TRAINING_DRAWS = {recipe_data.SFT_SEED: 800, recipe_data.PAIR_SEED: 2 * 1600, recipe_data.ROUTER_SEED: 240,
                  recipe_data.CORRECTION_SEED: 400, 5: 800}


def overlap_section(results: list[dict], seed: int = 1234) -> list[str]:
    """The held-out check: the test problems whose question is word for word a training question (the
    generator's templates are small enough to repeat across seeds), and the paired differences of the
    TARo rows without them."""
    from taro_ext import arithmetic

    train = {s.question for sd, n in TRAINING_DRAWS.items() for _, s in arithmetic.graded_problems(n, sd)}
    n = results[0]["n_items"]
    seen = {f"arithmetic-{i}" for i, (_, s) in enumerate(arithmetic.graded_problems(n, seed)) if s.question in train}
    correct = {m: {r["id"]: r["correct"] for r in res["items"] if r["method"] == m}
               for res in results for m in res["methods"]}
    ids = [k for k in correct["base"] if k not in seen]
    lines = [f"Held-out check: {len(seen)} of the {n} questions here are word for word questions the recipe trained "
             f"on ({', '.join(sorted(seen, key=lambda k: int(k.split('-')[1])))}; seeds and counts: "
             f"{TRAINING_DRAWS}). Without them ({len(ids)} items):", ""]
    fixed = [m for m in correct if m.startswith("genarm:")]
    top = max(sum(correct[m][k] for k in ids) for m in fixed)
    best = [m for m in fixed if sum(correct[m][k] for k in ids) == top]
    for m in [x for x in correct if x.startswith("taro")]:
        for ref in ["base"] + best:
            a, b = [correct[m][k] for k in ids], [correct[ref][k] for k in ids]
            low, high = paired_difference_interval(a, b)
            lines.append(f"- `{m}` {100 * sum(a) / len(ids):.1f}% - `{ref}` {100 * sum(b) / len(ids):.1f}%: "
                         f"{100 * (sum(a) - sum(b)) / len(ids):+.1f} points [{100 * low:+.1f}, {100 * high:+.1f}]")
    return lines + [""]


def likelihood_section(result: dict, note: str = "") -> list[str]:
    from taro_ext.evaluation.likelihood import markdown_table

    return ["### " + ("AlpacaEval reference outputs, per-token NLL" if result["task"] == "alpaca_eval"
                      else f"{result['task']} by option log-likelihood") + note, "", markdown_table(result)]


def in_domain_section(directory: str, stems: tuple, title: str, seed: int | None = None,
                      reward_stem: str | None = None) -> list[str]:
    """One generated-answer table over the files ``stems`` (a method of a later file replaces the
    same-named method of an earlier one), the held-out check for the arithmetic sets (``seed``: the
    generator seed of their problems) and the reward model decoding alone."""
    runs = [(stem, r) for stem in stems if (r := _load(directory, stem))]
    if not runs:
        return []
    lines = generation_section([r for _, r in runs], title)
    if len(runs) > 1:
        lines += ["Rows from " + "; ".join(f"`{stem}.json` ({', '.join(r['methods'])})" for stem, r in runs)
                  + "; a method in a later file replaces the same method of an earlier one.", ""]
    if seed is not None:
        lines += overlap_section([r for _, r in runs], seed)
    reward = reward_stem and _load(directory, reward_stem)
    if reward:
        s = reward["summary"]["base"]
        lines += [f"The reward model decoding alone (greedy, as a base): accuracy {s['accuracy']:.3f} "
                  f"[{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}], by level "
                  + ", ".join(f"{lv}: {a:.2f}" for lv, a in s.get("accuracy_by_level", {}).items()) + ".", ""]
    return lines


def main(directory: str) -> str:
    # The routers' rows are rerun when a router is retrained (arithmetic_router: taro and any fixed
    # alpha added with it; arithmetic_roundN: the round-N router); a method of a later file replaces
    # the same-named method of an earlier one (arithmetic: base and GenARM).
    lines = in_domain_section(directory, ("arithmetic", "arithmetic_router")
                              + tuple(f"arithmetic{s}" for s in ADDED_FIXED + ROUNDS),
                              "In domain: graded arithmetic word problems (held-out seed 1234)", 1234,
                              "arithmetic_reward_model")
    # The confirmation set (thirteenth session): the shipped models once on 1,000 problems of a seed
    # nothing had drawn from, by a rule written before (experiment_b_router_attempts.md).
    lines += in_domain_section(directory, (f"confirm_seed{CONFIRM_SEED}",),
                               f"Confirmation: fresh problems of seed {CONFIRM_SEED}, the shipped models decoded once",
                               CONFIRM_SEED, f"confirm_seed{CONFIRM_SEED}_reward_model")
    lines += in_domain_section(directory, ("gsm8k", "gsm8k_round8"), "The hard set: GSM8K test")
    for task in ("alpaca_eval", "medqa"):
        later = [(f"{task}{s}", f" ({ROUND_NOTES.get(s, s[1:].replace('round', 'round-') + ' router')})")
                 for s in ROUNDS]
        for stem, note in [(task, "")] + later:
            result = _load(directory, stem)
            if result:
                lines += likelihood_section(result, note)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python bench/experiment_b_report.py RESULTS_DIR")
    sys.stdout.write(main(sys.argv[1]))
