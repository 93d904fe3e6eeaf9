"""Sample efficiency of SuperFlow vs Flow-GRPO (and ablations) on the built-in shapes world.

Every method trains the same base model at the tuned baseline's settings (`TUNED`, chosen
on the validation split by benchmarks/tune_flow_grpo.py) with the same budget, for several
training seeds, and is evaluated on the same test items (72 prompts x 4 seeds, the same
initial noise for every method and step; ODE 20 steps). Methods are paired by training
seed and by item. Reported against the reference method (flow_grpo), each with a 95%
bootstrap interval (runs and items resampled):
  - the gain over the base model (strict accuracy and reward) at the end;
  - rollouts and seconds to reach the reference's final mean test reward, as ratios;
  - the test reward and strict accuracy at equal rollouts (the budget every run reached);
  - the area under the reward curve over rollouts (the mean reward over the run).

    OMP_NUM_THREADS=1 python benchmarks/sample_efficiency.py --methods flow_grpo --seeds 0 1 2 3 4
    python benchmarks/sample_efficiency.py --summary-only --methods flow_grpo superflow --seeds 0 1 2 3 4

Where learning happens (the regimes, at the default job's settings; 48 iterations):

    OMP_NUM_THREADS=1 python benchmarks/sample_efficiency.py --regime focused --methods flow_grpo superflow \
        --out benchmarks/results/regime_focused

A longer budget continues finished runs from their last checkpoint:

    cp -r benchmarks/results/regime_counting/runs benchmarks/results/regime_counting_long/
    OMP_NUM_THREADS=1 python benchmarks/sample_efficiency.py --regime counting --iterations 96 \
        --methods flow_grpo superflow --out benchmarks/results/regime_counting_long

Finished runs are reused, so methods and seeds can run in separate processes (two at a
time on a 2-core machine, one thread each) and be summarised together. Seconds are the
training iterations' own wall time (evaluation and loading excluded); compare them only
between runs that ran side by side.

Writes <out>/runs/<method>-s<seed>/ (ordinary run directories), <out>/summary.json, the
curves to <out>/curves.png and the Markdown table for benchmarks/RESULTS.md to <out>/table.md
(and prints it), and per prompt to <out>/table_by_prompt.md (each prompt's curve, and its final
reward against the reference's); with --reference M, summary_vs_M.json, table_vs_M.md and
table_by_prompt_vs_M.md instead.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import textwrap
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from superflow_lite.rundir import CONFIG_FILE, DONE, SAMPLES_DIR, list_sample_steps, read_metrics, read_status, run_state  # noqa: E402
from superflow_lite.stats import Interval, aligned, bootstrap_ratio, paired_bootstrap, read_eval_items  # noqa: E402
from superflow_lite.train import main as train_main  # noqa: E402

METHODS: dict[str, list[str]] = {
    "flow_grpo": ["algorithm=flow_grpo"],
    # Flow-GRPO at the learning rate its own validation runs pick in the focused regime
    # (results/regime_focused_val/PROTOCOL.md): the control for SuperFlow's step weights.
    "flow_grpo-lr4e-3": ["algorithm=flow_grpo", "train.lr=4e-3"],
    # 4x the rollouts per optimizer step at two larger step sizes, the LoRA EMA's horizon in
    # rollouts kept (0.95^4 per step): results/batch_size/PROTOCOL.md.
    **{f"flow_grpo-batch4x-lr{lr}": ["algorithm=flow_grpo", "batch.group_size=64", "batch.rollout_cap=128",
                                     f"train.lr={lr}", "train.ema_decay=0.8145"] for lr in ("4e-3", "8e-3")},
    # Flow-GRPO's no-CFG setting: sampled, trained and evaluated at guidance 1 (on-policy).
    "flow_grpo-no-cfg": ["algorithm=flow_grpo", "sampling.guidance_scale=1", "sampling.eval_guidance_scale=1"],
    "superflow": ["algorithm=superflow"],
    "superflow-no-dynamic-groups": ["algorithm=superflow", "superflow.dynamic_groups=false"],
    "superflow-no-step-weights": ["algorithm=superflow", "superflow.step_weights=none"],
    "superflow-group-mean-baseline": ["algorithm=superflow", "superflow.baseline=group_mean"],
    # The two mechanisms that act within an iteration (ALGORITHM.md 3 and 4), alone and together.
    "superflow-probe": ["algorithm=superflow", "superflow.allocation=probe"],
    "superflow-x0-credit": ["algorithm=superflow", "superflow.step_credit=x0_value"],
    "superflow-probe-x0-credit": ["algorithm=superflow", "superflow.allocation=probe", "superflow.step_credit=x0_value"],
}
REFERENCE = "flow_grpo"
# Settings measured and then removed from the product: their runs stay in raw_curves.json and
# --summary-only still reads them, but they cannot run again.
REMOVED_METHODS = {
    # train.cfg_in_training=false, the update from the conditional velocity alone on rollouts
    # sampled with CFG: it collapsed the model (results/no_cfg_update/), and the key is gone.
    "flow_grpo-no-cfg-update": "train.cfg_in_training was removed (superflow_lite.config.REMOVED_KEYS)",
}

# One budget for all methods: at most 32 rollouts per iteration.
BUDGET = ["batch.rollout_cap=32"]
# The paired test evaluation: every test prompt, 4 seeds each (288 items).
EVALUATION = ["prompts.eval_split=test", "prompts.num_eval_prompts=72", "prompts.eval_seeds=[0,1,2,3]",
              "sampling.eval_num_steps=20"]
# The tuned baseline's settings (benchmarks/RESULTS.md, "Tuning Flow-GRPO": best strict-accuracy
# gain on the validation split), used by every method: 2 prompts x 16 rollouts per iteration.
# SuperFlow's groups range around the same size (16 for the most uncertain bin, 8 for the least).
TUNED = ["train.lr=1e-3", "train.clip_range=1e-3", "train.kl_beta=0", "sampling.noise_level=0.7",
         "batch.prompts_per_iter=2", "batch.group_size=16",
         "superflow.m_max=16", "superflow.m_min=8", "superflow.num_bins=2"]


def curve(run_dir: Path) -> dict:
    """Eval points with cumulative rollouts and training seconds, and the per-item scores.

    Returns rollouts, seconds, reward, strict: [E] means; items: the (prompt, seed) keys;
    reward_items, strict_items: [E, items] (empty when the run kept no per-item index).
    """
    rows = read_metrics(run_dir)
    # What the mechanisms cost inside the run itself (the first iteration pays one-off costs):
    # a share of the same process's time, so it holds whatever else the machine was doing.
    later = [r for r in rows if r.get("iteration", 0) > 1 and r.get("perf/iter_s")]
    spent_later = sum(r["perf/iter_s"] for r in later) or float("nan")
    costs = {"credit_share": sum(r.get("perf/credit_s", 0.0) for r in later) / spent_later,
             "extra_sample_batches": float(np.mean([r.get("perf/sample_batches", 0.0)
                                                    - r.get("perf/sample_batches_one_phase", r.get("perf/sample_batches", 0.0))
                                                    for r in later])) if later else float("nan")}
    # The share of rollouts spent on groups whose rewards did not vary (no group-mean signal).
    spent = [(r["rollouts/iter"], r["reward/zero_std_rollout_frac"]) for r in rows
             if "reward/zero_std_rollout_frac" in r and "rollouts/iter" in r]
    costs["zero_spread_share"] = (sum(n * f for n, f in spent) / sum(n for n, _ in spent)) if spent else float("nan")
    points: dict[int, tuple[float, float, float, float]] = {}
    rollouts, spent_s = 0.0, 0.0
    for row in rows:
        spent_s += row.get("perf/iter_s", 0.0) or 0.0
        rollouts = row.get("rollouts/total", rollouts) or rollouts
        if "eval/reward_mean" in row:
            points[int(row.get("iteration", 0))] = (rollouts, spent_s, row["eval/reward_mean"],
                                                    row.get("eval/strict_mean", float("nan")))
    steps = sorted(points)
    out = {k: np.asarray([points[s][i] for s in steps], dtype=float)
           for i, k in enumerate(("rollouts", "seconds", "reward", "strict"))}
    dirs = {step: run_dir / SAMPLES_DIR / f"{step:06d}" for step in list_sample_steps(run_dir)}
    out.update(costs)
    out["items"], out["reward_items"], out["strict_items"] = [], np.zeros((0, 0)), np.zeros((0, 0))
    if dirs and all(s in dirs for s in steps):
        for metric in ("reward", "strict"):
            evals = [read_eval_items(dirs[s], metric) for s in steps]
            out[f"{metric}_items"] = aligned(evals)
        out["items"] = sorted(set.intersection(*(set(read_eval_items(dirs[s])) for s in steps)))
    return out


RAW_FILE = "raw_curves.json"
"""Every finished run's curve with its per-item scores, committed beside the summary: the
run directories are not (images), and a later --summary-only, here or on a fresh clone,
rebuilds the table from this file for the runs whose directories it lacks."""


def save_raw(curves: dict[str, dict[int, dict]], path: Path) -> None:
    """Merge `curves` into the raw file (runs already there and not re-read are kept)."""
    raw = load_raw(path)
    for method, runs in curves.items():
        raw.setdefault(method, {}).update(runs)
    plain = {m: {str(seed): {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in c.items()}
                 for seed, c in runs.items()} for m, runs in raw.items()}
    path.write_text(json.dumps(plain))


def load_raw(path: Path) -> dict[str, dict[int, dict]]:
    """The raw file's curves, arrays as numpy (items as (prompt, seed) tuples); {} if absent."""
    if not path.is_file():
        return {}
    out: dict[str, dict[int, dict]] = {}
    for method, runs in json.loads(path.read_text()).items():
        for seed, c in runs.items():
            c = {k: (np.asarray(v, dtype=float) if k in ("rollouts", "seconds", "reward", "strict", "reward_items",
                                                          "strict_items") else v) for k, v in c.items()}
            c["items"] = [tuple(i) for i in c.get("items", [])]
            for metric in ("reward", "strict"):
                if c[f"{metric}_items"].ndim < 2:  # a run without per-item scores
                    c[f"{metric}_items"] = np.zeros((0, 0))
            out.setdefault(method, {})[int(seed)] = c
    return out


