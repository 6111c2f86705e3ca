"""Answer graders: ``grade(task, output_text, gold) -> bool``.

- ``math500`` / ``math``: math-verify (Hugging Face) extracts the last ``\\boxed{}`` (or a final
  LaTeX / plain expression), normalises the LaTeX and checks symbolic equivalence, with a time
  limit per item. Its time limit uses ``signal.alarm``, which only works in the main thread;
  elsewhere the grader runs math-verify without a time limit (see ``_time_limit``).
- ``gsm8k``, ``synthetic`` and ``arithmetic``: the gold is a number, or a GSM8K answer ending in ``#### N``;
  the output's answer is its last ``\\boxed{}``, else its ``#### N``, else its last number.
  Numbers compare exactly as decimals (``1,000`` == ``1000`` == ``1000.00``).
- ``medqa`` / ``medxpertqa``: one option letter A..J, from ``\\boxed{X}``, "answer is (X)",
  "Answer: X", an output that starts with the letter, or else the one parenthesised ``(X)`` it
  mentions (an output that lists several options without stating one has no answer).

AlpacaEval has no grader here: it needs a judge model (``write_alpaca_eval_outputs`` writes
its ``model_outputs.json`` layout for the official ``alpaca_eval`` command).
"""
from __future__ import annotations

import re
import threading
from decimal import Decimal, InvalidOperation
from typing import Optional, Sequence, Union

MATH_TASKS = ("math500", "math")
NUMBER_TASKS = ("gsm8k", "synthetic", "arithmetic")
CHOICE_TASKS = ("medqa", "medxpertqa")
TASKS = MATH_TASKS + NUMBER_TASKS + CHOICE_TASKS
OPTION_LETTERS = "ABCDEFGHIJ"

# Per-item time limit (seconds) for math-verify's parsing and for its comparison.
MATH_TIMEOUT_S = 5


def _time_limit() -> Optional[int]:
    """math-verify's per-item limit, or None off the main thread (its ``signal.alarm`` needs it)."""
    return MATH_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


# --- \boxed{...} with balanced braces ---------------------------------------------------------

def last_boxed(text: str) -> Optional[str]:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``, braces balanced."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0:
        return None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1:j]
    return None


# --- MATH -----------------------------------------------------------------------------------

def _math_verify():
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    return ExprExtractionConfig, LatexExtractionConfig, parse, verify


def parse_math_gold(answer: str):
    """math-verify's parse of a MATH gold answer (the ``answer`` field, bare LaTeX)."""
    expr_cfg, latex_cfg, parse, _ = _math_verify()
    return parse("$\\boxed{" + answer + "}$", extraction_config=[latex_cfg(), expr_cfg()],
                 parsing_timeout=_time_limit())


def parse_math_output(output_text: str):
    """math-verify's parse of a model output: the boxed answer first, then a final expression."""
    expr_cfg, latex_cfg, parse, _ = _math_verify()
    return parse(output_text, extraction_config=[latex_cfg(boxed_match_priority=0), expr_cfg()],
                 parsing_timeout=_time_limit())


def verify_math(gold_parsed, output_parsed) -> bool:
    *_, verify = _math_verify()
    if not gold_parsed or not output_parsed:
        return False
    return bool(verify(gold_parsed, output_parsed, timeout_seconds=_time_limit()))


def grade_math(output_text: str, gold: str) -> bool:
    return verify_math(parse_math_gold(gold), parse_math_output(output_text))


# --- numbers (GSM8K, synthetic arithmetic) ---------------------------------------------------

# A number: a minus sign only where it cannot be a subtraction ("(10-3)" holds 10 and 3), commas only
# as thousands separators ("1,2,3" is three numbers, "1,000" one).
_SIGN = r"(?:(?<![\w)\]}])-)?"
_NUMBER = re.compile(rf"{_SIGN}(?:\d{{1,3}}(?:,\d{{3}})+(?!\d)|\d+)(?:\.\d+)?|{_SIGN}\.\d+")
_FRACTION = re.compile(r"\s*(-?)\\[dt]?frac\{\s*(\d+)\s*\}\{\s*(\d+)\s*\}\s*")


def _to_decimal(text: str) -> Optional[Decimal]:
    cleaned = text.replace(",", "").replace("$", "").replace("\\!", "").strip().rstrip(".")
    try:
        return Decimal(cleaned)
    except InvalidOperation:
        return None


def _last_number(text: str) -> Optional[Decimal]:
    found = _NUMBER.findall(text.replace("\u2212", "-"))  # the Unicode minus sign too
    return _to_decimal(found[-1]) if found else None


