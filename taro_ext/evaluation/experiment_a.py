"""Experiment A: a synthetic routing benchmark where the right reward weight differs by token type.

World: the project's synthetic arithmetic word problems (``data.synthetic_arithmetic``), in a
character-level vocabulary, with tiny Llama models trained from scratch by the project's
own trainers:

- base model (``train_causal_lm``): trained on solutions whose arithmetic results are replaced
  by random numbers (each later mention follows the fake value). It learns the narrative
  (names, items, step wording, the answer line) but nothing about arithmetic.
- reward model: ``train_causal_lm`` on the same problems written as bare equations
  ("5 + 9 = 14"), then ``ArmTrainer`` on step-wise preference pairs (``data.step_pairs``: a
  correct step against the same step with an arithmetic mistake). It knows arithmetic and
  has never seen the narrative steps, so on narrative tokens its log-probs point elsewhere.
- router (``RouterTrainer``): a ``TopKRouter`` trained by NLL of correct solutions under
  ``softmax(lp_b + alpha_t lp_r)``, base and reward frozen.

No fixed alpha suits both token types: narrative wants alpha near 0, results want a large
alpha. Methods compared on held-out problems of the three training templates and on the
held-out "equal shares" template (division; out of distribution: no model saw it):
base (alpha = 0), GenARM over ``alpha_grid`` and TARo (alpha in (0, alpha_max), alpha_max =
the grid's top). Metrics: per-token NLL of the correct solution under each method's decoding
distribution (temperature 1), and the accuracy of greedy decoding (``TaroGenerator``).

Run: ``python -m taro_ext.evaluation.experiment_a --seeds 0 1 2 --jobs 3 --threads 1 --out bench/results``
(``make experiment-a``).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from typing import Optional, Sequence

import torch

OOD_MARKER = " shares "  # the equal-shares template: held out of training, the out-of-distribution test
END = "\n\n"  # every training target ends with a blank line: decoding stops there


@dataclass
class ExperimentAConfig:
    seed: int = 0
    n_train: int = 800  # generated problems; the equal-shares ones are dropped from training
    n_test: int = 100  # held-out problems per test set (in distribution, out of distribution)
    n_decode: int = 30  # of those, decoded greedily for accuracy (0: NLL only)
    max_operand: int = 9
    hidden_size: int = 64
    num_layers: int = 2
    base_steps: int = 150
    reward_sft_steps: int = 150
    arm_steps: int = 30
    router_steps: int = 300
    batch_size: int = 16
    learning_rate: float = 3e-3
    router_learning_rate: float = 1e-2
    arm_beta: float = 0.5
    alpha_grid: tuple = (0.25, 0.5, 1.0, 2.0, 4.0)
    router_k: int = 8
    router_embed_dim: int = 8
    router_hidden: int = 32


# --- the data ---------------------------------------------------------------------------------

def _is_ood(solution) -> bool:
    return OOD_MARKER in solution.question


def split_problems(cfg: ExperimentAConfig):
    """``(train, test_in, test_ood)``: training problems of three templates; held-out problems
    (a question seen in training is never a test item) of those templates and of the fourth."""
    from ..data import synthetic_arithmetic

    train = [s for s in synthetic_arithmetic(cfg.n_train, seed=10_000 + cfg.seed, max_operand=cfg.max_operand)
             if not _is_ood(s)]
    seen = {s.question for s in train}
    pool = [s for s in synthetic_arithmetic(8 * cfg.n_test, seed=20_000 + cfg.seed, max_operand=cfg.max_operand)
            if s.question not in seen]
    test_in = [s for s in pool if not _is_ood(s)][:cfg.n_test]
    test_ood = [s for s in pool if _is_ood(s)][:cfg.n_test]
    return train, test_in, test_ood


def scramble_results(solution, rng: random.Random, high: int) -> str:
    """The solution with every arithmetic result replaced by a random number in [0, high]; a
    later step that reuses a result (as an operand, or in the answer line) uses the fake value."""
    fake: dict[str, str] = {}
    steps = []
    for step in solution.steps:
        lhs, eq, rhs = step.partition("=")
        lhs = re.sub(r"\d+", lambda m: fake.get(m.group(), m.group()), lhs)
        if eq:
            result = re.match(r"\s*(\d+)", rhs)
            if result is not None:
                value = str(rng.randint(0, high))
                fake[result.group(1)] = value
                rhs = rhs[:result.start(1)] + value + rhs[result.end(1):]
        steps.append(lhs + eq + rhs)
    return "\n".join(steps)


def equations_only(solution) -> str:
    """The solution as bare equations plus the answer line: ``5 + 9 = 14\\n14 - 2 = 12\\nThe answer is: 12``."""
    equations = [re.search(r"\d[\d\s+\-*/]*=\s*\d+", s).group() for s in solution.steps if "=" in s]
    return "\n".join(equations + [solution.steps[-1]])


def prompt_of(solution) -> str:
    return solution.question + "\n"


# --- training -----------------------------------------------------------------------------------

def _train_config(cfg: ExperimentAConfig, steps: int, lr: float, seed_offset: int):
    from ..training import TrainConfig

    return TrainConfig(learning_rate=lr, batch_size=cfg.batch_size, micro_batch_size=cfg.batch_size,
                       max_steps=steps, warmup_steps=min(20, steps // 5), seed=cfg.seed * 100 + seed_offset,
                       progress=False, device="cpu")


def train_world(cfg: ExperimentAConfig, train) -> dict:
    """Train the base model, the reward model (SFT then ARM) and the router; returns them with
    the tokenizer, the training logs and the wall time of each stage."""
    from ..data import step_pairs
    from ..router import TopKRouter
    from ..tiny import char_tokenizer, tiny_llama
    from ..training import ArmTrainer, RouterTrainer, train_causal_lm

    tok = char_tokenizer()
    times, logs = {}, {}
    high = 2 * cfg.max_operand * cfg.max_operand
    rng = random.Random(f"scramble:{cfg.seed}")

    start = time.perf_counter()
    base = tiny_llama(len(tok), seed=cfg.seed, tokenizer=tok, hidden_size=cfg.hidden_size, num_layers=cfg.num_layers)
    base_examples = [(prompt_of(s), scramble_results(s, rng, high) + END) for s in train]
    logs["base"] = train_causal_lm(base, tok, base_examples, _train_config(cfg, cfg.base_steps, cfg.learning_rate, 1))
    times["base_sft_s"] = time.perf_counter() - start

    start = time.perf_counter()
    reward = tiny_llama(len(tok), seed=cfg.seed + 1, tokenizer=tok, hidden_size=cfg.hidden_size,
                        num_layers=cfg.num_layers)
    reward_examples = [(prompt_of(s), equations_only(s) + END) for s in train]
    logs["reward_sft"] = train_causal_lm(reward, tok, reward_examples,
                                         _train_config(cfg, cfg.reward_sft_steps, cfg.learning_rate, 2))
    times["reward_sft_s"] = time.perf_counter() - start

    start = time.perf_counter()
    pairs = step_pairs(train, seed=cfg.seed)
    arm = ArmTrainer(reward, tok, pairs, beta=cfg.arm_beta,
                     config=_train_config(cfg, cfg.arm_steps, cfg.learning_rate / 3, 3))
    logs["arm"] = arm.train()
    reward = arm.model.eval()
    times["arm_s"] = time.perf_counter() - start

    start = time.perf_counter()
    router = TopKRouter(len(tok), k=cfg.router_k, embed_dim=cfg.router_embed_dim, hidden=cfg.router_hidden,
                        alpha_max=max(cfg.alpha_grid))
    trainer = RouterTrainer(base, reward, tok, router, [(prompt_of(s), s.text + END) for s in train],
                            config=_train_config(cfg, cfg.router_steps, cfg.router_learning_rate, 4), cache="memory")
    logs["router"] = trainer.train()
    times["router_s"] = time.perf_counter() - start
    return {"tokenizer": tok, "base": base.eval(), "reward": reward, "router": router.eval(), "trainer": trainer,
            "logs": logs, "times": times}


# --- evaluation ---------------------------------------------------------------------------------

def nll_by_method(world: dict, problems, alpha_grid: Sequence[float]) -> dict:
    """Per-token NLL of the correct solutions: ``{"base": .., "genarm:A": .., "taro": ..}`` and
    TARo's alpha statistics by token class."""
    report = world["trainer"].evaluate([(prompt_of(s), s.text + END) for s in problems],
                                       fixed_alphas=(0.0,) + tuple(alpha_grid), batch_size=64)
    nll = {"base": report["nll_fixed"][0.0]}
    nll.update({f"genarm:{a:g}": report["nll_fixed"][float(a)] for a in alpha_grid})
    nll["taro"] = report["nll"]
    return {"nll": nll, "alpha": report["alpha"], "tokens": report["tokens"]}


