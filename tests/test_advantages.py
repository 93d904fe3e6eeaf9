"""Baselines, standardisation and step-level weights (ALGORITHM.md 4 and 6)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from superflow_lite.advantages import (
    compute_advantages, flat_scope, flow_grpo_advantages, group_mean_baseline, scale_advantages, standardize, step_advantages,
    step_weights, tracker_baseline, zero_std_group_frac, zero_std_rollout_frac,
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


def test_flow_grpo_scaling_hand_computed():
    r, g = np.array([1.0, 0.0, 0.6, 0.2]), np.array([0, 0, 1, 1])
    # r - mean_group = [0.5, -0.5, 0.2, -0.2]. Global: divided by the std of the RAW rewards
    # (mean 0.45; deviations .55 -.45 .15 -.25 -> var 0.145) plus 1e-4, not by the residuals' std.
    raw_std = np.sqrt((0.55**2 + 0.45**2 + 0.15**2 + 0.25**2) / 4)
    expected = np.array([0.5, -0.5, 0.2, -0.2]) / (raw_std + 1e-4)
    assert flow_grpo_advantages(r, g) == pytest.approx(expected, rel=1e-9)
    # Per group: each group's own std (0.5 and 0.2) plus 1e-4.
    per_group = np.array([0.5 / 0.5001, -0.5 / 0.5001, 0.2 / 0.2001, -0.2 / 0.2001])
    assert flow_grpo_advantages(r, g, global_std=False) == pytest.approx(per_group, rel=1e-9)


def test_near_constant_batch_keeps_near_zero_advantages():
    # Rewards differing by 1e-6: Flow-GRPO's scaling leaves them ~1e-2, the centred
    # residual scaling would blow them up to unit std.
    r, g = 0.7 + 1e-6 * np.array([1.0, -1.0, 1.0, -1.0]), np.array([0, 0, 1, 1])
    assert np.abs(flow_grpo_advantages(r, g)).max() < 0.02
    assert standardize(r - group_mean_baseline(r, g)).std() == pytest.approx(1.0, rel=2e-2)


def test_scale_advantages_matches_flow_grpo_stat_tracker():
    """An independent transcription of Flow-GRPO's PerPromptStatTracker.update (grpo),
    cleared each epoch: mean of the prompt's rewards; std global or per prompt, + 1e-4."""
    rng = np.random.default_rng(3)
    r = rng.random(24)
    g = rng.integers(0, 5, 24)
    g[:5] = np.arange(5)
    g[5:10] = np.arange(5)  # every group has >= 2 rollouts
    for global_std in (True, False):
        expected = np.empty_like(r)
        for c in np.unique(g):
            mask = g == c
            std = (r.std() if global_std else r[mask].std()) + 1e-4
            expected[mask] = (r[mask] - r[mask].mean()) / std
        assert flow_grpo_advantages(r, g, global_std) == pytest.approx(expected, rel=1e-12)
        mode = "global" if global_std else "group"
        assert scale_advantages(r - group_mean_baseline(r, g), r, g, mode, 1e-4) == pytest.approx(expected, rel=1e-12)
    centred = scale_advantages(r - 0.5, r, g, "residual", 1e-8)
    assert centred.mean() == pytest.approx(0.0, abs=1e-12) and centred.std() == pytest.approx(1.0, rel=1e-6)
    with pytest.raises(ValueError, match="adv_std"):
        scale_advantages(r, r, g, "batch", 1e-4)


@FAST
@given(st.lists(st.floats(0.0, 1.0), min_size=2, max_size=30), st.floats(0.1, 10.0), st.floats(-5.0, 5.0))
def test_group_mean_advantages_ignore_reward_scale(rewards, scale, shift):
    r = np.array(rewards)
    g = np.arange(len(r)) % 3
    a = flow_grpo_advantages(r, g)
    if r.std() > 1e-2:  # away from the eps-dominated regime
        assert a.mean() == pytest.approx(0.0, abs=1e-9)
        assert flow_grpo_advantages(scale * r + shift, g) == pytest.approx(a, rel=2e-2, abs=1e-3)


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


