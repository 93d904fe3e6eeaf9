"""A CUDA out-of-memory error in a micro-batch halves it and the run goes on (oom.retry_on_oom
wired into Trainer.collect and Trainer.update), simulated with a fake OOM on the tiny world."""
from __future__ import annotations

import logging

import torch

import pytest

from superflow_lite import trainer as trainer_module

# Slow (whole processes, real runs or long measurements): left out of the quick loop, pytest -m "not slow".
pytestmark = pytest.mark.slow


def test_oom_halves_micro_batches_and_the_iteration_completes(make_trainer, monkeypatch, caplog):
    trainer = make_trainer("sampling.micro_batch=8", "train.micro_batch=4")
    assert (trainer.sample_micro_batch, trainer.train_micro_batch) == (8, 4)

    real_sample, real_loss = trainer_module.sample_trajectories, trainer_module.step_loss

    def sample(transformer, noise, *args, **kwargs):
        if noise.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB (fake)")
        return real_sample(transformer, noise, *args, **kwargs)

    def step_loss(transformer, batch, *args, **kwargs):
        if batch["latents"].shape[0] > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (fake)")
        return real_loss(transformer, batch, *args, **kwargs)

    monkeypatch.setattr(trainer_module, "sample_trajectories", sample)
    monkeypatch.setattr(trainer_module, "step_loss", step_loss)
    with caplog.at_level(logging.WARNING, logger="superflow_lite"):
        row = trainer.train_iteration(0)
    assert (trainer.sample_micro_batch, trainer.train_micro_batch) == (2, 1)
    messages = [r.getMessage() for r in caplog.records]
    assert "sampling: out of memory at micro-batch 8; retrying at 4" in messages
    assert "training: out of memory at micro-batch 4; retrying at 2" in messages
    assert row["rollouts/iter"] > 0 and row["grpo/loss"] == row["grpo/loss"]  # finite, the run went on
