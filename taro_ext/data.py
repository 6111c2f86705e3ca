"""Training data: step-wise preference pairs for the reward model, solutions for the router.

Two record types:

* ``Solution``: a problem with its step-by-step solution (``question``, ``steps``, ``answer``),
  read from GSM8K or MATH train files (``load_gsm8k``, ``load_math``) or generated
  (``synthetic_arithmetic``). The router trains on correct solutions.
* ``StepPair``: the Math-Step-DPO-10K layout (``prompt``, ``initial_reason_steps``, ``chosen``,
  ``rejected``, ``full_chosen``, ``full_rejected``, ``answer``). ``read_step_pairs`` reads
  that layout from JSON or JSONL; ``step_pairs`` builds pairs from solutions: a correct
  prefix of steps, the next correct step (chosen) and that step with a mistake a model
  would make (rejected): a wrong arithmetic result, a wrong operand, or a dropped term.

Steps are joined with newlines: ``initial_reason_steps`` is ``"".join(s + "\\n" for s in prefix)``.
Everything random takes a seed and draws from a per-record ``random.Random``, so a record's
pair does not depend on which other records are in the list.
"""
from __future__ import annotations

import json
import os
import random
import re
from dataclasses import asdict, dataclass
from typing import Iterable, Optional, Sequence

STEP_PAIR_FIELDS = ("prompt", "initial_reason_steps", "chosen", "rejected", "full_chosen", "full_rejected",
                    "answer")


@dataclass
class Solution:
    question: str
    steps: list[str]
    answer: str

    @property
    def text(self) -> str:
        """The solution as the router and SFT train on it: one step per line."""
        return "\n".join(self.steps)


