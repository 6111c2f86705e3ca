"""Reading data files: every malformed file or record is a ``DataError`` naming the file and
the 1-based line (and the field), for training data (``taro_ext.data``) and evaluation sets
(``taro_ext.evaluation.datasets``), whose gold must be gradable at load time."""
import json

import pytest

from taro_ext import data
from taro_ext.data import DataError
from taro_ext.evaluation.datasets import load_items

GSM = {"question": "Q?", "answer": "Step 1 = 2.\n#### 2"}
MED = {"id": "m1", "question": "Which?\nAnswer Choices: (A) x (B) y (C) z (D) w", "label": ["C"]}


def write(path, text):
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return str(path)


def jsonl(path, *records):
    return write(path, "".join(json.dumps(r) + "\n" for r in records))


def test_jsonl_records_carry_their_line(tmp_path):
    path = write(tmp_path / "a.jsonl", json.dumps(GSM) + "\n\n  \n" + json.dumps(GSM) + "\r\n")
    records = data.read_records(path)
    assert [(r.path, r.line) for r in records] == [(path, 1), (path, 4)]
    assert records[1].fields == GSM


def test_json_list_records_carry_their_line(tmp_path):
    text = json.dumps([GSM, {"question": "R", "answer": "#### 3"}], indent=2)
    path = write(tmp_path / "a.json", text)
    lines = text.split("\n")
    starts = [n for n, line in enumerate(lines, 1) if line.strip() == "{"]
    assert [r.line for r in data.read_records(path)] == starts == [2, 6]
    assert data.read_records(write(tmp_path / "e.json", "[ ]\n")) == []


def test_byte_order_mark_is_accepted(tmp_path):
    bom = b"\xef\xbb\xbf"
    a = data.read_records(write(tmp_path / "a.jsonl", bom + (json.dumps(GSM) + "\n").encode()))
    b = data.read_records(write(tmp_path / "b.json", bom + json.dumps([GSM]).encode()))
    assert a[0].fields == b[0].fields == GSM


def test_line_separators_inside_strings_are_not_line_breaks(tmp_path):
    record = {"question": "a\u2028b\u0085c", "answer": "#### 1"}
    path = write(tmp_path / "a.jsonl", json.dumps(record, ensure_ascii=False) + "\n" + json.dumps(GSM) + "\n")
    records = data.read_records(path)
    assert [r.line for r in records] == [1, 2] and records[0].fields == record


@pytest.mark.parametrize("name, content, message", [
    ("bad.jsonl", json.dumps(GSM) + "\n" + json.dumps(GSM) + "\n{\"question\": \"x\",\n",
     r"bad\.jsonl:3: invalid JSON \(.*one JSON object per line"),
    ("bad.json", '[\n  {"a": 1},\n  {"a": 2},\n  {"a": 3,, "b": 4}\n]\n', r"bad\.json:4: invalid JSON"),
    ("bad.json", '[\n  {"a": 1}\n  {"a": 2}\n]\n', r"bad\.json:3: invalid JSON \(expected ','"),
    ("bad.json", '[{"a": 1}]\n[{"a": 2}]\n', r"bad\.json:2: invalid JSON \(extra data"),
    ("list.jsonl", json.dumps(GSM) + "\n" + json.dumps([GSM]) + "\n", r"list\.jsonl:2: .*JSON object, got a list"),
    ("num.json", json.dumps([GSM, 7]), r"num\.json:1: .*JSON object, got a number"),
    ("obj.json", json.dumps({"records": [GSM]}, indent=2), r"obj\.json:1: .* list of JSON objects, got an object"),
    ("list.jsonl", json.dumps([GSM]) + "\n", r"list\.jsonl:1: .*JSON object, got a list"),
    ("cut.json", '[\n  {"a": 1},\n  {"a": ', r"cut\.json:3: invalid JSON"),
    ("latin1.jsonl", (json.dumps(GSM) + "\n").encode() + '{"question": "caf\xe9"}\n'.encode("latin-1"),
     r"latin1\.jsonl:2: not UTF-8 \(byte 0xe9 at offset \d+\)"),
])
def test_malformed_files_name_file_and_line(tmp_path, name, content, message):
    with pytest.raises(DataError, match=message):
        data.read_records(write(tmp_path / name, content))


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="no data file"):
        data.read_records(str(tmp_path / "nope.jsonl"))
    with pytest.raises(FileNotFoundError, match="a directory"):
        data.read_records(str(tmp_path))


