"""The flow SDE step with its log-probability, and the ODE step (ALGORITHM.md section 1).

Pure tensor functions. Everything is computed in float32: in bf16 the drift term
sigma_t^2 * dt / (2 s) overflows near s = 1 and the per-dimension log-density loses the
few significant digits the clipped ratio (eps = 1e-4) depends on.

Notation (Flow-GRPO): s = sigma of the current step, s' = sigma of the next, dt = s' - s < 0,
v = velocity predicted by the transformer (after CFG), a = noise level.
"""
from __future__ import annotations

import math

import torch

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def sde_sigma_t(sigma: torch.Tensor, sigma_1: float, noise_level: float) -> torch.Tensor:
    """sigma_t = a * sqrt(s / (1 - s_hat)), with s_hat = s_1 at s == 1 (else division by 0).

    sigma: [...] current sigmas s; sigma_1: the schedule's second sigma (its first below 1).
    """
    sigma = sigma.float()
    s_hat = torch.where(sigma >= 1.0, torch.full_like(sigma, sigma_1), sigma)
    return noise_level * torch.sqrt(sigma / (1.0 - s_hat))


def sde_step_mean_std(
    x: torch.Tensor,
    velocity: torch.Tensor,
    sigma: float,
    sigma_next: float,
    sigma_t: float,
) -> tuple[torch.Tensor, float]:
    """Mean and std of x_next under the reverse-time SDE (Eq. of ALGORITHM.md 1).

        mu  = x (1 + sigma_t^2 dt / (2 s)) + v (1 + sigma_t^2 (1 - s) / (2 s)) dt
        std = sigma_t sqrt(-dt)

    x, velocity: [B, C, H, W] (upcast to float32 here). Returns (mu [B, C, H, W], std).
    With sigma_t = 0 this is the Euler ODE step x + v dt.
    """
    x, velocity = x.float(), velocity.float()
    dt = sigma_next - sigma
    var_over_2s = sigma_t**2 / (2.0 * sigma)
    mu = x * (1.0 + var_over_2s * dt) + velocity * (1.0 + var_over_2s * (1.0 - sigma)) * dt
    std = sigma_t * math.sqrt(-dt)
    return mu, std


def gaussian_logp(x_next: torch.Tensor, mu: torch.Tensor, std: float) -> torch.Tensor:
    """Mean over latent dimensions of log N(x_next; mu, std^2 I). Returns [B].

    A mean (not a sum) keeps ratios near 1 so the clip range is O(1e-4) (Flow-GRPO's scale).
    """
    x_next, mu = x_next.float(), mu.float()
    log_density = -((x_next - mu) ** 2) / (2.0 * std**2) - math.log(std) - _LOG_SQRT_2PI
    return log_density.flatten(1).mean(dim=1)


def sde_step(
    x: torch.Tensor,
    velocity: torch.Tensor,
    sigma: float,
    sigma_next: float,
    sigma_t: float,
    x_next: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    eps: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One SDE step. Sampling draws x_next (from `eps` when given, else from `generator`);
    training passes the stored x_next.

    Returns (x_next [B, C, H, W] float32, logp [B], mu [B, C, H, W]).
    Requires sigma_t > 0 (a zero-noise step has no density: use ode_step).
    """
    mu, std = sde_step_mean_std(x, velocity, sigma, sigma_next, sigma_t)
    if x_next is None:
        if eps is None:
            eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=torch.float32)
        x_next = mu + std * eps.to(mu.device, torch.float32)
    return x_next.float(), gaussian_logp(x_next, mu, std), mu


def ode_step(x: torch.Tensor, velocity: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    """Euler step of the probability-flow ODE: x' = x + v dt (what diffusers' scheduler does)."""
    return x.float() + velocity.float() * (sigma_next - sigma)


def kl_to_reference(mu: torch.Tensor, mu_ref: torch.Tensor, sigma_t: float) -> torch.Tensor:
    """KL between the policy's and the reference's Gaussian steps (same std):
    ||mu - mu_ref||^2 / (2 sigma_t^2), averaged over dimensions. Returns [B].

    Scaled by sigma_t^2 (not the step variance sigma_t^2 |dt|) so beta means the same
    thing whatever the number of steps.
    """
    return ((mu.float() - mu_ref.float()) ** 2).flatten(1).mean(dim=1) / (2.0 * sigma_t**2)
