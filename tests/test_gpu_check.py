"""bench/gpu_check.sh's own logic on CPU: the step records its shell function writes (exit
status, hang watchdog), JUnit parsing, speed verdicts, summary.json and the exit codes."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "bench", "gpu_check.sh")


def _load():
    spec = importlib.util.spec_from_file_location("gpu_check", os.path.join(ROOT, "bench", "gpu_check.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gpu_check = _load()


def run_step(out_dir, *step_args):
    """Runs the script's own `step` shell function (extracted from gpu_check.sh) in OUT_DIR."""
    with open(SCRIPT) as f:
        body = re.search(r"^step\(\) \{.*?^\}", f.read(), re.S | re.M).group(0)
    os.makedirs(os.path.join(out_dir, "steps"), exist_ok=True)
    quoted = " ".join("'" + a.replace("'", "'\\''") + "'" for a in step_args)
    proc = subprocess.run(["bash", "-c", f"{body}\nOUT_DIR='{out_dir}'\nstep {quoted}"], capture_output=True,
                          text=True, timeout=60)
    return proc.returncode


def junit(path, *, passed=0, failed=(), skipped=0):
    cases = [f'<testcase classname="t" name="ok{i}"/>' for i in range(passed)]
    cases += [f'<testcase classname="t" name="{n}"><failure message="x"/></testcase>' for n in failed]
    cases += [f'<testcase classname="t" name="skip{i}"><skipped/></testcase>' for i in range(skipped)]
    total = passed + len(failed) + skipped
    with open(path, "w") as f:
        f.write(f'<?xml version="1.0"?><testsuites><testsuite name="pytest" tests="{total}" failures="{len(failed)}" '
                f'errors="0" skipped="{skipped}">{"".join(cases)}</testsuite></testsuites>')


@pytest.mark.skipif(shutil.which("timeout") is None or shutil.which("awk") is None, reason="needs coreutils timeout")
def test_step_records_exit_status_and_the_watchdog_stops_a_hang(tmp_path):
    out = str(tmp_path)
    assert run_step(out, "good", "20", "sh", "-c", "echo fine") == 0
    assert run_step(out, "bad", "20", "sh", "-c", "echo broken; exit 3") == 3
    assert run_step(out, "hang", "1", "sleep", "30") == 124
    records = {n: json.load(open(tmp_path / "steps" / f"{n}.json")) for n in ("good", "bad", "hang")}
    assert records["good"]["rc"] == 0 and not records["good"]["timed_out"]
    assert records["bad"]["rc"] == 3 and records["hang"]["timed_out"] and records["hang"]["seconds"] < 20
    assert (tmp_path / "bad.log").read_text().strip() == "broken"
    summary, code = gpu_check.summarize(out)
    verdicts = {s["name"]: s for s in summary["steps"]}
    assert code == gpu_check.EXIT_FAILED and summary["verdict"] == "FAIL"
    assert verdicts["good"]["verdict"] == "PASS"
    assert verdicts["bad"]["verdict"] == "FAIL" and "exit status 3" in verdicts["bad"]["why"]
    assert "timed out" in verdicts["hang"]["why"]
    assert sorted(summary["failed_checks"]) == ["bad", "hang"]


def write_step(out, name, rc=0, junit_file=None):
    os.makedirs(os.path.join(out, "steps"), exist_ok=True)
    with open(os.path.join(out, "steps", f"{name}.json"), "w") as f:
        json.dump(dict(name=name, rc=rc, seconds=1.0, limit_s=60, timed_out=False, log=f"{name}.log",
                       junit=junit_file), f)


