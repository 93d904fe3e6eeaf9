"""Tune Flow-GRPO itself on the shapes world, on the validation split, before any comparison.

Each named setting trains `algorithm=flow_grpo` for --iterations iterations at the
benchmark's budget (8 prompts x 4 rollouts = 32 per iteration; a setting may change the
prompts x group size, and those named -3072 or -4096 bring their own iterations) and is
evaluated on the validation prompts (train prompts held out of the RL pool: 42 prompts x
4 seeds, ODE 20 steps), never on the test split. The table gives each setting's gain in
strict accuracy and reward over the base model, on the same items and noise, with a paired
bootstrap interval over the items.

    OMP_NUM_THREADS=1 python benchmarks/tune_flow_grpo.py --settings flow-grpo-paper lr1e-3-groups16 ...
    python benchmarks/tune_flow_grpo.py --summary-only

Settings are one-factor-at-a-time moves around a centre; finished runs are reused, so
settings can run in two processes side by side and be summarised together.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from superflow_lite.rundir import DONE, SAMPLES_DIR, list_sample_steps, read_metrics, run_state  # noqa: E402
from superflow_lite.stats import aligned, paired_bootstrap, read_eval_items  # noqa: E402
from superflow_lite.train import main as train_main  # noqa: E402

BUDGET = [
    "algorithm=flow_grpo", "batch.prompts_per_iter=8", "batch.group_size=4", "batch.rollout_cap=32",
]
VALIDATION = ["prompts.eval_split=val", "prompts.num_eval_prompts=42", "prompts.eval_seeds=[0,1,2,3]",
              "sampling.eval_num_steps=20"]
PAPER = ["train.lr=3e-4", "train.clip_range=1e-4", "train.kl_beta=0.04", "sampling.noise_level=0.7"]
CENTRE = ["train.lr=1e-3", "train.clip_range=1e-3", "train.kl_beta=0", "sampling.noise_level=0.7"]


def around(*changes: str) -> list[str]:
    """The centre with some keys replaced (a later change of the same key wins)."""
    merged = {c.split("=")[0]: c for c in (*CENTRE, *changes)}
    keys = {c.split("=")[0] for c in changes}
    return [c for c in CENTRE if c.split("=")[0] not in keys] + [merged[k] for k in dict.fromkeys(
        c.split("=")[0] for c in changes)]


# 2 x 16 at lr 1e-3 (`lr1e-3-groups16`, the best of the 768-rollout settings) for 96 iterations:
# 3072 rollouts, four times the budget.
GROUPS16_3072_ROLLOUTS = ["train.lr=1e-3", "batch.prompts_per_iter=2", "batch.group_size=16",
                          "train.iterations=96", "output.eval_every=48", "output.checkpoint_every=96"]

# The same at a third of the learning rate for 128 iterations (4096 rollouts). At lr 1e-3 the
# curve peaks within ~800 rollouts and then falls: if the update's noise drift grows like lr^2 per
# rollout while its signal grows like lr, a smaller step peaks later and higher.
GROUPS16_LR3E4_4096_ROLLOUTS = [*GROUPS16_3072_ROLLOUTS, "train.lr=3e-4", "train.iterations=128",
                                "output.eval_every=32", "output.checkpoint_every=128"]

SETTINGS: dict[str, list[str]] = {
    # The published settings, and the learning rate around the centre.
    "flow-grpo-paper": PAPER,                    # Flow-GRPO's SD3.5-M hyper-parameters as published
    "centre": CENTRE,
    "lr3e-4": around("train.lr=3e-4"),
    "lr1e-2": around("train.lr=1e-2"),
    # Around lr 3e-3 (1e-2 degrades the model): optimizer steps per iteration, and prompts x group
    # size under the same cap of 32 rollouts.
    "lr3e-3": around("train.lr=3e-3"),
    "lr3e-3-updates4": around("train.lr=3e-3", "train.updates_per_iter=4"),
    "lr3e-3-groups8": around("train.lr=3e-3", "batch.prompts_per_iter=4", "batch.group_size=8"),
    "lr3e-3-groups16": around("train.lr=3e-3", "batch.prompts_per_iter=2", "batch.group_size=16"),
    # 2 x 16 (the best shape at lr 3e-3) at lr 1e-3, and at lr 3e-3 with KL.
    "lr1e-3-groups16": around("train.lr=1e-3", "batch.prompts_per_iter=2", "batch.group_size=16"),
    "lr3e-3-groups16-kl0.04": around("train.lr=3e-3", "batch.prompts_per_iter=2", "batch.group_size=16",
                                     "train.kl_beta=0.04"),
    # Four times the budget (96 iterations, 3072 rollouts), alone and with variance reductions. At
    # 768 rollouts no setting moves strict accuracy by more than a few hundredths: one batch's
    # gradient is mostly noise (RESULTS.md, "How much of a policy gradient is signal"). A group
    # started from one noise (sampling.group_noise=shared) leaves the SDE noise the only cause of
    # its reward spread; an SDE window (train.sde_window=k) trains k steps, so a rollout costs far less.
    "lr1e-3-groups16-3072": around(*GROUPS16_3072_ROLLOUTS),
    "lr1e-3-groups16-3072-shared": around(*GROUPS16_3072_ROLLOUTS, "sampling.group_noise=shared"),
    "lr1e-3-groups16-3072-window2": around(*GROUPS16_3072_ROLLOUTS, "train.sde_window=2"),
    "lr1e-3-groups16-3072-window2-shared": around(*GROUPS16_3072_ROLLOUTS, "train.sde_window=2",
                                                  "sampling.group_noise=shared"),
    "lr3e-3-groups16-3072-window2-shared": around(*GROUPS16_3072_ROLLOUTS, "train.sde_window=2",
                                                  "sampling.group_noise=shared", "train.lr=3e-3"),
    "lr1e-3-groups16-3072-window4-shared": around(*GROUPS16_3072_ROLLOUTS, "train.sde_window=4",
                                                  "sampling.group_noise=shared"),
    # A window anywhere loses 0.14 strict accuracy by iteration 48 (RESULTS.md): a late window trains
    # steps whose noise barely changes the layout, so their update is noise. Windows at the
    # high-noise start:
    "lr1e-3-groups16-3072-first2": around(*GROUPS16_3072_ROLLOUTS, "train.sde_window=2", "train.sde_window_span=2"),
    "lr1e-3-groups16-3072-first2-shared": around(*GROUPS16_3072_ROLLOUTS, "train.sde_window=2",
                                                 "train.sde_window_span=2", "sampling.group_noise=shared"),
    "lr1e-3-groups16-3072-early2-shared": around(*GROUPS16_3072_ROLLOUTS, "train.sde_window=2",
                                                 "train.sde_window_span=4", "sampling.group_noise=shared"),
    "lr3e-4-groups16-4096": around(*GROUPS16_LR3E4_4096_ROLLOUTS),
}


def run_setting(out: Path, name: str, iterations: int, eval_every: int) -> Path:
    run_dir = out / "runs" / name
    if run_state(run_dir) == DONE:
        return run_dir
    if run_dir.exists():
        shutil.rmtree(run_dir)
    # The setting's own overrides come last: a setting with its own budget (3072 or 4096 rollouts) wins.
    code = train_main(["--preset", "tiny", "--no-progress", "--output", str(run_dir), *BUDGET, *VALIDATION,
                       f"train.iterations={iterations}", f"output.eval_every={eval_every}",
                       f"output.checkpoint_every={iterations}", "train.seed=0", *SETTINGS[name]])
    if code != 0:
        raise SystemExit(f"setting {name} failed with exit code {code}")
    return run_dir


def summarise(out: Path) -> list[dict]:
    rows = []
    for name in SETTINGS:
        run_dir = out / "runs" / name
        if run_state(run_dir) != DONE:
            continue
        steps = list_sample_steps(run_dir)
        metrics = read_metrics(run_dir)
        row = {"setting": name, "overrides": SETTINGS[name], "eval_steps": steps,
               "rollouts": int(max(m.get("rollouts/total", 0) for m in metrics)),
               "train_s": float(sum(m.get("perf/iter_s", 0.0) for m in metrics))}
        for metric in ("strict", "reward"):
            table = aligned([read_eval_items(run_dir / SAMPLES_DIR / f"{step:06d}", metric) for step in steps])
            base = table[0]
            row[f"{metric}_base"] = float(base.mean())
            row[f"{metric}_final"] = float(table[-1].mean())
            row[f"{metric}_gain"] = paired_bootstrap(table[-1], base).__dict__
            # Mean gain over every evaluation after step 0: less noisy than the last point alone.
            row[f"{metric}_mean_gain"] = paired_bootstrap(table[1:].mean(axis=0), base).__dict__
        rows.append(row)
    return rows


def merged_with_saved(rows: list[dict], saved: Path) -> list[dict]:
    """This checkout's finished settings, plus the saved summary's rows of settings whose run
    directories are not here (a fresh clone keeps the summary, not the runs): re-summarising
    never drops a committed figure."""
    here = {r["setting"] for r in rows}
    kept = [r for r in (json.loads(saved.read_text()) if saved.exists() else [])
            if r["setting"] not in here and r["setting"] in SETTINGS]
    return kept + rows


def fmt(interval: dict) -> str:
    return f"{interval['mean']:+.3f} [{interval['low']:+.3f}, {interval['high']:+.3f}]"


def table(rows: list[dict]) -> str:
    lines = ["| setting | overrides (beside the budget) | rollouts | val strict: base -> final | strict gain [95% CI] | "
             "mean strict gain over evals | reward gain [95% CI] |", "|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: -r["strict_mean_gain"]["mean"]):
        lines.append(f"| {r['setting']} | {' '.join(r['overrides'])} | {r.get('rollouts', '')} | "
                     f"{r['strict_base']:.3f} -> {r['strict_final']:.3f} | "
                     f"{fmt(r['strict_gain'])} | {fmt(r['strict_mean_gain'])} | {fmt(r['reward_gain'])} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--iterations", type=int, default=24)
    parser.add_argument("--eval-every", type=int, default=12)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/tune_flow_grpo"))
    parser.add_argument("--summary-only", action="store_true", help="train nothing: summarise the finished runs")
    args = parser.parse_args()
    if not args.summary_only:
        for name in args.settings:
            run_setting(args.out, name, args.iterations, args.eval_every)
    rows = merged_with_saved(summarise(args.out), args.out / "summary.json")
    if not rows:
        print(f"no finished settings under {args.out / 'runs'}: run without --summary-only first", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(rows, indent=1))
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
