"""Turn a pytest-benchmark JSON from ``bench/`` into a markdown table of ratios and a plot.

    python -m taro_ext.benchreport bench/results/cpu.json --out bench/results/cpu.md

Every benchmark of the suite stores in ``extra_info`` its ``label``, the ``baseline`` label
of its group and the ``tokens`` one timed call produces. Per group the report gives tokens/s
and the ratio to the baseline measured in the same run (ratios travel between machines;
absolute times do not), plus, for GPU runs, the fused kernels' achieved read bandwidth as a
fraction of the measured device copy bandwidth. A headline table collects, per group, the
ratios the suite exists for: the fused TARo step against the natural eager PyTorch step and
its ``torch.compile`` version, its time against one exp pass over both rows (the floor), the
fused GenARM step against natural GenARM and its time against one read of both rows, TARo
against GenARM through the same backend, and the full-logits router against the fused top-K one.

The plot (``--plot``, default: the output path with ``.png``) shows each group's ratios as bars.
"""
from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import dataclass
from typing import Optional

STATS = ("min", "median", "mean")
# Row labels of bench/test_bench_step.py that the headline compares.
NATURAL = "taro natural (torch eager)"
COMPILED = "taro natural (torch.compile)"
GENARM_NATURAL = "genarm natural (torch eager)"
FLOOR_READ = "floor: read both rows"
FLOOR_EXP = "floor: exp both rows"


@dataclass
class Row:
    label: str
    seconds: float  # per timed call, the chosen statistic
    rounds: int
    tokens: int
    bytes_read: Optional[int]
    bytes_moved: Optional[int]
    paired: Optional[dict] = None  # alternating-calls ratio: {"ratio", "min", "max", "pairs"}
    step_share: Optional[float] = None  # fraction of a generate call's forward + step time in the step

    @property
    def tokens_per_s(self) -> Optional[float]:
        return self.tokens / self.seconds if self.tokens else None


@dataclass
class Group:
    name: str
    baseline: str
    rows: list

    def row(self, label: str) -> Optional[Row]:
        return next((r for r in self.rows if r.label == label), None)

    def ratio(self, label: str, against: str) -> Optional[float]:
        """tokens/s of ``label`` over tokens/s of ``against`` (> 1: ``label`` is faster)."""
        a, b = self.row(label), self.row(against)
        if a is None or b is None or not a.tokens_per_s or not b.tokens_per_s:
            return None
        return a.tokens_per_s / b.tokens_per_s


def load_groups(data: dict, stat: str = "min") -> list:
    if stat not in STATS:
        raise ValueError(f"stat must be one of {STATS}, got {stat!r}")
    groups: dict = {}
    for bench in data.get("benchmarks", []):
        info = bench.get("extra_info", {})
        if "label" not in info:
            raise ValueError(f"benchmark {bench.get('fullname')!r} has no extra_info['label']: "
                             f"was it produced by taro_ext's bench/ suite?")
        name = bench.get("group") or "(no group)"
        group = groups.setdefault(name, Group(name, info.get("baseline", info["label"]), []))
        paired = ({"ratio": info["paired_ratio"], "min": info["paired_min"], "max": info["paired_max"],
                   "pairs": info["pairs"]} if "paired_ratio" in info else None)
        group.rows.append(Row(info["label"], float(bench["stats"][stat]), int(bench["stats"]["rounds"]),
                              int(info.get("tokens", 0)), info.get("bytes_read"), info.get("bytes_moved"), paired,
                              info.get("step_share")))
    return list(groups.values())


def copy_bandwidth(groups) -> Optional[float]:
    """Bytes/s of the device copy benchmark (read + write), when the run has one."""
    for g in groups:
        for r in g.rows:
            if r.bytes_moved:
                return r.bytes_moved / r.seconds
    return None


def _fmt_time(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} us"


def _fmt_ratio(r: Optional[float]) -> str:
    if r is None:
        return "-"
    return f"{r:.3g}x" if r < 100 else f"{r:.0f}x"


def _fused_backend(group: Group, prefix: str) -> Optional[str]:
    """The first ``<prefix> <backend>`` row's backend (e.g. "taro fused cpu" -> "cpu")."""
    for r in group.rows:
        if r.label.startswith(prefix + " "):
            return r.label[len(prefix) + 1:]
    return None


