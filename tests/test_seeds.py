"""The named seed streams of a training iteration (superflow_lite/seeds.py), each pinned to
the formula its runs were recorded with: a changed stream number, stride or row seed would
give a resumed run other samples than the run it resumes, and fails here."""
from __future__ import annotations

import numpy as np
import torch

from superflow_lite.seeds import (Stream, initial_noise_seed, iteration_seed, minibatch_order, phase_initial_noise,
                                  phase_stream, rollout_sde_noise, row_seed, sde_noise_seed, sde_window_rng)

SEED, ITERATION = 7, 3


def written_out(stream: int, seed: int = SEED, iteration: int = ITERATION) -> int:
    return (seed * 1_000_003 + iteration * 7_919 + stream) % 2**63


def test_each_stream_keeps_its_number():
    assert {s.name: int(s) for s in Stream} == {"INITIAL_NOISE": 1, "SDE_NOISE": 2, "SDE_WINDOW": 3,
                                                "MINIBATCH_ORDER": 4}
    assert [phase_stream(Stream.INITIAL_NOISE, p) for p in (0, 1)] == [1, 101]
    assert [phase_stream(Stream.SDE_NOISE, p) for p in (0, 1)] == [2, 102]


def test_every_seed_is_its_written_out_formula():
    assert iteration_seed(SEED, ITERATION, 5) == written_out(5) == 7_023_783
    huge = 2**62 + 12_345  # past 2**63 before the modulus
    assert iteration_seed(huge, ITERATION, 1) == written_out(1, seed=huge) < 2**63
    assert [initial_noise_seed(SEED, ITERATION, p) for p in (0, 1)] == [written_out(1), written_out(101)]
    assert [sde_noise_seed(SEED, ITERATION, p) for p in (0, 1)] == [written_out(2) * 4_099, written_out(102) * 4_099]
    phase_seed = sde_noise_seed(huge, ITERATION, 1)
    assert row_seed(phase_seed, 17) == (written_out(102, seed=huge) * 4_099 + 17) % 2**63
    window = np.random.default_rng(written_out(3)).integers(0, 100, 8)
    assert sde_window_rng(SEED, ITERATION).integers(0, 100, 8).tolist() == window.tolist()
    order = torch.randperm(50, generator=torch.Generator().manual_seed(written_out(4)))
    assert torch.equal(minibatch_order(SEED, ITERATION, 50), order)


def test_initial_noise_per_row_or_per_group_from_its_phases_stream():
    groups = np.array([0, 0, 1, 1, 1])
    for phase in (0, 1):
        noise = phase_initial_noise(SEED, ITERATION, phase, groups, 2, 3, 4, shared=False)
        drawn = torch.randn((5, 3, 4, 4), generator=torch.Generator().manual_seed(written_out(1 + 100 * phase)))
        assert torch.equal(noise, drawn)
        shared = phase_initial_noise(SEED, ITERATION, phase, groups, 2, 3, 4, shared=True)
        per_group = torch.randn((2, 3, 4, 4), generator=torch.Generator().manual_seed(written_out(1)))
        assert torch.equal(shared, per_group[groups])  # phase 1 starts where phase 0 did


def test_a_rows_sde_noise_is_its_own_whatever_rows_are_drawn_with_it():
    phase_seed = sde_noise_seed(SEED, ITERATION, 0)
    together = rollout_sde_noise([4, 9, 2], 5, 3, 4, phase_seed)
    alone = rollout_sde_noise([9], 5, 3, 4, phase_seed)
    assert together.shape == (3, 5, 3, 4, 4) and torch.equal(together[1], alone[0])
    own = torch.randn((5, 3, 4, 4), generator=torch.Generator().manual_seed(written_out(2) * 4_099 + 9))
    assert torch.equal(alone[0], own)
