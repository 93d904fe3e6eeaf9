"""Where Flow-GRPO learns on the shapes world: the gain on a pool's own prompts (fresh noise
seeds) and on held-out prompts of the same skills, against rollouts per prompt, for pools of
1, 4 and 16 hard prompts and one mixed pool (hard prompts beside solved ones). The protocol,
fixed before the runs: benchmarks/results/regime_map/PROTOCOL.md.

    OMP_NUM_THREADS=1 python benchmarks/regime_map.py --pools 1 4 16 mixed --seeds 0 1 2
    python benchmarks/regime_map.py --summary-only

Each run is Flow-GRPO at the default job's settings (preset tiny-focus: lr 2e-3, LoRA EMA,
2 prompts x 16 rollouts per iteration) on its pool, evaluated on the pool every
--eval-every iterations, its LoRA exported at each evaluation. After training, every
exported LoRA is loaded into the base pipeline as a user loads it
(`pipe.load_lora_weights`) and scores the held-out prompts at the same noise seeds as the
base model. A run cut short resumes from its last checkpoint; a finished run with fewer
iterations than --iterations is continued (the learning rate is constant and a resume is
bit-exact), so the budget can grow across sessions.

Output in --out: pool_<name>.txt, heldout.txt, runs/<pool>-s<seed>/ (the run, and heldout/<step>/
with the held-out images and index.json), heldout_base/, points/<pool>-s<seed>.json (a run's
per-image scores at every scored step: the raw results, committed, so the summary can be
re-read and the map grown across machines without the run directories), summary.json,
table.md, map.png.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from superflow_lite.rundir import CONFIG_FILE, DONE, SAMPLES_DIR, list_checkpoints, list_intermediate_loras, read_status, run_state  # noqa: E402
from superflow_lite.stats import aligned, paired_bootstrap, read_eval_items  # noqa: E402
from superflow_lite.train import main as train_main  # noqa: E402

RATES = ROOT / "benchmarks" / "results" / "focus_tasks" / "base_rates.json"
OUT = ROOT / "benchmarks" / "results" / "regime_map"
SKILLS = ("counting", "binding", "position")
# A prompt is hard when the base model draws it right with a rate in this band (selection
# seeds 3000-3015): its groups' rewards vary, so Flow-GRPO's advantages are not all zero.
BAND = (0.2, 0.8)
POOLS = ("1", "4", "16", "mixed")
MIXED_HARD, MIXED_SOLVED = 4, 4
EVAL_ITEMS = 128          # images per evaluation: a pool of N prompts gets 128 / N seeds each
EVAL_SEED0 = 1000         # the pool's evaluation seeds start here (no rollout draws them)
HELDOUT_PROMPTS = 16      # validation prompts of the same skills, never trained on
HELDOUT_SEEDS = list(range(1000, 1008))
HELDOUT_DIR = "heldout"
POINTS_DIR = "points"
METHOD = ["algorithm=flow_grpo"]


def hard_prompts(rates: dict[str, float]) -> list[str]:
    """The RL pool's prompts inside BAND, each skill's nearest 0.5 first, the skills taken in
    turn (counting, binding, position, counting, ...): every pool is the head of one list, so
    the pools are nested and mix the skills."""
    from superflow_lite.world.prompts import prompt_category

    by_skill = {s: sorted((p for p, r in rates.items() if prompt_category(p) == s and BAND[0] <= r <= BAND[1]),
                          key=lambda p: abs(rates[p] - 0.5)) for s in SKILLS}
    return interleave(list(by_skill.values()))


def interleave(lists: list[list[str]]) -> list[str]:
    """First of each list, then second of each, ... (shorter lists drop out)."""
    out = []
    for k in range(max(map(len, lists), default=0)):
        out += [items[k] for items in lists if k < len(items)]
    return out


def pool_prompts(name: str, rates: dict[str, float]) -> list[str]:
    """The pool `name`: the first N hard prompts, or "mixed": the first MIXED_HARD hard prompts
    beside the first MIXED_SOLVED single-object prompts of the RL pool (the base model draws
    those right at every seed)."""
    from superflow_lite.world.prompts import prompt_category, rl_train_prompts

    hard = hard_prompts(rates)
    if name == "mixed":
        solved = [p for p in rl_train_prompts() if prompt_category(p) == "single"][:MIXED_SOLVED]
        return hard[:MIXED_HARD] + solved
    size = int(name)
    if size > len(hard):
        raise SystemExit(f"pool {name}: only {len(hard)} prompts of the RL pool are in the band {BAND}")
    return hard[:size]


def heldout_prompts() -> list[str]:
    """HELDOUT_PROMPTS validation prompts (train prompts held out of the RL pool) of the pools'
    skills, the skills taken in turn."""
    from superflow_lite.world.prompts import prompt_category, val_prompts

    return interleave([[p for p in val_prompts() if prompt_category(p) == s] for s in SKILLS])[:HELDOUT_PROMPTS]


def pool_overrides(out: Path, name: str, prompts: list[str]) -> list[str]:
    """The settings that put a run on pool `name`: its prompt file, scored on itself at 128 / N
    fresh seeds per prompt. A pool of one prompt draws it once per iteration in a group of 32
    (two groups of the same prompt are not allowed), so every pool trains on 32 rollouts an
    iteration."""
    path = out / f"pool_{name}.txt"
    path.write_text("\n".join(prompts) + "\n")
    seeds = range(EVAL_SEED0, EVAL_SEED0 + EVAL_ITEMS // len(prompts))
    batch = ["batch.prompts_per_iter=1", "batch.group_size=32"] if len(prompts) == 1 else []
    return [f"prompts.source={path}", "prompts.eval_split=pool", f"prompts.num_eval_prompts={len(prompts)}",
            f"prompts.eval_seeds=[{','.join(map(str, seeds))}]", *batch]


def train(run_dir: Path, seed: int, iterations: int, eval_every: int, overrides: list[str]) -> None:
    """Train (or resume, or continue) the run to `iterations`, evaluating and exporting the LoRA
    every `eval_every` iterations."""
    state = run_state(run_dir) if run_dir.exists() else None
    done_at = (read_status(run_dir) or {}).get("iterations", 0) if state == DONE else 0
    if state == DONE and done_at >= iterations:
        return
    if state is not None and not list_checkpoints(run_dir):
        shutil.rmtree(run_dir)  # stopped before its first checkpoint: nothing to resume from
        state = None
    if state is not None:
        args = ["--resume", str(run_dir), "--no-progress", f"train.iterations={iterations}"]
    else:
        args = ["--preset", "tiny-focus", "--no-progress", "--output", str(run_dir), *METHOD, *overrides,
                f"train.seed={seed}", f"train.iterations={iterations}", f"output.eval_every={eval_every}",
                f"output.save_lora_every={eval_every}", f"output.checkpoint_every={eval_every}"]
    code = train_main(args)
    if code != 0:
        raise SystemExit(f"{run_dir.name} failed with exit code {code}")


class HeldoutScorer:
    """The base pipeline of a run's config, loaded once; scores a LoRA (or none) on prompts x seeds."""

    def __init__(self, config_path: Path):
        import torch

        from superflow_lite.config import config_from_dict, load_yaml
        from superflow_lite.embeddings import PromptEncoder
        from superflow_lite.models import load_pipeline, resolve_device
        from superflow_lite.rewards.registry import build_reward

        self.cfg = config_from_dict(load_yaml(config_path.read_text()))
        torch.manual_seed(self.cfg.train.seed)  # as the trainer, should the world fall back to random weights
        self.pipe = load_pipeline(self.cfg.model, resolve_device(self.cfg.model.device))
        self.pipe.set_progress_bar_config(disable=True)
        self.encoder = PromptEncoder(self.pipe, self.pipe.transformer.device, self.cfg.sampling.max_sequence_length)
        self.reward = build_reward(self.cfg.reward.weights, self.cfg.reward.device, self.cfg.reward.options)
        self.loaded = 0

    def score(self, lora_dir: Path | None, prompts: list[str], seeds: list[int], out_dir: Path) -> None:
        from superflow_lite.evaluation import evaluate_and_save

        s = self.cfg.sampling
        if lora_dir is not None:
            self.loaded += 1
            name = f"step{self.loaded}"
            self.pipe.load_lora_weights(str(lora_dir), adapter_name=name)
            self.pipe.set_adapters([name], adapter_weights=[1.0])
        try:
            evaluate_and_save(self.pipe, self.pipe.transformer, self.encoder, self.reward, prompts, seeds, out_dir,
                              resolution=s.resolution, num_steps=s.eval_num_steps, guidance_scale=s.eval_guidance_scale,
                              micro_batch=s.micro_batch, vae_decode=self.cfg.memory.vae_decode)
        finally:
            if lora_dir is not None:
                self.pipe.delete_adapters([name])


