"""Trackers, prompt choice, group sizes under the cap, packing (ALGORITHM.md 3 and 6)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from superflow_lite.algorithms import AlgorithmSpec, resolve_algorithm
from superflow_lite.config import Config
from superflow_lite.grouping import (
    GroupSampler, ValueTrackers, adaptive_rho, bin_group_sizes, choose_prompts, fit_to_cap,
    pack_micro_batches, tracker_update, tracker_value, uncertainty_weights,
)

FAST = settings(max_examples=60, deadline=None)


def algorithm_spec(algorithm: str = "superflow", **switches) -> AlgorithmSpec:
    """The spec a config with these `superflow.*` switches resolves to (algorithms.py decides)."""
    cfg = Config(algorithm=algorithm)
    for key, value in switches.items():
        setattr(cfg.superflow, key, value)
    return resolve_algorithm(cfg)


SWITCHES = ("dynamic_groups", "baseline", "allocation", "probe_size")


def make_sampler(algorithm="superflow", pool_size=20, **overrides) -> GroupSampler:
    args = dict(prompts_per_iter=6, group_size=4, m_max=12, m_min=4, num_bins=4, rollout_cap=48, rho=0.875,
                adaptive_rho=False, d_half=0.01, weight_floor=0.05, seed=3)
    switches = {k: overrides.pop(k) for k in SWITCHES if k in overrides}
    args.update(overrides)
    return GroupSampler(algorithm_spec(algorithm, **switches), [f"prompt {i}" for i in range(pool_size)], **args)


# ----------------------------------------------------------------------------- hand-computed


def test_tracker_update_hand_computed():
    # From the prior: alpha = 0.875*0.5 + (1 + 0 + 0.5), beta = 0.875*0.5 + (0 + 1 + 0.5).
    assert tracker_update(0.5, 0.5, [1.0, 0.0, 0.5], 0.875) == pytest.approx((1.9375, 1.9375))
    a, b = tracker_update(2.0, 1.0, np.array([1.0, 1.0, 0.25]), 0.5)
    assert (a, b) == pytest.approx((3.25, 1.25))
    assert tracker_value(a, b) == pytest.approx(3.25 / 4.5)


def test_value_trackers_prior_update_and_state():
    t = ValueTrackers()
    assert not t.seen("cat") and t.value("cat") == 0.5
    t.update("cat", [1.0, 1.0, 0.0, 1.0], rho=0.875)
    assert t.seen("cat") and t.value("cat") == pytest.approx((0.4375 + 3) / (0.875 + 4))
    assert list(t.values(["cat", "dog"])) == pytest.approx([t.value("cat"), 0.5])
    assert t.spread()["tracker/num_seen"] == 1.0
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        t.update("dog", [1.5], rho=0.875)
    u = ValueTrackers()
    u.load_state_dict(json.loads(json.dumps(t.state_dict())))
    assert u.value("cat") == t.value("cat") and not u.seen("dog")


def test_adaptive_rho_and_weights():
    assert adaptive_rho(0.0, 0.01) == pytest.approx(0.96)  # no drift: remember (clipped at hi)
    assert adaptive_rho(0.001, 0.01) == pytest.approx(2 ** -0.1)
    assert adaptive_rho(1.0, 0.01) == pytest.approx(0.875)  # large drift: forget (clipped at lo)
    assert uncertainty_weights(np.array([0.5, 0.0, 1.0, 0.9]), 0.05) == pytest.approx(
        [0.55, 0.05, 0.05, math.sqrt(0.09) + 0.05])


def test_bins_blog_example_and_ties():
    w = np.linspace(0.5, 0.1, 8)  # already most uncertain first
    assert bin_group_sizes(w, 24, 21, 4).tolist() == [24, 24, 23, 23, 22, 22, 21, 21]
    assert bin_group_sizes(w[::-1], 24, 21, 4).tolist() == [21, 21, 22, 22, 23, 23, 24, 24]
    # Unseen prompts all share the top weight: one rank, the biggest group.
    assert bin_group_sizes(np.full(5, 0.55), 12, 4, 4).tolist() == [12] * 5


def test_fit_to_cap_hand_computed():
    sizes, w = np.array([12, 9, 7, 4]), np.array([0.5, 0.4, 0.3, 0.2])
    assert fit_to_cap(sizes, w, 0, 4, 1).tolist() == [12, 9, 7, 4]  # 0 = unlimited
    assert fit_to_cap(sizes, w, 40, 4, 1).tolist() == [12, 9, 7, 4]  # fits already
    # floor(s * 20/32) = 7, 5, 4, 2 -> floor 4 -> sum 20.
    assert fit_to_cap(sizes, w, 20, 4, 1).tolist() == [7, 5, 4, 4]
    # 3, 2, 2, 1 -> all 4 (sum 16) -> drop the two least uncertain (8) -> give 2 back, top first.
    assert fit_to_cap(sizes, w, 10, 4, 1).tolist() == [5, 5, 0, 0]
    assert fit_to_cap(sizes, w, 3, 4, 1).tolist() == [0, 0, 0, 0]
    with pytest.raises(ValueError, match="floor"):
        fit_to_cap(np.array([1, 3]), w[:2], 2, 1, 2)


def test_choose_prompts_zero_weights_and_pool_size():
    rng = np.random.default_rng(0)
    idx = choose_prompts(np.array([0.0, 1.0, 0.0, 2.0]), 3, rng)
    assert len(set(idx.tolist())) == 3 and {1, 3} <= set(idx.tolist())
    with pytest.raises(ValueError, match="distinct"):
        choose_prompts(np.ones(2), 3, rng)


# ----------------------------------------------------------------------------- properties


@st.composite
def plan_settings(draw):
    num = draw(st.integers(1, 24))
    values = draw(st.lists(st.floats(0.0, 1.0), min_size=num, max_size=num))
    m_min = draw(st.integers(1, 6))
    m_max = draw(st.integers(m_min, 16))
    min_group = draw(st.integers(1, m_min))
    return np.array(values), m_max, m_min, draw(st.integers(1, 8)), draw(st.integers(0, 200)), min_group


@FAST
@given(plan_settings())
def test_sizes_obey_cap_bounds_and_uncertainty_order(args):
    values, m_max, m_min, num_bins, cap, min_group = args
    w = uncertainty_weights(values, 0.05)
    binned = bin_group_sizes(w, m_max, m_min, num_bins)
    sizes = fit_to_cap(binned, w, cap, m_min, min_group)
    kept = sizes[sizes > 0]
    if cap > 0:
        assert sizes.sum() <= cap
    else:
        assert np.array_equal(sizes, binned)
    assert np.all((kept >= max(m_min, min_group)) & (kept <= m_max))
    more_uncertain = w[:, None] > w[None, :]  # [i, j]: prompt i strictly more uncertain than j
    assert not np.any(more_uncertain & (sizes[:, None] < sizes[None, :]))
    # The budget is not wasted: short of the cap only when every kept group has its full size.
    if sizes.sum() < min(cap, binned.sum()):
        assert np.array_equal(kept, binned[sizes > 0])


@FAST
@given(st.data())
def test_sampler_plans_respect_cap_and_reproduce(data):
    m_min = data.draw(st.integers(1, 5))
    m_max = data.draw(st.integers(m_min, 14))
    cap = data.draw(st.integers(max(m_min, 2), 120) | st.just(0))
    baseline = data.draw(st.sampled_from(["tracker", "group_mean"]))
    m_min_ok = max(m_min, 2) if baseline == "group_mean" else m_min
    kw = dict(m_min=m_min_ok, m_max=max(m_max, m_min_ok), num_bins=data.draw(st.integers(1, 6)),
              rollout_cap=cap, baseline=baseline, prompts_per_iter=data.draw(st.integers(1, 10)),
              seed=data.draw(st.integers(0, 2**16)))
    a, b = make_sampler(**kw), make_sampler(**kw)
    seen = data.draw(st.dictionaries(st.integers(0, 19), st.tuples(st.floats(0.01, 50), st.floats(0.01, 50))))
    state = {"prior": 0.5, "trackers": {f"prompt {i}": list(ab) for i, ab in seen.items()}}
    for s in (a, b):
        s.trackers.load_state_dict(state)
    plan = a.plan()
    assert plan == b.plan()  # same seed, same trackers -> same choice
    sizes = np.array(plan.group_sizes)
    if cap:
        assert plan.total_rollouts <= cap
    assert np.all((sizes >= kw["m_min"]) & (sizes <= kw["m_max"]))
    assert len(set(plan.prompts)) == len(plan.prompts)
    assert plan.first_visit == [not a.trackers.seen(p) for p in plan.prompts]
    w = uncertainty_weights(np.array(plan.values), 0.05)
    assert not np.any((w[:, None] > w[None, :]) & (sizes[:, None] < sizes[None, :]))


@FAST
@given(st.lists(st.integers(0, 30), max_size=20), st.integers(1, 17))
def test_packing_covers_each_rollout_once(sizes, micro_batch):
    batches = pack_micro_batches(sizes, micro_batch)
    total = sum(sizes)
    assert len(batches) == math.ceil(total / micro_batch)
    assert all(len(mb) == micro_batch for mb in batches[:-1])
    flat = [item for mb in batches for item in mb]
    assert sorted(flat) == [(g, m) for g, s in enumerate(sizes) for m in range(s)]


# ----------------------------------------------------------------------------- samplers


def _run(sampler: GroupSampler, iters: int, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    plans = []
    for _ in range(iters):
        plan = sampler.plan()
        sampler.update(plan, [rng.random(s) for s in plan.group_sizes], drift=0.002)
        plans.append(plan)
    return plans


def test_flow_grpo_fixed_groups_and_resume():
    s = make_sampler("flow_grpo", prompts_per_iter=5, group_size=6, rollout_cap=0)
    for plan in _run(s, 3):
        assert plan.group_sizes == [6] * 5 and len(set(plan.prompts)) == 5
    state = json.loads(json.dumps(s.state_dict()))  # checkpoints store JSON
    expected = _run(s, 3, seed=1)
    resumed = make_sampler("flow_grpo", prompts_per_iter=5, group_size=6, rollout_cap=0, seed=99)
    resumed.load_state_dict(state)
    assert _run(resumed, 3, seed=1) == expected


def test_flow_grpo_over_cap_drops_prompts_keeps_g():
    plan = make_sampler("flow_grpo", prompts_per_iter=5, group_size=6, rollout_cap=20).plan()
    assert plan.group_sizes == [6, 6, 6] and plan.num_dropped == 2


def test_superflow_resume_and_first_visit():
    s = make_sampler(adaptive_rho=True, rollout_cap=0)
    first = s.plan()
    assert all(first.first_visit) and first.group_sizes == [12] * 6  # all unseen: most uncertain
    stats = s.update(first, [np.ones(n) for n in first.group_sizes], drift=0.0)
    assert stats["tracker/rho"] == pytest.approx(0.96)
    assert s.trackers.value(first.prompts[0]) > 0.5
    second = s.plan()
    assert second.first_visit == [p not in first.prompts for p in second.prompts]
    assert all(v == 0.5 for v, f in zip(second.values, second.first_visit) if f)
    _run(s, 2)
    state = json.loads(json.dumps(s.state_dict()))
    expected = _run(s, 3, seed=5)
    resumed = make_sampler(adaptive_rho=True, rollout_cap=0, seed=7)
    resumed.load_state_dict(state)
    assert _run(resumed, 3, seed=5) == expected


def test_fixed_groups_superflow_and_update_checks():
    s = make_sampler(dynamic_groups=False, group_size=5, rollout_cap=0)
    plan = s.plan()
    assert plan.group_sizes == [5] * 6
    with pytest.raises(ValueError, match="rewards for"):
        s.update(plan, [np.ones(4)] * 6)
    with pytest.raises(ValueError, match="reward groups"):
        s.update(plan, [np.ones(5)] * 5)
    with pytest.raises(ValueError, match="drift"):
        make_sampler(adaptive_rho=True).update(plan, [np.ones(5)] * 6, drift=None)
    with pytest.raises(ValueError, match="algorithm"):
        make_sampler("flow_grpo").load_state_dict(s.state_dict())
    with pytest.raises(ValueError, match="rollout_cap"):
        make_sampler(rollout_cap=3).plan()
    with pytest.raises(ValueError, match="pool"):
        make_sampler(pool_size=3)


def test_unseen_prompts_are_preferred():
    s = make_sampler(pool_size=40, prompts_per_iter=4, rollout_cap=0)
    solved = {f"prompt {i}": [40.0, 0.01] for i in range(1, 40)}  # v ~ 1: nothing left to learn
    s.trackers.load_state_dict({"prior": 0.5, "trackers": solved})
    hits = sum("prompt 0" in s.plan().prompts for _ in range(50))
    assert hits >= 15  # w = 0.55 vs ~0.066: drawn in ~30% of 4-of-40 plans, vs 10% uniformly
    plan = next(p for p in (s.plan() for _ in range(200)) if "prompt 0" in p.prompts)
    assert plan.group_sizes[plan.prompts.index("prompt 0")] == 12
    assert plan.first_visit[plan.prompts.index("prompt 0")]


def test_from_config():
    cfg = Config()
    s = GroupSampler.from_config(cfg, [f"p{i}" for i in range(30)], rollout_cap=40)
    assert (s.spec.name, s.prompts_per_iter, s.m_max, s.rollout_cap) == ("superflow", 8, 12, 40)
    assert s.plan().total_rollouts <= 40
    cfg.algorithm = "flow_grpo"
    assert GroupSampler.from_config(cfg, [f"p{i}" for i in range(30)]).plan().group_sizes == [8] * 8


def test_the_sampler_obeys_the_specs_smallest_group_whatever_sets_it():
    # adv_std=group divides by the group's std: a 1-rollout group has none, so the spec's
    # smallest group is 2 under the tracker baseline too, and the sampler refuses m_min=1.
    cfg = Config()
    cfg.train.adv_std = "group"
    spec = resolve_algorithm(cfg)
    assert spec.baseline == "tracker" and spec.min_group == 2
    with pytest.raises(ValueError, match="group size 1 < 2"):
        GroupSampler(spec, [f"p{i}" for i in range(8)], prompts_per_iter=4, group_size=4, m_max=4, m_min=1,
                     num_bins=2, rollout_cap=0, rho=0.875, adaptive_rho=False, d_half=0.01, weight_floor=0.05, seed=0)
    cfg.train.adv_std = "global"
    GroupSampler(resolve_algorithm(cfg), [f"p{i}" for i in range(8)], prompts_per_iter=4, group_size=4, m_max=4,
                 m_min=1, num_bins=2, rollout_cap=0, rho=0.875, adaptive_rho=False, d_half=0.01, weight_floor=0.05, seed=0)


def test_uniform_prompt_choice_comes_from_the_spec():
    # The spec alone says how prompts are drawn: flow_grpo's uniform draw ignores the trackers.
    uniform, by_uncertainty = make_sampler("flow_grpo", rollout_cap=0), make_sampler(rollout_cap=0)
    assert uniform.spec.prompt_choice == "uniform" and by_uncertainty.spec.prompt_choice == "uncertainty"
    for s in (uniform, by_uncertainty):  # prompt 0 solved, the rest uncertain
        for _ in range(30):
            s.trackers.update("prompt 0", np.ones(8), 0.875)
    picks = {name: sum("prompt 0" in s.plan().prompts for _ in range(200))
             for name, s in (("uniform", uniform), ("uncertainty", by_uncertainty))}
    assert picks["uniform"] > 40 > picks["uncertainty"]  # uniform: 6 of 20 drawn, ~60 of 200


def test_a_cap_below_the_smallest_group_names_that_group():
    with pytest.raises(ValueError, match=r"smallest allowed group \(4\)"):  # m_min 4, dynamic groups
        make_sampler(rollout_cap=3).plan()
    with pytest.raises(ValueError, match=r"smallest allowed group \(6\)"):  # fixed groups of 6
        make_sampler("flow_grpo", group_size=6, rollout_cap=5).plan()
