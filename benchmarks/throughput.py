"""Rollouts per second of the default job's training iterations, this tree against another
checkout of the project, side by side (both at once, one thread each, so both see the same
machine load), as a ratio per round:

    git worktree add /tmp/baseline <commit>
    python benchmarks/throughput.py --baseline /tmp/baseline --rounds 3 --iterations 6
    python benchmarks/throughput.py --baseline /tmp/baseline --this-side train.sde_window=2 --name sde-window-2

    python benchmarks/throughput.py --profile      # where this tree's iteration spends its time
    python benchmarks/throughput.py --compile-probe   # torch.compile's gain on the update's forward+backward

`--this-side` overrides apply to this tree's side only: an option that changes the algorithm,
timed against the baseline's default. Each side builds the trainer of the `tiny` preset (the
default job's model and update on the whole prompt pool; no evaluation, no checkpoints) in a
process of its own, runs one iteration to warm up (embeddings, allocator), then times the
next ones. Writes benchmarks/results/throughput/<name>.json (summary.json for the default comparison).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
OUT = HERE / "benchmarks" / "results" / "throughput"

# Runs inside each checkout, with its own superflow_lite: only the API both sides share. A
# checkout whose Trainer has no close() expects its caller to hand it the reward scorer.
CHILD = r"""
import contextlib, json, sys, tempfile, time
from pathlib import Path
from superflow_lite.config import build_config
from superflow_lite.rundir import RunDir
from superflow_lite.trainer import Trainer
iterations, overrides = int(sys.argv[1]), sys.argv[2:]
cfg = build_config("tiny", None, overrides)
with tempfile.TemporaryDirectory() as tmp:
    run = RunDir(Path(tmp) / "run")
    run.create()
    trainer = Trainer(cfg, run)
    if not hasattr(trainer, "close"):
        from superflow_lite.rewards.async_scorer import AsyncRewardScorer
        trainer.scorer = AsyncRewardScorer(trainer.reward)
        trainer.close = trainer.scorer.close
    with contextlib.closing(trainer):
        trainer.train_iteration(0)
        start = time.perf_counter()
        rows = [trainer.train_iteration(i) for i in range(1, iterations + 1)]
        seconds = time.perf_counter() - start
rollouts = sum(r["rollouts/iter"] for r in rows)
print(json.dumps({"rollouts": rollouts, "seconds": seconds, "rollouts_per_s": rollouts / seconds,
                  "sample_s": sum(r["perf/sample_s"] for r in rows) / iterations,
                  "iter_s": sum(r["perf/iter_s"] for r in rows) / iterations,
                  "reward_mean": [r["reward/mean"] for r in rows]}))
"""


def side_env(tree: Path) -> dict[str, str]:
    """One thread, offline, importing `tree`'s superflow_lite."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {
        "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def start_side(tree: Path, iterations: int, overrides: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CHILD, str(iterations), *overrides], cwd=tree, env=side_env(tree),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(err[-2000:])
    return json.loads(out.strip().splitlines()[-1])


def profile(iterations: int, overrides: list[str]) -> int:
    """Run this tree's side under cProfile and print the calls that cost the most time."""
    wrapped = ("import cProfile, pstats, sys\n"
               f"sys.argv = ['child', {str(iterations)!r}, *{overrides!r}]\n"
               "profiler = cProfile.Profile()\nprofiler.enable()\n"
               f"exec(compile({CHILD!r}, 'child', 'exec'))\n"
               "profiler.disable()\npstats.Stats(profiler).sort_stats('tottime').print_stats(15)\n")
    return subprocess.run([sys.executable, "-c", wrapped], cwd=HERE, env=side_env(HERE)).returncode