def score_heldout(out: Path, run_dirs: list[Path], prompts: list[str], seeds: list[int]) -> None:
    """Held-out images of the base model (out/heldout_base) and of every exported LoRA of each
    run (run/heldout/<step>), skipping those already scored."""
    scorer = None
    targets = [(None, out / f"{HELDOUT_DIR}_base")]
    for run_dir in run_dirs:
        targets += [(lora, run_dir / HELDOUT_DIR / lora.name) for lora in list_intermediate_loras(run_dir)]
    for lora, dest in targets:
        if (dest / "index.json").exists():
            continue
        if scorer is None:
            scorer = HeldoutScorer(run_dirs[0] / CONFIG_FILE)
        scorer.score(lora, prompts, seeds, dest)
        print(f"held-out scored: {dest.relative_to(out)}", flush=True)


def run_points(run_dir: Path, base_heldout: Path) -> dict:
    """One run's evaluations: steps, cumulative rollouts, and per item the pool's and the
    held-out strict accuracy and reward ([steps, items]; the held-out step 0 is the base)."""
    from superflow_lite.rundir import list_sample_steps, read_metrics

    rollouts_at = {0: 0}
    for row in read_metrics(run_dir):
        if "rollouts/total" in row:
            rollouts_at[int(row["iteration"])] = int(row["rollouts/total"])
    heldout = {int(p.name): p for p in (run_dir / HELDOUT_DIR).glob("[0-9]*") if (p / "index.json").exists()}
    heldout[0] = base_heldout
    steps = [s for s in list_sample_steps(run_dir) if s in heldout and s in rollouts_at]
    out = {"steps": steps, "rollouts": [rollouts_at[s] for s in steps]}
    for metric in ("strict", "reward"):
        out[f"pool_{metric}"] = aligned([read_eval_items(run_dir / SAMPLES_DIR / f"{s:06d}", metric) for s in steps])
        out[f"heldout_{metric}"] = aligned([read_eval_items(heldout[s], metric) for s in steps])
    return out


