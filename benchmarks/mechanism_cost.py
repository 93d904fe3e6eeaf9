"""Seconds per training iteration of each SuperFlow mechanism on the tiny world.

Runs a few training iterations (no evaluation, no checkpoints) of each variant at the tiny
preset's settings and prints the mean of the `perf/*` metrics after the first iteration
(the first pays one-off costs: embeddings, allocator warm-up):

    OMP_NUM_THREADS=1 python benchmarks/mechanism_cost.py --iterations 3

Variants run one after the other in one process; compare them only within one run.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from superflow_lite.config import build_config  # noqa: E402
from superflow_lite.rundir import RunDir  # noqa: E402
from superflow_lite.trainer import Trainer  # noqa: E402

VARIANTS: dict[str, list[str]] = {
    "superflow (bins)": [],
    "probe": ["superflow.allocation=probe"],
    "x0-credit k=1": ["superflow.step_credit=x0_value"],
    "x0-credit k=3": ["superflow.step_credit=x0_value", "superflow.credit_every=3"],
}
KEYS = ("perf/iter_s", "perf/sample_s", "perf/credit_s", "perf/sample_probe_s", "perf/sample_phase2_s",
        "perf/sample_batches", "perf/sample_batches_one_phase", "rollouts/iter")


# The setting the figures in benchmarks/RESULTS.md were measured at: 8 prompts under a cap of 32.
SETTING = ["train.kl_beta=0", "batch.prompts_per_iter=8", "batch.group_size=4", "superflow.m_max=6",
           "superflow.m_min=2", "superflow.num_bins=3", "batch.rollout_cap=32"]


def time_variant(overrides: list[str], iterations: int) -> dict[str, float]:
    cfg = build_config("tiny", None, [*SETTING, *overrides])
    with tempfile.TemporaryDirectory() as tmp:
        run = RunDir(Path(tmp) / "run")
        run.create()
        with Trainer(cfg, run) as trainer:
            rows = [trainer.train_iteration(i) for i in range(iterations)]
    kept = rows[1:] or rows
    return {k: float(np.mean([r[k] for r in kept])) for k in KEYS if k in kept[0]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=3, help="iterations per variant (the first is not counted)")
    args = parser.parse_args(argv)
    if args.iterations < 1:
        print("--iterations must be >= 1", file=sys.stderr)
        return 2
    print("| variant | " + " | ".join(KEYS) + " |")
    print("|" + " --- |" * (len(KEYS) + 1))
    for name, overrides in VARIANTS.items():
        got = time_variant(overrides, args.iterations)
        print(f"| {name} | " + " | ".join(f"{got[k]:.2f}" if k in got else "-" for k in KEYS) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
