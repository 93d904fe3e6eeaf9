"""Streaming-to-group allocation: probes, shrunk variances, the second phase (ALGORITHM.md 3)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from superflow_lite.algorithms import resolve_algorithm
from superflow_lite.config import ConfigError, build_config
from superflow_lite.grouping import (
    ZERO_VARIANCE, GroupSampler, allocate_second_phase, bernoulli_variances, probe_sizes, probe_variances,
    uncertainty_weights, whole_batches,
)

FAST = settings(max_examples=80, deadline=None)


def probe_sampler(probe_size: int = 2, **overrides) -> GroupSampler:
    cfg = build_config("tiny", overrides=["superflow.allocation=probe", f"superflow.probe_size={probe_size}"])
    args = dict(prompts_per_iter=4, group_size=4, m_max=6, m_min=2, num_bins=3, rollout_cap=24, rho=0.875,
                adaptive_rho=False, d_half=0.01, weight_floor=0.05, seed=0, variance_prior=1.0)
    args.update(overrides)
    return GroupSampler(resolve_algorithm(cfg), [f"prompt {i}" for i in range(8)], **args)


# ----------------------------------------------------------------------------- hand-computed


def test_probe_variance_is_the_shrunk_sample_variance():
    # SS = 0.5 over 1 dof, prior 0.25 with 1 pseudo-dof: (0.5 + 0.25) / 2.
    assert probe_variances([[1.0, 0.0]], np.array([0.25]), 1.0) == pytest.approx([0.375])
    # kappa = 0: the unbiased sample variance.
    r = [0.1, 0.5, 0.6, 1.0]
    assert probe_variances([r], np.array([0.25]), 0.0) == pytest.approx([np.var(r, ddof=1)])
    # Agreeing probes: only the prior is left, kappa p / (n - 1 + kappa).
    assert probe_variances([[0.5, 0.5, 0.5]], np.array([0.2]), 2.0) == pytest.approx([0.1])
    assert bernoulli_variances(np.array([0.5, 1.0, 0.9])) == pytest.approx([0.25, 0.0, 0.09])
    with pytest.raises(ValueError, match="undefined"):
        probe_variances([[1.0]], np.array([0.25]), 0.0)


def test_greedy_second_phase_hand_computed():
    # Drops var/(n(n+1)): a 0.2/6, a 0.2/12, a 0.2/20, then b 0.05/6 > a 0.2/30, a 0.2/30, b 0.05/12.
    extra = allocate_second_phase(np.array([2, 2, 2]), np.array([0.2, 0.05, 0.0]), budget=6, m_max=6)
    assert extra.tolist() == [4, 2, 0]
    # Unequal starts: 0.05 / (1 * 2) = 0.025 beats 0.25 / (3 * 4) = 0.021 (var / n would pick the second).
    assert allocate_second_phase(np.array([1, 3]), np.array([0.05, 0.25]), budget=1, m_max=6).tolist() == [1, 0]
    # Saturated: every prompt with variance is at m_max, the rest of the budget is not spent.
    assert allocate_second_phase(np.array([2, 2]), np.array([0.1, 0.0]), budget=10, m_max=5).tolist() == [3, 0]


def test_probes_fill_whole_micro_batches():
    w = np.array([0.1, 0.5, 0.3])  # most uncertain first: 1, 2, 0
    assert probe_sizes(w, 2, 6, cap=0, granule=4).tolist() == [2, 3, 3]  # 6 -> 8 rollouts
    assert probe_sizes(w, 2, 6, cap=7, granule=4).tolist() == [2, 2, 2]  # 8 would break the cap: keep 6
    assert probe_sizes(w, 2, 6, cap=5, granule=1).tolist() == [0, 2, 2]  # over the cap: least uncertain dropped
    assert whole_batches(13, 4) == 12 and whole_batches(-3, 4) == 0


# ----------------------------------------------------------------------------- properties


@st.composite
def second_phase_cases(draw):
    g = draw(st.integers(1, 8))
    m_max = draw(st.integers(2, 12))
    starts = np.array(draw(st.lists(st.integers(1, m_max), min_size=g, max_size=g)))
    var = np.array(draw(st.lists(st.sampled_from([0.0, 0.01, 0.05, 0.1, 0.25]) | st.floats(0, 0.25),
                                 min_size=g, max_size=g)))
    return starts, var, draw(st.integers(0, 60)), m_max


@FAST
@given(second_phase_cases())
def test_second_phase_obeys_budget_bounds_order_and_zero_variance(case):
    starts, var, budget, m_max = case
    extra = allocate_second_phase(starts, var, budget, m_max)
    total = starts + extra
    assert extra.sum() <= budget and np.all(extra >= 0)
    assert np.all(total <= m_max) and np.all(total >= starts)
    assert np.all(extra[var <= ZERO_VARIANCE] == 0)  # agreeing probes, nothing in the prior: no more
    # Higher variance and at least as many probes -> never fewer rollouts.
    higher = (var[:, None] > var[None, :]) & (starts[:, None] >= starts[None, :])
    assert not np.any(higher & (total[:, None] < total[None, :]))
    # Short of the budget only when every prompt with variance is full.
    if extra.sum() < budget:
        assert np.all(total[var > ZERO_VARIANCE] == m_max)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 3), min_size=1, max_size=3), st.lists(st.floats(0.001, 0.25), min_size=3, max_size=3),
       st.integers(0, 6))
def test_second_phase_minimises_the_baselines_summed_variance(starts, var, budget):
    starts, var, m_max = np.array(starts), np.array(var[:len(starts)]), 5
    extra = allocate_second_phase(starts, var, budget, m_max)
    best = min(
        (float((var / (starts + np.array(e))).sum()) for e in itertools.product(range(m_max + 1), repeat=len(starts))
         if sum(e) == min(budget, int((m_max - starts).sum())) and np.all(starts + np.array(e) <= m_max)))
    assert float((var / (starts + extra)).sum()) == pytest.approx(best, rel=1e-9)


@FAST
@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=12), st.integers(1, 4), st.integers(4, 10),
       st.integers(0, 80), st.integers(1, 16))
def test_probe_sizes_obey_cap_bounds_and_order(values, probe, m_max, cap, granule):
    w = uncertainty_weights(np.array(values), 0.05)
    sizes = probe_sizes(w, probe, m_max, cap, granule)
    kept = sizes[sizes > 0]
    if cap:
        assert sizes.sum() <= cap
    assert np.all((kept >= probe) & (kept <= m_max))
    assert not np.any((w[:, None] > w[None, :]) & (sizes[:, None] < sizes[None, :]))
    plain = len(kept) * probe
    nxt = -(-plain // granule) * granule
    if nxt <= len(kept) * m_max and (cap == 0 or nxt <= cap):
        assert sizes.sum() == nxt  # whole micro-batches where they fit
    else:
        assert sizes.sum() == plain


@FAST
@given(st.data())
def test_sampler_two_phases_stay_under_the_cap_in_whole_batches(data):
    granule = data.draw(st.integers(1, 8))
    cap = data.draw(st.integers(8, 40))
    s = probe_sampler(rollout_cap=cap, seed=data.draw(st.integers(0, 999)))
    s.granule = granule
    first = s.plan()
    rng = np.random.default_rng(data.draw(st.integers(0, 999)))
    probes = [rng.choice([0.0, 0.5, 1.0], size=n) for n in first.group_sizes]
    whole = s.second_phase(first, probes)
    n1, total = first.total_rollouts, whole.total_rollouts
    assert total <= cap and whole.probe_sizes == first.group_sizes and whole.prompts == first.prompts
    assert all(p <= t <= s.m_max for p, t in zip(whole.probe_sizes, whole.group_sizes))
    n2 = total - n1
    saturated = all(t == s.m_max for t, v in zip(whole.group_sizes, whole.variances) if v > ZERO_VARIANCE)
    assert n2 % granule == 0 or saturated


def test_shrinkage_toward_the_tracker_stops_a_solved_prompt_not_an_unseen_one():
    s = probe_sampler(prompts_per_iter=2, rollout_cap=12)
    first = s.plan()
    solved, unseen = first.prompts
    # The tracker says `solved` always scores 1: v = 1, v(1-v) = 0.
    s.trackers.load_state_dict({"prior": 0.5, "trackers": {solved: [1.0, 0.0]}})
    first.values, first.first_visit = s.trackers.values(first.prompts).tolist(), [False, True]
    whole = s.second_phase(first, [np.ones(2), np.ones(2)])  # both prompts' probes agree
    assert whole.variances == pytest.approx([0.0, 0.125])  # unseen: 1 * 0.25 / (1 + 1)
    assert whole.group_sizes == [2, s.m_max]


# ----------------------------------------------------------------------------- config and spec


def test_probe_and_credit_switches_resolve_and_validate(fast_overrides):
    on = ["superflow.allocation=probe", "superflow.step_credit=x0_value"]
    spec = resolve_algorithm(build_config("tiny", None, fast_overrides + on))
    assert (spec.allocation, spec.probe_size, spec.step_credit) == ("probe", 2, "x0_value")
    assert spec.group_bounds(4, 6, 3) == (6, 2)  # the memory plan's smallest group is the probe
    off = resolve_algorithm(build_config("tiny", None, fast_overrides + on + ["algorithm=flow_grpo"]))
    assert (off.allocation, off.probe_size, off.step_credit) == ("bins", 0, "none")
    for bad, message in (("superflow.dynamic_groups=false", "dynamic_groups"), ("superflow.probe_size=5", "probe_size"),
                         ("superflow.credit_every=0", "credit_every"), ("superflow.step_credit_mix=1.5", "mix")):
        with pytest.raises(ConfigError, match=message):
            build_config("tiny", None, fast_overrides + on + [bad])