@dataclass
class StepPair:
    prompt: str
    initial_reason_steps: str
    chosen: str
    rejected: str
    full_chosen: str = ""
    full_rejected: str = ""
    answer: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def shared_data_dir() -> str:
    """``../shared/data`` relative to the repository root (where the project's data sets live)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.path.normpath(os.path.join(root, "..", "shared", "data"))


class DataError(ValueError):
    """A data file or record that cannot be used; the message starts with ``path:line:``."""


@dataclass
class Record:
    """One JSON object of a data file, with where it is (``line`` is 1-based)."""
    path: str
    line: int
    fields: dict

    def error(self, message: str) -> DataError:
        return DataError(f"{self.path}:{self.line}: {message}")

    def text(self, name: str, *, required: bool = True) -> str:
        """Field ``name``, which must be a string; ``""`` when absent (or null) and not ``required``."""
        value = self.fields.get(name)
        if value is None:
            if required:
                raise self.error(f"missing field {name!r} (fields: {sorted(self.fields)})")
            return ""
        if not isinstance(value, str):
            raise self.error(f"field {name!r} must be a string, got {_json_kind(value)}")
        return value


def _json_kind(value) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    return {dict: "an object", list: "a list", str: "a string"}.get(type(value), "a number")


def read_records(path: str) -> list[Record]:
    """The objects of a ``.json`` file holding a list, or of a ``.jsonl`` file (one object per
    line, blank lines skipped). UTF-8, with or without a byte-order mark. Every error is a
    ``DataError`` naming the file and the line."""
    if not os.path.isfile(path):
        what = "a directory, not a data file" if os.path.isdir(path) else "no data file"
        raise FileNotFoundError(f"{path}: {what}")
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise DataError(f"{path}:{line}: not UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start}); save the file "
                        f"as UTF-8") from None
    # The extension decides (a .jsonl line may itself be a list: an error, not a JSON file);
    # another extension is a JSON list when it starts with "[".
    as_list = path.endswith(".json") or (not path.endswith(".jsonl") and text.lstrip().startswith("["))
    if as_list and not text.lstrip().startswith("["):
        try:
            kind = _json_kind(json.loads(text))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg}, column {e.colno})") from None
        raise DataError(f"{path}:1: a .json data file holds a list of JSON objects, got {kind}")
    if as_list:
        values = _json_list_values(path, text)
    else:
        values = []
        # split("\n"), not splitlines(): JSON strings may hold U+2028 and other line separators.
        for n, line in enumerate(text.split("\n"), 1):
            if not line.strip():
                continue
            try:
                values.append((n, json.loads(line)))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{n}: invalid JSON ({e.msg}, column {e.colno}); a .jsonl file holds one "
                                f"JSON object per line, a .json file a list of objects") from None
    records = []
    for n, value in values:
        if not isinstance(value, dict):
            raise DataError(f"{path}:{n}: a record must be a JSON object, got {_json_kind(value)}")
        records.append(Record(path, n, value))
    return records


def _json_list_values(path: str, text: str) -> list[tuple[int, object]]:
    """(line, value) for each element of the JSON list ``text``."""
    decoder = json.JSONDecoder()

    def skip_space(i: int) -> int:
        while i < len(text) and text[i] in " \t\r\n":
            i += 1
        return i

    seen = [0, 1]  # (offset, line there): positions only move forward, so count incrementally

    def line_of(i: int) -> int:
        seen[1] += text.count("\n", seen[0], i)
        seen[0] = i
        return seen[1]

    def fail(i: int, message: str) -> DataError:
        return DataError(f"{path}:{line_of(i)}: invalid JSON ({message})")

    values, i = [], skip_space(text.index("[") + 1)
    if i < len(text) and text[i] == "]":
        i += 1
    else:
        while True:
            try:
                value, end = decoder.raw_decode(text, i)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg}, column {e.colno})") from None
            values.append((line_of(i), value))
            i = skip_space(end)
            if i < len(text) and text[i] == ",":
                i = skip_space(i + 1)
                continue
            if i < len(text) and text[i] == "]":
                i += 1
                break
            raise fail(i, "expected ',' or ']' after a list element")
    if skip_space(i) < len(text):
        raise fail(skip_space(i), "extra data after the list")
    return values


# --- step-wise preference pairs (Math-Step-DPO-10K layout) -------------------------------------

def read_step_pairs(path: str) -> list[StepPair]:
    """Read Math-Step-DPO-10K style pairs from a JSON list or JSONL file.

    ``prompt``, ``initial_reason_steps``, ``chosen`` and ``rejected`` are required strings; the
    other fields are strings that default to empty; fields outside the layout are ignored. A
    record that breaks this is a ``DataError`` naming the file, line and field.
    """
    pairs = []
    for r in read_records(path):
        pairs.append(StepPair(**{k: r.text(k, required=k in STEP_PAIR_FIELDS[:4]) for k in STEP_PAIR_FIELDS}))
    return pairs


def write_step_pairs(pairs: Iterable[StepPair], path: str) -> None:
    """Write pairs as JSONL in the Math-Step-DPO-10K layout (atomically: a kill leaves no half file)."""
    from .atomic import write_text

    write_text(path, "".join(json.dumps(p.to_dict(), ensure_ascii=False) + "\n" for p in pairs))


def render_prompt(question: str, tokenizer=None, chat: bool = False) -> str:
    """The text a solution continues: ``question`` through the tokenizer's chat template (as a
    user turn, generation prompt added) when ``chat``, else ``question`` and a newline."""
    if chat:
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ValueError("chat=True needs a tokenizer with a chat template")
        return tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                             add_generation_prompt=True)
    return question + "\n"


# --- reading solutions -------------------------------------------------------------------------

_GSM8K_CALCULATOR = re.compile(r"<<[^>]*>>")


def gsm8k_solution(question: str, answer: str) -> Solution:
    """GSM8K ``answer``: step lines, calculator annotations ``<<48/2=24>>`` removed, then
    ``#### N``; the final line becomes the step ``The answer is: N``."""
    body, sep, final = answer.rpartition("####")
    final = final.strip()
    if not sep or not final:
        raise ValueError("answer: a GSM8K answer ends with '#### <number>'")
    steps = [_GSM8K_CALCULATOR.sub("", line).strip() for line in body.splitlines()]
    return Solution(question, [s for s in steps if s] + [f"The answer is: {final}"], final)


