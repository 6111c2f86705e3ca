"""Arithmetic word problems of graded difficulty, with exact step-by-step solutions.

The in-domain set of the SmolLM2 recipe (``bench/smollm2_recipe.sh``): a 135M chat model writes
plausible steps for these and gets a fraction of the sums wrong, so a step-wise reward model
has something to correct. Four levels:

1. one step: an addition;
2. one step: a subtraction, a product or an exact quotient;
3. two steps: add then take away, groups plus extra, take away then add;
4. two or three steps: shares plus extra, three-term sums, groups minus a loss.

Every problem draws from ``random.Random(f"{seed}:{level}:{i}")``, so a problem does not
depend on the others in the list, and seeds give disjoint-in-practice sets (the recipe trains
on seeds 0-2 and evaluates on seed 1234). Phrasings vary (several sentences per operation) so
a model cannot key on one template.
"""
from __future__ import annotations

import ast
import operator
import random
import re
from fractions import Fraction
from typing import Optional, Sequence

from .data import Solution

LEVELS = (1, 2, 3, 4)

_NAMES = ["Ann", "Ben", "Cara", "Dan", "Eve", "Finn", "Gia", "Hal", "Ivy", "Jon", "Kim", "Leo", "Mia", "Noah",
          "Omar", "Pia", "Raj", "Sara", "Tom", "Uma"]
_ITEMS = ["apples", "pens", "cards", "coins", "books", "stamps", "marbles", "stickers", "shells", "cookies",
          "pencils", "balloons", "beads", "toy cars", "flowers", "eggs"]
_CONTAINERS = ["boxes", "bags", "packs", "jars", "baskets", "crates"]


def _pick(rng: random.Random, options: Sequence[str]) -> str:
    return options[rng.randrange(len(options))]


def _level1(rng, name, item):
    a, b = rng.randint(2, 12), rng.randint(2, 9)
    q = _pick(rng, [
        f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have now?",
        f"There are {a} {item} in a box. {name} puts in {b} more. How many {item} are in the box?",
        f"{name} collected {a} {item} in the morning and {b} {item} in the afternoon. How many {item} did {name} collect?",
    ])
    return q, [f"{name} has {a} + {b} = {a + b} {item}."], a + b


def _level2(rng, name, item):
    kind = rng.randrange(3)
    if kind == 0:
        a = rng.randint(5, 20)
        b = rng.randint(2, a - 1)
        q = _pick(rng, [
            f"{name} has {a} {item} and gives away {b}. How many {item} are left?",
            f"There were {a} {item} on the table. {name} took {b} of them. How many {item} are still on the table?",
        ])
        return q, [f"{name} has {a} - {b} = {a - b} {item} left."], a - b
    if kind == 1:
        a, b = rng.randint(2, 5), rng.randint(2, 6)
        box = _pick(rng, _CONTAINERS)
        q = _pick(rng, [
            f"{name} buys {a} {box} of {item}. Each of the {box} holds {b} {item}. How many {item} does {name} buy?",
            f"There are {a} {box} with {b} {item} in each. How many {item} are there in all?",
        ])
        return q, [f"The {box} hold {a} * {b} = {a * b} {item}."], a * b
    b, r = rng.randint(2, 5), rng.randint(2, 6)
    a = b * r
    q = _pick(rng, [
        f"{name} shares {a} {item} equally among {b} friends. How many {item} does each friend get?",
        f"{a} {item} are packed into {b} equal groups. How many {item} are in each group?",
    ])
    return q, [f"Each gets {a} / {b} = {r} {item}."], r


def _level3(rng, name, item):
    kind = rng.randrange(3)
    if kind == 0:
        a, b = rng.randint(5, 40), rng.randint(2, 30)
        c = rng.randint(1, a + b - 1)
        q = _pick(rng, [
            f"{name} has {a} {item}. {name} gets {b} more and then gives away {c}. How many {item} are left?",
            f"A shelf holds {a} {item}. {name} adds {b} {item} and later removes {c}. How many {item} are on the shelf?",
        ])
        return q, [f"First, {a} + {b} = {a + b} {item}.", f"Then, {a + b} - {c} = {a + b - c} {item}."], a + b - c
    if kind == 1:
        a, b, c = rng.randint(2, 9), rng.randint(2, 12), rng.randint(1, 20)
        box = _pick(rng, _CONTAINERS)
        q = _pick(rng, [
            f"{name} buys {a} {box} of {item} with {b} in each and finds {c} more. How many {item} does {name} have?",
            f"There are {a} {box} of {b} {item} each, and {c} loose {item}. How many {item} are there in total?",
        ])
        return q, [f"The {box} hold {a} * {b} = {a * b} {item}.", f"Then, {a * b} + {c} = {a * b + c} {item}."], a * b + c
    a = rng.randint(10, 50)
    b = rng.randint(2, a - 1)
    c = rng.randint(2, 30)
    q = _pick(rng, [
        f"{name} had {a} {item} and lost {b}. Then {name} bought {c} more. How many {item} does {name} have now?",
        f"A jar had {a} {item}. {name} ate {b} and then added {c}. How many {item} are in the jar?",
    ])
    return q, [f"First, {a} - {b} = {a - b} {item}.", f"Then, {a - b} + {c} = {a - b + c} {item}."], a - b + c


