"""taro_ext.benchreport: tokens/s ratios from a pytest-benchmark JSON, by hand-computed cases."""
import json

import pytest

from taro_ext import benchreport


def _bench(group, label, seconds, tokens, baseline, **extra):
    return {"group": group, "fullname": f"bench::{label}", "stats": {"min": seconds, "median": 2 * seconds,
                                                                      "mean": 2 * seconds, "rounds": 3},
            "extra_info": {"label": label, "baseline": baseline, "tokens": tokens, **extra}}


REF = "taro natural (torch eager)"
DATA = {
    "machine_info": {"cpu_model": "Test CPU", "cpu_count": 2, "python_version": "3.11", "torch": "2.x",
                     "torch_threads": 2, "gpu": None, "note": "shared"},
    "command": "pytest bench --benchmark-only",
    "datetime": "2026-01-01T00:00:00",
    "benchmarks": [
        _bench("step B=8", REF, 1.0, 8, REF),
        _bench("step B=8", "taro natural (torch.compile)", 0.5, 8, REF),
        _bench("step B=8", "taro fused cpu", 0.1, 8, REF),
        _bench("step B=8", "genarm natural (torch eager)", 0.32, 8, REF),
        _bench("step B=8", "genarm fused cpu", 0.08, 8, REF),
        _bench("step B=8", "floor: read both rows", 0.05, 8, REF),
        _bench("step B=8", "floor: exp both rows", 0.08, 8, REF),
        _bench("step B=8", "taro full-logits (torch)", 0.4, 8, REF),
        # Generation: different token counts per call; ratios are of tokens/s, not of times.
        _bench("gen", "genarm fused cpu", 2.0, 100, "genarm fused cpu"),
        _bench("gen", "taro fused cpu", 2.0, 96, "genarm fused cpu"),
        _bench("gen", "genarm + taro fused cpu, alternating", 4.0, 0, "genarm fused cpu",
               paired_ratio=0.97, paired_min=0.9, paired_max=1.01, pairs=5),
        _bench("gpu copy bandwidth", "device copy", 0.5, 0, "device copy", bytes_moved=10**12),
    ],
}


def test_headline_ratios_are_tokens_per_second_over_the_baseline():
    groups = {g.name: g for g in benchreport.load_groups(DATA)}
    step = benchreport.headline(groups["step B=8"])
    assert step["backend"] == "cpu"
    assert step["TARo fused / natural"] == pytest.approx(10.0)
    assert step["TARo fused / compiled"] == pytest.approx(5.0)
    assert step["GenARM fused / natural"] == pytest.approx(4.0)
    assert step["TARo fused time / exp floor"] == pytest.approx(1.25)
    assert step["GenARM fused time / read floor"] == pytest.approx(1.6)
    assert step["TARo / GenARM (same backend)"] == pytest.approx(0.8)
    assert step["full-logits / top-K fused"] == pytest.approx(0.25)
    gen = benchreport.headline(groups["gen"])
    assert gen["TARo / GenARM (same backend)"] == pytest.approx(0.96)
    assert gen["TARo / GenARM (alternating calls)"] == pytest.approx(0.97)
    assert gen["TARo fused / natural"] is None  # no natural row in that group
    assert benchreport.copy_bandwidth(groups.values()) == pytest.approx(2e12)


def test_stat_choice_changes_the_times_not_the_ratios():
    by_min = {g.name: g for g in benchreport.load_groups(DATA, "min")}
    by_median = {g.name: g for g in benchreport.load_groups(DATA, "median")}
    assert by_median["step B=8"].row(REF).seconds == 2 * by_min["step B=8"].row(REF).seconds
    assert by_median["step B=8"].ratio("taro fused cpu", REF) == pytest.approx(10.0)
    with pytest.raises(ValueError, match="stat"):
        benchreport.load_groups(DATA, "p99")


def test_main_writes_markdown_and_plot(tmp_path):
    src = tmp_path / "run.json"
    src.write_text(json.dumps(DATA))
    out = tmp_path / "run.md"
    benchreport.main([str(src), "--out", str(out)])
    text = out.read_text()
    assert "Test CPU, 2 cores, no GPU" in text and "note: shared" in text
    assert "`pytest bench --benchmark-only`" in text
    assert "| step B=8 | cpu | 10x | 5x | 4x | 1.25x | 1.6x | 0.8x | - | 0.25x |" in text
    assert "| taro fused cpu | 100.00 ms | 3 | 80.0 | 10x |" in text
    assert "= 0.97x (median of 5 back-to-back pairs" in text
    assert "![ratios against each group's baseline](run.png)" in text
    assert (tmp_path / "run.png").stat().st_size > 0


def test_rejects_json_from_another_suite(tmp_path):
    data = {"benchmarks": [{"group": "g", "fullname": "x::y", "stats": {"min": 1.0, "rounds": 1}, "extra_info": {}}]}
    with pytest.raises(ValueError, match="label"):
        benchreport.load_groups(data)


def test_step_share_column_and_end_load():
    data = {**DATA, "uptime_end": "load average: 1.00, 1.10, 1.20", "benchmarks": [
        _bench("engines", "taro (transformers)", 4.0, 16, "taro (transformers)"),
        _bench("engines", "taro (llama.cpp)", 0.25, 16, "taro (transformers)", step_share=0.125),
    ]}
    text = benchreport.render(data)
    assert "- machine load at the end (`uptime`): load average: 1.00, 1.10, 1.20" in text
    assert "| | time / call | rounds | tokens/s | vs baseline | step share |" in text
    assert "| taro (transformers) | 4.00 s | 3 | 4.0 | 1x | - |" in text
    assert "| taro (llama.cpp) | 250.00 ms | 3 | 64.0 | 16x | 12.5% |" in text
    assert "step share" not in benchreport.render(DATA)