def math_solution_steps(solution: str) -> list[str]:
    """Split a MATH solution into sentences, never inside math (``$..$``, ``$$..$$``, ``\\[..\\]``,
    ``\\(..\\)``): a step ends at a period followed by whitespace, or at a blank line."""
    steps, start, i, in_math = [], 0, 0, None
    closers = {"$": "$", "$$": "$$", "\\[": "\\]", "\\(": "\\)"}
    n = len(solution)
    while i < n:
        if in_math is None:
            opener = next((o for o in ("$$", "$", "\\[", "\\(") if solution.startswith(o, i)), None)
            if opener is not None and not (i > 0 and solution[i - 1] == "\\"):
                in_math, i = opener, i + len(opener)
                continue
            if solution[i] == "." and (i + 1 == n or solution[i + 1].isspace()):
                steps.append(solution[start:i + 1])
                start = i + 1
            elif solution.startswith("\n\n", i):
                steps.append(solution[start:i])
                start = i + 2
                i += 1
        elif solution.startswith(closers[in_math], i) and solution[i - 1] != "\\":
            i += len(closers[in_math])
            in_math = None
            continue
        i += 1
    steps.append(solution[start:])
    return [" ".join(s.split()) for s in steps if s.strip()]


_BOXED = re.compile(r"\\boxed\s*{")


def math_boxed_answer(solution: str) -> str:
    """The content of the last ``\\boxed{...}`` (braces balanced), or ``""``."""
    starts = [m.end() for m in _BOXED.finditer(solution)]
    if not starts:
        return ""
    depth, i = 1, starts[-1]
    while i < len(solution) and depth:
        depth += {"{": 1, "}": -1}.get(solution[i], 0)
        i += 1
    return solution[starts[-1]:i - 1] if depth == 0 else ""


def load_gsm8k(path: Optional[str] = None, limit: Optional[int] = None) -> list[Solution]:
    """GSM8K records (``question``, ``answer``) as solutions; default: the shared train set."""
    path = path or os.path.join(shared_data_dir(), "gsm8k_train.jsonl")
    solutions = []
    for r in read_records(path)[:limit]:
        question, answer = r.text("question"), r.text("answer")
        try:
            solutions.append(gsm8k_solution(question, answer))
        except ValueError as e:
            raise r.error(str(e)) from None
    return solutions


def load_math(path: Optional[str] = None, limit: Optional[int] = None) -> list[Solution]:
    """MATH records (``problem``, ``solution``) as solutions; default: the shared train set.
    A solution without ``\\boxed{}`` keeps an empty ``answer`` (two of the 7500 MATH train
    solutions have none; training does not grade). Evaluation refuses such records."""
    path = path or os.path.join(shared_data_dir(), "MATH_train.jsonl")
    solutions = []
    for r in read_records(path)[:limit]:
        solution = r.text("solution")
        solutions.append(Solution(r.text("problem"), math_solution_steps(solution), math_boxed_answer(solution)))
    return solutions


# --- corrupting a step --------------------------------------------------------------------------

# A number not glued to a word, a backslash command or another number (so "x2", "\frac12" parts
# and "3.5" stay whole).
_NUMBER = re.compile(r"(?<![\w\\.^])\d+(?:\.\d+)?(?![\w.]\d)")
_OPERATOR = r"[-+*/x×·]|\\times|\\cdot"
# An arithmetic chain "a op b op c ..." of plain numbers (the span a dropped term is taken from).
_CHAIN = re.compile(rf"\d+(?:\.\d+)?(?:\s*(?:{_OPERATOR})\s*\d+(?:\.\d+)?)+")
_TERM = re.compile(rf"\s*(?:{_OPERATOR})\s*\d+(?:\.\d+)?")


def _format_number(value: float, like: str) -> str:
    decimals = len(like.split(".")[1]) if "." in like else 0
    return f"{value:.{decimals}f}" if decimals else str(int(round(value)))


