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
