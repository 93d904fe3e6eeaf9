"""benchmarks/regime_map.py: its pools, its held-out scoring of exported LoRAs, its summary."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from benchmark_scripts import load_benchmark


@pytest.fixture(scope="module")
def regime_map():
    return load_benchmark("regime_map")


@pytest.fixture(scope="module")
def rates(regime_map):
    return json.loads(regime_map.RATES.read_text())["rates"]


def test_pools_are_nested_heads_of_one_list_of_hard_prompts_of_every_skill(regime_map, rates):
    from superflow_lite.world.prompts import prompt_category, rl_train_prompts, val_prompts

    pools = {name: regime_map.pool_prompts(name, rates) for name in ("1", "4", "16")}
    assert [len(p) for p in pools.values()] == [1, 4, 16]
    assert pools["4"][:1] == pools["1"] and pools["16"][:4] == pools["4"]
    low, high = regime_map.BAND
    assert all(low <= rates[p] <= high for p in pools["16"])
    assert [prompt_category(p) for p in pools["4"]] == ["counting", "binding", "position", "counting"]
    mixed = regime_map.pool_prompts("mixed", rates)
    assert mixed[:4] == pools["4"] and [prompt_category(p) for p in mixed[4:]] == ["single"] * 4
    heldout = regime_map.heldout_prompts()
    assert len(heldout) == regime_map.HELDOUT_PROMPTS and not set(heldout) & set(rl_train_prompts())
    assert set(heldout) <= set(val_prompts()) and {prompt_category(p) for p in heldout} == set(regime_map.SKILLS)


def test_the_summary_is_the_paired_gain_over_step_zero_per_prompt(regime_map):
    """Two seeds of a 2-prompt pool, 3 items: the gain at each step is after - before averaged
    over seeds and items, the held-out one the same on its own items."""
    def run(pool_after: float, heldout_after: float) -> dict:
        base = np.array([0.0, 1.0, 0.0])
        return {"steps": [0, 4, 8], "rollouts": [0, 128, 256],
                "pool_strict": np.stack([base, base + pool_after / 2, base + pool_after]),
                "pool_reward": np.stack([base, base, base]),
                "heldout_strict": np.stack([base, base, base + heldout_after]),
                "heldout_reward": np.stack([base, base, base])}

    summary = regime_map.summarise({"4": [run(0.3, 0.1), run(0.1, 0.3)]}, {"4": 2})
    first, last = summary["4"]["points"]
    assert (first["step"], first["rollouts_per_prompt"], last["rollouts_per_prompt"]) == (4, 64, 128)
    assert first["pool_strict_gain"][0] == pytest.approx(0.1) and last["pool_strict_gain"][0] == pytest.approx(0.2)
    assert last["heldout_strict_gain"][0] == pytest.approx(0.2) and first["heldout_strict_gain"][0] == 0.0
    assert last["pool_strict_before"] == pytest.approx(1 / 3)
    assert last["pool_strict_gain"][1] <= 0.2 <= last["pool_strict_gain"][2]
    assert "| 4 | 2 | 8 | 128 |" in regime_map.table(summary)


def test_an_exported_lora_scores_as_the_run_evaluated_it(regime_map, rates, tmp_path, monkeypatch, fast_overrides):
    """Held-out scoring loads each exported LoRA as a user does (pipe.load_lora_weights). Held
    out = the pool's own prompt at the run's own evaluation seed, so every step's held-out
    images must score what the run's own evaluation scored, and the base those of step 0."""
    pool = regime_map.pool_prompts("1", rates)
    monkeypatch.setattr(regime_map, "heldout_prompts", lambda: pool)
    monkeypatch.setattr(regime_map, "HELDOUT_SEEDS", [1000, 1001])
    fast = [o for o in fast_overrides if not o.startswith(("train.iterations", "output.", "prompts.", "batch.prompts_per_iter"))]
    out = tmp_path / "map"
    assert regime_map.main(["--pools", "1", "--seeds", "0", "--iterations", "2", "--eval-every", "1", "--out", str(out),
                            "--set", *fast, "batch.group_size=4", "prompts.eval_seeds=[1000,1001]",
                            "train.lr=5e-2", "train.ema_decay=0.5"]) == 0
    run = out / "runs" / "pool1-s0"
    points = regime_map.run_points(run, out / "heldout_base")
    assert points["steps"] == [0, 1, 2] and points["rollouts"] == [0, 4, 8]
    assert not np.allclose(points["pool_reward"][0], points["pool_reward"][2])  # the LoRA changed the images
    np.testing.assert_allclose(points["heldout_reward"], points["pool_reward"], atol=1e-4)
    summary = json.loads((out / "summary.json").read_text())
    assert [p["step"] for p in summary["1"]["points"]] == [1, 2] and (out / "map.png").exists()
    # A second call finds everything done: it trains and scores nothing again.
    stamp = (run / "heldout" / "000002" / "index.json").stat().st_mtime_ns
    assert regime_map.main(["--pools", "1", "--seeds", "0", "--iterations", "2", "--eval-every", "1",
                            "--out", str(out)]) == 0
    assert (run / "heldout" / "000002" / "index.json").stat().st_mtime_ns == stamp
    # A larger budget continues the finished run from its checkpoint: the first steps stay as
    # they were, the new one is trained, evaluated and scored.
    first_rows = (run / "metrics.jsonl").read_text()
    assert regime_map.main(["--pools", "1", "--seeds", "0", "--iterations", "3", "--eval-every", "1",
                            "--out", str(out)]) == 0
    assert (run / "metrics.jsonl").read_text().startswith(first_rows)
    assert (run / "heldout" / "000002" / "index.json").stat().st_mtime_ns == stamp
    assert regime_map.run_points(run, out / "heldout_base")["steps"] == [0, 1, 2, 3]
    # The committed points are the raw results: without the run directories the summary is the same.
    summary = (out / "summary.json").read_text()
    saved = regime_map.load_points(out / "points" / "pool1-s0.json")
    assert saved["steps"] == [0, 1, 2, 3]
    np.testing.assert_array_equal(saved["heldout_reward"], regime_map.run_points(run, out / "heldout_base")["heldout_reward"])
    shutil.rmtree(out / "runs")
    shutil.rmtree(out / "heldout_base")
    (out / "summary.json").unlink()
    assert regime_map.main(["--pools", "1", "--seeds", "0", "--summary-only", "--out", str(out)]) == 0
    assert (out / "summary.json").read_text() == summary


def test_a_shorter_rerun_of_a_run_keeps_its_longer_points(regime_map, tmp_path, monkeypatch):
    """A run retrained from scratch elsewhere, caught part-way, must not shorten the committed
    points of the finished run; a run with as many scored steps or more replaces them."""
    out, run = tmp_path, tmp_path / "runs" / "pool4-s0"
    (out / "heldout_base").mkdir()
    (out / "heldout_base" / "index.json").write_text("{}")
    run.mkdir(parents=True)
    (run / regime_map.CONFIG_FILE).write_text("")
    on_disk = {"steps": [0, 32], "rollouts": [0, 1024]}
    monkeypatch.setattr(regime_map, "run_points", lambda run_dir, base: on_disk)
    saved = out / "points" / "pool4-s0.json"
    regime_map.save_points(saved, {"steps": [0, 32, 64], "rollouts": [0, 1024, 2048]})
    regime_map.refresh_points(out, [run])
    assert regime_map.load_points(saved)["steps"] == [0, 32, 64]
    regime_map.save_points(saved, {"steps": [0], "rollouts": [0]})
    regime_map.refresh_points(out, [run])
    assert regime_map.load_points(saved)["steps"] == [0, 32]
