"""The ``taro-ext`` CLI on a user's mistake: exit 2 and one line on stderr naming the flag,
file or line, no traceback; Ctrl-C exits 130; ``--debug`` / ``TARO_EXT_DEBUG=1`` show the
traceback; a programming error keeps its traceback. Each case runs ``main`` in-process and
fails before any model loads."""
import importlib.util
import json

import pytest

from taro_ext.cli import main
from taro_ext.data import DataError

GSM = {"question": "Q?", "answer": "1 + 1 = 2\n#### 2"}


def run(capsys, *argv):
    try:
        code = main(list(argv))
    except SystemExit as e:  # argparse's own errors
        code = e.code
    return code, capsys.readouterr().err


def user_error(capsys, *argv):
    """The one stderr line of a user error (exit 2, no traceback)."""
    code, err = run(capsys, *argv)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert "Traceback" not in err and len(lines) == 1, err
    return lines[0]


def eval_args(path, task="gsm8k", *more):
    # No model at --base: a data check that did not fire ends in a model error, not a long run.
    return ["eval", "--task", task, "--data", str(path), "--methods", "base", "--base", "/no/model", *more]


def write_jsonl(path, *lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.mark.parametrize("lines, expected", [
    ([json.dumps(GSM), json.dumps({"answer": "#### 1"})], "eval.jsonl:2: missing field 'question'"),
    ([json.dumps([GSM])], "eval.jsonl:1: a record must be a JSON object, got a list"),
    ([json.dumps(GSM), json.dumps(GSM), '{"question": "x", '], "eval.jsonl:3: invalid JSON"),
    ([json.dumps({"question": "Q", "answer": "4"})], "eval.jsonl:1: field 'answer': a GSM8K answer ends with '####"),
])
def test_malformed_jsonl(tmp_path, capsys, lines, expected):
    line = user_error(capsys, *eval_args(write_jsonl(tmp_path / "eval.jsonl", *lines)))
    assert line.startswith("taro-ext eval: error: ") and expected in line and str(tmp_path) in line


def test_json_of_the_wrong_shape(tmp_path, capsys):
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps({"instruction": ["a", "b"]}, indent=2))
    assert "alpaca.json:1: a .json data file holds a list of JSON objects, got an object" in user_error(
        capsys, *eval_args(path, "alpaca_eval"))
    path.write_text(json.dumps([{"instruction": "a"}, {"instruction": 5}], indent=2))
    assert "alpaca.json:5: field 'instruction' must be a string, got a number" in user_error(
        capsys, *eval_args(path, "alpaca_eval"))


def test_encodings(tmp_path, capsys):
    path = tmp_path / "eval.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"answer": "#### 1"}).encode() + b"\n")
    # The byte-order mark is accepted: the error is about the record, not the encoding.
    assert "eval.jsonl:1: missing field 'question'" in user_error(capsys, *eval_args(path))
    path.write_bytes(json.dumps(GSM).encode() + b"\n" + b'{"question": "\xff"}\n')
    assert "eval.jsonl:2: not UTF-8 (byte 0xff" in user_error(capsys, *eval_args(path))


def test_math500_without_boxed(tmp_path, capsys):
    path = write_jsonl(tmp_path / "m.jsonl", json.dumps({"problem": "P", "solution": "It is 4.", "unique_id": "u"}))
    assert "m.jsonl:1: field 'solution' has no \\boxed{...} answer" in user_error(capsys, *eval_args(path, "math500"))


def test_missing_files_and_models(tmp_path, capsys):
    assert f"no data file at {tmp_path / 'nope.jsonl'}" in user_error(capsys, *eval_args(tmp_path / "nope.jsonl"))
    code, err = run(capsys, "generate", "--mode", "base", "--base", str(tmp_path / "no_model"), "--prompt", "hi")
    assert code == 2 and "Traceback" not in err
    assert str(tmp_path / "no_model") in err.splitlines()[-1] and "config.json" in err.splitlines()[-1]