def first_reach(c: dict, target: float, key: str) -> float:
    """`key` (rollouts or seconds) where the mean reward curve first reaches `target`,
    linearly interpolated between the two evaluations around the crossing; NaN if never."""
    r = c["reward"]
    hit = np.nonzero(r >= target)[0]
    if not len(hit):
        return float("nan")
    i = int(hit[0])
    if i == 0:
        return float(c[key][0])
    frac = (target - r[i - 1]) / (r[i] - r[i - 1])
    return float(c[key][i - 1] + frac * (c[key][i] - c[key][i - 1]))


def items_at(c: dict, metric: str, rollouts: float) -> np.ndarray:
    """Per-item scores interpolated at a rollout count. [items]."""
    table, x = c[f"{metric}_items"], c["rollouts"]
    j = int(np.clip(np.searchsorted(x, rollouts), 1, len(x) - 1))
    frac = np.clip((rollouts - x[j - 1]) / max(x[j] - x[j - 1], 1e-12), 0.0, 1.0)
    return table[j - 1] + frac * (table[j] - table[j - 1])


def items_auc(c: dict, metric: str, budget: float) -> np.ndarray:
    """Per-item area under the curve over [0, budget] rollouts, divided by the budget:
    the mean score over the run. [items]."""
    x = np.append(c["rollouts"][c["rollouts"] < budget], budget)
    ys = np.stack([items_at(c, metric, v) for v in x])
    return np.trapezoid(ys, x, axis=0) / budget


