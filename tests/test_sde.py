"""The flow SDE step (ALGORITHM.md 1): log-density, ODE limit, and marginal preservation."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from superflow_lite.embeddings import PromptEncoder
from superflow_lite.rollout import make_schedule, sample_trajectories
from superflow_lite.sde import ode_step, sde_sigma_t, sde_step, sde_step_mean_std


def test_logp_equals_float64_gaussian_density():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 5, 5, generator=g)
    v = torch.randn(3, 4, 5, 5, generator=g)
    sigma, sigma_next = 0.79, 0.70
    sigma_t = float(sde_sigma_t(torch.tensor([sigma]), 0.96, 0.7))
    x_next, logp, mu = sde_step(x, v, sigma, sigma_next, sigma_t, generator=g)
    std = sigma_t * math.sqrt(sigma - sigma_next)
    reference = torch.distributions.Normal(mu.double(), torch.tensor(std, dtype=torch.float64))
    expected = reference.log_prob(x_next.double()).flatten(1).mean(1)
    torch.testing.assert_close(logp.double(), expected, rtol=0, atol=1e-5)


def test_sigma_t_uses_second_sigma_at_one():
    sigma_t = sde_sigma_t(torch.tensor([1.0, 0.5]), 0.96, 0.7)
    assert sigma_t[0] == pytest.approx(0.7 * math.sqrt(1.0 / 0.04), rel=1e-6)
    assert sigma_t[1] == pytest.approx(0.7, rel=1e-6)


def test_zero_noise_is_the_euler_ode_step():
    x, v = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    mu, std = sde_step_mean_std(x, v, 0.8, 0.6, sigma_t=0.0)
    assert std == 0.0
    torch.testing.assert_close(mu, ode_step(x, v, 0.8, 0.6))


def test_noise_level_zero_reproduces_the_diffusers_pipeline(tiny_pipe):
    prompts = ["a photo of a red circle", "a blue square to the left of a green triangle"]
    side = 64 // tiny_pipe.vae_scale_factor
    noise = torch.randn(2, 16, side, side, generator=torch.Generator().manual_seed(3))
    expected = tiny_pipe(
        prompt=prompts, latents=noise.clone(), num_inference_steps=6, guidance_scale=4.5,
        height=64, width=64, output_type="latent", max_sequence_length=16,
    ).images
    encoder = PromptEncoder(tiny_pipe, torch.device("cpu"), max_sequence_length=16)
    cond = encoder.encode(prompts)
    uncond = encoder.encode(["", ""])
    schedule = make_schedule(tiny_pipe.scheduler, 6, noise_level=0.0)
    traj = sample_trajectories(tiny_pipe.transformer, noise, schedule, cond, uncond, 4.5)
    # float32 reordering noise through 6 CFG steps is ~5e-5; a wrong sigma or guidance
    # formula moves latents by ~1e-2 or more.
    torch.testing.assert_close(traj.latents[:, -1], expected, rtol=1e-4, atol=2e-4)
    assert torch.all(traj.logp == 0)


# --------------------------------------------------------------------------------------
# An analytic flow: data = a 1-D Gaussian mixture, x_s = (1 - s) x0 + s eps (s = 1: noise).
MIX_W, MIX_M, MIX_C = np.array([0.3, 0.7]), np.array([-2.0, 2.0]), np.array([0.5, 0.5])


def mixture_velocity(x: torch.Tensor, s: float) -> torch.Tensor:
    """E[eps - x0 | x_s = x], the exact marginal velocity of the mixture (Gaussian conditioning)."""
    x = x.double()
    a, var_eps = 1.0 - s, s * s
    means = torch.tensor(a * MIX_M)
    variances = torch.tensor(a * a * MIX_C**2 + var_eps)
    log_resp = torch.log(torch.tensor(MIX_W)) - 0.5 * torch.log(variances) - 0.5 * (x[:, None] - means) ** 2 / variances
    resp = torch.softmax(log_resp, dim=1)
    # Per component: E[x0|x] = m + a c^2 (x - a m)/var,  E[eps|x] = s (x - a m)/var
    resid = (x[:, None] - means) / variances
    e_x0 = torch.tensor(MIX_M) + a * torch.tensor(MIX_C**2) * resid
    e_eps = s * resid
    return (resp * (e_eps - e_x0)).sum(1).float()


def run_analytic_flow(noise_level: float, drift_correction: bool, n: int = 20000, steps: int = 100) -> np.ndarray:
    g = torch.Generator().manual_seed(0)
    sigmas = torch.linspace(1.0, 0.0, steps + 1).tolist()
    x = torch.randn(n, generator=g)
    for i in range(steps):
        s, s_next = sigmas[i], sigmas[i + 1]
        v = mixture_velocity(x, s)
        sigma_t = float(sde_sigma_t(torch.tensor([s]), sigmas[1], noise_level)) if noise_level else 0.0
        if noise_level == 0 or s_next == 0.0:
            x = ode_step(x, v, s, s_next)
            continue
        if drift_correction:
            mu, std = sde_step_mean_std(x[:, None], v[:, None], s, s_next, sigma_t)
            mu = mu[:, 0]
        else:  # the plain Euler drift with noise added: no score correction
            mu, std = ode_step(x, v, s, s_next), sigma_t * math.sqrt(s - s_next)
        x = mu + std * torch.randn(n, generator=g)
    return x.numpy()


def mixture_summary(samples: np.ndarray) -> np.ndarray:
    right = samples > 0
    return np.array([right.mean(), samples[right].std(), samples[~right].std()])


def test_sde_and_ode_samples_share_their_distribution():
    ode = mixture_summary(run_analytic_flow(0.0, True))
    sde = mixture_summary(run_analytic_flow(0.7, True))
    truth = np.array([0.7, 0.5, 0.5])
    tol = np.array([0.02, 0.05, 0.05])
    assert np.all(np.abs(ode - truth) < tol), ode
    assert np.all(np.abs(sde - ode) < tol), (sde, ode)
    # The same tolerance rejects an SDE whose drift lacks the score correction.
    wrong = mixture_summary(run_analytic_flow(0.7, False))
    assert np.any(np.abs(wrong - ode) > tol), wrong
