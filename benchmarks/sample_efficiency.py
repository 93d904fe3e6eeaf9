"""Sample efficiency of SuperFlow vs Flow-GRPO (and ablations) on the built-in shapes world.

Every method trains the same base model with the same evaluation (ODE, the test prompts,
fixed seeds) for several seeds. Reported per method, over seeds (mean +- std):
  - rollouts and wall-clock seconds until the test reward first reaches a target;
  - the test reward at equal rollouts (interpolated at the budget every run reached);
  - the mean test reward over each run's evaluations after step 0.

    python benchmarks/sample_efficiency.py --seeds 0 1 2 --iterations 32 --eval-every 4

Finished runs are reused, so methods and seeds can run in separate processes (with
OMP_NUM_THREADS=1 on a 2-core machine) and be summarised together with --summary-only.

Writes <out>/runs/<method>-s<seed>/ (ordinary run directories), <out>/summary.json and
prints a Markdown table for benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from superflow_lite.rundir import read_metrics  # noqa: E402
from superflow_lite.train import main as train_main  # noqa: E402

METHODS: dict[str, list[str]] = {
    "flow_grpo": ["algorithm=flow_grpo"],
    "superflow": ["algorithm=superflow"],
    "superflow-no-dynamic-groups": ["algorithm=superflow", "superflow.dynamic_groups=false"],
    "superflow-no-step-weights": ["algorithm=superflow", "superflow.step_weights=none"],
    "superflow-group-mean-baseline": ["algorithm=superflow", "superflow.baseline=group_mean"],
}

# One budget for all methods: 32 rollouts per iteration at most. flow_grpo: 8 prompts x 4.
COMMON = [
    "superflow.prompts_per_iter=8", "superflow.group_size=4", "superflow.rollout_cap=32",
    "superflow.m_max=6", "superflow.m_min=2", "superflow.num_bins=3",
    "sampling.eval_num_steps=20", "prompts.num_eval_prompts=72",  # the whole test split
]


def curve(run_dir: Path) -> dict[str, np.ndarray]:
    """(rollouts, seconds, test reward, test strict accuracy) at each eval point, step 0 included."""
    rows = read_metrics(run_dir)
    rollouts, seconds, reward, strict = [], [], [], []
    spent_s = 0.0
    for row in rows:
        spent_s += row.get("perf/iter_s", 0.0) or 0.0
        if "eval/reward_mean" in row:
            rollouts.append(row.get("rollouts/total", 0))
            seconds.append(spent_s)
            reward.append(row["eval/reward_mean"])
            strict.append(row.get("eval/strict_mean", float("nan")))
    return {k: np.asarray(v, dtype=float) for k, v in
            {"rollouts": rollouts, "seconds": seconds, "reward": reward, "strict": strict}.items()}


def first_reach(c: dict[str, np.ndarray], target: float, key: str) -> float:
    hit = np.nonzero(c["reward"] >= target)[0]
    return float(c[key][hit[0]]) if len(hit) else float("nan")


def summarise(curves: dict[str, list[dict[str, np.ndarray]]], target: float) -> dict:
    budget = min(c["rollouts"][-1] for runs in curves.values() for c in runs)
    out = {"target_reward": target, "equal_rollouts": budget, "methods": {}}
    for method, runs in curves.items():
        to_target = [first_reach(c, target, "rollouts") for c in runs]
        secs = [first_reach(c, target, "seconds") for c in runs]
        at_budget = [float(np.interp(budget, c["rollouts"], c["reward"])) for c in runs]
        strict_at_budget = [float(np.interp(budget, c["rollouts"], c["strict"])) for c in runs]
        out["methods"][method] = {
            "rollouts_to_target": to_target, "seconds_to_target": secs,
            "reward_at_equal_rollouts": at_budget, "strict_at_equal_rollouts": strict_at_budget,
            "final_reward": [float(c["reward"][-1]) for c in runs],
            # Mean of the evals after step 0: less sensitive to one noisy eval than the last point.
            "mean_reward_after_start": [float(c["reward"][1:].mean()) for c in runs],
            "base_reward": [float(c["reward"][0]) for c in runs],
        }
    return out


def fmt(values: list[float], digits: int = 3) -> str:
    v = np.asarray(values, dtype=float)
    reached = v[np.isfinite(v)]
    if len(reached) == 0:
        return "not reached"
    text = f"{reached.mean():.{digits}f} +- {reached.std():.{digits}f}"
    return text if len(reached) == len(v) else f"{text} ({len(reached)}/{len(v)} reached)"


def table(summary: dict) -> str:
    lines = [
        f"target test reward {summary['target_reward']:.3f}; equal-rollout budget {summary['equal_rollouts']:.0f}",
        "",
        "| method | seeds | rollouts to target | seconds to target | test reward at equal rollouts | strict acc. at equal rollouts | mean test reward over the run |",
        "|---|---|---|---|---|---|---|",
    ]
    for method, m in summary["methods"].items():
        lines.append(f"| {method} | {len(m['final_reward'])} | {fmt(m['rollouts_to_target'], 0)} | "
                     f"{fmt(m['seconds_to_target'], 0)} | {fmt(m['reward_at_equal_rollouts'])} | "
                     f"{fmt(m['strict_at_equal_rollouts'])} | {fmt(m['mean_reward_after_start'])} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--iterations", type=int, default=32)
    parser.add_argument("--eval-every", type=int, default=4)
    parser.add_argument("--target", type=float, default=None,
                        help="test reward to reach; default: halfway from the base reward to the best final reward")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/sample_efficiency"))
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="extra config overrides for every method, e.g. train.lr=1e-3")
    parser.add_argument("--fresh", action="store_true", help="delete earlier runs instead of reusing them")
    parser.add_argument("--summary-only", action="store_true", help="train nothing: summarise the finished runs")
    args = parser.parse_args()
    curves: dict[str, list] = {}
    for method in args.methods:
        for seed in args.seeds:
            run_dir = args.out / "runs" / f"{method}-s{seed}"
            if args.fresh and run_dir.exists():
                shutil.rmtree(run_dir)
            done = (run_dir / "status.json").is_file() and json.loads((run_dir / "status.json").read_text()).get("state") == "done"
            if args.summary_only and not done:
                continue
            if not done:
                if run_dir.exists():
                    shutil.rmtree(run_dir)
                code = train_main(["--preset", "tiny", "--no-progress", "--output", str(run_dir), *COMMON,
                                   *METHODS[method], f"train.seed={seed}", f"train.iterations={args.iterations}",
                                   f"output.eval_every={args.eval_every}", f"output.checkpoint_every={args.iterations}",
                                   *args.set])
                if code != 0:
                    print(f"{method} seed {seed} failed with exit code {code}", file=sys.stderr)
                    return code
            curves.setdefault(method, []).append(curve(run_dir))
    if not curves:
        print(f"no finished runs under {args.out / 'runs'}: run the benchmark without --summary-only first",
              file=sys.stderr)
        return 2
    base = float(np.mean([c["reward"][0] for runs in curves.values() for c in runs]))
    best = max(float(np.mean([c["reward"][-1] for c in runs])) for runs in curves.values())
    target = args.target if args.target is not None else base + 0.5 * (best - base)
    summary = summarise(curves, target)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(table(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
