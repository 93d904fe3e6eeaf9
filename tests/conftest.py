"""Shared fixtures: tiny configs and pipelines that run in seconds on a 2-core CPU."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))

# A run small enough for unit tests: 2 prompts, groups of 2-4, 4 denoising steps.
FAST_OVERRIDES = [
    "train.iterations=2",
    "batch.prompts_per_iter=2",
    "batch.group_size=2",
    "superflow.m_max=4",
    "superflow.m_min=2",
    "superflow.num_bins=2",
    "batch.rollout_cap=8",
    "sampling.num_steps=4",
    "sampling.micro_batch=8",
    "train.micro_batch=4",
    "sampling.eval_num_steps=4",
    "prompts.num_eval_prompts=2",
    "prompts.eval_seeds=[0]",
    "output.eval_every=1",
    "output.checkpoint_every=1",
]


@pytest.fixture
def fast_overrides() -> list[str]:
    return list(FAST_OVERRIDES)


@pytest.fixture
def tiny_pipe():
    """The world's pipeline (committed weights, or random ones before pretraining), float32, CPU."""
    from superflow_lite.world.model import load_world_pipeline

    torch.manual_seed(0)  # as the Trainer does, so a random-weight fallback builds the same model
    pipe = load_world_pipeline(torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3"):
        module = getattr(pipe, name, None)
        if module is not None:
            module.eval()  # a pipeline built from configs (no weights yet) starts in train mode: dropout
    return pipe
