"""Per-prompt value trackers, prompt choice and group sizes under the rollout cap.

ALGORITHM.md section 3 (SuperFlow's variance-aware dynamic groups, with SPO's discounted
Beta tracker) and section 6 (the Flow-GRPO baseline: B uniform prompts, fixed G).

The math is a set of pure numpy functions; `ValueTrackers` and `GroupSampler` hold the
state (trackers, RNG) a checkpoint must restore so that a resumed run makes the same
choices. Rewards reaching this module are unit-range, r in [0, 1] (each reward declares
its range and the trainer maps it), because the trackers are Beta posteriors on [0, 1].
"""
from __future__ import annotations

import dataclasses
import heapq
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import numpy as np

from .algorithms import AlgorithmSpec, resolve_algorithm

if TYPE_CHECKING:  # only `GroupSampler.from_config` reads the config
    from .config import Config

PRIOR = 0.5
"""alpha = beta = 0.5 for an unseen prompt: v = 0.5, the most uncertain value (section 3)."""

# ----------------------------------------------------------------------------- pure math


def tracker_value(alpha: float, beta: float) -> float:
    """v_c = alpha / (alpha + beta): the tracker's estimate of the expected unit reward."""
    return alpha / (alpha + beta)


def tracker_update(alpha: float, beta: float, unit_rewards: Sequence[float] | np.ndarray,
                   rho: float) -> tuple[float, float]:
    """alpha <- rho*alpha + sum_j r_j,  beta <- rho*beta + sum_j (1 - r_j)   (section 3).

    rho < 1 discounts old evidence: the policy moves, so old rewards describe an old policy.
    """
    r = np.asarray(unit_rewards, dtype=np.float64)
    return rho * alpha + float(r.sum()), rho * beta + float((1.0 - r).sum())


def adaptive_rho(drift: float, d_half: float, lo: float = 0.875, hi: float = 0.96) -> float:
    """rho = clip(2^(-D / D_half), lo, hi)   (section 3, option).

    A policy that moved by D_half halves the weight of old evidence; the clip keeps the
    tracker from forgetting everything (lo) or never forgetting (hi).
    """
    return float(np.clip(2.0 ** (-drift / d_half), lo, hi))


def uncertainty_weights(values: np.ndarray, floor: float) -> np.ndarray:
    """w_c = sqrt(v_c (1 - v_c)) + floor   (section 3). [P] -> [P].

    sqrt(v(1-v)) is the std of a Bernoulli(v) reward: prompts the policy sometimes solves
    carry the most signal. The floor keeps every prompt reachable.
    """
    v = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)
    return np.sqrt(v * (1.0 - v)) + floor


def choose_prompts(weights: np.ndarray, num_prompts: int, rng: np.random.Generator) -> np.ndarray:
    """Draw `num_prompts` distinct indices with probability proportional to `weights`.

    Returns int64 [num_prompts] in draw order. numpy refuses to draw more distinct
    indices than there are positive weights (possible with floor 0): those come first,
    then the rest uniformly from the zero-weight prompts.
    """
    w = np.asarray(weights, dtype=np.float64)
    if num_prompts > len(w):
        raise ValueError(f"cannot draw {num_prompts} distinct prompts from a pool of {len(w)}")
    if np.any(w < 0) or not np.all(np.isfinite(w)):
        raise ValueError("prompt weights must be finite and >= 0")
    positive = np.flatnonzero(w > 0)
    if len(positive) >= num_prompts:
        return rng.choice(len(w), size=num_prompts, replace=False, p=w / w.sum()).astype(np.int64)
    zero = np.flatnonzero(w <= 0)
    rest = rng.choice(zero, size=num_prompts - len(positive), replace=False)
    return np.concatenate([rng.permutation(positive), rest]).astype(np.int64)


def _order_most_uncertain_first(weights: np.ndarray) -> np.ndarray:
    # Stable sort so that ties keep their draw order: the same plan for the same RNG state.
    return np.argsort(-np.asarray(weights, dtype=np.float64), kind="stable")


