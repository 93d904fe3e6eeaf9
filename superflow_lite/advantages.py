"""Baselines, standardisation and step-level advantages (ALGORITHM.md sections 4 and 6).

Pipeline (`compute_advantages`):
    A_i     = r_i - b_i                      b: tracker value v_c (section 4) or group mean (Flow-GRPO)
    A_i     = A_i / (std(r) + eps)           std of the batch's raw rewards (Flow-GRPO; or per group);
                                             0 where that std is 0 (tracker baseline; see `flat_scope`)
    A_{i,t} = clip(w_t * A_i, -clip, clip)   w_t: step weights, mean 1 over the trained steps

Rewards here are the unit-range rewards r in [0, 1] (each reward declares its range and the
trainer maps it). Our choice: the tracker baseline needs that range, because the Beta
trackers estimate E[r] on [0, 1]; for the group-mean baseline the range is irrelevant,
since (r - mean_group(r)) / std(r) is invariant to r -> a r + b (a > 0) up to the epsilon.
So one set of unit rewards serves every configuration.

Arrays: N rollouts, G groups (prompts), S trained steps. group_ids: int [N] in 0..G-1.
"""
from __future__ import annotations

import math
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


def _group_stds(rewards: np.ndarray, group_ids: np.ndarray) -> np.ndarray:
    """Population std of the rewards of each group. [G]; an empty group gets NaN."""
    means = _group_means(rewards, group_ids)
    var = np.bincount(group_ids, weights=(rewards - means[group_ids]) ** 2, minlength=len(means))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sqrt(var / np.bincount(group_ids, minlength=len(means)))


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
        return a / (_group_stds(r, g)[g] + eps)
    if mode == "residual":
        return standardize(a, eps)
    raise ValueError(f"adv_std must be global, group or residual; got {mode!r}")


def flat_scope(rewards: np.ndarray, group_ids: np.ndarray, mode: str, atol: float = 1e-6) -> np.ndarray:
    """Whether rollout i's std scope (the batch under adv_std "global", its group under
    "group") has no reward spread: a std of at most atol. bool [N]; never true under "residual",
    whose scale is the residuals' own spread.

    Such a scope ranks none of its rollouts above another. The group-mean baseline gives it
    zero residuals; the tracker baseline gives it r - v_c, which the std would blow up by
    1/eps to the clip (section 4, "A scope without spread").
    """
    r = np.asarray(rewards, dtype=np.float64)
    g = np.asarray(group_ids, dtype=np.int64)
    if mode == "global":
        return np.full(len(r), bool(r.std() <= atol))
    if mode == "group":
        return _group_stds(r, g)[g] <= atol
    return np.zeros(len(r), dtype=bool)


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


def _flat_groups(rewards: np.ndarray, group_ids: np.ndarray, atol: float) -> tuple[np.ndarray, np.ndarray]:
    """(counts [G], flat [G]): each group's size, and whether it has >= 2 rollouts and a
    reward std of at most atol. 1-rollout groups are never flat: their std is zero by
    construction, not by the policy."""
    r = np.asarray(rewards, dtype=np.float64)
    g = np.asarray(group_ids, dtype=np.int64)
    counts = np.bincount(g)
    return counts, (counts >= 2) & (_group_stds(r, g) <= atol)


def zero_std_group_frac(rewards: np.ndarray, group_ids: np.ndarray, atol: float = 1e-6) -> float:
    """Fraction of groups with >= 2 rollouts whose rewards are all equal (no group-mean signal)."""
    counts, flat = _flat_groups(rewards, group_ids, atol)
    multi = counts >= 2
    return float(flat[multi].mean()) if multi.any() else 0.0


