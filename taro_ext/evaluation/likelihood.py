"""Teacher-forced scoring under each method's decoding distribution.

Generated-text accuracy is noise at 135M on out-of-domain sets, so the out-of-domain checks
score given text instead:

* ``alpaca_nll``: the per-token NLL of AlpacaEval's reference outputs after their instruction.
* ``choice_accuracy``: multiple choice by option log-likelihood, as lm-evaluation-harness scores
  it: the question alone is the context, each option's text the continuation, and the option
  with the highest summed log-prob wins (``acc``; ``acc_norm`` divides by the option's length
  in characters).

A method's log-prob of token ``y_t`` is ``log_softmax(lp_b + alpha_t * lp_r)[y_t]`` (the spec's
step 6 and 8 at temperature 1): ``alpha_t = 0`` for the base, the fixed alpha for GenARM, the
router's output on that position's two logits rows for TARo (the same PyTorch router the
reference step calls). Each text is run once through each model; every method is then a cheap
pass over the cached rows.
"""
from __future__ import annotations

import re
from typing import Mapping, Optional, Sequence

import torch

from .. import reference
from ..data import render_prompt
from ..training.batches import collate_completions, completion_logits, encode_completion
from .harness import Method
from .stats import bootstrap_interval


@torch.no_grad()
def method_logprobs(base_rows: torch.Tensor, reward_rows: Optional[torch.Tensor], targets: torch.Tensor,
                    methods: Sequence[Method], routers: Mapping[str, object], vocab_size: int) -> dict[str, torch.Tensor]:
    """``{method name: [C] log-probs of targets}`` for one text's ``[C, V]`` logits rows."""
    lp_b = reference.log_softmax_rows(base_rows, vocab_size)
    out = {}
    lp_r = reference.log_softmax_rows(reward_rows, vocab_size) if reward_rows is not None else None
    for m in methods:
        if m.mode == "base":
            s = lp_b
        else:
            if m.mode == "taro":
                alpha = routers[m.name](base_rows, reward_rows, vocab_size).float()
            else:
                alpha = torch.full((lp_b.shape[0],), float(m.alpha))
            s = reference.mixed_score(lp_b, lp_r, alpha)
        out[m.name] = torch.log_softmax(s, dim=-1).gather(-1, targets[:, None])[:, 0]
    return out