def headline(group: Group) -> dict:
    """The suite's questions for one group, as tokens/s ratios (None where not measured)."""
    backend = _fused_backend(group, "taro fused")
    fused = f"taro fused {backend}" if backend else None
    genarm = f"genarm fused {backend}" if backend else None
    paired = next((r.paired for r in group.rows if r.paired), None)
    return {
        # Speed-ups (tokens/s over tokens/s: > 1 is faster) ...
        "TARo fused / natural": group.ratio(fused, NATURAL) if fused else None,
        "TARo fused / compiled": group.ratio(fused, COMPILED) if fused else None,
        "GenARM fused / natural": group.ratio(genarm, GENARM_NATURAL) if genarm else None,
        # ... and costs (time over the floor's time: 1 is the floor).
        "TARo fused time / exp floor": group.ratio(FLOOR_EXP, fused) if fused else None,
        "GenARM fused time / read floor": group.ratio(FLOOR_READ, genarm) if genarm else None,
        "TARo / GenARM (same backend)": group.ratio(fused, genarm) if fused else None,
        "TARo / GenARM (alternating calls)": paired["ratio"] if paired else None,
        "full-logits / top-K fused": group.ratio("taro full-logits (torch)", fused) if fused else None,
        "backend": backend,
    }


def render(data: dict, stat: str = "min", plot_name: Optional[str] = None) -> str:
    groups = load_groups(data, stat)
    machine = data.get("machine_info", {})
    lines = ["# taro_ext benchmarks", ""]
    cpu = machine.get("cpu_model") or machine.get("cpu", {}).get("brand_raw", "unknown")
    lines.append(f"- machine: {cpu}, {machine.get('cpu_count', '?')} cores"
                 + (f", GPU {machine['gpu']}" if machine.get("gpu") else ", no GPU"))
    lines.append(f"- software: Python {machine.get('python_version', '?')}, torch {machine.get('torch', '?')} "
                 f"({machine.get('torch_threads', '?')} threads)")
    if machine.get("note"):
        lines.append(f"- note: {machine['note']}")
    if data.get("command"):
        lines.append(f"- command: `{data['command']}`")
    if data.get("uptime_end"):
        lines.append(f"- machine load at the end (`uptime`): {data['uptime_end']}")
    lines.append(f"- date: {data.get('datetime', '?')}")
    commit = data.get("commit_info", {})
    if commit.get("id"):
        lines.append(f"- commit: {commit['id'][:12]}{' (dirty tree)' if commit.get('dirty') else ''}")
    lines.append(f"- statistic: the {stat} time per call over each benchmark's rounds; tokens/s = tokens "
                 f"per call / that time; ratios are tokens/s over the group's baseline, measured in the "
                 f"same run (> 1: faster than the baseline).")
    lines.append("")

    heads = [(g, headline(g)) for g in groups]
    heads = [(g, h) for g, h in heads if any(v is not None for k, v in h.items() if k != "backend")]
    if heads:
        cols = [k for k in heads[0][1] if k != "backend"]
        lines += ["## Headline ratios", "", "| group | backend | " + " | ".join(cols) + " |",
                  "|---|---|" + "---|" * len(cols)]
        for g, h in heads:
            lines.append(f"| {g.name} | {h['backend']} | " + " | ".join(_fmt_ratio(h[c]) for c in cols) + " |")
        lines += ["", "TARo fused / natural, / compiled: tokens/s of the fused top-K step over the eager PyTorch "
                  "step a user writes (log_softmax, torch.topk, the router MLP, the pick) and over its "
                  "torch.compile version. GenARM fused / natural: the same for GenARM "
                  "((log_softmax(b) + a log_softmax(r)), the pick). Time / floor: the fused step's time over "
                  "one torch.exp of both rows (TARo) or one sum of both rows (GenARM), measured in the same "
                  "run (1 is the floor). TARo / GenARM: the fused top-K TARo over GenARM through the same fused backend "
                  "(same models), from separate benchmarks and from calls alternating between the two "
                  "(median over pairs; robust to load from other processes). full-logits / top-K fused: "
                  "the paper's full-logits router (PyTorch) over the fused top-K step (< 1: slower).", ""]

    copy_bw = copy_bandwidth(groups)
    if copy_bw:
        lines += [f"Device copy bandwidth (the roofline): {copy_bw / 1e9:.0f} GB/s (read + write).", ""]
    for g in groups:
        if all(not r.tokens for r in g.rows):
            continue
        base = g.row(g.baseline)
        show_bw = any(r.bytes_read for r in g.rows)
        show_share = any(r.step_share is not None for r in g.rows)
        lines += [f"## {g.name}", "", f"Baseline: {g.baseline}" + ("" if base else " (not measured in this run)"),
                  ""]
        header = "| | time / call | rounds | tokens/s | vs baseline |"
        sep = "|---|---|---|---|---|"
        if show_bw:
            header += " read GB/s | of copy roofline |"
            sep += "---|---|"
        if show_share:
            header += " step share |"
            sep += "---|"
        lines += [header, sep]
        for r in g.rows:
            if r.paired:
                continue
            cells = [r.label, _fmt_time(r.seconds), str(r.rounds),
                     f"{r.tokens_per_s:,.1f}" if r.tokens_per_s else "-", _fmt_ratio(g.ratio(r.label, g.baseline))]
            if show_bw:
                if r.bytes_read:
                    bw = r.bytes_read / r.seconds
                    cells += [f"{bw / 1e9:.0f}", f"{bw / copy_bw:.0%}" if copy_bw else "-"]
                else:
                    cells += ["-", "-"]
            if show_share:
                cells.append("-" if r.step_share is None else f"{r.step_share:.1%}")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        for r in g.rows:
            if r.paired:
                p = r.paired
                lines += [f"{r.label}: TARo / GenARM tokens/s = {_fmt_ratio(p['ratio'])} (median of {p['pairs']} "
                          f"back-to-back pairs; range {_fmt_ratio(p['min'])} to {_fmt_ratio(p['max'])}).", ""]
    if plot_name:
        lines += [f"![ratios against each group's baseline]({plot_name})", ""]
    return "\n".join(lines)


