"""The answer graders against the real gold data and hand-written cases.

MATH500 and GSM8K: every gold solution grades correct against its own answer, and with the
answers rotated by one problem (each solution against its neighbour's answer) the only
matches are genuine coincidences, i.e. pairs whose two gold answers are themselves equivalent.
"""
import json
import os
import re

import pytest

from taro_ext.evaluation import extract_choice, extract_number_answer, grade
from taro_ext.evaluation.graders import parse_math_gold, parse_math_output, verify_math

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


def _rows(name):
    path = os.path.join(DATA, name)
    if not os.path.exists(path):
        pytest.skip(f"{path} not found (the shared data directory)")
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_math500_gold_solutions_grade_correct_and_rotated_answers_wrong():
    rows = _rows("math500_test.jsonl")
    assert len(rows) == 500
    golds = [parse_math_gold(r["answer"]) for r in rows]
    solutions = [parse_math_output(r["solution"]) for r in rows]
    wrong_own = [r["unique_id"] for r, g, s in zip(rows, golds, solutions) if not verify_math(g, s)]
    assert wrong_own == []
    n = len(rows)
    for i in range(n):
        j = (i + 1) % n
        if verify_math(golds[j], solutions[i]):
            # A genuine coincidence: the two gold answers are equivalent ("5" vs "x=5", "7" vs "7").
            assert verify_math(golds[j], parse_math_output("$\\boxed{" + rows[i]["answer"] + "}$")), \
                (rows[i]["unique_id"], rows[i]["answer"], rows[j]["answer"])


def test_gsm8k_gold_answers_grade_correct_and_rotated_answers_wrong():
    rows = _rows("gsm8k_test.jsonl")
    assert len(rows) == 1319
    for r in rows:
        assert grade("gsm8k", r["answer"], r["answer"]), r["answer"]
        # The same solution with its "#### N" line rewritten as a boxed final answer.
        steps, number = r["answer"].rsplit("####", 1)
        assert grade("gsm8k", steps + f"The answer is $\\boxed{{{number.strip()}}}$.", r["answer"])
    coincidences = 0
    for i, r in enumerate(rows):
        neighbour = rows[(i + 1) % len(rows)]["answer"]
        if grade("gsm8k", r["answer"], neighbour):
            assert extract_number_answer(r["answer"]) == extract_number_answer(neighbour)
            coincidences += 1
    assert coincidences < 30  # 15 neighbouring pairs share their answer in this file


@pytest.mark.parametrize("output, gold, expected", [
    # fractions
    (r"The answer is $\boxed{\frac{1}{2}}$.", r"\frac12", True),
    (r"so $\boxed{0.5}$", r"\frac{1}{2}", True),
    (r"$\boxed{\dfrac{3}{4}}$", r"\tfrac34", True),
    (r"$\boxed{1/2}$", r"\frac{1}{2}", True),
    (r"$\boxed{\frac{2}{3}}$", r"\frac{1}{2}", False),
    (r"$\boxed{0.33}$", r"\frac13", False),
    # \left( \right) and tuples
    (r"$\boxed{\left( 3, \frac{\pi}{2} \right)}$", r"(3, \frac{\pi}{2})", True),
    (r"$\boxed{(3, \pi)}$", r"\left( 3, \frac{\pi}{2} \right)", False),
    # units
    (r"$\boxed{12\text{ cm}}$", "12", True),
    (r"$\boxed{12 \mbox{ inches}}$", "12", True),
    (r"$\boxed{90^\circ}$", "90", True),
    (r"$\boxed{13\text{ cm}}$", "12", False),
    (r"$\boxed{\$1{,}000}$", "1000", True),
    # percent
    (r"$\boxed{50\%}$", "50", True),
    (r"$\boxed{50}$", r"50\%", True),
    (r"$\boxed{40\%}$", "50", False),
    # intervals
    (r"$\boxed{[2, 5)}$", r"\left[ 2, 5 \right)", True),
    (r"$\boxed{(2, 5)}$", "[2, 5)", False),
    (r"$\boxed{(-\infty, 0) \cup (1, \infty)}$", r"(-\infty,0)\cup(1,\infty)", True),
    (r"$\boxed{x \in [2,5)}$", "[2,5)", True),
    # symbolic equivalence, and the last boxed answer wins
    (r"$\boxed{\sqrt{8}}$", r"2\sqrt{2}", True),
    (r"first $\boxed{2}$, corrected: $\boxed{3}$", "3", True),
    (r"first $\boxed{3}$, corrected: $\boxed{2}$", "3", False),
    ("no box, the final answer is 7", "7", True),
    ("I cannot solve this.", "7", False),
])
def test_math_latex_equivalences(output, gold, expected):
    assert grade("math500", output, gold) is expected