def perturb_number(text: str, rng: random.Random) -> str:
    """A plausible wrong value for the number ``text``: off by one or ten, a factor of ten,
    doubled or halved, or two digits swapped. Never equal to ``text``; never negative."""
    value = float(text)
    candidates = [value + 1, value - 1, value + 10, value - 10, value * 10, value * 2]
    if value >= 2 and value % 2 == 0:
        candidates.append(value / 2)
    digits = text.replace(".", "")
    if len(set(digits)) > 1:
        d = list(digits)
        j = rng.randrange(len(d) - 1)
        d[j], d[j + 1] = d[j + 1], d[j]
        swapped = "".join(d)
        if "." in text:
            swapped = swapped[:text.index(".")] + "." + swapped[text.index("."):]
        if not swapped.startswith("0") or swapped.startswith("0."):
            candidates.append(float(swapped))
    options = sorted({_format_number(c, text) for c in candidates if c >= 0} - {text})
    return rng.choice(options)


def _replace_span(s: str, start: int, end: int, new: str) -> str:
    return s[:start] + new + s[end:]


def _wrong_result(step: str, rng: random.Random) -> Optional[str]:
    eq = step.rfind("=")
    m = _NUMBER.search(step, eq + 1) if eq >= 0 else None
    if m is None:
        return None
    return _replace_span(step, m.start(), m.end(), perturb_number(m.group(), rng))


def _wrong_operand(step: str, rng: random.Random) -> Optional[str]:
    eq = step.rfind("=")
    operands = [m for c in _CHAIN.finditer(step, 0, eq if eq >= 0 else len(step))
                for m in _NUMBER.finditer(step, c.start(), c.end())]
    if not operands:
        return None
    m = rng.choice(operands)
    return _replace_span(step, m.start(), m.end(), perturb_number(m.group(), rng))


def _dropped_term(step: str, rng: random.Random) -> Optional[str]:
    """Drop one term of an arithmetic chain with at least two operators before an ``=``; the
    result after the ``=`` is recomputed without it, as a model that forgot the term would."""
    eq = step.rfind("=")
    if eq < 0:
        return None
    chains = [c for c in _CHAIN.finditer(step, 0, eq) if len(_TERM.findall(c.group())) >= 2]
    if not chains:
        return None
    chain = rng.choice(chains)
    terms = list(_TERM.finditer(step, chain.start(), chain.end()))
    t = rng.choice(terms)
    new_chain = step[chain.start():t.start()] + step[t.end():chain.end()]
    result = _NUMBER.search(step, eq + 1)
    out = _replace_span(step, chain.start(), chain.end(), new_chain)
    value = _evaluate(new_chain)
    if result is not None and value is not None and step[chain.end():eq].strip() == "":
        shift = len(new_chain) - (chain.end() - chain.start())
        new_result = _format_number(value, result.group()) if value >= 0 else None
        if new_result is not None and new_result != result.group():
            out = _replace_span(out, result.start() + shift, result.end() + shift, new_result)
    return out


def _evaluate(chain: str) -> Optional[float]:
    expr = chain.replace("\\times", "*").replace("\\cdot", "*").replace("×", "*").replace("·", "*")
    expr = expr.replace("x", "*")
    if not re.fullmatch(r"[\d.\s+\-*/]+", expr):
        return None
    try:
        return float(eval(expr, {"__builtins__": {}}))  # digits and + - * / only (checked above)
    except (ZeroDivisionError, SyntaxError):
        return None


CORRUPTIONS = {"wrong_result": _wrong_result, "wrong_operand": _wrong_operand, "dropped_term": _dropped_term}


def corrupt_step(step: str, rng: random.Random) -> Optional[str]:
    """``step`` with one model-like mistake (kind drawn from ``CORRUPTIONS`` by ``rng``; the
    others are tried when it does not apply), or None when the step has no number to get wrong."""
    kinds = list(CORRUPTIONS)
    rng.shuffle(kinds)
    for kind in kinds:
        out = CORRUPTIONS[kind](step, rng)
        if out is not None and out != step:
            return out
    return None


