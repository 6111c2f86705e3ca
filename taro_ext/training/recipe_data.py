"""The training data of the SmolLM2 recipe (``bench/smollm2_recipe.sh``), written as files.

``taro-ext make-data`` writes three JSONL files, each read back by a trainer, and
``taro-ext make-corrections`` a fourth:

* ``sft.jsonl`` (``question``, ``solution``): correct step-by-step solutions of graded arithmetic
  word problems (``taro_ext.arithmetic``), the reward model's SFT warm start.
* ``pairs.jsonl`` (Math-Step-DPO-10K layout): step-wise preference pairs; the rejected step has a
  wrong result, a wrong operand or a dropped term (``taro_ext.data.step_pairs``). Arithmetic pairs
  from other seeds than the SFT set, plus GSM8K train pairs.
* ``router.jsonl`` (``prompt``, ``completion``, ``domain``): what the router learns alpha on.
  ``arithmetic`` rows are correct solutions of further problems (the reward model should be
  listened to there); ``general`` rows are the base model's own answers to general instructions
  (``taro_ext/assets/general_prompts.txt``), text where the base is at home and an arithmetic
  reward model has nothing to add. Without them the router sees only text where the reward
  model is better, and learns a large alpha everywhere, including out of domain. The answers
  are *sampled at temperature 1*, not greedy: under the NLL objective any mix other than the
  base itself loses on true samples of the base (cross-entropy is smallest at the sampling
  distribution), whereas on greedy text the sharpening ``(1 + alpha) lp_b`` would win, and the
  router would learn to listen there too.
* ``corrections.jsonl`` (``taro-ext make-corrections``; ``prompt``, ``prefix``, ``completion``,
  ``domain`` = ``correction``): a policy's own mistakes, corrected. The policy (TARo with a first
  router: one round of DAgger) answers further problems greedily, as in the evaluation, and each
  wrong result in an answer (``taro_ext.arithmetic.wrong_results``) becomes a row whose ``prefix``
  is the answer up to that "=", whose completion is the right result and whose ``loss`` is ``top1``
  (greedy decoding must pick it: ``taro_ext.training.router_training``). Correct solutions alone
  do not teach the router what matters most: where the base is confident *and wrong*
  (``24 + 16 = 30``) inside the decoded text, since on generated solutions a confident base agrees
  with the reward model and the NLL gives alpha no gradient there.

Every set draws from its own seed of the problem generator; the evaluation uses seed 1234.
"""
from __future__ import annotations

import json
import os
import random
from typing import Optional, Sequence

from .. import arithmetic, data

SFT_SEED, PAIR_SEED, ROUTER_SEED, CORRECTION_SEED = 0, 1, 2, 3
GENERAL_PROMPTS_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets",
                                    "general_prompts.txt")


def general_prompts(path: Optional[str] = None) -> list[str]:
    """The general (non-arithmetic) instructions, one per line; ``#`` lines are comments."""
    path = path or GENERAL_PROMPTS_FILE
    with open(path, encoding="utf-8") as f:
        prompts = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    if not prompts:
        raise ValueError(f"{path} holds no prompts")
    return prompts


def sft_examples(n: int, seed: int = SFT_SEED) -> list[dict]:
    return [{"question": s.question, "solution": s.text} for _, s in arithmetic.graded_problems(n, seed)]


def preference_pairs(n_arithmetic: int, n_gsm8k: int, seed: int = PAIR_SEED,
                     gsm8k_path: Optional[str] = None) -> list[data.StepPair]:
    """``n_arithmetic`` pairs from graded problems and ``n_gsm8k`` from GSM8K train solutions,
    shuffled together under ``seed``."""
    problems = [s for _, s in arithmetic.graded_problems(2 * n_arithmetic, seed)]
    pairs = data.step_pairs(problems, seed=seed, limit=n_arithmetic)
    if n_gsm8k:
        pairs += data.step_pairs(data.load_gsm8k(gsm8k_path, limit=2 * n_gsm8k), seed=seed, limit=n_gsm8k)
    random.Random(seed).shuffle(pairs)
    return pairs