def save_points(path: Path, points: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({k: np.asarray(v).tolist() for k, v in points.items()}))


def load_points(path: Path) -> dict:
    raw = json.loads(path.read_text())
    return {k: (v if k in ("steps", "rollouts") else np.asarray(v, dtype=float)) for k, v in raw.items()}


def refresh_points(out: Path, run_dirs: list[Path]) -> None:
    """Write points/<run>.json for every run on this machine whose held-out base is scored:
    the run directory is the source while it exists, the points file after. A run retrained
    from scratch on another machine is the same run bit for bit, so a file that already holds
    more scored steps than the run directory is kept, not shortened."""
    base = out / f"{HELDOUT_DIR}_base"
    if not (base / "index.json").exists():
        return
    for run_dir in run_dirs:
        if not (run_dir / CONFIG_FILE).exists():
            continue
        path = out / POINTS_DIR / f"{run_dir.name}.json"
        points = run_points(run_dir, base)
        if not path.exists() or len(load_points(path)["steps"]) <= len(points["steps"]):
            save_points(path, points)


def summarise(points: dict[str, list[dict]], pool_sizes: dict[str, int]) -> dict:
    """Per pool and evaluation step common to its runs: rollouts per prompt and the gain over
    step 0 on the pool and on the held-out prompts, strict accuracy and reward, with a 95%
    paired bootstrap interval over training seeds and items."""
    summary = {}
    for pool, runs in points.items():
        steps = sorted(set.intersection(*(set(r["steps"]) for r in runs)))
        rows = []
        for step in steps[1:]:
            k = [r["steps"].index(step) for r in runs]
            row = {"step": step, "seeds": len(runs),
                   "rollouts_per_prompt": float(np.mean([r["rollouts"][i] for r, i in zip(runs, k)])) / pool_sizes[pool]}
            for where in ("pool", "heldout"):
                for metric in ("strict", "reward"):
                    key = f"{where}_{metric}"
                    after = np.stack([r[key][i] for r, i in zip(runs, k)])
                    before = np.stack([r[key][0] for r in runs])
                    gain = paired_bootstrap(after, before)
                    row[f"{key}_before"] = float(before.mean())
                    row[f"{key}_gain"] = [gain.mean, gain.low, gain.high]
            rows.append(row)
        summary[pool] = {"prompts": pool_sizes[pool], "points": rows}
    return summary


