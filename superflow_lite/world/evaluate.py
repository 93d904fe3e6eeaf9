"""GenEval-style evaluation of a pipeline in the shapes world: mean reward and strict
accuracy, overall, per difficulty and per category."""
from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import numpy as np
import torch
from diffusers import StableDiffusion3Pipeline
from PIL import Image

from .model import WORLD_RESOLUTION
from .prompts import prompt_category, prompt_difficulty
from .reward import ShapesReward

# The protocol the base model's accuracy is quoted under (deterministic ODE sampling).
EVAL_STEPS = 40
EVAL_CFG = 4.5


@torch.no_grad()
def generate(
    pipe: StableDiffusion3Pipeline,
    prompts: Sequence[str],
    seed: int,
    num_inference_steps: int = EVAL_STEPS,
    guidance_scale: float = EVAL_CFG,
    batch_size: int = 24,
) -> list[Image.Image]:
    """One image per prompt. Each image's noise comes from `seed` alone (one generator per
    image), so results do not depend on batch_size or on the other prompts."""
    images: list[Image.Image] = []
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start : start + batch_size])
        generators = [torch.Generator("cpu").manual_seed(seed) for _ in chunk]
        out = pipe(
            chunk,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            height=WORLD_RESOLUTION,
            width=WORLD_RESOLUTION,
            generator=generators,
        )
        images += out.images
    return images


def summarise(prompts: Sequence[str], scores: np.ndarray, strict: np.ndarray) -> dict[str, float]:
    """Flat metrics: overall, "difficulty/<easy|hard>/..." and "category/<name>/..."."""
    metrics = {
        "reward_mean": float(scores.mean()),
        "strict_accuracy": float(strict.mean()),
        "num_images": float(len(scores)),
    }
    groups: dict[str, list[int]] = defaultdict(list)
    for i, p in enumerate(prompts):
        groups[f"difficulty/{prompt_difficulty(p)}"].append(i)
        groups[f"category/{prompt_category(p)}"].append(i)
    for name, idx in sorted(groups.items()):
        metrics[f"{name}/reward_mean"] = float(scores[idx].mean())
        metrics[f"{name}/strict_accuracy"] = float(strict[idx].mean())
    return metrics


def evaluate_pipeline(
    pipe: StableDiffusion3Pipeline,
    prompts: Sequence[str],
    seeds: Sequence[int],
    num_inference_steps: int = EVAL_STEPS,
    guidance_scale: float = EVAL_CFG,
) -> dict[str, float]:
    """Generate one image per (prompt, seed) and score it with the "shapes" reward."""
    reward = ShapesReward()
    all_prompts: list[str] = []
    scores, strict = [], []
    for seed in seeds:
        images = generate(pipe, prompts, seed, num_inference_steps, guidance_scale)
        out = reward(images, list(prompts))
        all_prompts += list(prompts)
        scores.append(out.scores)
        strict.append(out.extras["strict"])
    return summarise(all_prompts, np.concatenate(scores), np.concatenate(strict))


def format_metrics(metrics: dict[str, float]) -> str:
    return "\n".join(f"{k:45s} {v:.3f}" for k, v in metrics.items())