def correction_examples(n_problems: int, generator, *, chat: bool = True, seed: int = CORRECTION_SEED,
                        max_new_tokens: int = 128, batch_size: int = 50) -> list[dict]:
    """``correction`` rows: ``generator`` (a ``TaroGenerator``: the policy whose mistakes are
    corrected) answers ``n_problems`` graded problems (greedy; the evaluation's settings), and
    every wrong result in an answer becomes a row (``prompt``, ``prefix``: the answer up to that
    "=", ``completion``: the right result)."""
    problems = [s for _, s in arithmetic.graded_problems(n_problems, seed)]
    rows = []
    for b in range(0, len(problems), batch_size):
        chunk = problems[b:b + batch_size]
        out = generator.generate([s.question for s in chunk], max_new_tokens=max_new_tokens, chat=chat)
        rows += [row for s, answer in zip(chunk, out.texts) for row in corrections(s.question, answer)]
    return rows


def corrections(question: str, answer: str) -> list[dict]:
    """The ``correction`` rows of one answer to ``question``: one per wrong result in it."""
    return [{"prompt": question, "prefix": answer[:offset], "completion": correct, "domain": "correction",
             "loss": "top1"} for offset, correct in arithmetic.wrong_results(answer)]


def router_pairs(records: Sequence[dict], tokenizer, chat: bool) -> list[tuple[str, str, str]]:
    """``(context, completion, loss)`` for the router trainer: the rendered prompt, then the
    record's ``prefix`` when it has one (the start of an answer, not trained on); the record's
    ``loss`` (``RouterTrainer``'s ``nll`` or ``top1``), ``nll`` when it has none."""
    return [(data.render_prompt(r["prompt"], tokenizer, chat) + r.get("prefix", ""), r["completion"],
             r.get("loss", "nll")) for r in records]


def router_examples(n_arithmetic: int, base_model, tokenizer, *, prompts: Sequence[str], chat: bool = True,
                    seed: int = ROUTER_SEED, samples_per_prompt: int = 2, max_new_tokens: int = 160,
                    batch_size: int = 16) -> list[dict]:
    """Arithmetic solutions and ``samples_per_prompt`` of the base's answers (sampled at
    temperature 1) to each of ``prompts``, shuffled under ``seed``."""
    from ..generation import TaroGenerator

    rows = [{"prompt": s.question, "completion": s.text, "domain": "arithmetic"}
            for _, s in arithmetic.graded_problems(n_arithmetic, seed)]
    generator = TaroGenerator(base_model, None, None, tokenizer, mode="base")
    for sample in range(samples_per_prompt):
        for b in range(0, len(prompts), batch_size):
            chunk = list(prompts[b:b + batch_size])
            out = generator.generate(chunk, max_new_tokens=max_new_tokens, temperature=1.0, chat=chat,
                                     seed=seed * 1000 + sample * 100 + b)
            rows += [{"prompt": p, "completion": t, "domain": "general"} for p, t in zip(chunk, out.texts)
                     if t.strip()]
    random.Random(seed).shuffle(rows)
    return rows


def write_jsonl(rows: Sequence[dict], path: str) -> None:
    """``rows`` as JSONL, written atomically (a kill leaves the old file or the new one)."""
    from ..atomic import write_text

    write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_examples(path: str, fields: Sequence[str]) -> list[dict]:
    """The records of a JSON/JSONL file as dicts, each holding the string ``fields`` (and ``domain``
    ``prefix`` and ``loss`` when present); a missing or non-string field is an error naming the file and line."""
    records = data.read_records(path)
    if not records:
        raise data.DataError(f"{path}: holds no records")
    rows = []
    for r in records:
        row = {k: r.text(k) for k in fields}
        row.update({k: r.text(k) for k in ("domain", "prefix", "loss") if k in r.fields})
        rows.append(row)
    return rows
