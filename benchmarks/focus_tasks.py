"""The base model's strict success rate per RL-pool prompt, and the candidate focused tasks
it names (benchmarks/results/focus_tasks/PROTOCOL.md, steps 1 and 2):

    python benchmarks/focus_tasks.py

Scores the counting and binding prompts of the RL pool and every fifth position prompt at
selection seeds 3000-3015 (ODE 20 steps, CFG 4.5; seeds neither the test nor the validation
evaluations draw), then writes, per skill, the two prompts whose rate is nearest 0.5 as a
prompt file a run takes with `prompts.source=<file>`. Output: base_rates.json and
<skill>.txt in benchmarks/results/focus_tasks/.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

OUT = ROOT / "benchmarks" / "results" / "focus_tasks"
SELECTION_SEEDS = range(3000, 3016)
SKILLS = ("counting", "binding", "position")
POSITION_STRIDE = 5  # 492 position prompts: every fifth keeps the scoring to minutes


def scored_prompts() -> list[str]:
    from superflow_lite.world.prompts import prompt_category, rl_train_prompts

    pool = rl_train_prompts()
    position = [p for p in pool if prompt_category(p) == "position"]
    return [p for p in pool if prompt_category(p) in ("counting", "binding")] + position[::POSITION_STRIDE]


def nearest_half(rates: dict[str, float], prompts: list[str], k: int = 2) -> list[str]:
    """The k prompts whose success rate is nearest 0.5; ties keep the prompts' order."""
    return sorted(prompts, key=lambda p: (abs(rates[p] - 0.5), prompts.index(p)))[:k]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    import torch

    from superflow_lite.embeddings import PromptEncoder
    from superflow_lite.evaluation import generate
    from superflow_lite.world.evaluate import EVAL_CFG
    from superflow_lite.world.model import WORLD_RESOLUTION, load_world_pipeline
    from superflow_lite.world.prompts import prompt_category
    from superflow_lite.world.reward import score_image

    prompts = scored_prompts()
    pipe = load_world_pipeline()
    # The trainer's evaluation path, at the tiny preset's text length (16 tokens).
    encoder = PromptEncoder(pipe, torch.device("cpu"), max_sequence_length=16)
    strict = np.zeros((len(prompts), len(SELECTION_SEEDS)))
    start = time.perf_counter()
    for j, seed in enumerate(SELECTION_SEEDS):
        images = generate(pipe, pipe.transformer, encoder, prompts, [seed] * len(prompts), WORLD_RESOLUTION,
                          num_steps=20, guidance_scale=EVAL_CFG, micro_batch=16)
        strict[:, j] = [score_image(image, p).strict for image, p in zip(images, prompts)]
        print(f"seed {seed}: mean strict {strict[:, j].mean():.3f} ({time.perf_counter() - start:.0f} s)", flush=True)
    rates = {p: float(r) for p, r in zip(prompts, strict.mean(axis=1))}
    args.out.mkdir(parents=True, exist_ok=True)
    candidates = {}
    for skill in SKILLS:
        chosen = nearest_half(rates, [p for p in prompts if prompt_category(p) == skill])
        candidates[skill] = {p: rates[p] for p in chosen}
        (args.out / f"{skill}.txt").write_text("\n".join(chosen) + "\n")
    by_skill = {skill: float(np.mean([r for p, r in rates.items() if prompt_category(p) == skill])) for skill in SKILLS}
    (args.out / "base_rates.json").write_text(json.dumps({
        "command": "python benchmarks/focus_tasks.py",
        "what": "base model strict success rate per prompt, selection seeds 3000-3015, ODE 20 steps, CFG 4.5",
        "seeds": list(SELECTION_SEEDS), "mean_by_skill": by_skill, "candidates": candidates, "rates": rates,
    }, indent=1))
    for skill, chosen in candidates.items():
        print(f"{skill} (mean {by_skill[skill]:.3f}): " + "; ".join(f"{p} {r:.3f}" for p, r in chosen.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
