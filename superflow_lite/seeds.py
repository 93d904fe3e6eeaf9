"""Every random draw of a training iteration, from a named seed stream (ALGORITHM.md 1).

A draw's seed is a function of (run seed, iteration, stream) alone, never of an RNG's
history: a resumed run repeats an uninterrupted one without replaying anything, and every
process computes the same seeds. The streams:

    INITIAL_NOISE     x_0 of each rollout (or of each group, `sampling.group_noise: shared`)
    SDE_NOISE         the SDE noise eps of each rollout's steps, one generator per row
    SDE_WINDOW        where an SDE window (`train.sde_window`) starts
    MINIBATCH_ORDER   the update's shuffle of the rows into minibatches

A sampling phase p (0, or 1 after the probes, ALGORITHM.md 3) draws its noise from
stream + PHASE_STRIDE * p. Noise is drawn on the CPU, so a seed gives the same tensor on
any device.
"""
from __future__ import annotations

from enum import IntEnum

import numpy as np
import torch

SEED_MODULUS = 2**63  # torch.Generator.manual_seed takes seeds below 2**63 as they are
RUN_SEED_STRIDE = 1_000_003
ITERATION_STRIDE = 7_919
PHASE_STRIDE = 100  # above every stream's number: the phases' streams never meet
# Row r of a phase seeds its SDE noise with phase seed * ROW_STRIDE + r: rows below
# ROW_STRIDE never reach the row seeds of another iteration, stream or phase.
ROW_STRIDE = 4_099


class Stream(IntEnum):
    """The purpose of a draw: its stream number in `iteration_seed`."""

    INITIAL_NOISE = 1
    SDE_NOISE = 2
    SDE_WINDOW = 3
    MINIBATCH_ORDER = 4


def iteration_seed(seed: int, iteration: int, stream: int) -> int:
    """The seed of one (run seed, iteration, stream)."""
    return (seed * RUN_SEED_STRIDE + iteration * ITERATION_STRIDE + stream) % SEED_MODULUS


def phase_stream(stream: Stream, phase: int) -> int:
    """A sampling phase's own number for `stream`: phase 0 keeps the stream's number."""
    return stream + PHASE_STRIDE * phase


def initial_noise_seed(seed: int, iteration: int, phase: int) -> int:
    return iteration_seed(seed, iteration, phase_stream(Stream.INITIAL_NOISE, phase))


def sde_noise_seed(seed: int, iteration: int, phase: int) -> int:
    """The phase's SDE noise seed; row r's own generator is seeded with `row_seed(this, r)`."""
    return iteration_seed(seed, iteration, phase_stream(Stream.SDE_NOISE, phase)) * ROW_STRIDE


def row_seed(phase_seed: int, row: int) -> int:
    return (phase_seed + row) % SEED_MODULUS


def sde_window_rng(seed: int, iteration: int) -> np.random.Generator:
    return np.random.default_rng(iteration_seed(seed, iteration, Stream.SDE_WINDOW))


def minibatch_order(seed: int, iteration: int, rows: int) -> torch.Tensor:
    """The iteration's permutation of its `rows` global rows, the same on every process."""
    return torch.randperm(rows, generator=torch.Generator().manual_seed(
        iteration_seed(seed, iteration, Stream.MINIBATCH_ORDER)))


def initial_noise(
    num: int, channels: int, latent_size: int, generator: torch.Generator, device: torch.device
) -> torch.Tensor:
    """x_0 ~ N(0, I) [num, C, H, W], drawn on the CPU so a seed gives the same noise on any device."""
    return torch.randn((num, channels, latent_size, latent_size), generator=generator).to(device)


def phase_initial_noise(seed: int, iteration: int, phase: int, group_of_row: np.ndarray, num_groups: int,
                        channels: int, latent_size: int, shared: bool) -> torch.Tensor:
    """x_0 of every row of a sampling phase [rows, C, H, W] on the CPU: one draw per row, or
    with `shared` one per group that all its rows start from. Every process draws all rows
    and keeps its own, so sharding never changes a sample."""
    if shared:
        # Phase 0's stream in every phase: a probe's second phase starts where its first did.
        generator = torch.Generator().manual_seed(initial_noise_seed(seed, iteration, phase=0))
        per_group = initial_noise(num_groups, channels, latent_size, generator, torch.device("cpu"))
        return per_group[torch.as_tensor(group_of_row)]
    generator = torch.Generator().manual_seed(initial_noise_seed(seed, iteration, phase))
    return initial_noise(len(group_of_row), channels, latent_size, generator, torch.device("cpu"))


def rollout_sde_noise(rows: list[int], num_steps: int, channels: int, latent_size: int,
                      phase_seed: int) -> torch.Tensor:
    """Each rollout's SDE noise [len(rows), T, C, H, W], drawn on the CPU from a generator of its
    own (`row_seed`): a row's sample never depends on which process or micro-batch draws it."""
    return torch.stack([
        torch.randn((num_steps, channels, latent_size, latent_size),
                    generator=torch.Generator().manual_seed(row_seed(phase_seed, row)))
        for row in rows])
