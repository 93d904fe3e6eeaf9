"""benchmarks/gpu_check.py --cpu-smoke: every step of the GPU check on tiny shapes, on the CPU."""
from __future__ import annotations

import json

import pytest

from benchmark_scripts import load_benchmark

# Slow (whole processes, real runs or long measurements): left out of the quick loop, pytest -m "not slow".
pytestmark = pytest.mark.slow

pytest.importorskip("bitsandbytes")


def test_cpu_smoke_runs_every_step_and_records_each(tmp_path):
    gpu_check = load_benchmark("gpu_check")
    out = tmp_path / "results.json"
    assert gpu_check.main(["--cpu-smoke", "--out", str(out)]) == 0
    records = {r["step"]: r for r in json.loads(out.read_text())}
    assert list(records) == ["env", "numerics", *gpu_check.PRESETS, "oom"]
    assert all(r["ok"] for r in records.values()), [r for r in records.values() if not r["ok"]]
    num = records["numerics"]
    for quant in ("int8", "nf4"):
        assert num[quant]["finite"] and 0 < num[quant]["rel_err_velocity"] < 0.1 and num[quant]["grad_cosine"] > 0.9
    assert num["int8"]["fp16_overflow"] is False and num["int8"]["max_abs_input"] > 0
    for preset in gpu_check.PRESETS:
        r = records[preset]
        assert r["plan"]["peak_gib"] < r["card_gib"]
        assert r["iteration_s_extrapolated"]["total"] > r["train_micro_batch_step"]["seconds"] > 0
    assert records["oom"]["tried"] == [8, 4, 2] and records["oom"]["halved"] and records["oom"]["loss_finite"]


def test_a_cut_short_run_keeps_what_it_measured(tmp_path):
    out = tmp_path / "results.json"
    assert load_benchmark("gpu_check").main(["--cpu-smoke", "--out", str(out), "--budget-s", "0"]) == 0
    records = json.loads(out.read_text())
    assert records[0]["step"] == "env" and records[0]["ok"]
    assert all("skipped" in r["error"] for r in records[1:]) and len(records) == 8


def test_without_cuda_the_full_check_exits_2(tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same message on a CUDA machine too
    assert load_benchmark("gpu_check").main(["--out", str(tmp_path / "r.json")]) == 2
    assert "--cpu-smoke" in capsys.readouterr().err and not (tmp_path / "r.json").exists()
