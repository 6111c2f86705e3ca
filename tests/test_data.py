import json
import os
import random
import re

import pytest

from taro_ext import data

SHARED = data.shared_data_dir()
needs_shared = pytest.mark.skipif(not os.path.isfile(os.path.join(SHARED, "gsm8k_train.jsonl")),
                                  reason="../shared/data is not present")


def test_gsm8k_solution_strips_calculator_and_adds_answer_step():
    sol = data.gsm8k_solution("Q?", "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
                                    "Natalia sold 48+24 = <<48+24=72>>72 clips.\n#### 72")
    assert sol.steps == ["Natalia sold 48/2 = 24 clips in May.", "Natalia sold 48+24 = 72 clips.",
                         "The answer is: 72"]
    assert sol.answer == "72"
    with pytest.raises(ValueError, match="answer"):
        data.gsm8k_solution("Q?", "no final line")


def test_math_steps_never_split_inside_math():
    solution = r"We have $x = 1.5. y$ here. Then \[a. b\] holds.  So $\boxed{3}$."
    steps = data.math_solution_steps(solution)
    assert steps == [r"We have $x = 1.5. y$ here.", r"Then \[a. b\] holds.", r"So $\boxed{3}$."]
    assert data.math_boxed_answer(r"so \boxed{\frac{1}{2}} and") == r"\frac{1}{2}"


@pytest.mark.parametrize("kind, step, expected", [
    ("dropped_term", "In all, 5 + 13 + 7 = 25 apples.", {"In all, 13 + 7 = 20 apples.", "In all, 5 + 7 = 12 apples.",
                                                         "In all, 5 + 13 = 18 apples."}),
    ("wrong_result", "Then 28 - 18 = 10 pens.", None),
    ("wrong_operand", "Then 28 - 18 = 10 pens.", None),
])
def test_corruptions(kind, step, expected):
    for seed in range(5):
        out = data.CORRUPTIONS[kind](step, random.Random(seed))
        assert out != step
        if expected is not None:
            assert out in expected
        elif kind == "wrong_result":
            assert out.startswith("Then 28 - 18 = ") and out != step
        else:
            assert out.endswith("= 10 pens.")


def test_corrupt_step_leaves_exponents_and_handles_no_numbers():
    rng = random.Random(0)
    assert data.corrupt_step("No numbers here.", rng) is None
    for seed in range(10):
        out = data.corrupt_step("So $x^2 + 3 = 7$.", random.Random(seed))
        assert "x^2" in out and out != "So $x^2 + 3 = 7$."


def test_step_pairs_layout_and_determinism():
    sols = data.synthetic_arithmetic(20, seed=3)
    pairs = data.step_pairs(sols, seed=1)
    assert len(pairs) == 20
    assert [p.to_dict() for p in pairs] == [p.to_dict() for p in data.step_pairs(sols, seed=1)]
    assert [p.rejected for p in pairs] != [p.rejected for p in data.step_pairs(sols, seed=2)]
    # A record's pair does not depend on the other records.
    assert data.step_pairs(sols[5:6], seed=1)[0].rejected != "" and \
        data.step_pairs(sols, seed=1)[0].to_dict() == data.step_pairs(sols[:1], seed=1)[0].to_dict()
    for p, s in zip(pairs, sols):
        assert p.chosen != p.rejected and p.chosen in s.steps
        k = s.steps.index(p.chosen)
        assert p.initial_reason_steps == "".join(x + "\n" for x in s.steps[:k])
        assert p.full_chosen == s.text and p.full_rejected == p.initial_reason_steps + p.rejected
        assert p.answer == s.answer


def test_synthetic_arithmetic_solutions_are_correct():
    for sol in data.synthetic_arithmetic(50, seed=0, max_operand=30):
        assert sol.steps[-1] == f"The answer is: {sol.answer}"
        for step in sol.steps[:-1]:
            expr, result = re.search(r"([\d\s+\-*/]+)=\s*(\d+)", step).groups()
            assert eval(expr) == int(result)  # the templates' arithmetic is right
    with pytest.raises(ValueError, match="max_operand"):
        data.synthetic_arithmetic(3, max_operand=1)


def test_read_step_pairs_json_and_jsonl(tmp_path):
    record = {"prompt": "P", "initial_reason_steps": "Step 1: a\n", "chosen": "Step 2: b", "rejected": "Step 2: c",
              "full_chosen": "x", "full_rejected": "y", "answer": "1", "dataset": "extra field"}
    (tmp_path / "a.json").write_text(json.dumps([record]))
    (tmp_path / "b.jsonl").write_text(json.dumps(record) + "\n\n" + json.dumps(record) + "\n")
    a = data.read_step_pairs(str(tmp_path / "a.json"))
    b = data.read_step_pairs(str(tmp_path / "b.jsonl"))
    assert len(a) == 1 and len(b) == 2 and a[0] == b[1]
    assert a[0].chosen == "Step 2: b" and a[0].answer == "1"
    data.write_step_pairs(b, str(tmp_path / "c.jsonl"))
    assert data.read_step_pairs(str(tmp_path / "c.jsonl")) == b
    bad = dict(record)
    del bad["rejected"]
    (tmp_path / "bad.jsonl").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="rejected"):
        data.read_step_pairs(str(tmp_path / "bad.jsonl"))


@needs_shared
def test_pairs_from_shared_gsm8k_and_math():
    gsm = data.load_gsm8k(limit=40)
    math_ = data.load_math(limit=40)
    assert all(s.steps[-1] == f"The answer is: {s.answer}" for s in gsm)
    assert sum(bool(s.answer) for s in math_) >= 38
    for pairs in (data.step_pairs(gsm, seed=0), data.step_pairs(math_, seed=0)):
        assert len(pairs) >= 30
        assert all(p.chosen != p.rejected for p in pairs)
