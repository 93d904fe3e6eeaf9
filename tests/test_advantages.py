"""Baselines, standardisation and step-level weights (ALGORITHM.md 4 and 6)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from superflow_lite.advantages import (
    compute_advantages, flow_grpo_advantages, group_mean_baseline, standardize, step_advantages,
    step_weights, tracker_baseline, zero_std_group_frac,
)

FAST = settings(max_examples=60, deadline=None)
# ALGORITHM.md 4: 10 steps, shift 3, noise 0.7, trained steps 0..8.
SIGMA_TABLE = [2.06, 2.02, 1.33, 1.01, 0.80, 0.64, 0.51, 0.38, 0.26]
SIGMA_SQRT_DT_TABLE = [1.58, 1.67, 1.21, 1.00, 0.88, 0.79, 0.72, 0.64, 0.51]


@pytest.fixture(scope="module")
def sd3_sigmas():
    diffusers = pytest.importorskip("diffusers")
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(10)
    return scheduler.sigmas  # torch [11], 1.0 ... 0.0


def test_baselines_hand_computed():
    r, g = np.array([1.0, 0.0, 1.0, 0.5]), np.array([0, 0, 1, 1])
    assert group_mean_baseline(r, g).tolist() == [0.5, 0.5, 0.75, 0.75]
    # Group 0 seen before (v = 0.2); group 1 is a first visit -> its group mean.
    b = tracker_baseline(r, g, values_before=np.array([0.2, 0.9]), first_visit=[False, True])
    assert b.tolist() == pytest.approx([0.2, 0.2, 0.75, 0.75])
    # A 1-rollout group seen before still gets a signal from the tracker.
    assert tracker_baseline(np.array([1.0]), np.array([0]), np.array([0.25]), [False]).tolist() == [0.25]


def test_standardize_and_flow_grpo():
    a = standardize(np.array([1.0, 2.0, 3.0, 6.0]))
    assert a.mean() == pytest.approx(0.0) and a.std() == pytest.approx(1.0)
    assert standardize(np.full(3, 0.7)) == pytest.approx([0.0, 0.0, 0.0], abs=1e-6)  # no signal, no blow-up
    r, g = np.array([1.0, 0.0, 0.6, 0.2]), np.array([0, 0, 1, 1])
    # r - mean_group = [0.5, -0.5, 0.2, -0.2]; global std sqrt((0.25+0.25+0.04+0.04)/4).
    expected = np.array([0.5, -0.5, 0.2, -0.2]) / np.sqrt(0.145)
    assert flow_grpo_advantages(r, g) == pytest.approx(expected, rel=1e-6)


@FAST
@given(st.lists(st.floats(0.0, 1.0), min_size=2, max_size=30), st.floats(0.1, 10.0), st.floats(-5.0, 5.0))
def test_group_mean_advantages_ignore_reward_scale(rewards, scale, shift):
    r = np.array(rewards)
    g = np.arange(len(r)) % 3
    a = flow_grpo_advantages(r, g)
    if np.abs(r - group_mean_baseline(r, g)).max() > 1e-3:  # away from the eps-dominated regime
        assert a.mean() == pytest.approx(0.0, abs=1e-9) and a.std() == pytest.approx(1.0, rel=1e-5)
        assert flow_grpo_advantages(scale * r + shift, g) == pytest.approx(a, rel=1e-4, abs=1e-5)


def test_step_weights_match_design_tables(sd3_sigmas):
    steps = list(range(9))
    assert step_weights(sd3_sigmas, 0.7, steps, "sigma") == pytest.approx(SIGMA_TABLE, abs=0.01)
    assert step_weights(sd3_sigmas, 0.7, steps, "sigma_sqrt_dt") == pytest.approx(SIGMA_SQRT_DT_TABLE, abs=0.01)
    assert step_weights(sd3_sigmas.numpy().tolist(), 0.7, steps, "none").tolist() == [1.0] * 9
    # The noise level cancels in the normalisation; a window renormalises to mean 1.
    assert step_weights(sd3_sigmas, 0.3, steps, "sigma") == pytest.approx(SIGMA_TABLE, abs=0.01)
    window = step_weights(sd3_sigmas, 0.7, [3, 4], "sigma")
    assert window.mean() == pytest.approx(1.0) and window[0] > window[1]
    with pytest.raises(ValueError, match="trained_steps"):
        step_weights(sd3_sigmas, 0.7, [10], "sigma")
    with pytest.raises(ValueError, match="noise_level"):
        step_weights(sd3_sigmas, 0.0, steps, "sigma")


def test_step_advantages_clamp():
    out = step_advantages(np.array([1.0, -3.0]), np.array([2.0, 0.5]), clip=5.0)
    assert out.tolist() == [[2.0, 0.5], [-5.0, -1.5]]


def test_zero_std_group_frac():
    r, g = np.array([1.0, 1.0, 0.0, 1.0, 0.5]), np.array([0, 0, 1, 1, 2])
    assert zero_std_group_frac(r, g) == 0.5  # group 2 has one rollout: not counted


def test_compute_advantages_none_is_trajectory_level(sd3_sigmas):
    rng = np.random.default_rng(0)
    r, g = rng.random(12), np.repeat(np.arange(3), 4)
    adv, stats = compute_advantages(r, g, baseline="group_mean", values_before=None, first_visit=None,
                                    sigmas=sd3_sigmas, noise_level=0.7, trained_steps=range(9),
                                    weight_kind="none", clip=5.0)
    traj = np.clip(flow_grpo_advantages(r, g), -5, 5)
    assert adv.shape == (12, 9) and adv.dtype == np.float32
    assert np.allclose(adv, traj[:, None], atol=1e-6)
    assert {"adv/step0/mean", "adv/step8/max", "reward/zero_std_frac", "adv/clip_frac"} <= set(stats)


def test_compute_advantages_tracker_sigma(sd3_sigmas):
    r, g = np.array([1.0, 0.0, 1.0, 1.0, 0.0]), np.array([0, 0, 1, 1, 2])
    values, first = np.array([0.5, 0.9, 0.1]), np.array([True, False, False])
    adv, stats = compute_advantages(r, g, baseline="tracker", values_before=values, first_visit=first,
                                    sigmas=sd3_sigmas, noise_level=0.7, trained_steps=range(9),
                                    weight_kind="sigma", clip=5.0)
    a = standardize(r - np.array([0.5, 0.5, 0.9, 0.9, 0.1]))
    assert adv == pytest.approx(np.clip(np.outer(a, SIGMA_TABLE), -5, 5), abs=0.03)
    assert stats["adv/step0/weight"] == pytest.approx(2.06, abs=0.01)
    assert stats["reward/zero_std_frac"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        compute_advantages(r * 2, g, baseline="tracker", values_before=values, first_visit=first,
                           sigmas=sd3_sigmas, noise_level=0.7, trained_steps=range(9), weight_kind="sigma")
    with pytest.raises(ValueError, match="values_before"):
        compute_advantages(r, g, baseline="tracker", values_before=None, first_visit=None,
                           sigmas=sd3_sigmas, noise_level=0.7, trained_steps=range(9), weight_kind="sigma")