def test_zero_std_rollout_frac_counts_the_rollouts_of_flat_groups():
    # Group 0 (3 rollouts) is flat, group 1 (2) varies, group 2 (1 rollout) is never flat.
    r, g = np.array([1.0, 1.0, 1.0, 0.0, 1.0, 0.5]), np.array([0, 0, 0, 1, 1, 2])
    assert zero_std_rollout_frac(r, g) == pytest.approx(3 / 6)
    assert zero_std_group_frac(r, g) == 0.5  # 1 of the 2 groups that can vary: sizes are not weighed
    assert zero_std_rollout_frac(np.array([0.3, 0.7]), np.array([0, 0])) == 0.0


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
    a = (r - np.array([0.5, 0.5, 0.9, 0.9, 0.1])) / (r.std() + 1e-4)  # global raw-reward std
    assert adv == pytest.approx(np.clip(np.outer(a, SIGMA_TABLE), -5, 5), abs=0.03)
    assert stats["adv/step0/weight"] == pytest.approx(2.06, abs=0.01)
    assert stats["reward/zero_std_frac"] == pytest.approx(0.5)
    assert stats["reward/zero_std_rollout_frac"] == pytest.approx(2 / 5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        compute_advantages(r * 2, g, baseline="tracker", values_before=values, first_visit=first,
                           sigmas=sd3_sigmas, noise_level=0.7, trained_steps=range(9), weight_kind="sigma")
    with pytest.raises(ValueError, match="values_before"):
        compute_advantages(r, g, baseline="tracker", values_before=None, first_visit=None,
                           sigmas=sd3_sigmas, noise_level=0.7, trained_steps=range(9), weight_kind="sigma")


def test_a_scope_without_spread_gets_zero_advantages_under_the_tracker_baseline(sd3_sigmas):
    """All 6 rewards 1.0 (two solved prompts): their std is 0, so the residuals r - v_c would be
    divided by eps alone and clipped at +5. No rollout is better than another: 0, as the
    group-mean baseline gives."""
    kw = dict(values_before=np.array([0.97, 0.9]), first_visit=np.array([False, False]), sigmas=sd3_sigmas,
              noise_level=0.7, trained_steps=range(9), weight_kind="sigma", clip=5.0)
    r, g = np.ones(6), np.repeat(np.arange(2), 3)
    adv, stats = compute_advantages(r, g, baseline="tracker", **kw)
    assert np.all(adv == 0.0) and stats["adv/clip_frac"] == 0.0 and stats["adv/flat_scope_frac"] == 1.0
    mean_adv, _ = compute_advantages(r, g, baseline="group_mean", **kw)
    assert np.all(mean_adv == 0.0)
    # Per-group std: only the flat group is zeroed; the other keeps (r - v_c) / (its std + eps).
    r2 = np.array([1.0, 1.0, 1.0, 1.0, 0.0, 0.5])
    adv, stats = compute_advantages(r2, g, baseline="tracker", adv_std="group", **kw)
    assert np.all(adv[:3] == 0.0) and stats["adv/flat_scope_frac"] == 0.5
    expected = (r2[3:] - 0.9) / (r2[3:].std() + 1e-4)
    assert adv[3:] == pytest.approx(np.clip(np.outer(expected, SIGMA_TABLE), -5, 5), abs=0.03)
    # Spread anywhere in the batch keeps the global scale: a flat prompt beside a varying one
    # gets its tracker residual over the batch's std, unchanged.
    adv, stats = compute_advantages(r2, g, baseline="tracker", **kw)
    assert stats["adv/flat_scope_frac"] == 0.0
    assert adv[:3, 0] == pytest.approx((1.0 - 0.97) / (r2.std() + 1e-4) * 2.06, rel=0.01)


def test_flat_scope_masks():
    r, g = np.array([0.5, 0.5, 0.2, 0.9]), np.array([0, 0, 1, 1])
    assert flat_scope(r, g, "group").tolist() == [True, True, False, False]
    assert flat_scope(r, g, "global").tolist() == [False] * 4
    assert flat_scope(np.full(4, 0.3), g, "global").tolist() == [True] * 4
    assert flat_scope(np.full(4, 0.3), g, "residual").tolist() == [False] * 4
