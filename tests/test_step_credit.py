"""x0-value step credit along the trajectory (ALGORITHM.md 4), on toys where the right credit is known."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from superflow_lite.advantages import (
    compute_advantages, compute_credit_advantages, credit_points, mix_step_credit, step_credit,
)

SIGMAS = [1.0, 0.9, 0.75, 0.55, 0.3, 0.0]  # T = 5


def test_credit_points_cover_the_trained_steps():
    assert credit_points(10, 1, range(9)) == list(range(10))
    assert credit_points(10, 3, range(9)) == [0, 3, 6, 9]
    assert credit_points(10, 4, range(9)) == [0, 4, 8]  # [8, T) is closed by the final reward
    assert credit_points(10, 1, [4, 5]) == [4, 5, 6]  # an SDE window scores only its own interval
    assert credit_points(10, 3, [4, 5]) == [3, 6]
    with pytest.raises(ValueError):
        credit_points(10, 0, range(9))


def test_a_value_that_changes_only_at_step_3_puts_all_credit_on_step_3():
    # Columns: V at steps 0..4, then V(T = 5) = the final reward.
    values = np.array([[0.2, 0.2, 0.2, 0.2, 0.9, 0.9],
                       [0.2, 0.2, 0.2, 0.2, 0.2, 0.2]])
    delta = step_credit(values, range(5), 5)
    np.testing.assert_allclose(delta, [[0, 0, 0, 0.7, 0], [0, 0, 0, 0, 0]], atol=1e-12)
    r, groups, steps = values[:, -1], np.array([0, 0]), [0, 1, 2, 3]
    adv = mix_step_credit(np.zeros((2, 4)), delta, r, groups, steps, mix=1.0, adv_std="global", eps=1e-4, clip=100)
    d = 0.35 / (0.35 + 1e-4)  # (0.7 - group mean 0.35) / (std(r) = 0.35 + eps)
    np.testing.assert_allclose(adv, [[0, 0, 0, 4 * d], [0, 0, 0, -4 * d]], atol=1e-12)  # K = 4 trained steps


def test_skipped_steps_share_their_intervals_credit():
    values = np.array([[0.0, 0.4, 0.4, 1.0]])  # V at 0, 2, 4, then V(6)
    np.testing.assert_allclose(step_credit(values, [0, 2, 4], 6), [[0.2, 0.2, 0, 0, 0.3, 0.3]], atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 12), st.integers(1, 5), st.integers(0, 2**16))
def test_credits_telescope_to_the_final_reward_minus_the_first_value(num_steps, every, seed):
    points = credit_points(num_steps, every, range(num_steps - 1))
    values = np.random.default_rng(seed).random((3, len(points) + 1))
    delta = step_credit(values, points, num_steps)
    assert points[0] == 0
    assert delta.sum(axis=1) == pytest.approx(values[:, -1] - values[:, 0])


def _batch(seed: int):
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(3), [2, 3, 4])
    r = rng.choice([0.0, 0.25, 0.5, 1.0], size=9)
    x0 = rng.random((9, 5))
    kwargs = dict(baseline="tracker", values_before=np.array([0.3, 0.6, 0.5]), first_visit=[False, True, False],
                  sigmas=SIGMAS, noise_level=0.7, trained_steps=[0, 1, 2, 3], weight_kind="sigma", clip=1.5,
                  adv_std="global", eps=1e-4)
    return r, groups, x0, kwargs


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mix_zero_is_todays_advantage_exactly(seed):
    r, groups, x0, kwargs = _batch(seed)
    today, _ = compute_advantages(r, groups, **kwargs)
    mixed, stats = compute_credit_advantages(r, groups, x0_values=x0, points=range(5), num_steps=5, mix=0.0, **kwargs)
    assert np.array_equal(today, mixed)
    assert stats["adv/clip_frac"] == compute_advantages(r, groups, **kwargs)[1]["adv/clip_frac"]


def test_mix_one_averages_to_the_group_relative_value_change():
    r, groups, x0, kwargs = _batch(3)
    kwargs["clip"] = 1e9
    adv, _ = compute_credit_advantages(r, groups, x0_values=x0, points=range(5), num_steps=5, mix=1.0, **kwargs)
    change = x0[:, 4] - x0[:, 0]  # V(last trained step + 1) - V(0): the noise's own luck V(0) cancels
    expected = (change - np.array([change[groups == g].mean() for g in groups])) / (r.std() + 1e-4)
    assert adv.mean(axis=1) == pytest.approx(expected, rel=1e-5, abs=1e-6)
    half, _ = compute_credit_advantages(r, groups, x0_values=x0, points=range(5), num_steps=5, mix=0.5, **kwargs)
    traj, _ = compute_advantages(r, groups, **kwargs)
    np.testing.assert_allclose(half, 0.5 * traj + 0.5 * adv, rtol=1e-5, atol=1e-6)
