"""Evaluation sets as ``EvalItem`` lists, read from the shared data files (or a path you give).

Each item carries the user message the model sees (the problem plus an instruction saying
how to state the answer, so the grader can find it) and the gold answer in the form
``grade(task, output, gold)`` takes. Prompts are plain user messages; ``TaroGenerator``
wraps them in the model's chat template when asked to (``chat=True``).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Optional, Union

from ..atomic import write_text
from .graders import TASKS

MATH_INSTRUCTION = "Solve the problem step by step, then give the final answer as \\boxed{answer}."
CHOICE_INSTRUCTION = "Think it through briefly, then end with \"The answer is (X)\" where X is the letter of the correct option."

DEFAULT_FILES = {
    "gsm8k": "gsm8k_test.jsonl",
    "math500": "math500_test.jsonl",
    "math": "MATH_test.jsonl",
    "medqa": "medqa_input.jsonl",
    "medxpertqa": "medxpertqa_sampled_text_input.jsonl",
    "alpaca_eval": "alpaca_eval_gpt4_1106_preview_outputs.json",
}
EVAL_TASKS = TASKS + ("alpaca_eval",)


@dataclass
class EvalItem:
    id: str
    prompt: str  # the user message
    gold: Union[str, int, list, None]  # None for alpaca_eval (judged externally)
    meta: Optional[dict] = None  # fields the task keeps (e.g. AlpacaEval's dataset name)


def default_path(task: str) -> str:
    """``../shared/data/<file>`` relative to the repository root."""
    from ..data import shared_data_dir

    if task not in DEFAULT_FILES:
        raise ValueError(f"task {task!r} has no data file (tasks with files: {sorted(DEFAULT_FILES)})")
    return os.path.join(shared_data_dir(), DEFAULT_FILES[task])


def _read(path: str) -> list[dict]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no data file at {path} (pass --data PATH)")
    with open(path, encoding="utf-8") as f:
        if path.endswith(".json"):
            return json.load(f)
        return [json.loads(line) for line in f if line.strip()]


def load_items(task: str, path: Optional[str] = None, limit: Optional[int] = None, *,
               synthetic_seed: int = 1234) -> list[EvalItem]:
    """The first ``limit`` items of ``task``'s evaluation set.

    ``synthetic`` and ``arithmetic`` have no file: they are generated under ``synthetic_seed`` (a
    seed the training recipes do not use, so the items are held out): ``synthetic`` by
    ``taro_ext.data.synthetic_arithmetic``, ``arithmetic`` by ``taro_ext.arithmetic.graded_problems``
    (four difficulty levels in turn; the user message is the question alone, as a user would ask it,
    and each item's ``meta["level"]`` gives its level).
    """
    if task not in EVAL_TASKS:
        raise ValueError(f"task must be one of {EVAL_TASKS}, got {task!r}")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive int, got {limit!r}")
    if task in ("synthetic", "arithmetic") and path is not None:
        raise ValueError(f"path: the {task} task is generated, it reads no file")
    if task == "arithmetic":
        from ..arithmetic import graded_problems

        return [EvalItem(f"arithmetic-{i}", s.question, s.answer, {"level": level})
                for i, (level, s) in enumerate(graded_problems(limit or 200, seed=synthetic_seed))]
    if task == "synthetic":
        from ..data import synthetic_arithmetic

        return [EvalItem(f"synthetic-{i}", f"{s.question}\n{MATH_INSTRUCTION}", s.answer)
                for i, s in enumerate(synthetic_arithmetic(limit or 200, seed=synthetic_seed))]
    records = _read(path or default_path(task))[:limit]
    if task == "gsm8k":
        return [EvalItem(f"gsm8k-{i}", f"{r['question']}\n{MATH_INSTRUCTION}", r["answer"])
                for i, r in enumerate(records)]
    if task in ("math500", "math"):
        from .graders import last_boxed

        # MATH500 has an ``answer`` field; the full MATH test set only its solution's \boxed{}.
        return [EvalItem(r["unique_id"], f"{r['problem']}\n{MATH_INSTRUCTION}",
                         r["answer"] if "answer" in r else last_boxed(r["solution"]))
                for r in records]
    if task in ("medqa", "medxpertqa"):
        # The question text already lists the options as "Answer Choices: (A) ... (B) ...".
        return [EvalItem(r["id"], f"{r['question']}\n{CHOICE_INSTRUCTION}", r["label"]) for r in records]
    return [EvalItem(f"alpaca_eval-{i}", r["instruction"], None, {"dataset": r.get("dataset", "")})
            for i, r in enumerate(records)]


def write_alpaca_eval_outputs(items: list[EvalItem], outputs: list[str], generator: str, path: str) -> None:
    """Outputs in AlpacaEval's ``model_outputs.json`` layout (instruction, output, generator,
    dataset). Judging needs the official package and a judge model (GPT-4 Turbo by default)::

        pip install alpaca-eval && export OPENAI_API_KEY=...
        alpaca_eval --model_outputs PATH \
            --reference_outputs ../shared/data/alpaca_eval_gpt4_1106_preview_outputs.json

    (AlpacaEval 2.0: annotator ``weighted_alpaca_eval_gpt4_turbo``, length-controlled win rate
    against the GPT-4 Turbo reference outputs.)
    """
    if len(items) != len(outputs):
        raise ValueError(f"outputs has {len(outputs)} entries for {len(items)} items")
    records = [{"instruction": it.prompt, "output": out, "generator": generator,
                "dataset": (it.meta or {}).get("dataset", "")} for it, out in zip(items, outputs)]
    write_text(path, json.dumps(records, indent=2, ensure_ascii=False))
