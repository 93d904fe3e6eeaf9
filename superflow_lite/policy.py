"""The clipped policy objective and KL for one stored SDE step (ALGORITHM.md 2).

For rollout i at trained step j with advantage A_ij:
    ratio = exp(logp_theta - logp_old)
    L_pg  = mean_i max(-A_ij * ratio, -A_ij * clip(ratio, 1 - eps, 1 + eps))
    loss  = L_pg + beta * KL(mu_theta || mu_ref)
"""
from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch

from .embeddings import PromptEmbeds
from .rollout import Schedule, predict_velocity
from .sde import gaussian_logp, kl_to_reference, sde_step_mean_std

if TYPE_CHECKING:
    from .algorithms import AlgorithmSpec
    from .config import Config


def clipped_policy_loss(
    logp: torch.Tensor, logp_old: torch.Tensor, adv: torch.Tensor, clip_range: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO-style clipped surrogate, per sample.

    logp, logp_old, adv: [B]. Returns (loss [B], detached stats: ratio, clipped mask).
    """
    ratio = torch.exp(logp - logp_old)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = torch.maximum(unclipped, clipped)
    stats = {
        "ratio": ratio.detach(),
        "clipped": (torch.abs(ratio.detach() - 1.0) > clip_range).float(),
        # Schulman's k3 estimator of KL(old || new): >= 0, low variance.
        "approx_kl": ((ratio - 1.0) - torch.log(ratio)).detach(),
    }
    return loss, stats


@dataclass(frozen=True)
class LossSettings:
    """The settings `step_loss` reads."""

    guidance_scale: float
    """sampling.guidance_scale: the update recomputes the velocity with the sampler's CFG."""
    clip_range: float
    """train.clip_range: eps of the clipped ratio."""
    kl_beta: float
    """train.kl_beta: beta of the KL term; 0 skips the reference pass."""
    detach_uncond: bool
    """The algorithm's train.detach_uncond: no gradient through v_uncond."""

    @classmethod
    def from_config(cls, cfg: Config, spec: AlgorithmSpec) -> LossSettings:
        return cls(guidance_scale=cfg.sampling.guidance_scale, clip_range=cfg.train.clip_range,
                   kl_beta=cfg.train.kl_beta, detach_uncond=spec.detach_uncond)


def step_mean_std(transformer: torch.nn.Module, x: torch.Tensor, schedule: Schedule, step: int, cond: PromptEmbeds,
                  uncond: PromptEmbeds | None, guidance_scale: float,
                  detach_uncond: bool = False) -> tuple[torch.Tensor, float]:
    """mu and std of the SDE step `step` from x under the transformer's CFG velocity (ALGORITHM.md 1)."""
    v = predict_velocity(transformer, x, schedule.timesteps[step], cond, uncond, guidance_scale,
                         detach_uncond=detach_uncond)
    return sde_step_mean_std(x, v, schedule.sigmas[step], schedule.sigmas[step + 1], schedule.sigma_t[step])


def step_loss(transformer: torch.nn.Module, batch: dict, schedule: Schedule, step: int, step_pos: int,
              settings: LossSettings,
              reference_policy: Callable[[], AbstractContextManager]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L = L_pg + beta KL of one trained step for a micro-batch of stored rollouts (ALGORITHM.md 2).

    batch: latents [B, T+1, C, H, W] and logp_old [B, T] as sampling stored them, adv [B, K]
    (column step_pos is this step's), cond and uncond PromptEmbeds [B]. reference_policy():
    a context inside which `transformer` is the reference model (the LoRA disabled).
    Returns (the loss, a scalar, and its detached batch-mean stats: loss, ratio, clipped,
    approx_kl, and kl when beta > 0).
    """
    x, x_next = batch["latents"][:, step], batch["latents"][:, step + 1]
    mu, std = step_mean_std(transformer, x, schedule, step, batch["cond"], batch["uncond"], settings.guidance_scale,
                            detach_uncond=settings.detach_uncond)
    logp = gaussian_logp(x_next, mu, std)
    loss_pg, stats = clipped_policy_loss(logp, batch["logp_old"][:, step], batch["adv"][:, step_pos],
                                         settings.clip_range)
    loss = loss_pg.mean()
    stats = {k: v.mean() for k, v in stats.items()}
    if settings.kl_beta > 0:  # at 0 there is no reference pass, so no KL to report (not a KL of 0)
        with torch.no_grad(), reference_policy():
            mu_ref, _ = step_mean_std(transformer, x, schedule, step, batch["cond"], batch["uncond"],
                                      settings.guidance_scale)
        kl = kl_to_reference(mu, mu_ref, schedule.sigma_t[step]).mean()
        loss = loss + settings.kl_beta * kl
        stats["kl"] = kl
    return loss, {"loss": loss.detach(), **{k: v.detach() for k, v in stats.items()}}