LATE_ROLLOUTS = 768
"""A curve's plateau reading: its reward gain over its own last 768 rollouts (24 of Flow-GRPO's
iterations). Called a plateau only where that gain's interval contains zero."""


def summarise(by_seed: dict[str, dict[int, dict]], reference: str = REFERENCE, target: float | None = None) -> dict:
    """Every figure of the table, each with its interval. by_seed: {method: {training seed: curve}};
    a method is compared with the reference on the seeds both have (pairing)."""
    curves = {m: [runs[s] for s in sorted(runs)] for m, runs in by_seed.items()}
    budget = float(min(c["rollouts"][-1] for runs in curves.values() for c in runs))
    ref_runs = curves[reference]
    if target is None:  # the reference's final mean test reward
        target = float(np.mean([c["reward"][-1] for c in ref_runs]))
    base = float(np.mean([c["reward"][0] for c in ref_runs]))
    # A target at or below the base model is "reached" before training: no rollouts-to-target then.
    defined = target > base
    out: dict = {"target_reward": target, "base_reward": base, "target_defined": defined,
                 "equal_rollouts": budget, "reference": reference, "methods": {}}
    reach = first_reach if defined else (lambda c, t, key: float("nan"))
    per_item = all(c["reward_items"].size for runs in curves.values() for c in runs)
    for method, runs in curves.items():
        to_target = np.array([reach(c, target, "rollouts") for c in runs])
        secs = np.array([reach(c, target, "seconds") for c in runs])
        m: dict = {
            "seeds": len(runs), "rollouts_to_target": to_target.tolist(), "seconds_to_target": secs.tolist(),
            "reached": int(np.isfinite(to_target).sum()),
            "seconds_per_rollout": [float(c["seconds"][-1] / c["rollouts"][-1]) for c in runs],
            "final_reward": [float(c["reward"][-1]) for c in runs],
            "final_strict": [float(c["strict"][-1]) for c in runs],
            "reward_curve_mean": np.mean([c["reward"] for c in runs], axis=0).tolist() if _same_grid(runs) else None,
            "reward_by_prompt": reward_by_prompt(runs),
            "credit_share": float(np.mean([c.get("credit_share", np.nan) for c in runs])),
            "zero_spread_share": float(np.mean([c.get("zero_spread_share", np.nan) for c in runs])),
            "extra_sample_batches": float(np.mean([c.get("extra_sample_batches", np.nan) for c in runs])),
            "visits_per_prompt": float(np.mean([c["visits"]["visits_per_prompt"] for c in runs if "visits" in c] or [np.nan])),
            "first_visit_frac": float(np.mean([c["visits"]["first_visit_frac"] for c in runs if "visits" in c] or [np.nan])),
        }
        if per_item:
            for metric in ("reward", "strict"):
                base = np.stack([c[f"{metric}_items"][0] for c in runs])
                at_budget = np.stack([items_at(c, metric, budget) for c in runs])
                m[f"{metric}_gain"] = paired_bootstrap(at_budget, base).__dict__
                m[f"{metric}_at_budget"] = paired_bootstrap(at_budget).__dict__
                m[f"{metric}_auc"] = paired_bootstrap(np.stack([items_auc(c, metric, budget) for c in runs])).__dict__
            # Is a run's end above where it started? Its final evaluation against step 0 (the
            # gain columns above are at the equal-rollout budget), paired by seed and item.
            for metric in ("reward", "strict"):
                m[f"{metric}_final_gain"] = paired_bootstrap(np.stack([c[f"{metric}_items"][-1] for c in runs]),
                                                             np.stack([c[f"{metric}_items"][0] for c in runs])).__dict__
            # Has the curve flattened? Its own last LATE_ROLLOUTS, paired by seed and item.
            m["reward_late_gain"] = paired_bootstrap(
                np.stack([items_at(c, "reward", c["rollouts"][-1]) for c in runs]),
                np.stack([items_at(c, "reward", max(c["rollouts"][-1] - LATE_ROLLOUTS, 0.0)) for c in runs])).__dict__
        common = sorted(set(by_seed[method]) & set(by_seed[reference]))
        if method != reference and common:
            runs = [by_seed[method][s] for s in common]
            ref_runs = [by_seed[reference][s] for s in common]
            to_target = np.array([reach(c, target, "rollouts") for c in runs])
            secs = np.array([reach(c, target, "seconds") for c in runs])
            ref_to = np.array([reach(c, target, "rollouts") for c in ref_runs])
            ref_secs = np.array([reach(c, target, "seconds") for c in ref_runs])
            m["paired_seeds"] = common
            m["rollouts_ratio"] = bootstrap_ratio(to_target, ref_to).__dict__
            # Cost per rollout of the runs that ran side by side (same seed, same time).
            m["seconds_per_rollout_ratio"] = bootstrap_ratio(
                [c["seconds"][-1] / c["rollouts"][-1] for c in runs],
                [c["seconds"][-1] / c["rollouts"][-1] for c in ref_runs]).__dict__
            m["seconds_ratio"] = bootstrap_ratio(secs, ref_secs).__dict__
            if per_item:
                for metric in ("reward", "strict"):
                    mine = np.stack([items_at(c, metric, budget) for c in runs])
                    ref = np.stack([items_at(c, metric, budget) for c in ref_runs])
                    m[f"{metric}_vs_reference"] = paired_bootstrap(mine, ref).__dict__
                    mine_auc = np.stack([items_auc(c, metric, budget) for c in runs])
                    ref_auc = np.stack([items_auc(c, metric, budget) for c in ref_runs])
                    m[f"{metric}_auc_vs_reference"] = paired_bootstrap(mine_auc, ref_auc).__dict__
                m["final_by_prompt_vs_reference"] = final_by_prompt(runs, ref_runs)
        out["methods"][method] = m
    return out


