"""The clipped objective and its k3 KL estimate, hand-computed away from ratio 1 (ALGORITHM.md 2).

At ratio 1 an inverted ratio, min instead of max, a missing or asymmetric clip all give
the same numbers, so every case here sits inside or outside the clip range on purpose.
"""
from __future__ import annotations

import math

import pytest
import torch

from superflow_lite.policy import clipped_policy_loss

EPS = 0.1  # wide, so the cases are easy to read; the math does not depend on its size

# (advantage, ratio, expected loss, expected d loss / d logp)
# loss = max(-A r, -A clip(r, 1-eps, 1+eps)); where the clipped branch wins the gradient is 0.
CASES = [
    (2.0, 1.05, -2.0 * 1.05, -2.0 * 1.05),   # A > 0, inside: plain -A r
    (2.0, 1.30, -2.0 * 1.10, 0.0),           # A > 0, above 1+eps: clipped, no gradient
    (2.0, 0.70, -2.0 * 0.70, -2.0 * 0.70),   # A > 0, below 1-eps: the pessimistic unclipped branch
    (-2.0, 0.95, 2.0 * 0.95, 2.0 * 0.95),    # A < 0, inside
    (-2.0, 0.70, 2.0 * 0.90, 0.0),           # A < 0, below 1-eps: clipped, no gradient
    (-2.0, 1.30, 2.0 * 1.30, 2.0 * 1.30),    # A < 0, above 1+eps: unclipped, keeps pushing down
]


@pytest.mark.parametrize("adv, ratio, loss_expected, grad_expected", CASES)
def test_clipped_loss_and_gradient_hand_computed(adv, ratio, loss_expected, grad_expected):
    logp_old = torch.tensor([-1.3], dtype=torch.float64)
    logp = (logp_old + math.log(ratio)).requires_grad_(True)
    loss, stats = clipped_policy_loss(logp, logp_old, torch.tensor([adv], dtype=torch.float64), EPS)
    loss.sum().backward()
    assert loss.item() == pytest.approx(loss_expected, rel=1e-12)
    # d(-A r)/d logp = -A r because r = exp(logp - logp_old).
    assert logp.grad.item() == pytest.approx(grad_expected, abs=1e-12)
    assert stats["ratio"].item() == pytest.approx(ratio, rel=1e-12)
    assert stats["clipped"].item() == float(abs(ratio - 1.0) > EPS)


def test_k3_estimate_of_kl_old_new():
    ratios = torch.tensor([0.5, 0.9, 1.0, 1.2, 3.0], dtype=torch.float64)
    _, stats = clipped_policy_loss(torch.log(ratios), torch.zeros(5, dtype=torch.float64), torch.ones(5), EPS)
    expected = [(r - 1.0) - math.log(r) for r in ratios.tolist()]  # Schulman's k3
    assert stats["approx_kl"].tolist() == pytest.approx(expected, rel=1e-12)
    assert expected[2] == 0.0 and min(expected) >= 0.0


def test_loss_is_per_sample_and_batches_do_not_mix():
    logp_old = torch.zeros(3, dtype=torch.float64)
    logp = torch.log(torch.tensor([1.3, 1.05, 0.7], dtype=torch.float64))
    adv = torch.tensor([2.0, 2.0, -2.0], dtype=torch.float64)
    loss, _ = clipped_policy_loss(logp, logp_old, adv, EPS)
    assert loss.tolist() == pytest.approx([-2.2, -2.1, 1.8], rel=1e-12)


class ToyVelocity(torch.nn.Module):
    """v = a * x + pooled mean (+ delta while its adapter is on): enough for CFG, a ratio away
    from 1 and a reference pass that differs from the policy."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(0.3))
        self.delta = torch.nn.Parameter(torch.tensor(0.2))
        self.adapter_on = True

    def disable_adapters(self):
        self.adapter_on = False

    def enable_adapters(self):
        self.adapter_on = True

    def forward(self, hidden_states, timestep, encoder_hidden_states, pooled_projections, return_dict):
        v = self.a * hidden_states + pooled_projections.mean(1)[:, None, None, None]
        return (v + self.delta if self.adapter_on else v,)


def test_step_loss_is_the_clipped_objective_plus_beta_kl_written_out():
    from superflow_lite.embeddings import PromptEmbeds
    from superflow_lite.models import adapters_disabled
    from superflow_lite.policy import LossSettings, step_loss
    from superflow_lite.rollout import Schedule

    gen = torch.Generator().manual_seed(0)
    model = ToyVelocity()
    schedule = Schedule(sigmas=(1.0, 0.8, 0.5, 0.0), timesteps=(1000.0, 800.0, 500.0), sigma_t=(0.0, 0.6, 0.0))
    latents = torch.randn(3, 4, 2, 3, 3, generator=gen)
    logp_old = torch.randn(3, 3, generator=gen) * 0.01 - 2.0
    adv = torch.tensor([[9.0, 1.5], [9.0, -2.0], [9.0, 0.5]])
    cond = PromptEmbeds(torch.zeros(3, 1, 1), torch.tensor([[0.4], [-0.2], [0.1]]))
    uncond = PromptEmbeds(torch.zeros(3, 1, 1), torch.tensor([[0.0], [0.3], [-0.1]]))
    g, beta, clip = 2.5, 0.7, 0.05
    settings = LossSettings(guidance_scale=g, clip_range=clip, kl_beta=beta, detach_uncond=True)
    batch = {"latents": latents, "logp_old": logp_old, "adv": adv, "cond": cond, "uncond": uncond}
    loss, stats = step_loss(model, batch, schedule, 1, 1, settings, lambda: adapters_disabled(model))

    # ALGORITHM.md 1-2, in float64 from the written equations.
    x, x_next = latents[:, 1].double(), latents[:, 2].double()
    s, s_next, sig = 0.8, 0.5, 0.6
    dt = s_next - s

    def velocity(delta):
        v_u = 0.3 * x + uncond.pooled.double().mean(1)[:, None, None, None] + delta
        v_c = 0.3 * x + cond.pooled.double().mean(1)[:, None, None, None] + delta
        return v_u + g * (v_c - v_u)

    def mean(v):
        return x * (1 + sig**2 * dt / (2 * s)) + v * (1 + sig**2 * (1 - s) / (2 * s)) * dt

    mu, mu_ref, std = mean(velocity(0.2)), mean(velocity(0.0)), sig * math.sqrt(-dt)
    logp = (-((x_next - mu) ** 2) / (2 * std**2) - math.log(std) - 0.5 * math.log(2 * math.pi)).flatten(1).mean(1)
    ratio = torch.exp(logp - logp_old[:, 1].double())
    a = adv[:, 1].double()
    l_pg = torch.maximum(-a * ratio, -a * ratio.clamp(1 - clip, 1 + clip)).mean()
    kl = ((mu - mu_ref) ** 2).flatten(1).mean(1).mean() / (2 * sig**2)
    assert (ratio - 1).abs().max() > clip  # the clip is in play
    assert stats["kl"].item() == pytest.approx(kl.item(), rel=1e-5) and kl.item() > 1e-3
    assert stats["ratio"].item() == pytest.approx(ratio.mean().item(), rel=1e-5)
    assert loss.item() == pytest.approx((l_pg + beta * kl).item(), rel=1e-5)
    assert stats["loss"].item() == loss.item() and model.adapter_on  # the adapter is back on
    loss.backward()
    assert model.a.grad is not None and model.delta.grad is not None