def accuracy_by_method(world: dict, problems, alpha_grid: Sequence[float]) -> dict:
    """Greedy-decoding accuracy of every method on ``problems`` (``harness.run_methods``)."""
    from .datasets import EvalItem
    from .harness import parse_methods, run_methods

    methods = parse_methods(",".join(["base"] + [f"genarm:{a:g}" for a in alpha_grid] + ["taro"]))
    items = [EvalItem(f"synthetic-{i}", prompt_of(s), s.answer) for i, s in enumerate(problems)]
    longest = max(len(s.text) for s in problems) + len(END) + 16
    results = run_methods("synthetic", items, methods, base_model=world["base"], reward_model=world["reward"],
                          router=world["router"], tokenizer=world["tokenizer"], max_new_tokens=longest,
                          batch_size=len(items), chat=False, backend="torch", stop=[END], progress=False)
    return {name: s["accuracy"] for name, s in results["summary"].items()}


def run_seed(cfg: ExperimentAConfig) -> dict:
    torch.manual_seed(cfg.seed)
    train, test_in, test_ood = split_problems(cfg)
    world = train_world(cfg, train)
    out = {"seed": cfg.seed, "n_train": len(train), "times": world["times"]}
    for name, problems in (("in_distribution", test_in), ("out_of_distribution", test_ood)):
        start = time.perf_counter()
        result = nll_by_method(world, problems, cfg.alpha_grid)
        if cfg.n_decode:
            result["accuracy"] = accuracy_by_method(world, problems[:cfg.n_decode], cfg.alpha_grid)
        result["n"] = len(problems)
        out[name] = result
        out["times"][f"eval_{name}_s"] = time.perf_counter() - start
    return out