def test_training_loaders_name_file_line_and_field(tmp_path):
    path = jsonl(tmp_path / "g.jsonl", GSM, {"answer": "#### 1"})
    with pytest.raises(DataError, match=r"g\.jsonl:2: missing field 'question'"):
        data.load_gsm8k(path)
    path = jsonl(tmp_path / "h.jsonl", GSM, GSM, {"question": "Q", "answer": "no final line"})
    with pytest.raises(DataError, match=r"h\.jsonl:3: answer: a GSM8K answer ends with '#### <number>'"):
        data.load_gsm8k(path)
    path = jsonl(tmp_path / "i.jsonl", {"question": "Q", "answer": "1 + 1 = 2\n####   "})
    with pytest.raises(DataError, match=r"i\.jsonl:1: answer"):
        data.load_gsm8k(path)
    assert len(data.load_gsm8k(path, limit=0)) == 0  # only the records loaded are parsed
    path = jsonl(tmp_path / "m.jsonl", {"problem": "P", "solution": 3})
    with pytest.raises(DataError, match=r"m\.jsonl:1: field 'solution' must be a string, got a number"):
        data.load_math(path)
    pair = {"prompt": "P", "initial_reason_steps": "", "chosen": "a", "rejected": "b"}
    path = jsonl(tmp_path / "p.jsonl", pair, {**pair, "answer": ["7"]})
    with pytest.raises(DataError, match=r"p\.jsonl:2: field 'answer' must be a string, got a list"):
        data.read_step_pairs(path)
    path = jsonl(tmp_path / "q.jsonl", pair, pair, {k: v for k, v in pair.items() if k != "chosen"})
    with pytest.raises(DataError, match=r"q\.jsonl:3: missing field 'chosen'"):
        data.read_step_pairs(path)


@pytest.mark.parametrize("task, record, message", [
    ("gsm8k", {"question": "Q", "answer": "The answer is 4."}, r"field 'answer': a GSM8K answer ends with '####"),
    ("gsm8k", {"question": "Q", "answer": "4\n#### four"}, r"field 'answer': gold has no number after '####'"),
    ("gsm8k", {"answer": "#### 4"}, r"missing field 'question'"),
    ("math500", {"problem": "P", "solution": "It is 4.", "unique_id": "u"}, r"field 'solution' has no \\boxed"),
    ("math500", {"problem": "P", "solution": "\\boxed{4}", "answer": " ", "unique_id": "u"},
     r"field 'answer' is empty"),
    ("math", {"problem": "P", "solution": "So \\boxed{}.", "unique_id": "u"}, r"field 'solution' has no \\boxed"),
    ("math500", {"problem": "P", "answer": "4"}, r"missing field 'unique_id'"),
    ("medqa", {**MED, "label": ["E"]}, r"field 'label': E is not one of the question's options \['A', 'B', 'C', 'D'\]"),
    ("medqa", {**MED, "label": ["C", "D"]}, r"field 'label': gold must name exactly one option"),
    ("medqa", {**MED, "label": "Z"}, r"field 'label': gold must be one option letter"),
    ("medxpertqa", {**MED, "question": "Which? A, B or C?"}, r"field 'question' lists no options"),
    ("medqa", {k: v for k, v in MED.items() if k != "label"}, r"field 'label'"),
])
def test_eval_gold_that_cannot_be_graded_is_refused_at_load(tmp_path, task, record, message):
    good = {"gsm8k": GSM, "math500": {"problem": "P", "solution": "\\boxed{1}", "answer": "1", "unique_id": "v"},
            "math": {"problem": "P", "solution": "so \\boxed{1}", "unique_id": "v"}}.get(task, MED)
    path = jsonl(tmp_path / "eval.jsonl", good, good, record)
    assert len(load_items(task, path, limit=2)) == 2
    with pytest.raises(DataError, match=r"eval\.jsonl:3: " + message):
        load_items(task, path)


def test_eval_items_from_valid_records(tmp_path):
    gsm = load_items("gsm8k", jsonl(tmp_path / "g.jsonl", GSM))
    assert gsm[0].gold == GSM["answer"] and gsm[0].prompt.startswith("Q?\n")
    math = load_items("math", jsonl(tmp_path / "m.jsonl", {"problem": "P", "solution": "x \\boxed{\\frac{1}{2}}.",
                                                             "unique_id": "test/1.json"}))
    assert math[0].gold == "\\frac{1}{2}" and math[0].id == "test/1.json"
    med = load_items("medqa", jsonl(tmp_path / "q.jsonl", MED))
    assert med[0].gold == ["C"] and med[0].id == "m1"
    path = write(tmp_path / "alpaca.json", json.dumps([{"instruction": "Hi", "dataset": "d"}, {"dataset": "e"}],
                                                      indent=2))
    with pytest.raises(DataError, match=r"alpaca\.json:6: missing field 'instruction'"):
        load_items("alpaca_eval", path)
    assert load_items("alpaca_eval", path, limit=1)[0].meta == {"dataset": "d"}
