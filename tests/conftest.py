"""Shared fixtures: tiny configs, pipelines and trainers that run in seconds on a 2-core CPU."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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


def build_trainer(path: Path, overrides: list[str]):
    """A Trainer of the tiny preset with `overrides`, in a new run directory at `path`."""
    from superflow_lite.config import build_config
    from superflow_lite.rundir import RunDir
    from superflow_lite.trainer import Trainer

    run = RunDir(path)
    run.create()
    return Trainer(build_config("tiny", None, overrides), run)


def trainer_step_loss(trainer, batch: dict, schedule, step: int, step_pos: int):
    """policy.step_loss with the trainer's model, loss settings and KL reference, as its update calls it."""
    from superflow_lite.policy import step_loss

    return step_loss(trainer.transformer, batch, schedule, step, step_pos, trainer.loss_settings,
                     trainer.reference_policy)


@pytest.fixture
def make_trainer(tmp_path, fast_overrides):
    """make_trainer(*overrides, fast=True, path=None): a Trainer of the tiny preset in its own run
    directory (tmp_path/run unless `path`), with the fast overrides and then `overrides` (with
    fast=False, `overrides` alone). Every trainer it made is closed after the test, which ends
    its reward scorer's thread."""
    trainers = []

    def make(*overrides: str, fast: bool = True, path: Path | None = None):
        trainers.append(build_trainer(path or tmp_path / "run", [*(fast_overrides if fast else []), *overrides]))
        return trainers[-1]

    yield make
    for trainer in trainers:
        trainer.close()


@pytest.fixture
def dead_pid() -> int:
    """The pid of a process that has ended: what a killed writer or supervisor leaves behind."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid
