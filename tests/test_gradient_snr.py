"""The batch-size reading of benchmarks/gradient_snr.py: cosines of merged batches from the
Gram matrix, against what independent noise predicts."""
from __future__ import annotations

import numpy as np
import pytest

from benchmark_scripts import load_benchmark


@pytest.fixture(scope="module")
def snr():
    return load_benchmark("gradient_snr")


def noisy_gradients(batches: int, dim: int = 20_000, noise_sq: float = 9.0, seed: int = 0) -> np.ndarray:
    """g + n_k with |g|^2 = 1 and E|n_k|^2 = noise_sq: one batch's signal share is 1/(1+noise_sq)."""
    rng = np.random.default_rng(seed)
    g = rng.normal(size=dim)
    g /= np.linalg.norm(g)
    return g + rng.normal(scale=np.sqrt(noise_sq / dim), size=(batches, dim))


def test_one_batch_blocks_are_the_plain_pairwise_cosines(snr):
    grads = noisy_gradients(6, dim=500)
    unit = grads / np.linalg.norm(grads, axis=1, keepdims=True)
    pairwise = (unit @ unit.T)[np.triu_indices(6, 1)].mean()
    assert snr.merged_cosine(grads @ grads.T, 1) == pytest.approx(pairwise)


@pytest.mark.parametrize("m", [4, 16])
def test_merging_m_batches_divides_the_noise_by_m(snr, m):
    gram = (lambda v: v @ v.T)(noisy_gradients(256))
    expected = 1.0 / (1.0 + 9.0 / m)  # 0.31 for 4 batches, 0.64 for 16; one batch 0.1
    assert snr.merged_cosine(gram, m) == pytest.approx(expected, abs=0.04)
    assert snr.predicted_share(gram, m) == pytest.approx(expected, abs=0.03)


def test_jackknife_error_shrinks_with_more_batches(snr):
    few, many = (snr.jackknife(lambda gr: snr.predicted_share(gr, 4), (lambda v: v @ v.T)(noisy_gradients(k)))
                 for k in (16, 128))
    assert 0 < many[1] < few[1]
