"""The training data of the SmolLM2 recipe (``bench/smollm2_recipe.sh``), written as files.

``taro-ext make-data`` writes three JSONL files, each read back by a trainer:

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

Every set draws from its own seed of the problem generator; the evaluation uses seed 1234.
"""
from __future__ import annotations

import json
import os
import random
from typing import Optional, Sequence

from .. import arithmetic, data

SFT_SEED, PAIR_SEED, ROUTER_SEED = 0, 1, 2
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
    when present); a missing or non-string field is an error naming the file and line."""
    records = data.read_records(path)
    if not records:
        raise data.DataError(f"{path}: holds no records")
    rows = []
    for r in records:
        row = {k: r.text(k) for k in fields}
        if "domain" in r.fields:
            row["domain"] = r.text("domain")
        rows.append(row)
    return rows