def gsm8k_gold_number(gold: Union[str, int, float]) -> Decimal:
    """The number of a GSM8K gold answer (``... #### N``) or of a bare number."""
    if isinstance(gold, (int, float)) and not isinstance(gold, bool):
        return Decimal(str(gold))
    if not isinstance(gold, str):
        raise TypeError(f"gold must be a str or a number, got {type(gold).__name__}")
    text = gold.rsplit("####", 1)[-1]
    value = _to_decimal(text)
    if value is None:
        raise ValueError(f"gold has no number after '####': {gold!r}")
    return value


def extract_number_answer(output_text: str) -> Optional[Decimal]:
    """The output's answer: last ``\\boxed{}``, else its ``#### N``, else its last number."""
    boxed = last_boxed(output_text)
    if boxed is not None:
        fraction = _FRACTION.fullmatch(boxed)  # \frac{1}{2} is 0.5, not its last number
        if fraction and int(fraction.group(3)) != 0:
            value = Decimal(fraction.group(2)) / Decimal(fraction.group(3))
            return -value if fraction.group(1) else value
        value = _last_number(boxed)
        if value is not None:
            return value
    if "####" in output_text:
        value = _last_number(output_text.rsplit("####", 1)[-1].split("\n", 1)[0])
        if value is not None:
            return value
    return _last_number(output_text)


def grade_number(output_text: str, gold) -> bool:
    answer = extract_number_answer(output_text)
    return answer is not None and answer == gsm8k_gold_number(gold)


# --- multiple choice --------------------------------------------------------------------------

_L = f"[{OPTION_LETTERS}]"
# "the answer is (B)", "Answer: B", "correct option is B.": keyword case-insensitive, letter upper case.
_STATED_CHOICE = re.compile(rf"(?i:answer|option|choice)(?:\s+is)?\s*[:\-]?\s*(?i:option\s+)?\(?\**({_L})\b")


def extract_choice(output_text: str) -> Optional[str]:
    """The option letter an output picks, or None: a boxed letter, else the last stated choice ("the
    answer is (B)"; not the pronoun in "Answer: I think"), else an output that starts with a letter
    ("A. Disclose ..."; after the stated choice, since reasoning that walks the options in order
    also starts with "(A)"), else the one letter mentioned as "(X)"."""
    boxed = last_boxed(output_text)
    if boxed is not None:
        m = re.fullmatch(rf"\s*(?:\\text\{{)?\(?({_L})\)?\}}?\s*", boxed)
        if m:
            return m.group(1)
    stated = [m.group(1) for m in _STATED_CHOICE.finditer(output_text)
              if not (m.group(1) == "I" and re.match(r"\s+[a-z]", output_text[m.end():]))]
    if stated:
        return stated[-1]
    stripped = output_text.strip().strip("*.").strip()
    m = re.fullmatch(rf"\(?({_L})\)?(?:[.:)]\s.*)?", stripped, re.DOTALL)
    if m:
        return m.group(1)
    # A bare "(X)" counts only when it is the one letter mentioned: an echoed option list is no answer.
    mentioned = set(re.findall(rf"\(({_L})\)", output_text))
    return mentioned.pop() if len(mentioned) == 1 else None


def gold_letter(gold: Union[str, Sequence[str]]) -> str:
    if isinstance(gold, (list, tuple)):
        if len(gold) != 1:
            raise ValueError(f"gold must name exactly one option, got {gold!r}")
        gold = gold[0]
    if not isinstance(gold, str) or len(gold.strip()) != 1 or gold.strip().upper() not in OPTION_LETTERS:
        raise ValueError(f"gold must be one option letter A..J, got {gold!r}")
    return gold.strip().upper()


def grade_choice(output_text: str, gold) -> bool:
    return extract_choice(output_text) == gold_letter(gold)


# --- the one entry point ----------------------------------------------------------------------

def grade(task: str, output_text: str, gold) -> bool:
    """Whether ``output_text`` answers correctly; ``task`` is one of ``TASKS``.

    ``gold``: the MATH ``answer`` field (math500, math); a GSM8K ``answer`` field or a number
    (gsm8k, synthetic); an option letter or a one-letter list like MedQA's ``label`` (medqa,
    medxpertqa).
    """
    if not isinstance(output_text, str):
        raise TypeError(f"output_text must be a str, got {type(output_text).__name__}")
    if task in MATH_TASKS:
        if not isinstance(gold, str):
            raise TypeError(f"gold must be a LaTeX str for task {task!r}, got {type(gold).__name__}")
        return grade_math(output_text, gold)
    if task in NUMBER_TASKS:
        return grade_number(output_text, gold)
    if task in CHOICE_TASKS:
        return grade_choice(output_text, gold)
    if task == "alpaca_eval":
        raise ValueError("task 'alpaca_eval' has no local grader: it needs a judge model; write the outputs "
                         "with write_alpaca_eval_outputs and run the official alpaca_eval on them")
    raise ValueError(f"task must be one of {TASKS}, got {task!r}")
