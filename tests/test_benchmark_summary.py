"""benchmarks/sample_efficiency.py's bookkeeping: curves read from run directories,
rollouts and seconds to a target, and rewards at equal rollouts."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "sample_efficiency.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("sample_efficiency", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_run(run_dir: Path, evals: dict[int, float], rollouts_per_iter: int, iter_s: float) -> Path:
    """A metrics.jsonl as the trainer writes it: eval rows at some iterations, one
    training row per iteration with cumulative rollouts and its wall time."""
    run_dir.mkdir(parents=True)
    rows = [{"iteration": 0, "eval/reward_mean": evals[0], "eval/strict_mean": 0.0}]
    for it in range(1, max(evals) + 1):
        row = {"iteration": it, "rollouts/total": it * rollouts_per_iter, "perf/iter_s": iter_s}
        if it in evals:
            row.update({"eval/reward_mean": evals[it], "eval/strict_mean": evals[it] / 2})
        rows.append(row)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run_dir


def test_curve_reads_eval_points_with_cumulative_rollouts_and_seconds(bench, tmp_path):
    run = write_run(tmp_path / "a", {0: 0.5, 2: 0.6, 4: 0.7}, rollouts_per_iter=32, iter_s=3.0)
    c = bench.curve(run)
    np.testing.assert_allclose(c["rollouts"], [0, 64, 128])
    np.testing.assert_allclose(c["seconds"], [0.0, 6.0, 12.0])
    np.testing.assert_allclose(c["reward"], [0.5, 0.6, 0.7])


def test_first_reach_and_equal_rollout_interpolation(bench, tmp_path):
    fast = bench.curve(write_run(tmp_path / "fast", {0: 0.5, 2: 0.7, 4: 0.7}, 32, 2.0))
    slow = bench.curve(write_run(tmp_path / "slow", {0: 0.5, 2: 0.55, 4: 0.65}, 16, 1.0))
    assert bench.first_reach(fast, 0.6, "rollouts") == 64
    assert bench.first_reach(slow, 0.6, "rollouts") == 64  # reached at iteration 4 = 64 rollouts
    assert math.isnan(bench.first_reach(slow, 0.9, "rollouts"))
    summary = bench.summarise({"fast": [fast], "slow": [slow]}, target=0.6)
    assert summary["equal_rollouts"] == 64  # the smallest budget every run reached
    assert summary["methods"]["fast"]["reward_at_equal_rollouts"] == [pytest.approx(0.7)]
    assert summary["methods"]["slow"]["reward_at_equal_rollouts"] == [pytest.approx(0.65)]
    assert summary["methods"]["slow"]["mean_reward_after_start"] == [pytest.approx(0.6)]
    assert "1/2 reached" in bench.fmt([64.0, float("nan")], 0)