def _mean_sd(values):
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise(runs: list[dict]) -> str:
    """Markdown: per test set, each method's NLL and accuracy as mean +- sd over seeds, and the
    best fixed alpha of each seed; then TARo's mean alpha by token class."""
    lines = []
    for split in ("in_distribution", "out_of_distribution"):
        methods = list(runs[0][split]["nll"])
        has_acc = "accuracy" in runs[0][split]
        lines += [f"### {split.replace('_', ' ')} ({runs[0][split]['n']} problems, "
                  f"{runs[0][split]['tokens']} target tokens per seed)", "",
                  "| method | NLL / token (mean ± sd) | " + ("greedy accuracy (mean ± sd) |" if has_acc else ""),
                  "|---|---|" + ("---|" if has_acc else "")]
        for m in methods:
            nll = _mean_sd([r[split]["nll"][m] for r in runs])
            row = f"| {m} | {nll[0]:.4f} ± {nll[1]:.4f} |"
            if has_acc:
                acc = _mean_sd([r[split]["accuracy"][m] for r in runs])
                row += f" {acc[0]:.3f} ± {acc[1]:.3f} |"
            lines.append(row)
        best = []
        for r in runs:
            fixed = {m: v for m, v in r[split]["nll"].items() if m != "taro"}
            name = min(fixed, key=fixed.get)
            best.append(f"seed {r['seed']}: {name} ({fixed[name]:.4f}) vs taro ({r[split]['nll']['taro']:.4f})")
        lines += ["", "Best fixed alpha by NLL: " + "; ".join(best) + ".", ""]
        classes = [c for c in runs[0][split]["alpha"] if c != "all"]
        cells = ", ".join(f"{c} {statistics.mean(r[split]['alpha'][c]['mean'] for r in runs if c in r[split]['alpha']):.3f}"
                          for c in classes)
        lines += [f"TARo's mean alpha by token class (teacher-forced on the correct solutions): {cells}.", ""]
    return "\n".join(lines)


# The config fields the command line can set.
CLI_FIELDS = ("n_train", "n_test", "n_decode", "base_steps", "reward_sft_steps", "arm_steps", "router_steps")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="bench/results", help="writes experiment_a.json and experiment_a.md here")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads per process (default: torch's)")
    parser.add_argument("--jobs", type=int, default=1, help="seeds run in parallel processes")
    for f in CLI_FIELDS:
        parser.add_argument("--" + f.replace("_", "-"), type=int, default=getattr(ExperimentAConfig, f))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    base_cfg = ExperimentAConfig(**{f: getattr(args, f) for f in CLI_FIELDS})
    from .harness import machine_description

    start = time.perf_counter()
    configs = [replace(base_cfg, seed=seed) for seed in args.seeds]
    if args.jobs > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(args.jobs, initializer=torch.set_num_threads, initargs=(args.threads or 1,)) as pool:
            runs = list(pool.map(run_seed, configs))
    else:
        runs = [run_seed(c) for c in configs]
    total = time.perf_counter() - start
    config = asdict(base_cfg)
    config.pop("seed")
    report = {"config": config, "seeds": args.seeds, "runs": runs, "wall_s": total, "machine": machine_description()}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "experiment_a.json"), "w") as f:
        json.dump(report, f, indent=1)
    table = summarise(runs)
    with open(os.path.join(args.out, "experiment_a.md"), "w") as f:
        command = " ".join(["python -m taro_ext.evaluation.experiment_a"] + list(argv if argv is not None else sys.argv[1:]))
        f.write(f"## Experiment A: synthetic routing benchmark\n\nCommand: `{command}`. Seeds {args.seeds}, {total:.0f} s wall on "
                f"{report['machine']['cpu_count']} CPU cores ({report['machine']['platform']}), torch "
                f"{report['machine']['torch']}. Config: `{json.dumps(config)}`.\n\n{table}")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