def test_pytest_steps_fail_on_failing_or_no_tests(tmp_path):
    out = str(tmp_path)
    junit(tmp_path / "a.xml", passed=3, skipped=1)
    junit(tmp_path / "b.xml", passed=2, failed=["test_x[cuda]"])
    junit(tmp_path / "c.xml", skipped=4)
    write_step(out, "a", 0, "a.xml")
    write_step(out, "b", 1, "b.xml")
    write_step(out, "c", 0, "c.xml")
    write_step(out, "d", 0, "missing.xml")
    summary, code = gpu_check.summarize(out)
    by = {s["name"]: s for s in summary["steps"]}
    assert by["a"]["verdict"] == "PASS" and by["a"]["tests"]["passed"] == 3 and by["a"]["tests"]["skipped"] == 1
    assert by["b"]["verdict"] == "FAIL" and by["b"]["tests"]["failed_tests"] == ["t::test_x[cuda]"]
    assert by["c"]["verdict"] == "FAIL" and "no test ran" in by["c"]["why"]
    assert by["d"]["verdict"] == "FAIL" and "missing" in by["d"]["why"]
    assert code == gpu_check.EXIT_FAILED


def test_speed_verdicts_and_exit_code_for_missed_goals_only(tmp_path):
    assert gpu_check.speed_verdict(1, 9.9, 1.0)["verdict"] == "PASS"
    assert gpu_check.speed_verdict(1, 10.1, 1.0)["verdict"] == "FAIL"
    assert gpu_check.speed_verdict(64, 10.4, 7.0)["verdict"] == "PASS"  # 1.486x
    fail = gpu_check.speed_verdict(64, 10.6, 7.0)
    assert fail["verdict"] == "FAIL" and fail["ratio"] == pytest.approx(1.514, abs=1e-3)
    assert gpu_check.speed_verdict(8, 1e6, 1.0)["verdict"] == "n/a"

    out = str(tmp_path)
    write_step(out, "timings", 0)
    rows = [dict(backend="cuda", kind="fused", batch=1, dtype="bfloat16", mode="greedy", us=12.0,
                 **gpu_check.speed_verdict(1, 12.0, 0.2)),
            dict(backend="cuda", kind="fused", batch=64, dtype="bfloat16", mode="greedy", us=9.0,
                 **gpu_check.speed_verdict(64, 9.0, 7.0)),
            dict(backend="torch chain", kind="peer", batch=1, dtype="bfloat16", mode="greedy", us=80.0, verdict="n/a")]
    with open(tmp_path / "timings.json", "w") as f:
        json.dump({"rows": rows}, f)
    summary, code = gpu_check.summarize(out)
    assert code == gpu_check.EXIT_SLOW and summary["verdict"] == "SLOW"
    assert summary["missed_speed_goals"] == ["cuda B=1 bfloat16 greedy"]
    assert [s["verdict"] for s in summary["speed"]] == ["FAIL", "PASS"]  # peers carry no verdict

    rows[0].update(us=9.0, **gpu_check.speed_verdict(1, 9.0, 0.2))
    with open(tmp_path / "timings.json", "w") as f:
        json.dump({"rows": rows}, f)
    assert gpu_check.summarize(out)[1] == gpu_check.EXIT_OK
    assert gpu_check.main(["summarize", out]) == gpu_check.EXIT_OK
    assert json.load(open(tmp_path / "summary.json"))["verdict"] == "PASS"


def test_an_empty_run_is_a_failure(tmp_path):
    summary, code = gpu_check.summarize(str(tmp_path))
    assert code == gpu_check.EXIT_FAILED and summary["failed_checks"] == ["no steps recorded"]


def test_without_a_gpu_the_script_stops_at_once_with_a_clear_message(tmp_path):
    has_gpu = shutil.which("nvidia-smi") and subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0
    if has_gpu:
        pytest.skip("a GPU is visible here")
    proc = subprocess.run(["bash", SCRIPT, "1", str(tmp_path / "out")], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "no NVIDIA GPU" in proc.stderr
    assert not (tmp_path / "out").exists()
    assert subprocess.run(["bash", SCRIPT, "3"], capture_output=True, text=True, timeout=30).returncode == 64
