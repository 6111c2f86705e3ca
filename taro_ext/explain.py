"""An HTML page that shows generated text with each token shaded by its router alpha.

White is alpha = 0 (the base model alone decides), deep blue is alpha = ``alpha_max`` (the
reward model weighs most). Hovering a token shows its id and alpha. The paper's observation
to look for: the router leans on the reward model for operators and step scaffolding, on the
base model for context words.
"""
from __future__ import annotations

import html
from typing import Optional, Sequence

from .generation import GenerationOutput
from .training.router_training import TOKEN_CLASSES, token_class

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px; max-width: 960px; color: #111; }
h1 { font-size: 20px; } h2 { font-size: 15px; margin: 22px 0 6px; color: #333; }
.meta { color: #555; font-size: 13px; }
.prompt { background: #f3f3f3; padding: 8px 10px; border-radius: 4px; white-space: pre-wrap; font-size: 14px; }
.text { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 15px; line-height: 1.9;
        white-space: pre-wrap; border: 1px solid #ddd; padding: 10px; border-radius: 4px; }
.tok { border-radius: 2px; padding: 1px 0; }
.legend { display: flex; align-items: center; gap: 8px; font-size: 13px; margin: 10px 0; }
.bar { width: 240px; height: 14px; border: 1px solid #bbb;
       background: linear-gradient(to right, rgb(255,255,255), rgb(37,99,235)); }
table.classes { border-collapse: collapse; font-size: 13px; margin: 8px 0 4px; }
table.classes td, table.classes th { border: 1px solid #ddd; padding: 3px 10px; text-align: right; }
table.classes th:first-child, table.classes td:first-child { text-align: left; }
.cbar { display: inline-block; height: 10px; background: rgb(37,99,235); vertical-align: middle; }
"""


def alpha_by_class(output: GenerationOutput, tokenizer) -> dict[str, list[float]]:
    """The alphas of every generated token, grouped by the token's class (digit, operator,
    whitespace, letter, other), classes in ``TOKEN_CLASSES`` order, empty classes left out."""
    groups: dict[str, list[float]] = {c: [] for c in TOKEN_CLASSES}
    for ids, alphas in zip(output.token_ids, output.alphas):
        for token_id, alpha in zip(ids, alphas):
            groups[token_class(tokenizer.decode([token_id]))].append(alpha)
    return {c: v for c, v in groups.items() if v}


def _shade(alpha: float, alpha_max: float) -> tuple[str, str]:
    """Background colour from white (alpha 0) to blue (alpha_max), and a readable text colour."""
    t = 0.0 if alpha_max <= 0 else min(max(alpha / alpha_max, 0.0), 1.0)
    rgb = [round(255 + t * (c - 255)) for c in (37, 99, 235)]
    return f"rgb({rgb[0]},{rgb[1]},{rgb[2]})", ("#fff" if t > 0.55 else "#111")


def render_html(output: GenerationOutput, tokenizer, prompts: Sequence[str], *, alpha_max: Optional[float] = None,
                title: str = "TARo: per-token alpha", description: str = "") -> str:
    """The page for every row of ``output``; ``alpha_max`` defaults to the largest alpha seen."""
    if len(prompts) != len(output.token_ids):
        raise ValueError(f"got {len(prompts)} prompts for {len(output.token_ids)} generated rows")
    seen = [a for row in output.alphas for a in row]
    scale = alpha_max if alpha_max is not None else max(seen, default=1.0)
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    if description:
        parts.append(f"<p class='meta'>{html.escape(description)}</p>")
    parts.append(f"<div class='legend'><span>alpha 0 (base)</span><span class='bar'></span>"
                 f"<span>alpha {scale:.2f} (reward)</span></div>")
    # Where the router listens: mean alpha per token class over every generated token.
    parts.append("<table class='classes'><tr><th>token class</th><th>tokens</th><th>mean alpha</th><th></th></tr>")
    for cls, values in alpha_by_class(output, tokenizer).items():
        mean = sum(values) / len(values)
        width = 0 if scale <= 0 else round(160 * min(mean / scale, 1.0))
        parts.append(f"<tr><td>{cls}</td><td>{len(values)}</td><td>{mean:.3f}</td>"
                     f"<td style='text-align:left'><span class='cbar' style='width:{width}px'></span></td></tr>")
    parts.append("</table>")
    for n, (prompt, ids, alphas) in enumerate(zip(prompts, output.token_ids, output.alphas)):
        mean = sum(alphas) / len(alphas) if alphas else 0.0
        parts.append(f"<h2>Prompt {n + 1} <span class='meta'>({len(ids)} tokens, mean alpha {mean:.3f})</span></h2>")
        parts.append(f"<div class='prompt'>{html.escape(prompt)}</div><div class='text'>")
        for token_id, alpha in zip(ids, alphas):
            piece = tokenizer.decode([token_id], skip_special_tokens=False)
            bg, fg = _shade(alpha, scale)
            parts.append(f"<span class='tok' style='background:{bg};color:{fg}' "
                         f"title='id {token_id}, alpha {alpha:.3f}'>{html.escape(piece)}</span>")
        parts.append("</div>")
    parts.append("</body></html>")
    return "".join(parts)


def write_html(path: str, output: GenerationOutput, tokenizer, prompts: Sequence[str], **kwargs) -> str:
    """Write ``render_html(...)`` to ``path``; returns the path."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(render_html(output, tokenizer, prompts, **kwargs))
    return path