def compile_probe(repeats: int = 20) -> dict:
    """Seconds per forward+backward of the world transformer on one CFG micro-batch (2 x 16
    rollouts, 64 image and 16 text tokens), one thread, eager and under torch.compile (the
    inductor's fused C++ kernels), in one process so both see the same machine load."""
    import time

    import torch

    from superflow_lite.world.model import load_world_pipeline

    torch.set_num_threads(1)
    model = load_world_pipeline().transformer
    for name, weight in model.named_parameters():  # gradients flow through every block, as for a LoRA
        weight.requires_grad_("attn.to_q" in name)
    batch = 32
    inputs = dict(hidden_states=torch.randn(batch, model.config.in_channels, 8, 8),
                  encoder_hidden_states=torch.randn(batch, 16, model.config.joint_attention_dim),
                  pooled_projections=torch.randn(batch, model.config.pooled_projection_dim),
                  timestep=torch.full((batch,), 500.0), return_dict=False)

    def seconds_per_step(forward) -> float:
        for _ in range(3):
            forward(**inputs)[0].square().mean().backward()
        start = time.perf_counter()
        for _ in range(repeats):
            forward(**inputs)[0].square().mean().backward()
        return (time.perf_counter() - start) / repeats

    eager = seconds_per_step(model)
    start = time.perf_counter()
    compiled = torch.compile(model)
    compiled(**inputs)[0].square().mean().backward()
    compile_s = time.perf_counter() - start
    fused = seconds_per_step(compiled)
    eager_again = seconds_per_step(model)
    return {"command": "python benchmarks/throughput.py --compile-probe", "torch": torch.__version__,
            "eager_s": eager, "eager_again_s": eager_again, "compiled_s": fused, "compile_s": compile_s,
            "ratio": (eager + eager_again) / 2 / fused}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, help="another checkout of the project, the side compared against")
    parser.add_argument("--rounds", type=int, default=3, help="side-by-side rounds; the ratio is reported per round")
    parser.add_argument("--iterations", type=int, default=6, help="timed iterations per side and round (after 1 warm-up)")
    parser.add_argument("--this-side", nargs="*", default=[], help="overrides for this tree's side only")
    parser.add_argument("--profile", action="store_true",
                        help="instead: profile this tree's iterations (cProfile, one thread) and print the costliest calls")
    parser.add_argument("--compile-probe", action="store_true",
                        help="instead: time the update's forward+backward eager and under torch.compile, one thread")
    parser.add_argument("--name", default="summary", help="result file name under benchmarks/results/throughput/")
    parser.add_argument("overrides", nargs="*", help="config overrides for both sides (dotted keys)")
    args = parser.parse_args(argv)
    if args.profile:
        return profile(args.iterations, [*args.overrides, *args.this_side])
    if args.compile_probe:
        result = compile_probe()
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "compile-probe.json").write_text(json.dumps(result, indent=1) + "\n")
        print(json.dumps(result, indent=1))
        return 0
    if args.baseline is None or not (args.baseline / "superflow_lite" / "trainer.py").is_file():
        print(f"error: --baseline {args.baseline} is not a checkout of this project; give one (git worktree add)", file=sys.stderr)
        return 2
    rounds = []
    for r in range(args.rounds):
        before, after = start_side(args.baseline, args.iterations, args.overrides), start_side(HERE, args.iterations, [*args.overrides, *args.this_side])
        b, a = finish(before), finish(after)
        rounds.append({"before": b, "after": a, "ratio": a["rollouts_per_s"] / b["rollouts_per_s"]})
        print(f"round {r + 1}: before {b['rollouts_per_s']:.2f} rollouts/s, after {a['rollouts_per_s']:.2f}, "
              f"ratio {rounds[-1]['ratio']:.2f}", flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    base_commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=args.baseline, capture_output=True, text=True).stdout.strip()
    summary = {
        "command": "python benchmarks/throughput.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "baseline_commit": base_commit,
        "machine": f"{os.cpu_count()} CPUs, one thread per side, both sides at once",
        "before_rollouts_per_s": statistics.median(x["before"]["rollouts_per_s"] for x in rounds),
        "after_rollouts_per_s": statistics.median(x["after"]["rollouts_per_s"] for x in rounds),
        "ratio_median": statistics.median(x["ratio"] for x in rounds),
        "ratios": [x["ratio"] for x in rounds],
        "this_side_only": args.this_side,
        "rounds": rounds,
    }
    (OUT / f"{args.name}.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