def _level4(rng, name, item):
    kind = rng.randrange(3)
    if kind == 0:
        b, r, c = rng.randint(2, 9), rng.randint(2, 12), rng.randint(2, 20)
        a = b * r
        q = (f"{name} shares {a} {item} equally among {b} friends. Each friend then gets {c} more. "
             f"How many {item} does each friend have?")
        return q, [f"Each friend gets {a} / {b} = {r} {item}.", f"Then, {r} + {c} = {r + c} {item}."], r + c
    if kind == 1:
        a, b, c = rng.randint(5, 40), rng.randint(5, 40), rng.randint(5, 40)
        q = _pick(rng, [
            f"{name} buys {a} {item} on Monday, {b} on Tuesday and {c} on Wednesday. How many {item} does {name} buy in all?",
            f"Three friends have {a}, {b} and {c} {item}. How many {item} do they have together?",
        ])
        return q, [f"In all, {a} + {b} + {c} = {a + b + c} {item}."], a + b + c
    a, b = rng.randint(2, 9), rng.randint(3, 12)
    c = rng.randint(1, a * b - 1)
    box = _pick(rng, _CONTAINERS)
    q = (f"{name} has {a} {box} of {item} with {b} {item} in each. {name} gives away {c} {item}. "
         f"How many {item} are left?")
    return q, [f"The {box} hold {a} * {b} = {a * b} {item}.", f"Then, {a * b} - {c} = {a * b - c} {item}."], a * b - c


_BY_LEVEL = {1: _level1, 2: _level2, 3: _level3, 4: _level4}


def word_problem(level: int, seed: int, index: int) -> Solution:
    """Problem ``index`` of ``level`` under ``seed``: question, steps ending in "The answer is N."."""
    if level not in _BY_LEVEL:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    rng = random.Random(f"{seed}:{level}:{index}")
    question, steps, answer = _BY_LEVEL[level](rng, _pick(rng, _NAMES), _pick(rng, _ITEMS))
    return Solution(question, steps + [f"The answer is {answer}."], str(answer))


def graded_problems(n: int, seed: int, levels: Sequence[int] = LEVELS) -> list[tuple[int, Solution]]:
    """``n`` problems as ``(level, solution)``, the levels in turn (so every level gets n/len(levels))."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    if not levels or any(lv not in _BY_LEVEL for lv in levels):
        raise ValueError(f"levels must be a non-empty subset of {LEVELS}, got {levels!r}")
    levels = list(levels)
    return [(levels[i % len(levels)], word_problem(levels[i % len(levels)], seed, i // len(levels)))
            for i in range(n)]



# --- checking a model's arithmetic -------------------------------------------------------------

# `expression = result`: integers joined by + - * / x × ÷ (parentheses allowed), "=", an integer.
_EQUATION = re.compile(r"(?<![\w.])((?:\(\s*)*\d+(?:\s*\)*\s*[-+*/x×÷]\s*\(*\s*\d+)+\s*\)*)\s*=(\s*)(-?\d+)(?![\d.,]\d)")
_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: Fraction}


def _value(node) -> Fraction:
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return Fraction(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _value(node.left), _value(node.right)
        if isinstance(node.op, ast.Div) and right == 0:
            raise ZeroDivisionError
        return _BINARY[type(node.op)](left, right)
    raise ValueError("not an arithmetic expression")


def expression_value(expression: str) -> Optional[Fraction]:
    """The exact value of an integer expression (``+ - * /``, ``x × ÷``, parentheses; the usual
    precedence), or None when it is not one (or divides by zero)."""
    text = expression.replace("×", "*").replace("÷", "/").replace("x", "*")
    try:
        return _value(ast.parse(text, mode="eval").body)
    except (SyntaxError, ValueError, ZeroDivisionError, RecursionError):
        return None


def wrong_results(text: str) -> list[tuple[int, str]]:
    """Each ``expression = N`` in ``text`` whose N is not the expression's value, as
    ``(offset, correct)``: ``text[:offset]`` ends with the "=" and ``correct`` is what should
    follow it (the whitespace the text has there, then the right integer). Equations whose
    value is not an integer are skipped: there is no single right way to write them."""
    out = []
    for m in _EQUATION.finditer(text):
        value = expression_value(m.group(1))
        if value is None or value.denominator != 1 or int(m.group(3)) == value:
            continue
        out.append((m.start(2), m.group(2) + str(value.numerator)))
    return out
