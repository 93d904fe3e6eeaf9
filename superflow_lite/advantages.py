"""Baselines, standardisation and step-level advantages (ALGORITHM.md sections 4 and 6).

Pipeline (`compute_advantages`):
    A_i     = r_i - b_i                      b: tracker value v_c (section 4) or group mean (Flow-GRPO)
    A_i     = A_i / (std(r) + eps)           std of the batch's raw rewards (Flow-GRPO; or per group)
    A_{i,t} = clip(w_t * A_i, -clip, clip)   w_t: step weights, mean 1 over the trained steps

Rewards here are the unit-range rewards r in [0, 1] (each reward declares its range and the
trainer maps it). Our choice: the tracker baseline needs that range, because the Beta
trackers estimate E[r] on [0, 1]; for the group-mean baseline the range is irrelevant,
since (r - mean_group(r)) / std(r) is invariant to r -> a r + b (a > 0) up to the epsilon.
So one set of unit rewards serves every configuration.

Arrays: N rollouts, G groups (prompts), S trained steps. group_ids: int [N] in 0..G-1.
"""
from __future__ import annotations

from typing import Literal, Sequence

import numpy as np
import torch

from .sde import sde_sigma_t

WeightKind = Literal["sigma", "sigma_sqrt_dt", "none"]
BaselineKind = Literal["tracker", "group_mean"]


def _group_means(rewards: np.ndarray, group_ids: np.ndarray) -> np.ndarray:
    """Mean reward of each group. [G]; an empty group gets NaN (it has no rollouts to use it)."""
    counts = np.bincount(group_ids)
    sums = np.bincount(group_ids, weights=rewards, minlength=len(counts))
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts


def group_mean_baseline(rewards: np.ndarray, group_ids: np.ndarray) -> np.ndarray:
    """b_i = mean of r over rollout i's group   (Flow-GRPO). float64 [N]."""
    r = np.asarray(rewards, dtype=np.float64)
    g = np.asarray(group_ids, dtype=np.int64)
    return _group_means(r, g)[g]


def tracker_baseline(rewards: np.ndarray, group_ids: np.ndarray, values_before: np.ndarray,
                     first_visit: Sequence[bool] | np.ndarray) -> np.ndarray:
    """b_i = v_c, the tracker value of rollout i's prompt BEFORE this iteration's update
    (section 4); a prompt seen for the first time has no estimate, so b_i = its group mean.

    values_before: [G]; first_visit: bool [G]. Returns float64 [N].
    """
    g = np.asarray(group_ids, dtype=np.int64)
    v = np.asarray(values_before, dtype=np.float64)
    first = np.asarray(first_visit, dtype=bool)
    if len(v) != len(first) or (len(g) and g.max() >= len(v)):
        raise ValueError(f"values_before [{len(v)}] and first_visit [{len(first)}] must cover every group id")
    return np.where(first[g], group_mean_baseline(rewards, g), v[g])