@torch.no_grad()
def score_texts(base_model, reward_model, tokenizer, texts: Sequence[tuple[str, str]], methods: Sequence[Method],
                routers: Mapping[str, object], *, max_length: int = 1024, batch_size: int = 4,
                progress: Optional[str] = None) -> list[dict[str, torch.Tensor]]:
    """Per text ``(context, continuation)``: ``{method: [C] token log-probs}`` of the whole continuation after
    the whole context (a text longer than ``max_length`` tokens is an error, not cut)."""
    vocab_size = len(tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    needs_reward = any(m.mode != "base" for m in methods)
    device = next(base_model.parameters()).device
    encoded = [encode_completion(tokenizer, c, t, max_length, truncate=False) for c, t in texts]
    batches = range(0, len(encoded), batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc=progress, dynamic_ncols=True)
    out = []
    for b in batches:
        chunk = encoded[b:b + batch_size]
        batch = collate_completions(chunk, pad_id, device)
        base = completion_logits(base_model, batch)
        reward = completion_logits(reward_model, batch) if needs_reward else None
        for j in range(len(chunk)):
            keep = batch.target_mask[j]
            out.append(method_logprobs(base[j][keep].float().cpu(),
                                       reward[j][keep].float().cpu() if reward is not None else None,
                                       batch.targets[j][keep].cpu(), methods, routers, vocab_size))
    return out


def alpaca_nll(base_model, reward_model, tokenizer, records: Sequence[dict], methods: Sequence[Method],
               routers: Mapping[str, object], *, chat: bool = True, max_length: int = 1024, batch_size: int = 4,
               progress: bool = True) -> dict:
    """Per-token NLL of each record's ``output`` after its ``instruction``, per method, with a 95%
    bootstrap interval over records and the change relative to the base."""
    texts = [(render_prompt(r["instruction"], tokenizer, chat), r["output"]) for r in records]
    scores = score_texts(base_model, reward_model, tokenizer, texts, methods, routers, max_length=max_length,
                         batch_size=batch_size, progress="alpaca_eval NLL" if progress else None)
    sums = {m.name: torch.tensor([-s[m.name].double().sum().item() for s in scores]) for m in methods}
    counts = torch.tensor([float(len(s[methods[0].name])) for s in scores], dtype=torch.float64)
    ratio = lambda idx, v: (v[idx].sum() / counts[idx].sum()).item()  # noqa: E731
    result = {"n": len(records), "tokens": int(counts.sum()), "methods": {}}
    for m in methods:
        v = sums[m.name]
        result["methods"][m.name] = {"nll": ratio(slice(None), v),
                                     "ci95": bootstrap_interval(len(records), lambda idx, v=v: ratio(idx, v))}
    if "base" in sums:
        for m in methods:
            v, b = sums[m.name], sums["base"]
            result["methods"][m.name]["relative_to_base"] = ratio(slice(None), v) / ratio(slice(None), b) - 1
            result["methods"][m.name]["relative_ci95"] = bootstrap_interval(
                len(records), lambda idx, v=v, b=b: ratio(idx, v) / ratio(idx, b) - 1)
    return result


_OPTION = re.compile(r"\(([A-J])\)\s*")


def split_choices(question: str) -> tuple[str, list[tuple[str, str]]]:
    """MedQA's ``"stem\\nAnswer Choices: (A) x (B) y ..."`` -> ``(stem, [("A", "x"), ("B", "y"), ...])``."""
    stem, sep, choices = question.rpartition("Answer Choices:")
    if not sep:
        raise ValueError(f"question has no 'Answer Choices:' list: {question[:60]!r}")
    parts = _OPTION.split(choices)
    if len(parts) < 5 or parts[0].strip():
        raise ValueError(f"cannot read the options of {question[:60]!r}")
    options = [(parts[i], parts[i + 1].strip()) for i in range(1, len(parts) - 1, 2)]
    letters = [k for k, _ in options]
    if letters != sorted(letters) or len(set(letters)) != len(letters):
        raise ValueError(f"options out of order in {question[:60]!r}")
    return stem.strip(), options


def choice_record(record) -> dict:
    """A MedQA-style ``data.Record`` as ``{"question", "label"}``, its options and label checked
    (errors name the file and line)."""
    question = record.text("question")
    try:
        _, options = split_choices(question)
    except ValueError as e:
        raise record.error(str(e)) from None
    label = record.fields.get("label")
    letter = label[0] if isinstance(label, list) and len(label) == 1 else label
    if letter not in [k for k, _ in options]:
        raise record.error(f"label {label!r} is not one of the options {[k for k, _ in options]}")
    return {"question": question, "label": letter}


def choice_accuracy(base_model, reward_model, tokenizer, records: Sequence[dict], methods: Sequence[Method],
                    routers: Mapping[str, object], *, chat: bool = True, max_length: int = 1024, batch_size: int = 4,
                    progress: bool = True) -> dict:
    """Option log-likelihood accuracy (``acc`` and ``acc_norm``) per method on MedQA-style
    records (``question`` with an "Answer Choices:" list, ``label`` a one-letter list)."""
    texts, spans = [], []
    for r in records:
        stem, options = split_choices(r["question"])
        context = render_prompt(stem, tokenizer, chat)
        spans.append((len(texts), options, r["label"][0] if isinstance(r["label"], list) else r["label"]))
        texts += [(context, text) for _, text in options]
    scores = score_texts(base_model, reward_model, tokenizer, texts, methods, routers, max_length=max_length,
                         batch_size=batch_size, progress="option log-likelihood" if progress else None)
    result = {"n": len(records), "methods": {}}
    for m in methods:
        acc, acc_norm = [], []
        for start, options, gold in spans:
            totals = [scores[start + j][m.name].double().sum().item() for j in range(len(options))]
            normed = [t / max(1, len(text)) for t, (_, text) in zip(totals, options)]
            letters = [k for k, _ in options]
            acc.append(float(letters[max(range(len(totals)), key=totals.__getitem__)] == gold))
            acc_norm.append(float(letters[max(range(len(normed)), key=normed.__getitem__)] == gold))
        a, an = torch.tensor(acc), torch.tensor(acc_norm)
        result["methods"][m.name] = {
            "acc": a.mean().item(), "acc_ci95": bootstrap_interval(len(acc), lambda idx, a=a: a[idx].mean().item()),
            "acc_norm": an.mean().item(),
            "acc_norm_ci95": bootstrap_interval(len(acc), lambda idx, an=an: an[idx].mean().item()),
            "per_item": acc}
    return result


def markdown_table(result: dict) -> str:
    """One row per method: NLL (AlpacaEval) or acc / acc_norm (multiple choice), with intervals."""
    if "tokens" in result:
        lines = [f"Per-token NLL of `{result['task']}` reference outputs ({result['n']} texts, {result['tokens']} "
                 "tokens), teacher-forced under each method's distribution; 95% bootstrap intervals over texts.", "",
                 "| method | NLL / token | 95% CI | vs base | 95% CI |", "|---|---|---|---|---|"]
        for name, m in result["methods"].items():
            rel = m.get("relative_to_base")
            rel_ci = m.get("relative_ci95")
            lines.append(f"| {name} | {m['nll']:.4f} | [{m['ci95'][0]:.4f}, {m['ci95'][1]:.4f}] | "
                         + (f"{100 * rel:+.2f}% | [{100 * rel_ci[0]:+.2f}%, {100 * rel_ci[1]:+.2f}%] |"
                            if rel is not None else " | |"))
    else:
        lines = [f"`{result['task']}` by option log-likelihood ({result['n']} questions); 95% bootstrap intervals.",
                 "", "| method | acc | 95% CI | acc_norm | 95% CI |", "|---|---|---|---|---|"]
        for name, m in result["methods"].items():
            lines.append(f"| {name} | {m['acc']:.3f} | [{m['acc_ci95'][0]:.3f}, {m['acc_ci95'][1]:.3f}] | "
                         f"{m['acc_norm']:.3f} | [{m['acc_norm_ci95'][0]:.3f}, {m['acc_norm_ci95'][1]:.3f}] |")
    return "\n".join(lines) + "\n"
