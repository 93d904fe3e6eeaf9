"""The clipped policy objective and KL for one stored SDE step (ALGORITHM.md 2).

For rollout i at trained step j with advantage A_ij:
    ratio = exp(logp_theta - logp_old)
    L_pg  = mean_i max(-A_ij * ratio, -A_ij * clip(ratio, 1 - eps, 1 + eps))
    loss  = L_pg + beta * KL(mu_theta || mu_ref)
"""
from __future__ import annotations

import torch


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