def test_flags(tmp_path, capsys):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    cases = [
        (["generate", "--prompt", "hi", "--device", "potato"], "argument --device: 'potato' is not a device"),
        (["eval", "--task", "gsm8k", "--device", "cuda:7"], "argument --device: 'cuda:7'"),
        (["generate", "--prompt", "hi", "--max-new-tokens", "0"], "argument --max-new-tokens: must be a positive"),
        (["generate", "--prompt", "hi", "--temperature", "nan"], "argument --temperature: must be a finite number"),
        (["explain", "--prompt", "hi", "--out", str(tmp_path)], f"argument --out: {tmp_path} is a directory"),
        (["eval", "--task", "gsm8k", "--out", str(a_file)], f"argument --out: {a_file} is a file"),
        (["train-router", "--base", "b", "--reward", "r", "--output", "o", "--cache", str(a_file)],
         f"argument --cache: {a_file} is a file, not a directory"),
        (["train-reward", "--model", "m", "--output", str(a_file)], f"argument --output: {a_file} is a file"),
        (["train-router", "--base", "b", "--reward", "r", "--output", "o", "--alpha-max", "4", "--init-alpha", "4"],
         "--init-alpha must lie in (0, --alpha-max=4), got 4"),
        (["make-corrections", "--base", "b", "--router", "r", "--output", "o.jsonl"],
         "--reward and --router go together"),
        (["make-corrections", "--base", "b", "--seed", "1234", "--output", "o.jsonl"],
         "--seed=1234 is the evaluation's seed"),
        (["eval", "--task", "medqa", "--seed", "5"], "--seed is for the generated tasks"),
        (["train-router", "--base", "b", "--reward", "r", "--output", "o", "--domain-weight", "correction"],
         "argument --domain-weight: expected DOMAIN=W with W a finite number > 0, got 'correction'"),
        (["train-router", "--base", "b", "--reward", "r", "--output", "o", "--domain-weight", "c=-1"],
         "argument --domain-weight: expected DOMAIN=W"),
        (["train-router", "--base", "b", "--reward", "r", "--output", "o", "--domain-loss", "arithmetic=mse"],
         "argument --domain-loss: expected DOMAIN=LOSS with LOSS one of alpha_decisive, alpha_target, alpha_zero, nll, top1, got 'arithmetic=mse'"),
        (["train-router", "--base", "b", "--reward", "r", "--output", "o", "--top1-scale", "0"],
         "argument --top1-scale: must be a finite number > 0, got 0"),
        (["eval", "--task", "mmlu"], "argument --task: invalid choice: 'mmlu'"),
        (["generate", "--prompt", "hi", "--engine", "vllm"], "argument --engine: invalid choice: 'vllm'"),
        # Flags that the chosen mode or engine would ignore are refused, not dropped.
        (["generate", "--prompt", "hi", "--mode", "base", "--alpha", "2"], "--alpha is GenARM's fixed alpha"),
        (["generate", "--prompt", "hi", "--mode", "base", "--engine", "llamacpp", "--cache", "static"],
         "--cache static is the transformers engine's"),
        # Files checked when the flags are parsed, before a model loads or a long run starts.
        (["make-corrections", "--base", "b", "--output", str(tmp_path)], f"argument --output: {tmp_path} is a directory"),
        (["train-reward", "--model", "m", "--output", "o", "--sft", str(tmp_path / "nope.jsonl")],
         f"argument --sft: {tmp_path / 'nope.jsonl'}: no such file"),
        (["make-data", "--output", "o", "--general-prompts", str(tmp_path)],
         f"argument --general-prompts: {tmp_path}: a directory, not a file"),
        (["make-data", "--output", "o", "--num-sft", "-2"], "argument --num-sft: must be a non-negative integer"),
        (["eval-likelihood", "--task", "alpaca_eval", "--methods", "base,genarm:1e6"],
         "methods: 'genarm:1e6': alpha must lie in [0, 10000]"),
    ]
    for argv, expected in cases:
        assert expected in user_error(capsys, *argv), argv


def test_engine_llamacpp_names_the_model_flag(tmp_path, capsys):
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed here")
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    line = user_error(capsys, "generate", "--engine", "llamacpp", "--mode", "base", "--base", str(tmp_path / "no"),
                      "--prompt", "hi")
    assert line == f"taro-ext generate: error: --base {tmp_path / 'no'}: no such file or directory"
    line = user_error(capsys, "generate", "--engine", "llamacpp", "--mode", "genarm", "--reward", str(a_file),
                      "--prompt", "hi")
    assert line == f"taro-ext generate: error: --reward {a_file}: neither a .gguf file nor a model directory"


def test_engine_llamacpp_without_llama_cpp(capsys):
    if importlib.util.find_spec("llama_cpp") is not None:
        pytest.skip("llama-cpp-python is installed here")
    line = user_error(capsys, "generate", "--engine", "llamacpp", "--mode", "base", "--prompt", "hi")
    assert line.startswith("taro-ext generate: error: --engine llamacpp needs llama-cpp-python"), line


def test_missing_companion_flag(tmp_path, capsys):
    path = write_jsonl(tmp_path / "eval.jsonl", json.dumps(GSM))
    line = user_error(capsys, "eval", "--task", "gsm8k", "--data", str(path), "--methods", "base,taro")
    assert line == "taro-ext eval: error: --reward is required for genarm and taro methods"


def test_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    path = write_jsonl(tmp_path / "eval.jsonl", json.dumps({"answer": "#### 1"}))
    with pytest.raises(DataError, match="eval.jsonl:1: missing field 'question'"):
        main(["--debug", *eval_args(path)])
    with pytest.raises(DataError):
        main([*eval_args(path), "--debug"])
    monkeypatch.setenv("TARO_EXT_DEBUG", "1")
    with pytest.raises(DataError):
        main(eval_args(path))
    monkeypatch.setenv("TARO_EXT_DEBUG", "0")
    assert "missing field 'question'" in user_error(capsys, *eval_args(path))


def test_interrupt_and_programming_errors(tmp_path, capsys, monkeypatch):
    from taro_ext.evaluation import datasets

    path = write_jsonl(tmp_path / "eval.jsonl", json.dumps(GSM))

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(datasets, "load_items", interrupted)
    code, err = run(capsys, *eval_args(path))
    assert code == 130 and err == "taro-ext: interrupted\n"
    with pytest.raises(KeyboardInterrupt):
        main(["--debug", *eval_args(path)])

    def bug(*args, **kwargs):
        return {}["no such key"]  # a KeyError from our own code is a bug, not a user error

    monkeypatch.setattr(datasets, "load_items", bug)
    with pytest.raises(KeyError):
        main(eval_args(path))
