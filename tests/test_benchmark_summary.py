"""benchmarks/sample_efficiency.py's bookkeeping and superflow_lite.stats' intervals:
curves read from run directories, interpolated crossings, per-item pairing, ratios."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from benchmark_scripts import load_benchmark
from superflow_lite.stats import aligned, bootstrap_ratio, paired_bootstrap, read_eval_items

# Slow (whole processes, real runs or long measurements): left out of the quick loop, pytest -m "not slow".
pytestmark = pytest.mark.slow

ITEMS = [(f"prompt {i}", s) for i in range(6) for s in range(2)]


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("sample_efficiency")


def write_run(run_dir: Path, evals: dict[int, list[float]], rollouts_per_iter: int, iter_s: float) -> Path:
    """metrics.jsonl and samples/<step>/index.json as the trainer writes them. evals: per-item
    rewards at some iterations (strict = reward > 0.5)."""
    run_dir.mkdir(parents=True)
    rows = []
    for it in range(0, max(evals) + 1):
        row = {"iteration": it}
        if it:
            row.update({"rollouts/total": it * rollouts_per_iter, "perf/iter_s": iter_s})
        if it in evals:
            scores = np.asarray(evals[it])
            row.update({"eval/reward_mean": float(scores.mean()), "eval/strict_mean": float((scores > 0.5).mean())})
            out = run_dir / "samples" / f"{it:06d}"
            out.mkdir(parents=True)
            index = [{"file": f"{k:03d}.png", "prompt": p, "seed": s, "reward": float(v), "strict": float(v > 0.5)}
                     for k, ((p, s), v) in enumerate(zip(ITEMS, scores))]
            (out / "index.json").write_text(json.dumps(index))
        rows.append(row)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run_dir


def flat(value: float) -> list[float]:
    return [value] * len(ITEMS)


def test_curve_reads_eval_points_items_and_cumulative_rollouts(bench, tmp_path):
    run = write_run(tmp_path / "a", {0: flat(0.5), 2: flat(0.6), 4: flat(0.7)}, rollouts_per_iter=32, iter_s=3.0)
    c = bench.curve(run)
    np.testing.assert_allclose(c["rollouts"], [0, 64, 128])
    np.testing.assert_allclose(c["seconds"], [0.0, 6.0, 12.0])
    np.testing.assert_allclose(c["reward"], [0.5, 0.6, 0.7])
    assert c["reward_items"].shape == (3, len(ITEMS)) and c["items"] == sorted(ITEMS)
    np.testing.assert_allclose(c["strict_items"][2], 1.0)


def test_first_reach_interpolates_between_evaluations(bench, tmp_path):
    c = bench.curve(write_run(tmp_path / "r", {0: flat(0.5), 2: flat(0.6), 4: flat(0.8)}, 32, 2.0))
    assert bench.first_reach(c, 0.5, "rollouts") == 0
    assert bench.first_reach(c, 0.7, "rollouts") == pytest.approx(96.0)  # halfway between 64 and 128
    assert bench.first_reach(c, 0.7, "seconds") == pytest.approx(6.0)
    assert math.isnan(bench.first_reach(c, 0.9, "rollouts"))


def test_items_at_and_area_under_the_curve(bench, tmp_path):
    c = bench.curve(write_run(tmp_path / "r", {0: flat(0.2), 2: flat(0.6), 4: flat(0.6)}, 32, 1.0))
    np.testing.assert_allclose(bench.items_at(c, "reward", 32), 0.4)
    # Area over [0, 128]: the ramp 0.2 -> 0.6 over 64 (mean 0.4), then flat 0.6: mean 0.5.
    np.testing.assert_allclose(bench.items_auc(c, "reward", 128), 0.5)
    np.testing.assert_allclose(bench.items_auc(c, "reward", 64), 0.4)


def test_summary_pairs_methods_by_seed_and_item(bench, tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    by_seed: dict[str, dict[int, dict]] = {"flow_grpo": {}, "fast": {}}
    items_base = rng.uniform(0.3, 0.5, len(ITEMS))
    for seed in range(4):
        base = items_base
        ref = {0: base, 4: base + 0.2, 8: base + 0.3}
        fast = {0: base, 4: base + 0.3, 8: base + 0.35}
        by_seed["flow_grpo"][seed] = bench.curve(write_run(tmp_path / f"ref{seed}", ref, 32, 2.0))
        by_seed["fast"][seed] = bench.curve(write_run(tmp_path / f"fast{seed}", fast, 32, 1.0))
    ref_final = np.mean([c["reward"][-1] for c in by_seed["flow_grpo"].values()])
    assert bench.summarise(by_seed, "flow_grpo")["target_reward"] == pytest.approx(ref_final)
    target = items_base.mean() + 0.25
    summary = bench.summarise(by_seed, "flow_grpo", target)
    assert summary["equal_rollouts"] == 256
    fast = summary["methods"]["fast"]
    assert fast["reward_gain"]["mean"] == pytest.approx(0.35)
    assert fast["reward_vs_reference"]["mean"] == pytest.approx(0.05)
    assert fast["reward_vs_reference"]["low"] == pytest.approx(0.05)  # the same +0.05 on every item
    # +0.25: the reference crosses it halfway from iteration 4 to 8 (192 rollouts, 12 s);
    # "fast" at 0.25/0.3 of the way to iteration 4 (106.7 rollouts, 3.33 s at 1 s per iteration).
    assert summary["methods"]["flow_grpo"]["rollouts_to_target"] == pytest.approx([192.0] * 4)
    assert fast["rollouts_to_target"] == pytest.approx([128 * 0.25 / 0.3] * 4)
    assert fast["rollouts_ratio"]["mean"] == pytest.approx(128 * 0.25 / 0.3 / 192)
    assert fast["seconds_ratio"]["mean"] == pytest.approx(4 * 0.25 / 0.3 / 12)
    assert fast["reward_auc_vs_reference"]["mean"] > 0
    text = bench.table(summary)
    assert "| fast | 4 |" in text and "flow_grpo" in text
    # The plateau reading: a run's gain over its own last LATE_ROLLOUTS (the whole run when it is shorter).
    assert fast["reward_late_gain"]["mean"] == pytest.approx(0.35)
    monkeypatch.setattr(bench, "LATE_ROLLOUTS", 128)  # from iteration 4 (128 rollouts) to 8
    late = bench.summarise(by_seed, "flow_grpo", target)["methods"]
    assert late["flow_grpo"]["reward_late_gain"]["mean"] == pytest.approx(0.1)
    assert late["fast"]["reward_late_gain"]["mean"] == pytest.approx(0.05)


def test_the_final_gain_is_a_runs_end_against_its_start_not_the_gain_at_equal_rollouts(bench, tmp_path):
    """A longer run that rises and falls back: its gain at the shorter run's budget is where its
    curve passes that budget, its final gain is its last evaluation against step 0."""
    by_seed = {"flow_grpo": {0: bench.curve(write_run(tmp_path / "long", {0: flat(0.4), 4: flat(0.7), 12: flat(0.5)}, 32, 1.0))},
               "short": {0: bench.curve(write_run(tmp_path / "short", {0: flat(0.4), 8: flat(0.6)}, 32, 1.0))}}
    methods = bench.summarise(by_seed, "flow_grpo")["methods"]
    assert methods["flow_grpo"]["reward_gain"]["mean"] == pytest.approx(0.2)  # at 256 rollouts: 0.7 -> 0.5 halfway
    assert methods["flow_grpo"]["reward_final_gain"]["mean"] == pytest.approx(0.1)
    assert methods["short"]["reward_final_gain"]["mean"] == pytest.approx(0.2)
    assert "| final reward over base |" in bench.table(bench.summarise(by_seed, "flow_grpo"))


def test_each_prompts_curve_is_its_items_mean_over_seeds(bench, tmp_path):
    """reward_by_prompt: prompt 0 rises and falls back, the others stay; two training seeds."""
    def scores(rise: float) -> list[float]:
        return [0.5 + (rise if p == "prompt 0" else 0.0) for p, _ in ITEMS]

    runs = {"flow_grpo": {s: bench.curve(write_run(tmp_path / f"r{s}", {0: scores(0), 4: scores(0.2 + 0.2 * s), 8: scores(0.1)},
                                                   32, 1.0)) for s in (0, 1)}}
    summary = bench.summarise(runs, "flow_grpo")
    by_prompt = summary["methods"]["flow_grpo"]["reward_by_prompt"]
    assert by_prompt["prompt 0"] == pytest.approx([0.5, 0.8, 0.6]) and by_prompt["prompt 3"] == pytest.approx([0.5] * 3)
    assert "| flow_grpo | prompt 0 | 0.500 | 0.800 | 0.600 | n/a |" in bench.prompt_table(summary)


def test_a_final_difference_is_traced_to_its_prompts_and_to_the_solved_ones(bench, tmp_path):
    """final_by_prompt: prompts 0 and 1 start solved (1.0); the method ends 0.1 lower on prompt 0
    and 0.2 higher on prompt 3 than the reference, the same on the rest; paired by seed."""
    def scores(at: dict[str, float], rest: float = 0.5) -> list[float]:
        return [at.get(p, rest) for p, _ in ITEMS]

    solved = {"prompt 0": 1.0, "prompt 1": 1.0}
    runs = {m: {s: bench.curve(write_run(tmp_path / f"{m}{s}", {0: scores(solved), 4: scores(final)}, 32, 1.0))
                for s in (0, 1)}
            for m, final in (("flow_grpo", {**solved, "prompt 3": 0.6}),
                             ("other", {"prompt 0": 0.9, "prompt 1": 1.0, "prompt 3": 0.8}))}
    summary = bench.summarise(runs, "flow_grpo")
    versus = summary["methods"]["other"]["final_by_prompt_vs_reference"]
    assert versus["prompt 0"]["mean"] == pytest.approx(-0.1) and versus["prompt 3"]["mean"] == pytest.approx(0.2)
    assert versus["prompt 2"]["mean"] == pytest.approx(0.0)
    assert versus[bench.SOLVED_GROUP]["mean"] == pytest.approx(-0.05)  # prompts 0 and 1 only
    table = bench.prompt_table(summary)
    assert "| other | prompt 3 | 0.500 | 0.800 | 0.800 | +0.200 [+0.200, +0.200] |" in table
    assert f"| other | {bench.SOLVED_GROUP} (base reward >= {bench.SOLVED_AT_BASE}) | | | | -0.050" in table
    assert "final_by_prompt_vs_reference" not in summary["methods"]["flow_grpo"]


def test_a_target_the_base_already_meets_has_no_rollouts_to_target(bench, tmp_path):
    flat_runs = {m: {0: bench.curve(write_run(tmp_path / m, {0: flat(0.6), 4: flat(0.55)}, 32, 1.0))}
                 for m in ("flow_grpo", "other")}
    summary = bench.summarise(flat_runs, "flow_grpo")
    assert not summary["target_defined"]
    assert all(math.isnan(v) for v in summary["methods"]["other"]["rollouts_to_target"])
    assert "undefined" in bench.table(summary)
    # summary.json is standard JSON: an unreached target is null, so strict readers accept it
    def refuse(constant):
        raise ValueError(constant)
    saved = json.loads(bench.json_text(summary), parse_constant=refuse)
    assert saved["methods"]["other"]["rollouts_to_target"] == [None]


def test_paired_bootstrap_intervals():
    rng = np.random.default_rng(1)
    a = rng.normal(0.0, 1.0, 400)
    same = paired_bootstrap(a + rng.normal(0, 0.1, 400), a)
    assert same.low < 0 < same.high and not same.excludes_zero
    shifted = paired_bootstrap(a + 0.3 + rng.normal(0, 0.1, 400), a)
    assert shifted.excludes_zero and shifted.low < 0.3 < shifted.high
    # Runs that disagree widen a [runs, items] interval beyond the items-only one.
    runs = a[None, :] + rng.normal(0, 0.5, (5, 1))
    two_way = paired_bootstrap(runs)
    items_only = paired_bootstrap(runs.mean(axis=0))
    assert two_way.high - two_way.low > 1.5 * (items_only.high - items_only.low)
    ratio = bootstrap_ratio(np.array([1.0, 2.0, np.nan, 3.0]), np.array([2.0, 4.0, 5.0, 6.0]))
    assert ratio.mean == pytest.approx(0.5) and ratio.low == pytest.approx(0.5)  # the NaN run left out


def test_the_bootstrap_means_are_those_of_the_resampled_tables():
    """Each resample's mean, computed from how often each run and item was drawn, is the mean of
    the resampled table itself (the same draws, one resample at a time)."""
    d = np.random.default_rng(3).normal(size=(3, 7))
    rng = np.random.default_rng(0)
    direct = []
    for _ in range(200):
        rows, cols = rng.integers(0, 3, 3), rng.integers(0, 7, 7)
        direct.append(d[np.ix_(rows, cols)].mean())
    got = paired_bootstrap(d, resamples=200, alpha=0.2)
    assert (got.low, got.high) == pytest.approx(tuple(np.percentile(direct, [10, 90])), abs=1e-12)


def test_eval_items_pair_on_common_keys(tmp_path):
    for name, rows in {"a": [("p", 0, 1.0), ("p", 1, 0.0), ("q", 0, 0.5)], "b": [("q", 0, 0.2), ("p", 0, 0.4)]}.items():
        d = tmp_path / name
        d.mkdir()
        (d / "index.json").write_text(json.dumps([{"prompt": p, "seed": s, "reward": r} for p, s, r in rows]))
    table = aligned([read_eval_items(tmp_path / "a"), read_eval_items(tmp_path / "b")])
    np.testing.assert_allclose(table, [[1.0, 0.5], [0.4, 0.2]])  # (p, 0), (q, 0): sorted common items


def test_visits_count_revisits_of_a_prompt_not_iterations(bench, tmp_path):
    # 3 iterations of 2 prompts: the first sees two new prompts, then one new and one old,
    # then two old: 6 groups over 3 distinct prompts = 2 visits per prompt, half of them first.
    rows = [{"iteration": i + 1, "group/num_prompts": 2, "group/first_visit_frac": f} for i, f in enumerate([1, 0.5, 0])]
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    v = bench.visits(run)
    assert (v["groups"], v["visits_per_prompt"], v["first_visit_frac"]) == (6, 2.0, 0.5)


def test_recurring_pool_trains_and_scores_the_same_fixed_train_prompts(bench, tmp_path):
    from superflow_lite.world.prompts import rl_train_prompts, test_prompts

    overrides = dict(o.split("=", 1) for o in bench.recurring_pool(tmp_path, 16))
    pool = Path(overrides["prompts.source"]).read_text().splitlines()
    assert overrides["prompts.test_source"] == overrides["prompts.source"]
    assert overrides["prompts.num_eval_prompts"] == "16" and len(pool) == len(set(pool)) == 16
    assert set(pool) <= set(rl_train_prompts()) and not set(pool) & set(test_prompts())
    assert overrides["prompts.eval_seeds"] == "[0,1,2,3,4,5,6,7]"
    assert dict(o.split("=", 1) for o in bench.recurring_pool(tmp_path / "four", 4, 32))["prompts.eval_seeds"] == \
        "[" + ",".join(map(str, range(32))) + "]"
    assert bench.recurring_pool(tmp_path / "again", 16) and Path(tmp_path / "again" / "pool16.txt").read_text().splitlines() == pool


def test_raw_curves_rebuild_the_same_summary_without_the_run_directories(bench, tmp_path):
    curves = {"flow_grpo": {}, "superflow": {}}
    for seed in range(2):
        for method, lift in (("flow_grpo", 0.1), ("superflow", 0.2)):
            evals = {0: flat(0.4), 2: [0.4 + lift * (i % 3) / 2 for i in range(len(ITEMS))]}
            curves[method][seed] = bench.curve(write_run(tmp_path / f"{method}{seed}", evals, 16, 1.0 + seed))
    path = tmp_path / bench.RAW_FILE
    bench.save_raw({"flow_grpo": curves["flow_grpo"]}, path)
    bench.save_raw({"superflow": curves["superflow"]}, path)  # merged, not replaced
    again = bench.load_raw(path)
    assert again["flow_grpo"][1]["items"] == curves["flow_grpo"][1]["items"]
    assert json.dumps(bench.summarise(again)) == json.dumps(bench.summarise(curves))


def test_tuning_summary_keeps_saved_settings_whose_runs_are_not_here(tmp_path):
    tune = load_benchmark("tune_flow_grpo")
    saved = tmp_path / "summary.json"
    saved.write_text(json.dumps([{"setting": "centre", "figure": "old"}, {"setting": "lr3e-4", "figure": "old"},
                                 {"setting": "a setting no longer defined", "figure": "old"}]))
    rows = tune.merged_with_saved([{"setting": "lr3e-4", "figure": "new"}], saved)
    assert sorted((r["setting"], r["figure"]) for r in rows) == [("centre", "old"), ("lr3e-4", "new")]
    assert tune.merged_with_saved([{"setting": "centre"}], tmp_path / "absent.json") == [{"setting": "centre"}]


def test_another_reference_writes_its_own_summary_and_leaves_the_main_one(bench, tmp_path, monkeypatch, capsys):
    curves = {"flow_grpo": {}, "superflow": {}}
    for seed in range(2):
        for method, lift in (("flow_grpo", 0.1), ("superflow", 0.2)):
            evals = {0: flat(0.4), 2: [0.4 + lift * (i % 3) / 2 for i in range(len(ITEMS))]}
            curves[method][seed] = bench.curve(write_run(tmp_path / f"{method}{seed}", evals, 16, 1.0))
    out = tmp_path / "out"
    out.mkdir()
    bench.save_raw(curves, out / bench.RAW_FILE)
    argv = ["sample_efficiency.py", "--summary-only", "--methods", "flow_grpo", "superflow", "--seeds", "0", "1",
            "--out", str(out)]
    monkeypatch.setattr("sys.argv", [*argv, "--reference", "superflow"])
    assert bench.main() == 0
    vs = json.loads((out / "summary_vs_superflow.json").read_text())
    assert vs["reference"] == "superflow" and not (out / "summary.json").exists()
    assert (out / "table_vs_superflow.md").read_text().startswith("target: superflow")
    assert vs["target_reward"] == pytest.approx(np.mean([c["reward"][-1] for c in curves["superflow"].values()]))
    assert "reward_vs_reference" in vs["methods"]["flow_grpo"] and "reward_vs_reference" not in vs["methods"]["superflow"]
    monkeypatch.setattr("sys.argv", argv)
    assert bench.main() == 0
    assert json.loads((out / "summary.json").read_text())["reference"] == "flow_grpo"


def test_the_regimes_train_their_own_prompts_whatever_the_default_job_trains(bench, tmp_path):
    """The regimes' prompts are fixed with their results, whatever the default job trains: the
    focused regime is the position pair, the counting one the counting pair, and the mixed
    ones add two solved prompts to the position pair or to the counting pair."""
    from superflow_lite.config import build_config
    from superflow_lite.prompts import load_prompts
    from superflow_lite.world.prompts import COUNTING_PAIR, POSITION_PAIR, prompt_category

    for regime, pair, size in (("focused", POSITION_PAIR, 2), ("counting", COUNTING_PAIR, 2), ("mixed", POSITION_PAIR, 4),
                               ("counting-mixed", COUNTING_PAIR, 4)):
        overrides = bench.regime_overrides(tmp_path, regime)
        cfg = build_config("tiny-focus", overrides=overrides)
        pool = load_prompts(cfg.prompts).eval_prompts(cfg.prompts.eval_split)
        assert pool[:2] == list(pair) and len(pool) == cfg.prompts.num_eval_prompts == size
        assert all(prompt_category(p) == "single" for p in pool[2:])


def test_a_longer_budget_continues_finished_runs_and_reuses_long_enough_ones(bench, tmp_path, monkeypatch):
    """--iterations above a finished run's own continues it from its checkpoint (never starts
    it again) when its learning rate is constant, and starts it again when it decays (the
    decay's horizon is the budget); a run already at the budget is read as it is."""
    out = tmp_path / "bench"
    for method, done_at, schedule in (("flow_grpo", 48, "constant"), ("superflow", 96, "constant"),
                                      ("superflow-probe", 48, "cosine")):
        run = write_run(out / "runs" / f"{method}-s0", {0: flat(0.5), 4: flat(0.6)}, rollouts_per_iter=32, iter_s=1.0)
        (run / "status.json").write_text(json.dumps({"state": "done", "iterations": done_at, "iteration": done_at}))
        (run / "config.yaml").write_text(f"train:\n  lr: 0.001\n  lr_schedule: {schedule}\n")
    continued, started = [], []
    monkeypatch.setattr(bench, "continue_run", lambda run_dir, iterations: continued.append((run_dir.name, iterations)))
    monkeypatch.setattr(bench, "run_once", lambda run_dir, *a, **k: started.append(run_dir.name))
    monkeypatch.setattr("sys.argv", ["sample_efficiency.py", "--methods", "flow_grpo", "superflow", "superflow-probe",
                                     "--seeds", "0", "--iterations", "96", "--out", str(out)])
    assert bench.main() == 0
    assert continued == [("flow_grpo-s0", 96)] and started == ["superflow-probe-s0"]


@pytest.mark.parametrize("method", list(load_benchmark("sample_efficiency").METHODS))
def test_every_benchmark_method_is_a_valid_config_of_its_algorithm(bench, method):
    """A method's overrides on the regimes' preset resolve and validate; the larger-batch
    settings keep the 4x ratio of rollouts per optimizer step and the EMA's horizon in rollouts."""
    from superflow_lite.config import build_config

    cfg = build_config("tiny-focus", overrides=list(bench.METHODS[method]))
    assert cfg.algorithm == method.split("-")[0]
    if "batch4x" in method:
        default = build_config("tiny-focus", overrides=list(bench.METHODS["flow_grpo"]))
        assert cfg.batch.rollout_cap == 4 * default.batch.rollout_cap
        assert cfg.batch.group_size * cfg.batch.prompts_per_iter == cfg.batch.rollout_cap
        assert cfg.train.ema_decay == pytest.approx(default.train.ema_decay ** 4, abs=1e-4)


def test_the_plot_title_names_replaced_evaluation_seeds_as_a_range(bench):
    assert bench.titled("prompts.eval_seeds=[2000,2001,2002,2003]") == "evaluated at seeds 2000-2003 instead"
    assert bench.titled("prompts.eval_seeds=[5,9]") == "prompts.eval_seeds=[5,9]"
    assert bench.titled("train.lr_schedule=cosine") == "train.lr_schedule=cosine"


@pytest.mark.parametrize("method", sorted(load_benchmark("sample_efficiency").REMOVED_METHODS))
def test_a_removed_setting_is_summarised_from_its_record_but_never_run(bench, method, tmp_path, monkeypatch, capsys):
    """Its overrides no longer exist (they are not a valid config), yet its recorded runs stay
    comparable; asking to train it is one clear error, before anything is written."""
    curves = {"flow_grpo": {}, method: {}}
    for seed in range(2):
        for name, lift in (("flow_grpo", 0.2), (method, -0.3)):
            evals = {0: flat(0.6), 2: [0.6 + lift * (i % 3) / 2 for i in range(len(ITEMS))]}
            curves[name][seed] = bench.curve(write_run(tmp_path / f"{name}{seed}", evals, 16, 1.0))
    out = tmp_path / "out"
    out.mkdir()
    bench.save_raw(curves, out / bench.RAW_FILE)
    argv = ["sample_efficiency.py", "--methods", "flow_grpo", method, "--seeds", "0", "1", "--out", str(out)]
    monkeypatch.setattr("sys.argv", [*argv, "--summary-only"])
    assert bench.main() == 0
    assert json.loads((out / "summary.json").read_text())["methods"][method]["reward_vs_reference"]["mean"] < 0
    before = sorted(p.name for p in out.iterdir())
    monkeypatch.setattr("sys.argv", argv)
    with pytest.raises(SystemExit) as stop:
        bench.main()
    assert stop.value.code == 2 and f"{method} cannot run" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == before and not (out / "runs").exists()


def test_a_method_trained_without_its_reference_saves_its_curves_and_leaves_the_summary(bench, tmp_path, monkeypatch,
                                                                                         capsys):
    """Training one ablation alone (seed by seed, beside another process) merges its curves into
    raw_curves.json, exits 0 and says how to summarise; the summary of every method is untouched."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.json").write_text('{"kept": true}')

    def fake_run(run_dir, *a, **k):
        run = write_run(run_dir, {0: flat(0.5), 2: flat(0.6)}, 16, 1.0)
        (run / "status.json").write_text(json.dumps({"state": "done", "iterations": 4, "iteration": 4}))

    monkeypatch.setattr(bench, "run_once", fake_run)
    monkeypatch.setattr("sys.argv", ["sample_efficiency.py", "--methods", "superflow-probe", "--seeds", "3",
                                     "--iterations", "4", "--out", str(out)])
    assert bench.main() == 0
    assert list(bench.load_raw(out / bench.RAW_FILE)) == ["superflow-probe"]
    assert "--summary-only --methods flow_grpo superflow-probe" in capsys.readouterr().out
    assert json.loads((out / "summary.json").read_text()) == {"kept": True}