SOLVED_AT_BASE = 0.99
"""A prompt whose base-model reward (step 0, mean over the reference's runs and its noise seeds)
is at least this is solved from the start: the mixed regimes' single objects score 1.000."""
SOLVED_GROUP = "prompts solved at the base"


def final_by_prompt(runs: list[dict], ref_runs: list[dict]) -> dict[str, dict]:
    """Where a difference at the end comes from: per prompt, and for the prompts solved at the
    base together, the final evaluation's reward minus the reference's, paired by training seed
    and item. runs and ref_runs: the same seeds in the same order, scored on the same items."""
    items = ref_runs[0]["items"]
    if any(c["items"] != items for c in (*runs, *ref_runs)):
        raise ValueError("the runs were scored on different items: nothing to pair")
    mine = np.stack([c["reward_items"][-1] for c in runs])
    ref = np.stack([c["reward_items"][-1] for c in ref_runs])
    base = np.mean([c["reward_items"][0] for c in ref_runs], axis=0)
    groups = columns_by_prompt(items)
    solved = [k for cols in groups.values() if base[cols].mean() >= SOLVED_AT_BASE for k in cols]
    if solved:
        groups[SOLVED_GROUP] = solved
    return {name: paired_bootstrap(mine[:, cols], ref[:, cols]).__dict__ for name, cols in groups.items()}