def zero_std_rollout_frac(rewards: np.ndarray, group_ids: np.ndarray, atol: float = 1e-6) -> float:
    """Share of the iteration's rollouts spent on such groups: what a fixed group size wastes
    on a prompt whose rewards no longer vary (ALGORITHM.md section 3's argument for dynamic groups)."""
    counts, flat = _flat_groups(rewards, group_ids, atol)
    return float(counts[flat].sum() / max(counts.sum(), 1))


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
    flat = flat_scope(r, g, adv_std)
    if baseline == "tracker":  # a scope without spread carries no ranking: 0, as the group mean gives it
        adv = np.where(flat, 0.0, adv)
    w = step_weights(sigmas, noise_level, trained_steps, weight_kind)
    adv_steps = step_advantages(adv, w, clip)
    stats = {
        "reward/unit_mean": float(r.mean()), "reward/zero_std_frac": zero_std_group_frac(r, g),
        "reward/zero_std_rollout_frac": zero_std_rollout_frac(r, g),
        "adv/baseline_mean": float(b.mean()), "adv/raw_std": float((r - b).std()),
        "adv/clip_frac": float((np.abs(np.outer(adv, w)) > clip).mean()),
        "adv/flat_scope_frac": float(flat.mean()),
    }
    for j, t in enumerate(np.asarray(trained_steps, dtype=np.int64)):
        col = adv_steps[:, j]
        stats.update({f"adv/step{t}/weight": float(w[j]), f"adv/step{t}/mean": float(col.mean()),
                      f"adv/step{t}/std": float(col.std()), f"adv/step{t}/min": float(col.min()),
                      f"adv/step{t}/max": float(col.max())})
    return adv_steps.astype(np.float32), stats



# ----------------------------------------------------------------------------- x0-value step credit