@pytest.mark.parametrize("output, gold, expected", [
    ("She pays 3 * 4 = 12 dollars.\n#### 12", "#### 12", True),
    (r"So the total is $\boxed{1,000}$ dollars, not 999.", "... #### 1000", True),
    ("The total is 1,000.", 1000, True),
    ("It costs $18.00.", "#### 18", True),
    ("3 + 4 = 7, then 7 * 2 = 14", "#### 14", True),
    ("3 + 4 = 7, then 7 * 2 = 14, so 15", "#### 14", False),
    (r"$\boxed{-3}$", "#### -3", True),
    ("no number here", "#### 5", False),
    (r"$\boxed{\frac{1}{2}}$", 0.5, True),  # a boxed fraction is its value, not its last number
    (r"$\boxed{\frac{1}{2}}$", 2, False),
    ("The answers are 1,2,3", 123, False),  # commas group thousands only
    ("so 8 - 2 = 6 (check: 10-4)", 4, True),  # a hyphen after a digit subtracts: 4, not -4
    ("\u22125 degrees", -5, True),  # the Unicode minus sign
])
def test_number_answers(output, gold, expected):
    assert grade("gsm8k", output, gold) is expected
    assert grade("synthetic", output, gold) is expected


@pytest.mark.parametrize("output, letter", [
    ("The answer is (B).", "B"),
    ("Answer: C", "C"),
    ("D", "D"),
    ("(E) Platelet dysfunction secondary to sepsis", "E"),
    ("A. Disclose the error to the patient", "A"),
    (r"Therefore $\boxed{J}$", "J"),
    (r"$\boxed{\text{(H)}}$", "H"),
    ("I think A is wrong; the correct option is D.", "D"),
    ("**Answer: F**", "F"),
    ("The answer is: **G**", "G"),
    ("Given the fever, (I) fits best.", "I"),
    ("the answer is a viral infection", None),  # lower-case article, not an option
    ("Answer Choices: (A) foo (B) bar", None),  # an echoed option list states no answer
    ("(A) foo\n(B) bar\nThe answer is (B)", "B"),  # options walked in order, then the stated answer
    ("Answer: I think so", None),  # the pronoun I is not option I
    ("", None),
])
def test_letter_extraction(output, letter):
    assert extract_choice(output) == letter


def test_choice_grading_takes_medqa_labels():
    rows = _rows("medqa_input.jsonl")
    for r in rows[:50]:
        letter = r["label"][0]
        assert grade("medqa", f"The answer is ({letter}).", r["label"])
        other = "A" if letter != "A" else "B"
        assert not grade("medqa", f"The answer is ({other}).", r["label"])
    options = re.findall(r"\(([A-J])\)", _rows("medxpertqa_sampled_text_input.jsonl")[0]["question"])
    assert options == list("ABCDEFGHIJ")
    assert grade("medxpertqa", "Answer: J", ["J"])


def test_grade_rejects_bad_arguments():
    with pytest.raises(ValueError, match="task"):
        grade("mmlu", "A", "A")
    with pytest.raises(ValueError, match="judge"):
        grade("alpaca_eval", "text", "ref")
    with pytest.raises(TypeError, match="output_text"):
        grade("gsm8k", None, "#### 3")
    with pytest.raises(ValueError, match="gold"):
        grade("medqa", "A", "AB")
    with pytest.raises(ValueError, match="gold"):
        grade("gsm8k", "3", "no number")