def reward_by_prompt(runs: list[dict]) -> dict[str, list[float]] | None:
    """Each evaluated prompt's mean reward at each evaluation (over training and noise seeds):
    which prompts a curve's rise and fall come from. None when the runs kept no per-item scores
    or evaluated a different number of times."""
    if len({len(c["reward"]) for c in runs}) != 1 or not all(c["reward_items"].size for c in runs):
        return None
    prompts = sorted({prompt for c in runs for prompt, _ in c["items"]})
    per_run = [{p: c["reward_items"][:, cols].mean(axis=1) for p, cols in columns_by_prompt(c["items"]).items()}
               for c in runs]
    return {p: np.mean([r[p] for r in per_run], axis=0).tolist() for p in prompts}


def columns_by_prompt(items: list[tuple[str, int]]) -> dict[str, list[int]]:
    """Each prompt's columns in a [.., items] table, prompts sorted."""
    return {p: [k for k, (q, _) in enumerate(items) if q == p] for p in sorted({q for q, _ in items})}


def prompt_table(summary: dict) -> str:
    """Per method and prompt: the mean reward at step 0, at its highest evaluation, and at the end,
    and the final reward against the reference's (paired); then the prompts solved at the base
    together, against the reference."""
    ref = summary["reference"]
    lines = [f"| method | prompt | base | highest evaluation | final | final vs {ref} |", "|---|---|---|---|---|---|"]
    for method, m in summary["methods"].items():
        versus = m.get("final_by_prompt_vs_reference") or {}
        for prompt, rewards in (m.get("reward_by_prompt") or {}).items():
            lines.append(f"| {method} | {prompt} | {rewards[0]:.3f} | {max(rewards):.3f} | {rewards[-1]:.3f} | "
                         f"{fmt(versus.get(prompt))} |")
        if SOLVED_GROUP in versus:
            lines.append(f"| {method} | {SOLVED_GROUP} (base reward >= {SOLVED_AT_BASE}) | | | | "
                         f"{fmt(versus[SOLVED_GROUP])} |")
    return "\n".join(lines)


def titled(override: str) -> str:
    """An override as the plot's title names it: a run of consecutive evaluation seeds as its
    range, marked as replacing the regime's own."""
    key, _, value = override.partition("=")
    if key != "prompts.eval_seeds":
        return override
    try:
        seeds = [int(v) for v in value.strip("[] ").split(",")]
    except ValueError:
        return override
    if seeds != list(range(seeds[0], seeds[0] + len(seeds))):
        return override
    return f"evaluated at seeds {seeds[0]}-{seeds[-1]} instead"


def _same_grid(runs: list[dict]) -> bool:
    return len({tuple(c["rollouts"]) for c in runs}) == 1


def fmt(interval: dict | None, digits: int = 3, signed: bool = True) -> str:
    if not interval or not np.isfinite(interval["mean"]):
        return "n/a"
    return Interval(**interval).fmt(digits, signed)


def fmt_spread(values: list[float], digits: int = 0) -> str:
    v = np.asarray(values, dtype=float)
    reached = v[np.isfinite(v)]
    if len(reached) == 0:
        return "n/a"
    text = f"{reached.mean():.{digits}f} +- {reached.std():.{digits}f}"
    return text if len(reached) == len(v) else f"{text} ({len(reached)}/{len(v)} reached)"


def _share(value: float | None) -> str:
    return f"{value:.0%}" if value is not None and np.isfinite(value) else "n/a"


def _count(value: float | None) -> str:
    return f"{value:+.1f}" if value is not None and np.isfinite(value) else "n/a"