def table(summary: dict) -> str:
    lines = ["| pool | prompts | iterations | rollouts per prompt | pool strict: base, gain [95% CI] "
             "| held-out strict: base, gain [95% CI] | pool reward gain | held-out reward gain |",
             "|---|---|---|---|---|---|---|---|"]
    fmt = lambda g: f"{g[0]:+.3f} [{g[1]:+.3f}, {g[2]:+.3f}]"
    for pool, s in summary.items():
        for r in s["points"]:
            lines.append(f"| {pool} | {s['prompts']} | {r['step']} | {r['rollouts_per_prompt']:.0f} "
                         f"| {r['pool_strict_before']:.3f}, {fmt(r['pool_strict_gain'])} "
                         f"| {r['heldout_strict_before']:.3f}, {fmt(r['heldout_strict_gain'])} "
                         f"| {fmt(r['pool_reward_gain'])} | {fmt(r['heldout_reward_gain'])} |")
    return "\n".join(lines)


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, where, title in zip(axes, ("pool", "heldout"), ("the pool's own prompts, fresh seeds",
                                                             f"{HELDOUT_PROMPTS} held-out prompts of the same skills")):
        for pool, s in summary.items():
            x = [0.0] + [r["rollouts_per_prompt"] for r in s["points"]]
            g = np.array([[0.0, 0.0, 0.0]] + [r[f"{where}_strict_gain"] for r in s["points"]])
            (line,) = ax.plot(x, g[:, 0], marker="o", ms=3, label=f"pool {pool} ({s['prompts']} prompts)")
            ax.fill_between(x, g[:, 1], g[:, 2], alpha=0.15, color=line.get_color())
        ax.axhline(0, color="k", lw=0.6)
        ax.set_xscale("symlog", linthresh=64)
        ax.set_xlim(left=0)  # symlog would otherwise pad the axis with negative rollouts
        ax.set_xlabel("rollouts per prompt")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("strict accuracy gain over the base model")
    axes[0].legend(fontsize=8)
    fig.suptitle("Flow-GRPO on the shapes world (default job's settings); band: 95% paired bootstrap over seeds and images",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pools", nargs="+", default=list(POOLS), choices=POOLS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--iterations", type=int, default=256, help="32 rollouts each: 256 = 8,192 rollouts")
    parser.add_argument("--eval-every", type=int, default=32)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="extra config overrides for every new run, after the pool's, e.g. train.lr=1e-3")
    parser.add_argument("--summary-only", action="store_true", help="train and score nothing: summarise what is there")
    args = parser.parse_args(argv)
    rates = json.loads(RATES.read_text())["rates"]
    args.out.mkdir(parents=True, exist_ok=True)
    heldout = heldout_prompts()
    (args.out / "heldout.txt").write_text("\n".join(heldout) + "\n")
    prompts = {pool: pool_prompts(pool, rates) for pool in args.pools}
    runs = {pool: [args.out / "runs" / f"pool{pool}-s{seed}" for seed in args.seeds] for pool in args.pools}
    if not args.summary_only:
        for seed_index, seed in enumerate(args.seeds):  # seed by seed: each finished seed covers every pool
            for pool in args.pools:
                train(runs[pool][seed_index], seed, args.iterations, args.eval_every,
                      [*pool_overrides(args.out, pool, prompts[pool]), *args.set])
        score_heldout(args.out, [d for dirs in runs.values() for d in dirs], heldout, HELDOUT_SEEDS)
    refresh_points(args.out, [d for dirs in runs.values() for d in dirs])
    points = {pool: [load_points(f) for d in dirs if (f := args.out / POINTS_DIR / f"{d.name}.json").exists()]
              for pool, dirs in runs.items()}
    points = {pool: p for pool, p in points.items() if p}
    if not points:
        print(f"no scored runs under {args.out / POINTS_DIR}: run without --summary-only first", file=sys.stderr)
        return 2
    summary = summarise(points, {pool: len(prompts[pool]) for pool in points})
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    (args.out / "table.md").write_text(table(summary) + "\n")
    plot(summary, args.out / "map.png")
    print(table(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
