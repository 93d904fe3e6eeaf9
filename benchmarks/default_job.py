"""The default job, run as a user runs it, once per training seed, with its gain and interval:

    python benchmarks/default_job.py --seeds 0 1 2

Each seed is `python -m superflow_lite.train --output <dir> train.seed=<seed>` in a process of
its own (the CPU's default job, preset tiny-focus), timed from start to exit, one after the
other. The strict-accuracy change from step 0 to the last step is paired image by image
(same prompts, same noise seeds) with a 95% bootstrap interval over the evaluation's images.
Writes benchmarks/results/default_job/summary.json and a before/after grid of the first seed
(docs/images/default_job.png).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from superflow_lite.rundir import read_metrics  # noqa: E402
from superflow_lite.stats import paired_change  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "default_job"
GRID = ROOT / "docs" / "images" / "default_job.png"


def run_seed(seed: int, extra: list[str]) -> dict:
    run = OUT / "runs" / f"seed{seed}"
    if run.exists():
        raise SystemExit(f"error: {run} exists; move it away to run seed {seed} again")
    command = [sys.executable, "-m", "superflow_lite.train", "--output", str(run), f"train.seed={seed}", *extra]
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    (OUT / f"seed{seed}.log").write_text(proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"error: seed {seed} exited {proc.returncode}; see {OUT / f'seed{seed}.log'}")
    rows = read_metrics(run)
    evals = [r for r in rows if r.get("eval/strict_mean") is not None]
    first, last = evals[0], evals[-1]
    samples = run / "samples"
    strict = paired_change(samples / f"{first['iteration']:06d}", samples / f"{last['iteration']:06d}", "strict")
    reward = paired_change(samples / f"{first['iteration']:06d}", samples / f"{last['iteration']:06d}", "reward")
    return {
        "seed": seed, "strict_before": first["eval/strict_mean"], "strict_after": last["eval/strict_mean"],
        "change": strict.mean, "ci_low": strict.low, "ci_high": strict.high,
        "reward_before": first["eval/reward_mean"], "reward_after": last["eval/reward_mean"],
        "reward_ci": [reward.low, reward.high], "items": strict.items,
        "seconds": round(seconds, 1), "rollouts": int(rows[-1]["rollouts/total"]), "iterations": int(last["iteration"]),
        "run": str(run.relative_to(ROOT)),
    }


def before_after_grid(run: Path, out: Path, per_prompt: int = 8) -> None:
    """Two rows per prompt: its first `per_prompt` eval seeds at step 0, then the same seeds
    (same noise) at the last step; a green bar under an image the reward counts as right."""
    from PIL import Image, ImageDraw

    steps = sorted(p for p in (run / "samples").iterdir() if (p / "index.json").is_file())
    before, after = (json.loads((d / "index.json").read_text()) for d in (steps[0], steps[-1]))
    prompts = list(dict.fromkeys(r["prompt"] for r in before))
    tile, bar, label = 64, 6, 14
    rows = [(d, [r for r in index if r["prompt"] == p][:per_prompt]) for p in prompts for d, index in
            ((steps[0], before), (steps[-1], after))]
    grid = Image.new("RGB", (per_prompt * tile, len(rows) * (tile + bar + label)), "white")
    draw = ImageDraw.Draw(grid)
    for i, (folder, items) in enumerate(rows):
        y = i * (tile + bar + label)
        step = int(folder.name)
        draw.text((2, y + 1), f"step {step}: {items[0]['prompt'].removeprefix('a photo of ')}", fill="black")
        for j, item in enumerate(items):
            grid.paste(Image.open(folder / item["file"]).convert("RGB").resize((tile, tile)), (j * tile, y + label))
            draw.rectangle([j * tile, y + label + tile, (j + 1) * tile - 1, y + label + tile + bar - 1],
                           fill=(40, 160, 60) if item.get("strict", 0) >= 1 else (200, 60, 50))
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("overrides", nargs="*", help="extra config overrides for every seed")
    args = parser.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    results = []
    for seed in args.seeds:
        results.append(run_seed(seed, args.overrides))
        r = results[-1]
        print(f"seed {seed}: strict {r['strict_before']:.3f} -> {r['strict_after']:.3f}, "
              f"{r['change']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}], {r['rollouts']} rollouts, {r['seconds']:.0f} s",
              flush=True)
    before_after_grid(ROOT / results[0]["run"], GRID)
    summary = {
        "command": "python benchmarks/default_job.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, one job at a time",
        "what": "the 2 trained prompts x 64 fresh eval seeds (1000-1063), strict accuracy step 0 -> last, "
                "95% paired bootstrap over the 128 images",
        "seeds": results,
    }
    (OUT / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"wrote {OUT / 'summary.json'} and {GRID}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
