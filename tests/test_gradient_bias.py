"""The bias measurement of vae_core.gradients: chunked moments equal one-pass moments, and the
debiased ‖E ĝ − ∇L‖² estimate and its standard error behave as derived, on Gaussian draws with a
known bias; and the SNR ignores rounding-level spread."""

from __future__ import annotations

import math

import pytest
import torch

from tests.test_estimators import small_batch, small_vae
from vae_core.estimators import make_estimator
from vae_core.gradients import (
    bias_statistics,
    gradient_draws,
    gradient_moments,
    variance_statistics,
)

N_DIMS = 400


def gaussian_draws(n: int, mean: torch.Tensor, std: torch.Tensor, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return mean + std * torch.randn((n, len(mean)), generator=generator, dtype=torch.float64)


@pytest.mark.parametrize(("n_draws", "chunk_draws"), [(250, 100), (5, 2)])
def test_chunked_moments_equal_one_pass_moments(n_draws, chunk_draws):
    """Same generator, same noise: draws in chunks (84 + 83 + 83; 3 + 2) combine to the
    one-pass mean and per-coordinate variance."""
    estimator = make_estimator("score_loo", small_vae(), "mc", 2)
    x = small_batch()
    generator = torch.Generator().manual_seed(0)
    draws = gradient_draws(estimator, x, n_draws, generator, "loop")
    generator = torch.Generator().manual_seed(0)
    moments = gradient_moments(estimator, x, n_draws, generator, "loop", chunk_draws)
    for group, (mean, var) in moments.items():
        assert torch.allclose(mean, draws[group].double().mean(0), rtol=1e-9, atol=1e-12)
        assert torch.allclose(var, draws[group].double().var(0), rtol=1e-9, atol=1e-12)


def bias_estimates(true_bias: float, repeats: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    """Repeated grad_bias and grad_bias_se: R = 100 draws with per-coordinate bias b against
    R' = 1000 unbiased reference draws, both with unit-ish, unequal variances."""
    std = torch.linspace(0.5, 2.0, N_DIMS, dtype=torch.float64)
    truth = torch.zeros(N_DIMS, dtype=torch.float64)
    estimates, errors = [], []
    for seed in range(repeats):
        draws = gaussian_draws(100, truth + true_bias, std, 2 * seed)
        reference = gaussian_draws(1000, truth, 2 * std, 2 * seed + 1)
        stats = bias_statistics(draws, reference.mean(0), reference.var(0), len(reference))
        assert math.isclose(stats["grad_mse"], draws.var(0).sum().item() + stats["grad_bias"])
        estimates.append(stats["grad_bias"])
        errors.append(stats["grad_bias_se"])
    return torch.tensor(estimates), torch.tensor(errors)


def test_bias_estimate_is_unbiased_and_its_standard_error_matches_the_spread():
    """E[grad_bias] = ‖b‖² (z-test on the mean of 200 repeats, 4 standard errors), and the reported
    standard error matches the spread of the estimates: the sample std of 200 values is within
    4 × 1/√(2·199) ≈ 20 % of the truth, plus the small spread of the plug-in SE itself."""
    for true_bias in (0.0, 0.1):
        estimates, errors = bias_estimates(true_bias)
        expected = N_DIMS * true_bias**2
        spread = estimates.std().item()
        assert abs(estimates.mean().item() - expected) < 4 * spread / math.sqrt(len(estimates))
        assert abs(errors.mean().item() / spread - 1) < 4 / math.sqrt(2 * (len(estimates) - 1))


def test_a_real_bias_is_many_standard_errors_from_zero():
    estimates, errors = bias_estimates(0.2, repeats=5)  # ‖b‖² = 16
    assert (estimates / errors > 5).all()


def test_snr_leaves_out_coordinates_that_vary_only_by_rounding():
    """SNR per coordinate is |mean| / std (Rainforth et al. 2018). A coordinate constant but for
    float32 rounding (relative spread ~1e-7) has no Monte Carlo noise and is left out, as an exactly
    constant one is; one with a 1e-3 relative spread counts, with SNR ≈ 1000."""
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn((100, 3), generator=generator)
    draws = torch.ones(100, 3) + noise * torch.tensor([0.0, 1e-7, 1e-3])
    stats = variance_statistics(draws.float())
    spread = draws[:, 2].std().item()
    assert math.isclose(stats["snr"], draws[:, 2].mean().item() / spread, rel_tol=1e-4)
    assert 500 < stats["snr"] < 2000
