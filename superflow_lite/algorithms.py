"""What each algorithm means, decided once (ALGORITHM.md section 6).

`algorithm: flow_grpo` is Flow-GRPO as its authors run it: B prompts drawn uniformly, a
fixed group of G rollouts each, the group-mean baseline, one advantage for every step of
a trajectory. Whatever `superflow.*` says, a flow_grpo run uses exactly that. Flow-GRPO's
own two switches stay switches, with its defaults: `train.adv_std` (global: the std of
the batch's raw rewards, plus `train.adv_eps` = 1e-4; group: the prompt's group's std)
and `train.detach_uncond` (the unconditional CFG branch detached in the policy update).

`algorithm: superflow` reads its switches from the config (`superflow.*`, and the
advantage scaling and CFG detach in `train.*`, which both algorithms share). What one
iteration samples (`batch.*`: B prompts, G per fixed group, the cap R) is not a switch:
both algorithms read it.

The trainer, the group sampler, the memory plan and the config validation read the
resolved `AlgorithmSpec` and nothing else, so a flow_grpo run cannot pick up a
SuperFlow switch by accident; docs/ALGORITHM.md's table of the two is
`config_docs.spec_table()`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from .config import Config

AdvStd = Literal["global", "group", "residual"]
# The names people know them by, for the app's selector and the model card.
ALGORITHM_NAMES = {"superflow": "SuperFlow GRPO", "flow_grpo": "Flow-GRPO"}


@dataclass(frozen=True)
class AlgorithmSpec:
    """The resolved choices of one run's algorithm."""

    name: Literal["superflow", "flow_grpo"]
    prompt_choice: Literal["uniform", "uncertainty"]
    """uniform: B prompts without replacement, over the cap the last drawn dropped; uncertainty:
    drawn by w_c = sqrt(v(1-v)) + floor, over the cap the least uncertain dropped (section 3)."""
    dynamic_groups: bool
    """Group sizes from the uncertainty bins (section 3); False: every group has G rollouts."""
    baseline: Literal["tracker", "group_mean"]
    adv_std: AdvStd
    """What the residual r - b is divided by (section 4): the std of the batch's raw rewards
    (global), of the prompt's group (group), or of the residuals after centring (residual)."""
    adv_eps: float
    """Added to that std: 1e-4 (Flow-GRPO) keeps a near-constant batch near zero advantage."""
    step_weights: Literal["sigma", "sigma_sqrt_dt", "none"]
    detach_uncond: bool
    """Detach v_uncond in the policy update's CFG (Flow-GRPO); False differentiates both branches."""
    allocation: Literal["bins", "probe"] = "bins"
    """How dynamic groups are sized (section 3): tracker bins, or streaming-to-group (probe the
    chosen prompts, then spend the rest of R where the probes' variance is highest)."""
    probe_size: int = 0
    """Rollouts per prompt in the probe phase; 0 unless allocation is probe."""
    step_credit: Literal["none", "x0_value"] = "none"
    """Per-step credit from the value of the model's one-step x0 prediction (section 4), mixed
    into the trajectory advantage; none = the trajectory advantage alone."""

    @property
    def min_group(self) -> int:
        """The smallest group the baseline and the scaling can use: the group mean of one
        rollout is its own reward, and a one-rollout group's std is zero."""
        needs_pairs = self.baseline == "group_mean" or self.adv_std == "group"
        return 2 if needs_pairs else 1

    def smallest_group(self, group_size: int, m_min: int) -> int:
        """The smallest group this spec will ever sample, before the cap shrinks anything."""
        if not self.dynamic_groups:
            return group_size
        return self.probe_size if self.allocation == "probe" else m_min

    def group_bounds(self, group_size: int, m_max: int, m_min: int) -> tuple[int, int]:
        """(largest, smallest) rollouts per prompt: what the memory plan and the cap check size."""
        return (m_max, self.smallest_group(group_size, m_min)) if self.dynamic_groups else (group_size, group_size)


def algorithm_problems(cfg: "Config") -> list[str]:
    """What the run's algorithm needs of the config and does not get: config validation's
    algorithm checks, each message saying what to change."""
    b, sf = cfg.batch, cfg.superflow
    spec = resolve_algorithm(cfg)
    smallest = spec.smallest_group(b.group_size, sf.m_min)
    if smallest < spec.min_group:
        return [f"group size {smallest} < 2: the group-mean baseline and train.adv_std=group need >= 2 rollouts per prompt"]
    problems = []
    if spec.name == "superflow" and sf.allocation == "probe":
        if not sf.dynamic_groups:
            problems.append("superflow.allocation=probe sizes the groups itself: it needs superflow.dynamic_groups=true")
        elif not spec.min_group <= sf.probe_size <= sf.m_max:
            problems.append(f"superflow.probe_size must be in {spec.min_group}..superflow.m_max ({sf.m_max}), "
                            f"got {sf.probe_size}")
        elif sf.variance_prior < 0:
            problems.append(f"superflow.variance_prior must be >= 0, got {sf.variance_prior}")
        elif sf.probe_size - 1 + sf.variance_prior <= 0:
            problems.append("superflow.probe_size=1 with superflow.variance_prior=0 gives no variance: raise either")
    # Flow-GRPO samples B x G every iteration: a cap set below that would silently drop prompts.
    if spec.name == "flow_grpo" and b.rollout_cap and b.prompts_per_iter * b.group_size > b.rollout_cap:
        problems.append(f"flow_grpo needs batch.prompts_per_iter*batch.group_size = {b.prompts_per_iter * b.group_size} "
                        f"rollouts, above batch.rollout_cap={b.rollout_cap}")
    return problems


def resolve_algorithm(cfg: "Config") -> AlgorithmSpec:
    """The one place where `cfg.algorithm` turns into concrete switches."""
    sf, t = cfg.superflow, cfg.train
    if cfg.algorithm == "flow_grpo":
        # Flow-GRPO's own switches (its global_std, the CFG detach) stay switches; the
        # SuperFlow additions (tracker baseline, step weights, dynamic groups, probe
        # allocation, x0-value step credit) are off.
        return AlgorithmSpec(
            name="flow_grpo", prompt_choice="uniform", dynamic_groups=False, baseline="group_mean",
            adv_std=t.adv_std, adv_eps=t.adv_eps, step_weights="none", detach_uncond=t.detach_uncond,
        )
    return AlgorithmSpec(
        name="superflow", prompt_choice="uncertainty", dynamic_groups=sf.dynamic_groups,
        baseline=sf.baseline, adv_std=t.adv_std, adv_eps=t.adv_eps, step_weights=sf.step_weights,
        detach_uncond=t.detach_uncond, allocation=sf.allocation if sf.dynamic_groups else "bins",
        probe_size=sf.probe_size if sf.dynamic_groups and sf.allocation == "probe" else 0,
        step_credit=sf.step_credit,
    )