def table(summary: dict) -> str:
    ref = summary["reference"]
    target = (f"target: {ref}'s final mean test reward, {summary['target_reward']:.3f}"
              + ("" if summary.get("target_defined", True) else
                 f" (not above the base model's {summary['base_reward']:.3f}: rollouts to target undefined)"))
    lines = [
        f"{target}; equal-rollout budget {summary['equal_rollouts']:.0f}. "
        "Intervals: 95% paired bootstrap over training seeds and test items.",
        "",
        "| method | seeds | visits per prompt (first visits) | strict gain over base | reward gain over base | rollouts to target | "
        f"rollouts ratio to {ref} | seconds ratio to {ref} | reward vs {ref} at equal rollouts | "
        f"strict vs {ref} at equal rollouts | reward AUC vs {ref} | seconds per rollout ratio (side by side only) | "
        "x0 scoring share of its time | extra sampling passes | rollouts on groups with zero reward spread | "
        f"reward gain over its last {LATE_ROLLOUTS} rollouts | final reward over base |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method, m in summary["methods"].items():
        lines.append(
            f"| {method} | {m['seeds']} | {m.get('visits_per_prompt', float('nan')):.1f} "
            f"({m.get('first_visit_frac', float('nan')):.0%}) | {fmt(m.get('strict_gain'))} | {fmt(m.get('reward_gain'))} | "
            f"{fmt_spread(m['rollouts_to_target'])} | {fmt(m.get('rollouts_ratio'), 2, False)} | "
            f"{fmt(m.get('seconds_ratio'), 2, False)} | {fmt(m.get('reward_vs_reference'))} | "
            f"{fmt(m.get('strict_vs_reference'))} | {fmt(m.get('reward_auc_vs_reference'))} | "
            f"{fmt(m.get('seconds_per_rollout_ratio'), 2, False)} | {_share(m.get('credit_share'))} | "
            f"{_count(m.get('extra_sample_batches'))} | {_share(m.get('zero_spread_share'))} | "
            f"{fmt(m.get('reward_late_gain'))} | {fmt(m.get('reward_final_gain'))} |")
    return "\n".join(lines)


def plot(curves: dict[str, list[dict]], path: Path, scored_on: str = "72 test prompts x 4 seeds") -> None:
    """Mean test reward and strict accuracy over rollouts, with a band of +- one standard
    error over training seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("reward", "strict")):
        for method, runs in curves.items():
            grid = np.linspace(0, min(c["rollouts"][-1] for c in runs), 33)
            ys = np.stack([np.interp(grid, c["rollouts"], c[metric]) for c in runs])
            mean, se = ys.mean(axis=0), ys.std(axis=0, ddof=1) / np.sqrt(len(ys)) if len(ys) > 1 else 0 * ys[0]
            ax.plot(grid, mean, label=f"{method} ({len(runs)} seeds)")
            ax.fill_between(grid, mean - se, mean + se, alpha=0.2)
        ax.set_xlabel("rollouts")
        ax.set_ylabel(f"test {metric}" + (" accuracy" if metric == "strict" else ""))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    # A regime's description is a long sentence: wrap it to the figure's width rather than cut it.
    title = textwrap.fill(f"shapes world, {scored_on}; band: +- 1 s.e. over training seeds", width=140)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# The recurring regime's evaluation: every pool prompt with this many seeds (0, 1, ...), the same
# at every step. A smaller pool takes more seeds per prompt so the evaluation keeps ~128 items.
POOL_EVAL_SEEDS = 8


def recurring_pool(out: Path, size: int, eval_seeds: int = POOL_EVAL_SEEDS) -> list[str]:
    """The recurring regime: the RL pool cut to `size` train prompts (a fixed shuffle), so each
    prompt is visited several times in one run, and the evaluation scores those same prompts
    (`size` x `eval_seeds` items, fixed noise seeds): what RL on recurring prompts buys, which is what a
    per-prompt tracker can speed up; not generalisation to the test split. Returns the
    overrides that select the pool."""
    import random

    from superflow_lite.world.prompts import rl_train_prompts

    pool = rl_train_prompts()
    random.Random(0).shuffle(pool)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"pool{size}.txt"
    path.write_text("\n".join(pool[:size]) + "\n")
    return [f"prompts.source={path}", f"prompts.test_source={path}", f"prompts.num_eval_prompts={size}",
            f"prompts.eval_seeds=[{','.join(map(str, range(eval_seeds)))}]"]


# The regimes where learning happens, fixed before any of their runs. Both train at the
# default job's settings (preset tiny-focus: lr 2e-3 with the LoRA's moving average, 2 prompts
# per iteration, groups of 16 (flow_grpo) or 8-16 (superflow) under the 32-rollout cap) and
# score the pool's own prompts at fresh noise seeds, the same at every evaluation (paired).
REGIME_ITERATIONS = 48
REGIMES = {
    "focused": "two position prompts the base model rarely draws right (strict ~0.1), 64 seeds each (1000-1063)",
    "counting": "the default job's two counting prompts (strict 0.3-0.5 at the base), 64 seeds each (1000-1063)",
    "mixed": "the two position prompts beside two single-object prompts the base model already draws (strict ~1.0), "
             "32 seeds each (1000-1031); 2 of the 4 prompts per iteration, so which prompts are chosen matters",
    "counting-mixed": "the counting pair beside the same two solved single-object prompts, 32 seeds each (1000-1031); "
                      "2 of the 4 prompts per iteration",
}


def regime_overrides(out: Path, regime: str) -> list[str]:
    """The overrides of a regime on top of preset tiny-focus: its prompts, and for the mixed
    regimes their evaluation seeds (the focused and counting ones keep the preset's 1000-1063)."""
    from superflow_lite.world.prompts import COUNTING_PAIR, POSITION_PAIR, prompt_category, rl_train_prompts

    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{regime}_pool.txt"
    pair = {"focused": POSITION_PAIR, "counting": COUNTING_PAIR,
            "mixed": POSITION_PAIR, "counting-mixed": COUNTING_PAIR}[regime]
    if not regime.endswith("mixed"):
        path.write_text("\n".join(pair) + "\n")
        return [f"prompts.source={path}", "prompts.num_eval_prompts=2"]
    solved = [p for p in rl_train_prompts() if prompt_category(p) == "single"][:2]  # the first two in pool order
    path.write_text("\n".join([*pair, *solved]) + "\n")
    return [f"prompts.source={path}", "prompts.num_eval_prompts=4",
            f"prompts.eval_seeds=[{','.join(map(str, range(1000, 1032)))}]"]


def visits(run_dir: Path) -> dict:
    """How often the run revisited its prompts: prompt visits per distinct prompt seen, and the
    share of groups that were a prompt's first visit (where no tracker knows anything yet)."""
    rows = [r for r in read_metrics(run_dir) if "group/num_prompts" in r]
    groups = sum(r["group/num_prompts"] for r in rows)
    first = sum(r["group/num_prompts"] * r.get("group/first_visit_frac", 0.0) for r in rows)
    return {"groups": groups, "first_visit_frac": first / max(groups, 1),
            "visits_per_prompt": groups / max(first, 1)}


def run_once(run_dir: Path, method: str, seed: int, iterations: int, eval_every: int, extra: list[str],
             regime: str = "") -> None:
    if run_dir.exists():
        shutil.rmtree(run_dir)
    # A regime brings its own settings (tiny-focus's); the whole pool uses the tuned baseline's.
    setting = ["--preset", "tiny-focus"] if regime else ["--preset", "tiny", *BUDGET, *EVALUATION, *TUNED]
    code = train_main([*setting, "--no-progress", "--output", str(run_dir),
                       *METHODS[method], f"train.seed={seed}", f"train.iterations={iterations}",
                       f"output.eval_every={eval_every}", f"output.checkpoint_every={iterations}", *extra])
    if code != 0:
        raise SystemExit(f"{method} seed {seed} failed with exit code {code}")


def continuable(run_dir: Path) -> bool:
    """A finished run can be trained on to a longer budget only if its learning rate is
    constant: a decaying one has its horizon in train.iterations, so the longer budget's run
    differs from the first iteration on."""
    from superflow_lite.config import load_yaml

    config = load_yaml((run_dir / CONFIG_FILE).read_text()) or {}
    return config.get("train", {}).get("lr_schedule", "constant") == "constant"


def continue_run(run_dir: Path, iterations: int) -> None:
    """Train a finished run on to `iterations` from its last checkpoint. The learning rate is
    constant (`continuable`) and a resume is bit-exact (tests/test_export_resume.py), so this
    is the run the longer budget would have made, at the cost of the new iterations only."""
    code = train_main(["--resume", str(run_dir), "--no-progress", f"train.iterations={iterations}",
                       f"output.checkpoint_every={iterations}"])
    if code != 0:
        raise SystemExit(f"continuing {run_dir} to {iterations} iterations failed with exit code {code}")


def json_text(summary: dict) -> str:
    """summary.json as standard JSON: a figure that is not defined (a target a seed never
    reached, a share with no rollouts) is null rather than NaN, which strict readers refuse."""
    def defined(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: defined(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [defined(v) for v in value]
        return value
    return json.dumps(defined(summary), indent=1, allow_nan=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=[*METHODS, *REMOVED_METHODS],
                        help=f"settings to run or summarise; {', '.join(REMOVED_METHODS)}: summarise only")
    parser.add_argument("--iterations", type=int, default=None, help=f"default: 32, or {REGIME_ITERATIONS} in a regime")
    parser.add_argument("--eval-every", type=int, default=8)
    parser.add_argument("--target", type=float, default=None,
                        help=f"test reward to reach; default: {REFERENCE}'s final mean test reward")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/sample_efficiency"))
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="extra config overrides for every method, e.g. train.lr=1e-3")
    parser.add_argument("--pool", type=int, default=0, metavar="N",
                        help="the recurring regime: train on N train prompts only and score those (0: the whole pool of 618, scored on the test split)")
    parser.add_argument("--pool-seeds", type=int, default=POOL_EVAL_SEEDS, metavar="S",
                        help="the recurring regime's evaluation: each pool prompt with seeds 0..S-1")
    parser.add_argument("--regime", choices=list(REGIMES), default="",
                        help="a regime where learning happens, at the default job's settings: "
                             + "; ".join(f"{k}: {v}" for k, v in REGIMES.items())
                             + f" (default iterations there: {REGIME_ITERATIONS})")
    parser.add_argument("--reference", default=REFERENCE, choices=list(METHODS),
                        help=f"the method the others are compared with, whose final mean reward is the target "
                             f"(default {REFERENCE}); another writes summary_vs_<reference>.json and no plot, "
                             "e.g. the ablations against superflow")
    parser.add_argument("--fresh", action="store_true", help="delete earlier runs instead of reusing them")
    parser.add_argument("--summary-only", action="store_true", help="train nothing: summarise the finished runs")
    args = parser.parse_args()
    if args.regime and args.pool:
        parser.error("--regime and --pool choose the prompts two ways; give one")
    removed = [m for m in args.methods if m in REMOVED_METHODS]
    if removed and not args.summary_only:
        parser.error("; ".join(f"{m} cannot run: {REMOVED_METHODS[m]}; its recorded runs can be summarised with "
                               "--summary-only" for m in removed))
    if args.iterations is None:
        args.iterations = REGIME_ITERATIONS if args.regime else 32
    extra = [*args.set, *(recurring_pool(args.out, args.pool, args.pool_seeds) if args.pool else []),
             *(regime_overrides(args.out, args.regime) if args.regime else [])]
    raw = load_raw(args.out / RAW_FILE)
    curves: dict[str, dict[int, dict]] = {}
    fresh: dict[str, dict[int, dict]] = {}
    for seed in args.seeds:  # seed by seed: every finished seed is a paired comparison
        for method in args.methods:
            run_dir = args.out / "runs" / f"{method}-s{seed}"
            if args.fresh and run_dir.exists():
                shutil.rmtree(run_dir)
            if run_state(run_dir) != DONE:
                if args.summary_only:
                    if not args.fresh and seed in raw.get(method, {}):
                        curves.setdefault(method, {})[seed] = raw[method][seed]
                    continue
                run_once(run_dir, method, seed, args.iterations, args.eval_every, extra, args.regime)
            elif not args.summary_only and read_status(run_dir)["iterations"] < args.iterations:
                if continuable(run_dir):
                    continue_run(run_dir, args.iterations)
                else:
                    run_once(run_dir, method, seed, args.iterations, args.eval_every, extra, args.regime)
            c = {**curve(run_dir), "visits": visits(run_dir)}
            curves.setdefault(method, {})[seed] = fresh.setdefault(method, {})[seed] = c
    if fresh:
        args.out.mkdir(parents=True, exist_ok=True)
        save_raw(fresh, args.out / RAW_FILE)
    if fresh and args.reference not in args.methods:
        # A method trained on its own (e.g. an ablation, seed by seed, beside another process):
        # its curves are saved; summarising it alone would overwrite the summary of every method.
        print(f"saved {sum(map(len, fresh.values()))} run(s) to {args.out / RAW_FILE}; no summary, as the "
              f"reference {args.reference} is not among --methods: summarise with --summary-only "
              f"--methods {args.reference} {' '.join(args.methods)} (and the other methods to keep)")
        return 0
    if not curves or args.reference not in curves:
        print(f"no finished runs of {args.reference} under {args.out / 'runs'}: run the benchmark without "
              "--summary-only first", file=sys.stderr)
        return 2
    summary = summarise(curves, args.reference, args.target)
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "" if args.reference == REFERENCE else f"_vs_{args.reference}"
    (args.out / f"summary{suffix}.json").write_text(json_text(summary))
    (args.out / f"table{suffix}.md").write_text(table(summary) + "\n")
    (args.out / f"table_by_prompt{suffix}.md").write_text(prompt_table(summary) + "\n")
    if suffix:
        print(table(summary))
        return 0
    scored_on = (f"{args.regime} regime: {REGIMES[args.regime]}" if args.regime else
                 f"recurring pool of {args.pool} train prompts, scored on them x {args.pool_seeds} seeds"
                 if args.pool else "72 test prompts x 4 seeds") + "".join(f"; {titled(o)}" for o in args.set)
    plot({m: list(runs.values()) for m, runs in curves.items()}, args.out / "curves.png", scored_on)
    print(table(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