def plot(data: dict, path: str, stat: str = "min") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [g for g in load_groups(data, stat) if g.row(g.baseline) and any(r.tokens for r in g.rows)]
    if not groups:
        return
    cols = 2 if len(groups) > 1 else 1
    nrows = math.ceil(len(groups) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(7 * cols, 0.45 * max(len(g.rows) for g in groups) * nrows + 1.2 * nrows),
                             squeeze=False)
    for ax, g in zip(axes.flat, groups):
        rows = [r for r in g.rows if r.tokens]
        ratios = [g.ratio(r.label, g.baseline) for r in rows]
        colors = ["tab:gray" if r.label == g.baseline else "tab:blue" for r in rows]
        ax.barh([r.label for r in rows], ratios, color=colors)
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_xscale("log")
        ax.invert_yaxis()
        ax.set_title(g.name, fontsize=9)
        ax.set_xlabel(f"tokens/s vs {g.baseline}")
        ax.tick_params(axis="y", labelsize=8)
        for y, v in enumerate(ratios):
            ax.text(v, y, f" {_fmt_ratio(v)}", va="center", fontsize=7)
    for ax in list(axes.flat)[len(groups):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m taro_ext.benchreport", description=__doc__.split("\n\n")[0])
    parser.add_argument("json", help="pytest-benchmark JSON written by `pytest bench --benchmark-json ...`")
    parser.add_argument("--out", required=True, help="markdown file to write")
    parser.add_argument("--plot", default=None, help="PNG to write (default: --out with .png); 'none' to skip")
    parser.add_argument("--stat", default="min", choices=STATS,
                        help="per-benchmark statistic (default min: the least disturbed by other load)")
    args = parser.parse_args(argv)
    with open(args.json) as f:
        data = json.load(f)
    plot_path = None if args.plot == "none" else (args.plot or os.path.splitext(args.out)[0] + ".png")
    plot_name = os.path.relpath(plot_path, os.path.dirname(os.path.abspath(args.out)) or ".") if plot_path else None
    text = render(data, args.stat, plot_name)
    with open(args.out, "w") as f:
        f.write(text)
    if plot_path:
        plot(data, plot_path, args.stat)
    print(f"wrote {args.out}" + (f" and {plot_path}" if plot_path else ""))


if __name__ == "__main__":
    main()