def standardize(adv: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    """(A - mean A) / (std A + eps) over the whole batch   (section 4, adv_std "residual"). float64 [N].

    Not Flow-GRPO's scaling: dividing by the residuals' own std blows a batch whose rewards
    barely differ up to unit scale. Kept as a switch for comparison.
    """
    a = np.asarray(adv, dtype=np.float64)
    return (a - a.mean()) / (a.std() + eps)


def scale_advantages(residual: np.ndarray, rewards: np.ndarray, group_ids: np.ndarray,
                     mode: str, eps: float) -> np.ndarray:
    """Divide the residuals A_i = r_i - b_i by a reward std   (section 4). float64 [N].

        global:   A_i / (std of all raw rewards r of the batch + eps)     Flow-GRPO, global_std
        group:    A_i / (std of r in rollout i's group + eps)             Flow-GRPO, per prompt
        residual: (A_i - mean A) / (std A + eps)                          centred residuals

    The std is of the rewards, not of the residuals: a batch whose rewards barely differ
    keeps advantages near zero (eps = 1e-4 bounds the blow-up) instead of unit scale.
    """
    a = np.asarray(residual, dtype=np.float64)
    r = np.asarray(rewards, dtype=np.float64)
    g = np.asarray(group_ids, dtype=np.int64)
    if mode == "global":
        return a / (r.std() + eps)
    if mode == "group":
        means = _group_means(r, g)
        var = np.bincount(g, weights=(r - means[g]) ** 2, minlength=len(means)) / np.bincount(g)
        return a / (np.sqrt(var)[g] + eps)
    if mode == "residual":
        return standardize(a, eps)
    raise ValueError(f"adv_std must be global, group or residual; got {mode!r}")


def flow_grpo_advantages(rewards: np.ndarray, group_ids: np.ndarray, global_std: bool = True) -> np.ndarray:
    """Flow-GRPO: A_i = (r_i - mean_group(r)) / (std(r) + 1e-4), the std global or per group   (section 6)."""
    r = np.asarray(rewards, dtype=np.float64)
    return scale_advantages(r - group_mean_baseline(r, group_ids), r, group_ids,
                            "global" if global_std else "group", 1e-4)


def step_weights(sigmas: Sequence[float] | np.ndarray | torch.Tensor, noise_level: float,
                 trained_steps: Sequence[int], kind: WeightKind) -> np.ndarray:
    """Per-step advantage weights along the flow, mean 1 over the trained steps (section 4).

        sigma:          w_t ∝ sigma_t                  (the step score scales as 1/sigma_t)
        sigma_sqrt_dt:  w_t ∝ sigma_t * sqrt(-dt_t)    (the step's noise std)
        none:           w_t = 1                        (Flow-GRPO's trajectory-level reuse)

    sigmas: the scheduler's T+1 sigmas s_0 = 1 > ... > s_T = 0; step t goes s_t -> s_{t+1}.
    trained_steps: step indices in 0..T-1. Returns float64 [len(trained_steps)].
    """
    s = torch.as_tensor(np.asarray(sigmas, dtype=np.float64)) if not isinstance(sigmas, torch.Tensor) \
        else sigmas.detach().double().cpu()
    steps = np.asarray(trained_steps, dtype=np.int64)
    num_steps = len(s) - 1
    if len(steps) == 0 or steps.min() < 0 or steps.max() >= num_steps:
        raise ValueError(f"trained_steps {steps.tolist()} must be non-empty and in 0..{num_steps - 1}")
    if kind == "none":
        return np.ones(len(steps))
    if kind not in ("sigma", "sigma_sqrt_dt"):
        raise ValueError(f"step weight kind must be sigma, sigma_sqrt_dt or none; got {kind!r}")
    if noise_level <= 0:
        raise ValueError("noise-scaled step weights need noise_level > 0 (at 0 every sigma_t is 0)")
    # sigma_t in the sampler's own float32 arithmetic, so the weights match the steps it took.
    sigma_t = sde_sigma_t(s[:-1], float(s[1]), noise_level).double().numpy()[steps]
    w = sigma_t
    if kind == "sigma_sqrt_dt":
        w = sigma_t * np.sqrt((s[:-1] - s[1:]).numpy()[steps])
    return w / w.mean()


def step_advantages(adv: np.ndarray, weights: np.ndarray, clip: float) -> np.ndarray:
    """A_{i,t} = clip(w_t * A_i, -clip, clip)   (section 4; clip 5 as Flow-GRPO). [N] x [S] -> [N, S]."""
    return np.clip(np.outer(np.asarray(adv, dtype=np.float64), np.asarray(weights, dtype=np.float64)), -clip, clip)


def zero_std_group_frac(rewards: np.ndarray, group_ids: np.ndarray, atol: float = 1e-6) -> float:
    """Fraction of groups with >= 2 rollouts whose rewards are all equal (no group-mean signal).

    1-rollout groups are left out: their std is zero by construction, not by the policy.
    """
    r = np.asarray(rewards, dtype=np.float64)
    g = np.asarray(group_ids, dtype=np.int64)
    counts = np.bincount(g)
    means = _group_means(r, g)
    var = np.bincount(g, weights=(r - means[g]) ** 2, minlength=len(counts))
    multi = counts >= 2
    if not multi.any():
        return 0.0
    return float((np.sqrt(var[multi] / counts[multi]) <= atol).mean())


def compute_advantages(
    unit_rewards: np.ndarray, group_ids: np.ndarray, *, baseline: BaselineKind,
    values_before: np.ndarray | None, first_visit: Sequence[bool] | np.ndarray | None,
    sigmas: Sequence[float] | np.ndarray | torch.Tensor, noise_level: float,
    trained_steps: Sequence[int], weight_kind: WeightKind, clip: float = 5.0,
    adv_std: str = "global", eps: float = 1e-4,
) -> tuple[np.ndarray, dict[str, float]]:
    """baseline -> scale by a reward std -> step weights -> clamp   (sections 4 and 6).

    unit_rewards: [N] in [0, 1]; group_ids: int [N]; values_before, first_visit: [G]
    (tracker baseline only). Flow-GRPO = baseline "group_mean", adv_std "global" (or "group"),
    eps 1e-4, weight_kind "none".
    Returns (adv float32 [N, S] in trained_steps order, stats).
    """
    r = np.asarray(unit_rewards, dtype=np.float64)
    g = np.asarray(group_ids, dtype=np.int64)
    if r.shape != g.shape or r.ndim != 1:
        raise ValueError(f"unit_rewards {r.shape} and group_ids {g.shape} must be matching 1-D arrays")
    if baseline == "tracker":
        if values_before is None or first_visit is None:
            raise ValueError("the tracker baseline needs values_before and first_visit")
        if r.min() < 0.0 or r.max() > 1.0:
            raise ValueError(f"the tracker baseline needs unit rewards in [0, 1]; got [{r.min()}, {r.max()}]")
        b = tracker_baseline(r, g, values_before, first_visit)
    elif baseline == "group_mean":
        b = group_mean_baseline(r, g)
    else:
        raise ValueError(f"baseline must be tracker or group_mean; got {baseline!r}")
    adv = scale_advantages(r - b, r, g, adv_std, eps)
    w = step_weights(sigmas, noise_level, trained_steps, weight_kind)
    adv_steps = step_advantages(adv, w, clip)
    stats = {
        "reward/unit_mean": float(r.mean()), "reward/zero_std_frac": zero_std_group_frac(r, g),
        "adv/baseline_mean": float(b.mean()), "adv/raw_std": float((r - b).std()),
        "adv/clip_frac": float((np.abs(np.outer(adv, w)) > clip).mean()),
    }
    for j, t in enumerate(np.asarray(trained_steps, dtype=np.int64)):
        col = adv_steps[:, j]
        stats.update({f"adv/step{t}/weight": float(w[j]), f"adv/step{t}/mean": float(col.mean()),
                      f"adv/step{t}/std": float(col.std()), f"adv/step{t}/min": float(col.min()),
                      f"adv/step{t}/max": float(col.max())})
    return adv_steps.astype(np.float32), stats