def credit_points(num_steps: int, every: int, trained_steps: Sequence[int]) -> list[int]:
    """The steps t < T whose one-step prediction x0_hat_t is scored   (section 4, step credit).

    The grid is 0, k, 2k, ... (k = `every`); V(T) is the final reward, always known. Only the
    grid points that bound an interval holding a trained step are kept: from the last grid
    point <= the first trained step up to the first grid point >= the last trained step + 1.
    """
    steps = np.asarray(trained_steps, dtype=np.int64)
    if every < 1 or len(steps) == 0 or steps.min() < 0 or steps.max() >= num_steps:
        raise ValueError(f"need every >= 1 and trained steps in 0..{num_steps - 1}; got {every}, {steps.tolist()}")
    lo = int(steps.min()) // every * every
    hi = -(-(int(steps.max()) + 1) // every) * every  # the first grid point after the last trained step
    return list(range(lo, min(hi, num_steps - 1) + 1, every))


def step_credit(values: np.ndarray, points: Sequence[int], num_steps: int) -> np.ndarray:
    """delta_{i,t} = V_i(t+1) - V_i(t): the change in predicted value step t caused. [N, P+1] -> [N, T].

    values: [N, P + 1], V_i at each of `points` (ascending, < T) and last V_i(T), the final
    reward. Between consecutive scored points a < b, each step of [a, b) gets the interval's
    change shared equally, (V(b) - V(a)) / (b - a); steps before points[0] get 0. So the
    credits telescope: sum_t delta_{i,t} = V_i(T) - V_i(points[0]).
    """
    v = np.asarray(values, dtype=np.float64)
    knots = [int(p) for p in points] + [num_steps]
    if v.ndim != 2 or v.shape[1] != len(knots):
        raise ValueError(f"values {v.shape} must be [N, {len(knots)}]: one column per point, then V(T)")
    if any(b <= a for a, b in zip(knots, knots[1:])) or knots[0] < 0:
        raise ValueError(f"points {list(points)} must be ascending and in 0..{num_steps - 1}")
    delta = np.zeros((len(v), num_steps))
    for j, (a, b) in enumerate(zip(knots, knots[1:])):
        delta[:, a:b] = ((v[:, j + 1] - v[:, j]) / (b - a))[:, None]
    return delta


def mix_step_credit(traj_adv_steps: np.ndarray, delta: np.ndarray, unit_rewards: np.ndarray, group_ids: np.ndarray,
                    trained_steps: Sequence[int], mix: float, adv_std: str, eps: float, clip: float) -> np.ndarray:
    """A_{i,t} = clip((1 - lambda) w_t A_i + lambda K D_{i,t})   (section 4, step credit). [N, S].

        D_{i,t} = (delta_{i,t} - mean of delta_{.,t} over i's group) / (std(r) + eps)

    traj_adv_steps: [N, S] w_t A_i before the clamp (the trajectory advantage as
    `compute_advantages` weights it); delta: [N, T] (`step_credit`); K = S trained steps,
    so at lambda = 1 the mean over steps of A_{i,t} is the group-relative change in value
    over the trained steps, net of the initial noise's luck V_i(first step). The std is
    the raw rewards' (per group under adv_std "group", else the batch's), as for A_i.
    """
    if not 0.0 <= mix <= 1.0:
        raise ValueError(f"step credit mix lambda must be in [0, 1], got {mix}")
    out = (1.0 - mix) * np.asarray(traj_adv_steps, dtype=np.float64)
    if mix == 0.0:  # exactly the trajectory advantage, whatever the credits hold
        return np.clip(out, -clip, clip)
    g = np.asarray(group_ids, dtype=np.int64)
    d = np.asarray(delta, dtype=np.float64)[:, np.asarray(trained_steps, dtype=np.int64)]  # [N, S]
    counts = np.bincount(g)[:, None]
    sums = np.zeros((len(counts), d.shape[1]))
    np.add.at(sums, g, d)
    centred = d - (sums / np.maximum(counts, 1))[g]
    scale_mode = "group" if adv_std == "group" else "global"
    credit = np.stack([scale_advantages(centred[:, j], unit_rewards, g, scale_mode, eps)
                       for j in range(d.shape[1])], axis=1)
    return np.clip(out + mix * d.shape[1] * credit, -clip, clip)


def compute_credit_advantages(unit_rewards: np.ndarray, group_ids: np.ndarray, *, x0_values: np.ndarray,
                              points: Sequence[int], num_steps: int, mix: float,
                              **kwargs) -> tuple[np.ndarray, dict[str, float]]:
    """`compute_advantages` with x0-value step credit mixed in   (section 4). Returns (adv float32 [N, S], stats).

    x0_values: [N, P] unit-range V_i at `points` (the scored x0 predictions); V_i(T) is the
    unit reward. kwargs: those of `compute_advantages` (baseline, sigmas, weights, ...).
    At mix = 0 the result equals `compute_advantages`' exactly.
    """
    clip = kwargs.pop("clip", 5.0)
    steps = list(kwargs["trained_steps"])
    r = np.asarray(unit_rewards, dtype=np.float64)
    traj, stats = compute_advantages(r, group_ids, clip=math.inf, **kwargs)  # w_t A_i, unclamped
    values = np.concatenate([np.asarray(x0_values, dtype=np.float64), r[:, None]], axis=1)
    delta = step_credit(values, points, num_steps)
    mixed_raw = mix_step_credit(traj, delta, r, group_ids, steps, mix, kwargs.get("adv_std", "global"),
                                kwargs.get("eps", 1e-4), math.inf)
    adv = np.clip(mixed_raw, -clip, clip)
    stats["adv/clip_frac"] = float((np.abs(mixed_raw) > clip).mean())
    for j, t in enumerate(steps):
        col = adv[:, j]
        stats.update({f"adv/step{t}/mean": float(col.mean()), f"adv/step{t}/std": float(col.std()),
                      f"adv/step{t}/min": float(col.min()), f"adv/step{t}/max": float(col.max()),
                      f"credit/step{t}/delta_mean": float(delta[:, t].mean())})
    stats.update({"credit/v0_mean": float(values[:, 0].mean()), "credit/points": float(len(points)),
                  "credit/delta_abs_mean": float(np.abs(delta[:, steps]).mean()),
                  "credit/mix": float(mix)})
    return adv.astype(np.float32), stats