def bin_group_sizes(weights_of_chosen: np.ndarray, m_max: int, m_min: int, num_bins: int) -> np.ndarray:
    """Group size per chosen prompt from its uncertainty rank   (section 3). [B] -> int64 [B].

    Prompts are ranked by w (rank = number of prompts strictly more uncertain, so ties
    share a rank) and cut into K equal quantile bins: bin k = floor(rank * K / B).
    Bin k gets round(M_max - (M_max - M_min) * k / (K - 1)): the most uncertain bin M_max,
    the least M_min, linear between (M_max 24, M_min 21, K 4 -> 24/23/22/21).
    """
    if not 1 <= m_min <= m_max or num_bins < 1:
        raise ValueError(f"need 1 <= m_min <= m_max and num_bins >= 1; got {m_min}, {m_max}, {num_bins}")
    w = np.asarray(weights_of_chosen, dtype=np.float64)
    n = len(w)
    rank = (w[None, :] > w[:, None]).sum(axis=1)  # [B]; O(B^2) is nothing for B ~ 100
    bins = (rank * num_bins) // max(n, 1)
    frac = bins / (num_bins - 1) if num_bins > 1 else np.zeros(n)
    return np.floor(m_max - (m_max - m_min) * frac + 0.5).astype(np.int64)


def fit_to_cap(sizes: np.ndarray, weights: np.ndarray, cap: int, m_min: int, min_group: int) -> np.ndarray:
    """Fit group sizes to the rollout cap R   (section 3 "Budget"). int64 [B]; 0 = dropped.

    cap 0 = unlimited. Over the cap: (1) shrink proportionally, s <- floor(s * R / sum s),
    never below lo = max(M_min, min_group); (2) drop the least uncertain prompts until
    sum <= R; (3) our choice: hand the rollouts the rounding and dropping freed back one at
    a time, most uncertain first, never above a group's original size. Each step keeps
    the order "more uncertain -> never a smaller group".
    """
    sizes = np.asarray(sizes, dtype=np.int64).copy()
    lo = max(m_min, min_group)
    if np.any((sizes > 0) & (sizes < lo)):
        raise ValueError(f"group sizes {sizes.tolist()} fall below the floor max(m_min, min_group) = {lo}")
    total = int(sizes.sum())
    if cap <= 0 or total <= cap:
        return sizes
    order = _order_most_uncertain_first(weights)
    original = sizes.copy()
    shrunk = np.where(sizes > 0, np.clip((sizes * cap) // total, lo, sizes), 0)
    for i in order[::-1]:  # least uncertain first
        if shrunk.sum() <= cap:
            break
        shrunk[i] = 0
    left = cap - int(shrunk.sum())
    kept = [i for i in order if shrunk[i] > 0]
    while left > 0:
        grew = False
        for i in kept:
            if left > 0 and shrunk[i] < original[i]:
                shrunk[i] += 1
                left -= 1
                grew = True
        if not grew:
            break
    return shrunk


def pack_micro_batches(group_sizes: Sequence[int], micro_batch: int) -> list[list[tuple[int, int]]]:
    """Flatten rollouts into sampling micro-batches of `micro_batch` (the last may be short).

    Returns ceil(total / micro_batch) lists of (group_index, member_index). Groups span
    micro-batch boundaries, so a mix of group sizes costs no extra forward passes.
    """
    if micro_batch < 1:
        raise ValueError(f"micro_batch must be >= 1, got {micro_batch}")
    flat = [(g, m) for g, size in enumerate(group_sizes) for m in range(int(size))]
    return [flat[i:i + micro_batch] for i in range(0, len(flat), micro_batch)]


# ----------------------------------------------------------------------------- streaming-to-group (probe)

ZERO_VARIANCE = 1e-6
"""An estimated reward variance at or below this (a reward std of 0.001) counts as 0: such a
prompt's rollouts would all score alike, so it gets no second-phase rollouts."""


def whole_batches(num_rollouts: int, granule: int) -> int:
    """`num_rollouts` rounded down to a multiple of `granule` (the sampling micro-batch times
    the number of processes): a phase of that many rollouts leaves no pass half-empty."""
    if granule < 1:
        raise ValueError(f"granule must be >= 1, got {granule}")
    return max(0, int(num_rollouts)) // granule * granule


def probe_sizes(weights_of_chosen: np.ndarray, probe_size: int, m_max: int, cap: int, granule: int) -> np.ndarray:
    """Phase-1 rollouts per chosen prompt (section 3, "Streaming-to-group"). int64 [B]; 0 = dropped.

    Every prompt gets `probe_size`; over the cap R (0 = none) the least uncertain prompts are
    dropped (`fit_to_cap` with fixed groups). Then, where it fits under R and m_max, extra
    probes go one at a time to the most uncertain prompts, cycling, until the total fills
    whole sampling micro-batches (a multiple of `granule`); where it does not fit, it stays.
    """
    if not 1 <= probe_size <= m_max:
        raise ValueError(f"need 1 <= probe_size <= m_max; got {probe_size}, {m_max}")
    w = np.asarray(weights_of_chosen, dtype=np.float64)
    sizes = fit_to_cap(np.full(len(w), probe_size), w, cap, probe_size, probe_size)
    total, kept = int(sizes.sum()), int((sizes > 0).sum())
    target = -(-total // granule) * granule  # the next whole number of micro-batches
    if target > kept * m_max or (cap > 0 and target > cap):
        return sizes
    order = [int(i) for i in _order_most_uncertain_first(w) if sizes[i] > 0]
    turn = 0
    while sizes.sum() < target:  # ends: target <= kept * m_max
        i = order[turn % len(order)]
        if sizes[i] < m_max:
            sizes[i] += 1
        turn += 1
    return sizes


def probe_variances(probe_rewards: Sequence[Sequence[float] | np.ndarray], prior_variances: np.ndarray,
                    prior_count: float) -> np.ndarray:
    """Each prompt's reward variance from its probes, shrunk toward a prior   (section 3). float64 [G].

        var_c = (SS_c + kappa p_c) / (n_c - 1 + kappa)

    SS_c: sum of squared deviations of prompt c's n_c probe rewards from their mean (n_c - 1
    degrees of freedom); p_c: the prior variance; kappa = `prior_count`, its pseudo degrees
    of freedom. This is the posterior mean of a normal variance under a scaled inverse
    chi-squared prior (kappa dof at p_c); kappa = 0 gives the unbiased sample variance.
    """
    p = np.asarray(prior_variances, dtype=np.float64)
    if len(probe_rewards) != len(p):
        raise ValueError(f"{len(probe_rewards)} probe groups for {len(p)} prior variances")
    if prior_count < 0:
        raise ValueError(f"prior_count must be >= 0, got {prior_count}")
    out = np.empty(len(p))
    for c, r in enumerate(probe_rewards):
        r = np.asarray(r, dtype=np.float64)
        dof = len(r) - 1 + prior_count
        if dof <= 0:
            raise ValueError(f"a variance from {len(r)} probe(s) with prior_count {prior_count} is undefined; "
                             "use probe_size >= 2 or a positive prior_count")
        ss = float(((r - r.mean()) ** 2).sum()) if len(r) else 0.0
        out[c] = (ss + prior_count * p[c]) / dof
    return out


def bernoulli_variances(values: np.ndarray) -> np.ndarray:
    """p_c = v_c (1 - v_c): the variance of a Bernoulli(v_c) reward, the largest a [0, 1]
    reward of mean v_c can have. An unseen prompt's v_c is the prior 0.5, so p_c = 0.25. [G]."""
    v = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)
    return v * (1.0 - v)


def allocate_second_phase(start_sizes: np.ndarray, variances: np.ndarray, budget: int, m_max: int) -> np.ndarray:
    """Second-phase rollouts per prompt, greedy on the baseline's variance   (section 3). int64 [G].

    With n_c rollouts, the group mean's variance is var_c / n_c; one more rollout lowers it by
    var_c / n_c - var_c / (n_c + 1) = var_c / (n_c (n_c + 1)). Each of at most `budget`
    rollouts goes to the prompt where that drop is largest (ties: the lower index), never
    above m_max in all, never to a prompt with var_c <= ZERO_VARIANCE. The drops shrink as
    n_c grows, so the greedy result is the integer minimum of sum_c var_c / n_c under these
    bounds (Neyman allocation, n_c ~ sqrt(var_c) where no bound binds). A prompt with a
    larger variance and at least as many probes never ends with fewer rollouts.
    Stops short of `budget` only when every prompt with variance is at m_max.
    """
    n = np.asarray(start_sizes, dtype=np.int64).copy()
    var = np.asarray(variances, dtype=np.float64)
    if n.shape != var.shape:
        raise ValueError(f"start_sizes {n.shape} and variances {var.shape} must match")
    if np.any(n < 1) or np.any(n > m_max):
        raise ValueError(f"start sizes {n.tolist()} must lie in 1..m_max={m_max}")
    extra = np.zeros(len(n), dtype=np.int64)
    heap = [(-var[c] / (n[c] * (n[c] + 1)), c) for c in range(len(n)) if var[c] > ZERO_VARIANCE and n[c] < m_max]
    heapq.heapify(heap)
    for _ in range(max(0, int(budget))):
        if not heap:
            break
        _, c = heapq.heappop(heap)
        extra[c] += 1
        size = n[c] + extra[c]
        if size < m_max:
            heapq.heappush(heap, (-var[c] / (size * (size + 1)), c))
    return extra


# ----------------------------------------------------------------------------- state


class ValueTrackers:
    """Per-prompt discounted Beta trackers (alpha_c, beta_c), keyed by the prompt string."""

    def __init__(self, prior: float = PRIOR):
        self.prior = prior
        self._ab: dict[str, tuple[float, float]] = {}

    def __len__(self) -> int:
        return len(self._ab)

    def seen(self, prompt: str) -> bool:
        return prompt in self._ab

    def alpha_beta(self, prompt: str) -> tuple[float, float]:
        return self._ab.get(prompt, (self.prior, self.prior))

    def value(self, prompt: str) -> float:
        return tracker_value(*self.alpha_beta(prompt))

    def values(self, prompts: Sequence[str]) -> np.ndarray:
        """v_c for each prompt (unseen: the prior's 0.5). float64 [P]."""
        return np.array([self.value(p) for p in prompts], dtype=np.float64)

    def update(self, prompt: str, unit_rewards: Sequence[float] | np.ndarray, rho: float) -> None:
        r = np.asarray(unit_rewards, dtype=np.float64)
        if r.size and (r.min() < 0.0 or r.max() > 1.0):
            raise ValueError(f"tracker rewards must lie in [0, 1]; got [{r.min()}, {r.max()}] for {prompt!r}")
        self._ab[prompt] = tracker_update(*self.alpha_beta(prompt), r, rho)

    def spread(self) -> dict[str, float]:
        """How the seen prompts' values spread (only tracker/num_seen until one is seen)."""
        stats = {"tracker/num_seen": float(len(self._ab))}
        if not self._ab:
            return stats
        ab = np.array(list(self._ab.values()), dtype=np.float64)  # [P, 2]
        v = ab[:, 0] / ab.sum(axis=1)
        stats.update({
            "tracker/value_mean": float(v.mean()), "tracker/value_std": float(v.std()),
            "tracker/value_min": float(v.min()), "tracker/value_max": float(v.max()),
            "tracker/uncertainty_mean": float(np.sqrt(v * (1.0 - v)).mean()),
            "tracker/evidence_mean": float(ab.sum(axis=1).mean()),  # alpha + beta
        })
        return stats

    def state_dict(self) -> dict:
        return {"prior": self.prior, "trackers": {p: [a, b] for p, (a, b) in self._ab.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.prior = float(state["prior"])
        self._ab = {p: (float(a), float(b)) for p, (a, b) in state["trackers"].items()}


@dataclass
class GroupPlan:
    """One iteration's plan: the kept prompts and their group sizes (dropped prompts absent).

    values: tracker values v_c at planning time, i.e. BEFORE this iteration's update:
    the tracker baseline of section 4.
    """

    prompts: list[str]
    group_sizes: list[int]
    first_visit: list[bool]
    values: list[float] = field(default_factory=list)
    num_dropped: int = 0
    probe_sizes: list[int] = field(default_factory=list)
    """allocation "probe": phase-1 rollouts per prompt (group_sizes is phase 1 + phase 2); empty under bins."""
    variances: list[float] = field(default_factory=list)
    """allocation "probe": the shrunk reward variance each prompt's phase 2 was planned from."""

    @property
    def total_rollouts(self) -> int:
        return int(sum(self.group_sizes))

    def group_ids(self) -> np.ndarray:
        """Group index of each rollout, in rollout order. int64 [total_rollouts]."""
        return np.repeat(np.arange(len(self.group_sizes)), self.group_sizes).astype(np.int64)

    def stats(self) -> dict[str, float]:
        sizes = np.asarray(self.group_sizes, dtype=np.float64)
        return {
            "group/num_prompts": float(len(sizes)), "group/num_dropped": float(self.num_dropped),
            "group/total_rollouts": float(sizes.sum()),
            "group/size_mean": float(sizes.mean()) if len(sizes) else 0.0,
            "group/size_min": float(sizes.min()) if len(sizes) else 0.0,
            "group/size_max": float(sizes.max()) if len(sizes) else 0.0,
            "group/first_visit_frac": float(np.mean(self.first_visit)) if len(sizes) else 0.0,
            **self._probe_stats(sizes),
        }

    def _probe_stats(self, sizes: np.ndarray) -> dict[str, float]:
        if not self.probe_sizes or not self.variances:
            return {}
        probes, var = np.asarray(self.probe_sizes, dtype=np.float64), np.asarray(self.variances)
        return {
            "group/probe_rollouts": float(probes.sum()), "group/phase2_rollouts": float((sizes - probes).sum()),
            "group/probe_var_mean": float(var.mean()),
            "group/no_phase2_frac": float(np.mean(sizes == probes)),  # prompts that got nothing more
        }


class GroupSampler:
    """Chooses each iteration's prompts and group sizes; learns the trackers from rewards.

    What it does is the resolved `AlgorithmSpec`'s (algorithms.py): prompts drawn uniformly
    or by uncertainty (`prompt_choice`), groups of G or sized from the uncertainty bins or by
    probes (`dynamic_groups`, `allocation`), never below `min_group`. Every plan obeys
    `rollout_cap` (R, 0 = unlimited), a public attribute the trainer may reset from the
    memory plan; fixed-G plans drop prompts rather than shrink G. With allocation "probe",
    `plan` gives the probes and `second_phase` the rest, once the probes are scored. The
    trackers learn under every spec (with uniform prompts and fixed groups they are only logged).
    """

    def __init__(
        self, spec: AlgorithmSpec, prompt_pool: Sequence[str], *, prompts_per_iter: int, group_size: int,
        m_max: int, m_min: int, num_bins: int, rollout_cap: int, rho: float, adaptive_rho: bool, d_half: float,
        weight_floor: float, seed: int, variance_prior: float = 1.0,
    ):
        pool = list(dict.fromkeys(prompt_pool))  # duplicates would share a tracker anyway
        if len(pool) < prompts_per_iter:
            raise ValueError(f"the prompt pool has {len(pool)} distinct prompts, fewer than "
                             f"prompts_per_iter={prompts_per_iter}; lower it or add prompts")
        self.spec, self.pool = spec, pool
        self.prompts_per_iter, self.group_size = prompts_per_iter, group_size
        self.m_max, self.m_min, self.num_bins = m_max, m_min, num_bins
        self.rollout_cap = rollout_cap
        self.rho, self.adaptive_rho, self.d_half = rho, adaptive_rho, d_half
        self.weight_floor, self.variance_prior = weight_floor, variance_prior
        self.granule = 1
        """Rollouts per sampling micro-batch over all processes: the probe phases fill whole
        multiples of it. A public attribute the trainer sets from its micro-batch."""
        smallest = spec.smallest_group(group_size, m_min)
        if smallest < spec.min_group:
            raise ValueError(f"group size {smallest} < {spec.min_group}: the group-mean baseline and "
                             "adv_std=group need >= 2 rollouts")
        self.trackers = ValueTrackers()
        self.rng = np.random.default_rng(seed)

    @classmethod
    def from_config(cls, cfg: Config, prompt_pool: Sequence[str], rollout_cap: int | None = None) -> GroupSampler:
        """Build from the resolved algorithm, cfg.batch, cfg.superflow and cfg.train.seed.
        `rollout_cap` overrides cfg.batch.rollout_cap (whose 0 means "from the memory plan":
        pass the plan's R)."""
        b, sf = cfg.batch, cfg.superflow
        return cls(
            resolve_algorithm(cfg), prompt_pool, prompts_per_iter=b.prompts_per_iter, group_size=b.group_size,
            m_max=sf.m_max, m_min=sf.m_min, num_bins=sf.num_bins,
            rollout_cap=b.rollout_cap if rollout_cap is None else rollout_cap,
            rho=sf.rho, adaptive_rho=sf.adaptive_rho, d_half=sf.d_half, weight_floor=sf.weight_floor,
            seed=cfg.train.seed, variance_prior=sf.variance_prior,
        )

    def plan(self) -> GroupPlan:
        """Choose this iteration's prompts and group sizes (advances the RNG).

        Under allocation "probe" the sizes are phase 1's (`probe_sizes`, filling whole
        multiples of `granule`); the trainer scores them and asks `second_phase` for the rest.
        """
        b, spec = self.prompts_per_iter, self.spec
        if spec.prompt_choice == "uniform":
            chosen = self.rng.choice(len(self.pool), size=b, replace=False)
            w = np.ones(b)  # no uncertainty order: over the cap, the last drawn are dropped
        else:
            w_pool = uncertainty_weights(self.trackers.values(self.pool), self.weight_floor)
            chosen = choose_prompts(w_pool, b, self.rng)
            w = w_pool[chosen]
        if spec.allocation == "probe":
            sizes = probe_sizes(w, spec.probe_size, self.m_max, self.rollout_cap, self.granule)
        elif spec.dynamic_groups:
            sizes = bin_group_sizes(w, self.m_max, self.m_min, self.num_bins)
            sizes = fit_to_cap(sizes, w, self.rollout_cap, self.m_min, spec.min_group)
        else:
            sizes = fit_to_cap(np.full(b, self.group_size), w, self.rollout_cap, self.group_size, self.group_size)
        if not sizes.any():
            # __init__ refused a smallest group below spec.min_group, so this is the floor.
            raise ValueError(f"rollout_cap={self.rollout_cap} is below the smallest allowed group "
                             f"({spec.smallest_group(self.group_size, self.m_min)})")
        keep = [int(i) for i, s in zip(chosen, sizes) if s > 0]
        prompts = [self.pool[i] for i in keep]
        return GroupPlan(
            prompts=prompts, group_sizes=[int(s) for s in sizes if s > 0],
            first_visit=[not self.trackers.seen(p) for p in prompts],
            values=self.trackers.values(prompts).tolist(), num_dropped=int((sizes == 0).sum()),
        )

    def second_phase(self, probe_plan: GroupPlan, probe_rewards: list[np.ndarray]) -> GroupPlan:
        """The whole plan after phase 1 (allocation "probe", section 3): group_sizes = probes +
        phase-2 rollouts, probe_sizes and the variances recorded. Does not touch the RNG.

        Variances: `probe_variances` shrunk toward the tracker's v_c (1 - v_c) at planning
        time (unseen: the prior's 0.25) with `variance_prior` pseudo-counts. Budget: what the
        cap R leaves, rounded down to whole micro-batches (`whole_batches`), spent by
        `allocate_second_phase` up to m_max per prompt.
        """
        probes = np.asarray(probe_plan.group_sizes, dtype=np.int64)
        if [len(r) for r in probe_rewards] != probes.tolist():
            raise ValueError(f"probe rewards of sizes {[len(r) for r in probe_rewards]} for probes {probes.tolist()}")
        var = probe_variances(probe_rewards, bernoulli_variances(np.asarray(probe_plan.values)), self.variance_prior)
        room = (self.rollout_cap if self.rollout_cap > 0 else len(probes) * self.m_max) - int(probes.sum())
        extra = allocate_second_phase(probes, var, whole_batches(room, self.granule), self.m_max)
        return dataclasses.replace(probe_plan, group_sizes=(probes + extra).tolist(), probe_sizes=probes.tolist(),
                                   variances=var.tolist())

    def update(self, plan: GroupPlan, unit_rewards_per_group: list[np.ndarray],
               drift: float | None = None) -> dict[str, float]:
        """Tracker update after the policy update (section 3). Returns tracker stats.

        drift: the policy drift D of this iteration; required when adaptive_rho is on.
        """
        if len(unit_rewards_per_group) != len(plan.prompts):
            raise ValueError(f"{len(unit_rewards_per_group)} reward groups for {len(plan.prompts)} planned prompts")
        if self.adaptive_rho:
            if drift is None or not math.isfinite(drift):
                raise ValueError(f"adaptive_rho needs a finite policy drift, got {drift!r}")
            rho = adaptive_rho(drift, self.d_half)
        else:
            rho = self.rho
        for prompt, size, r in zip(plan.prompts, plan.group_sizes, unit_rewards_per_group):
            if len(r) != size:
                raise ValueError(f"{len(r)} rewards for {prompt!r}, planned {size}")
            self.trackers.update(prompt, r, rho)
        return {"tracker/rho": rho, **self.trackers.spread()}

    def state_dict(self) -> dict:
        """JSON-serialisable: trackers and the RNG state, so a resumed run repeats the choices."""
        return {"algorithm": self.spec.name, "trackers": self.trackers.state_dict(),
                "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        if state["algorithm"] != self.spec.name:
            raise ValueError(f"checkpoint was made with algorithm={state['algorithm']!r}, this run uses {self.spec.name!r}")
        self.trackers.load_state_dict(state["trackers"])
        self.rng.bit_generator.state = state["rng"]