def step_pair(solution: Solution, rng: random.Random) -> Optional[StepPair]:
    """One pair from ``solution``: a step drawn among those that can be corrupted, its correct
    prefix, the step itself (chosen) and its corruption (rejected). None if no step qualifies."""
    order = list(range(len(solution.steps)))
    rng.shuffle(order)
    for k in order:
        rejected = corrupt_step(solution.steps[k], rng)
        if rejected is None:
            continue
        prefix = "".join(s + "\n" for s in solution.steps[:k])
        return StepPair(prompt=solution.question, initial_reason_steps=prefix, chosen=solution.steps[k],
                        rejected=rejected, full_chosen=solution.text, full_rejected=prefix + rejected,
                        answer=solution.answer)
    return None


def step_pairs(solutions: Sequence[Solution], seed: int = 0, limit: Optional[int] = None) -> list[StepPair]:
    """Step-wise preference pairs, one per solution that has a corruptible step, deterministic
    under ``seed`` (record ``i`` draws from ``random.Random(f"{seed}:{i}")``)."""
    pairs = []
    for i, sol in enumerate(solutions):
        if limit is not None and len(pairs) >= limit:
            break
        pair = step_pair(sol, random.Random(f"{seed}:{i}"))
        if pair is not None:
            pairs.append(pair)
    return pairs


# --- synthetic arithmetic word problems ----------------------------------------------------------

_NAMES = ["Ann", "Ben", "Cara", "Dan", "Eve", "Finn", "Gia", "Hal"]
_ITEMS = ["apples", "pens", "cards", "coins", "books", "stamps"]


def _add_then_subtract(rng, name, item, hi):
    a, b = rng.randint(1, hi), rng.randint(1, hi)
    c = rng.randint(1, a + b)
    q = f"{name} has {a} {item}. {name} gets {b} more and gives away {c}. How many {item} are left?"
    return q, [f"{name} has {a} + {b} = {a + b} {item}.", f"Then {a + b} - {c} = {a + b - c} {item} are left."], a + b - c


def _groups_plus_extra(rng, name, item, hi):
    a, b, c = rng.randint(2, 9), rng.randint(2, hi), rng.randint(1, hi)
    q = f"{name} buys {a} boxes of {b} {item} and finds {c} more. How many {item} does {name} have?"
    return q, [f"The boxes hold {a} * {b} = {a * b} {item}.", f"With the extra, {a * b} + {c} = {a * b + c} {item}."], a * b + c


def _share_equally(rng, name, item, hi):
    b, r, c = rng.randint(2, 9), rng.randint(1, hi), rng.randint(1, hi)
    a = b * r
    q = f"{name} shares {a} {item} among {b} friends. Each friend then gets {c} more. How many {item} does each friend have?"
    return q, [f"Each friend gets {a} / {b} = {r} {item}.", f"Then {r} + {c} = {r + c} {item}."], r + c


def _three_purchases(rng, name, item, hi):
    a, b, c = rng.randint(1, hi), rng.randint(1, hi), rng.randint(1, hi)
    q = f"{name} buys {a} {item} on Monday, {b} on Tuesday and {c} on Wednesday. How many {item} in all?"
    return q, [f"In all, {a} + {b} + {c} = {a + b + c} {item}."], a + b + c


_TEMPLATES = [_add_then_subtract, _groups_plus_extra, _share_equally, _three_purchases]


def synthetic_arithmetic(n: int, seed: int = 0, max_operand: int = 20) -> list[Solution]:
    """``n`` arithmetic word problems with step-by-step solutions ending in ``The answer is: N``
    (four templates: add then subtract, groups plus extra, equal shares, a three-term sum),
    deterministic under ``seed``; operands up to ``max_operand``."""
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    if not isinstance(max_operand, int) or max_operand < 2:
        raise ValueError(f"max_operand must be an int >= 2, got {max_operand!r}")
    out = []
    for i in range(n):
        rng = random.Random(f"{seed}:{i}")
        template = rng.choice(_TEMPLATES)
        question, steps, answer = template(rng, rng.choice(_NAMES), rng.choice(_ITEMS), max_operand)
        out.append(Solution(question, steps + [f"The answer is: {answer}"], str(answer)))
    return out
