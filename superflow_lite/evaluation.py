"""Evaluation: fixed prompts and seeds, ODE sampling (noise level 0), images saved with
their rewards under <run>/samples/<step>/."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .embeddings import PromptEncoder
from .rewards.base import Reward
from .rollout import decode_images, make_schedule, sample_trajectories
from .seeds import initial_noise


class EvaluationStopped(Exception):
    """A stop was requested during an evaluation: it is abandoned between micro-batches (an
    evaluation of the default job takes minutes) and nothing of it is written."""


def never() -> bool:
    return False


@torch.no_grad()
def generate(pipe, transformer, encoder: PromptEncoder, prompts: list[str], seeds: list[int],
             resolution: int, num_steps: int, guidance_scale: float, micro_batch: int,
             vae_decode: str = "full", stop_requested: Callable[[], bool] = never) -> list:
    """ODE samples, one image per (prompt, seed); each seed fixes its own initial noise.
    Raises EvaluationStopped when stop_requested() turns true (checked per micro-batch)."""
    device = encoder.device
    schedule = make_schedule(pipe.scheduler, num_steps, noise_level=0.0)
    channels = transformer.config.in_channels if hasattr(transformer, "config") else pipe.transformer.config.in_channels
    size = resolution // pipe.vae_scale_factor
    uncond = encoder.negative()
    images = []
    for start in range(0, len(prompts), micro_batch):
        if stop_requested():
            raise EvaluationStopped(f"stopped after {start} of {len(prompts)} evaluation images")
        chunk_prompts, chunk_seeds = prompts[start:start + micro_batch], seeds[start:start + micro_batch]
        noise = torch.cat([initial_noise(1, channels, size, torch.Generator().manual_seed(s), device) for s in chunk_seeds])
        cond = encoder.encode(chunk_prompts).to(device, torch.float32)
        unc = uncond.repeat(len(chunk_prompts))
        traj = sample_trajectories(transformer, noise, schedule, cond, unc.to(device, torch.float32), guidance_scale)
        images += decode_images(pipe, traj.latents[:, -1], vae_decode)
    return images


def evaluate_and_save(pipe, transformer, encoder: PromptEncoder, reward: Reward, prompts: list[str],
                      seeds: list[int], out_dir: Path, *, resolution: int, num_steps: int,
                      guidance_scale: float, micro_batch: int, vae_decode: str = "full",
                      stop_requested: Callable[[], bool] = never) -> dict[str, float]:
    pairs = [(p, s) for p in prompts for s in seeds]
    all_prompts, all_seeds = [p for p, _ in pairs], [s for _, s in pairs]
    images = generate(pipe, transformer, encoder, all_prompts, all_seeds, resolution, num_steps, guidance_scale,
                      micro_batch, vae_decode, stop_requested)
    scored = reward(images, all_prompts)
    out_dir.mkdir(parents=True, exist_ok=True)
    index = []
    for i, (image, prompt, seed) in enumerate(zip(images, all_prompts, all_seeds)):
        name = f"{i:03d}.png"
        image.save(out_dir / name)
        row = {"file": name, "prompt": prompt, "seed": seed, "reward": float(scored.scores[i])}
        row.update({k: float(v[i]) for k, v in scored.extras.items()})
        index.append(row)
    tmp = out_dir / ".index.json.tmp"
    tmp.write_text(json.dumps(index, indent=1))
    tmp.replace(out_dir / "index.json")
    metrics = {"eval/reward_mean": float(np.mean(scored.scores))}
    metrics.update({f"eval/{k}_mean": float(np.mean(v)) for k, v in scored.extras.items()})
    return metrics
