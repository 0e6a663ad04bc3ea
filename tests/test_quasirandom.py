"""Randomised quasi-Monte Carlo noise (vae_core.quasirandom) and the RQMC estimators.

The scrambled points must be exactly uniform one by one (so the estimators stay unbiased), keep
the Sobol stratification within an example, and be independent across examples and draws. The
estimators pass the same exact z-tests as their Monte Carlo counterparts (quadrature), and their
variance falls faster than 1/K on smooth low-dimensional integrands, measured against the
variance's own standard error.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import pytest
import torch
from torch.func import vmap

from bench.check.ztest import FAMILY_ERROR, threshold_for, z_scores
from tests.test_estimators import assert_unbiased
from vae_core.estimators import REGISTRY, make_estimator
from vae_core.exact import (
    one_latent_vae,
    quadrature_elbo,
    quadrature_iwae_bound,
    quadrature_log_marginal,
    reference_gradient,
    small_batch,
    small_vae,
)
from vae_core.gradients import gradient_draws, variance_statistics
from vae_core.models import LinearGaussianModel
from vae_core.quasirandom import scrambled_sobol_normal, scrambled_sobol_uniform

RQMC = [name for name, cls in REGISTRY.items() if cls.monte_carlo_counterpart is not None]
N_BOUND_DRAWS = 64_000  # iwae_rqmc's bound: sized in its test's docstring
N_VARIANCE_COMPARISONS = 5  # one-sided z-tests of RQMC against Monte Carlo variance, below


@pytest.mark.parametrize("n_points", [2, 8, 64])
def test_the_points_of_an_example_are_stratified(n_points):
    """For K = 2^m, each coordinate of the K points of one example has exactly one point in each
    interval [j/K, (j+1)/K) (a (0, m, 1)-net in every projection survives the scrambling)."""
    u = scrambled_sobol_uniform(n_points, 200, 5, torch.Generator().manual_seed(0))
    cells = (u * n_points).floor().long().sort(dim=0).values
    expected = torch.arange(n_points).view(-1, 1, 1).expand_as(cells)
    assert torch.equal(cells, expected)


@pytest.mark.parametrize("m", [4, 6])
def test_the_points_of_an_example_form_a_two_dimensional_net(m):
    """The first 2^m Sobol points in dimensions 1-2 are a (0, m, 2)-net in base 2: every
    elementary interval [a/2^j, (a+1)/2^j) × [c/2^(m−j), (c+1)/2^(m−j)), j = 0..m, holds exactly
    one point. Lower-triangular scrambling keeps it (digit j of the output depends on digits ≤ j
    of the input only, bijectively; Owen 1998); upper-triangular matrices keep the 1-D
    stratification above but not this (measured: 19% of examples at m = 4, 4% at m = 6)."""
    n_points, n_examples = 2**m, 200
    u = scrambled_sobol_uniform(n_points, n_examples, 2, torch.Generator().manual_seed(4))
    for j in range(m + 1):
        columns = (u[..., 0] * 2**j).floor().long()
        rows = (u[..., 1] * 2 ** (m - j)).floor().long()
        cells = (columns * 2 ** (m - j) + rows).sort(dim=0).values
        expected = torch.arange(n_points).view(-1, 1).expand_as(cells)
        assert torch.equal(cells, expected), f"j = {j}"


def test_every_point_is_uniform_and_examples_are_independent():
    """Each of the K = 5 points is U(0, 1): its first two moments (1/2, 1/3) and P(u < 0.1) pass a
    z-test at their standard errors; and coordinates of different examples are uncorrelated.
    Bonferroni over the 5 × 3 + 1 tests at FAMILY_ERROR."""
    n = 40_000
    u = scrambled_sobol_uniform(5, n, 2, torch.Generator().manual_seed(1))  # (5, n, 2)
    threshold = NormalDist().inv_cdf(1 - FAMILY_ERROR / (2 * 16))
    for point in u:
        values = point[:, 0]
        for statistic, expected in ((values, 0.5), (values**2, 1 / 3), ((values < 0.1), 0.1)):
            statistic = statistic.double()
            z = (statistic.mean() - expected) / (statistic.std() / math.sqrt(n))
            assert abs(z) < threshold
    first, second = u[0, : n // 2, 0] - 0.5, u[0, n // 2 :, 0] - 0.5  # different examples
    products = first * second
    assert abs(products.mean() / (products.std() / math.sqrt(len(products)))) < threshold


def test_normal_noise_has_the_shape_dtype_and_moments_of_randn():
    eps = scrambled_sobol_normal(4, 3, 2, torch.Generator().manual_seed(2), dtype=torch.float64)
    assert eps.shape == (4, 3, 2) and eps.dtype == torch.float64
    many = scrambled_sobol_normal(4, 50_000, 1, torch.Generator().manual_seed(3)).double()
    threshold = NormalDist().inv_cdf(1 - FAMILY_ERROR / 4)
    n = many[0].numel()
    for statistic, expected in ((many[0], 0.0), (many[0] ** 2, 1.0)):
        assert abs((statistic.mean() - expected) / (statistic.std() / math.sqrt(n))) < threshold


def test_rqmc_estimators_name_their_monte_carlo_counterparts():
    assert RQMC == ["reparam_rqmc", "iwae_rqmc"]
    for name in RQMC:
        cls, counterpart = REGISTRY[name], REGISTRY[REGISTRY[name].monte_carlo_counterpart]
        assert cls.objective == counterpart.objective and cls.forward is counterpart.forward
        assert cls.sweeps_particles and not cls.is_biased(1)
    assert not REGISTRY["reparam_rqmc"].is_biased(5) and REGISTRY["iwae_rqmc"].is_biased(5)


@pytest.mark.parametrize("kl", ["analytic", "mc"])
def test_reparam_rqmc_is_unbiased_for_the_elbo(kl):
    model, x = small_vae(), small_batch()
    reference = reference_gradient(model, lambda: quadrature_elbo(model, x))
    assert_unbiased(make_estimator("reparam_rqmc", model, kl, 4), x, reference, seed=21)
    linear = LinearGaussianModel(3, prior_mean=torch.tensor([0.5, -1.0, 0.2])).double()
    x = torch.tensor([[1.0, 0.0, -2.0], [0.3, 0.3, 0.3]], dtype=torch.float64)
    reference = reference_gradient(linear, lambda: linear.exact_elbo(x).mean())
    assert_unbiased(make_estimator("reparam_rqmc", linear, kl, 4), x, reference, seed=22)


def test_iwae_rqmc_is_biased_for_the_iwae_bound_and_tightens_it():
    """With stratified samples E[log (1/K) Σ_k w_k] is not L_K: at K = 3 on the one-latent VAE the
    z-test against ∇L_K (quadrature) detects iwae_rqmc's bias, while iwae on the same test passes
    (test_multisample); and the bound it climbs, the mean of its `elbo` output, lies above L_K
    (each w_k is unbiased for p(x), so it is still ≤ log p(x)), by more than z standard errors.
    Measured: encoder max |z| ≈ 11 (threshold ≈ 4.3); bound − L_K ≈ +0.03 nats. The draws: at
    R = 4,000 the bound's z over seeds 24-31 was 3.79, 3.07, 4.05, 4.17, 3.00, 2.36, 4.15, 0.43
    (mean 3.1 against a threshold of 3.09; 6.2 at 16,000). z grows as √R, so N_BOUND_DRAWS =
    64,000 puts its mean near 12.5, 9 of its unit standard deviations above the threshold."""
    model, x = one_latent_vae(), small_batch()
    reference = reference_gradient(model, lambda: quadrature_iwae_bound(model, x, 3))
    estimator = make_estimator("iwae_rqmc", model, "mc", 3)
    z = z_scores(estimator, x, reference, seed=23)
    assert z["encoder"] > threshold_for(reference), z
    generator = torch.Generator().manual_seed(24)
    # One call scrambles every (draw, example) independently: (K, R·M, 1) → (R, K, M, 1).
    noise = estimator.sample_noise(N_BOUND_DRAWS * len(x), generator)
    noise = noise.view(3, N_BOUND_DRAWS, len(x), -1).transpose(0, 1)
    with torch.no_grad():
        bounds = vmap(lambda eps: estimator(x, eps).elbo.mean())(noise)
        exact = quadrature_iwae_bound(model, x, 3)
        log_marginal = quadrature_log_marginal(model, x)
    standard_error = bounds.std() / math.sqrt(len(bounds))
    threshold = NormalDist().inv_cdf(1 - FAMILY_ERROR)
    assert bounds.mean() - exact > threshold * standard_error
    assert bounds.mean() < log_marginal


def encoder_variance(
    name: str, k: int, seed: int, model_builder=one_latent_vae
) -> tuple[float, float]:
    """tr Cov of 4,000 encoder-gradient draws (one-latent VAE by default) and its jackknife SE."""
    model, x = model_builder(), small_batch()
    estimator = make_estimator(name, model, "mc", k)
    draws = gradient_draws(estimator, x, 4000, torch.Generator().manual_seed(seed))["encoder"]
    stats = variance_statistics(draws)
    return stats["grad_var"], stats["grad_var_se"]


def test_reparam_rqmc_variance_falls_faster_than_one_over_k():
    """The ELBO's objective does not change with K, so Monte Carlo's variance is var₁/K and RQMC's
    must fall below it. At K = 16 reparam_rqmc's encoder variance is below var₁/16 of reparam at
    K = 1, and below reparam's at K = 16, each by more than z standard errors of the difference
    (independent draws; one-sided, Bonferroni over the N_VARIANCE_COMPARISONS comparisons of
    this file at FAMILY_ERROR).
    Measured: K·var ÷ var₁ = 0.059 for RQMC against 0.99 for Monte Carlo."""
    threshold = NormalDist().inv_cdf(1 - FAMILY_ERROR / N_VARIANCE_COMPARISONS)
    rqmc, rqmc_se = encoder_variance("reparam_rqmc", 16, seed=31)
    single, single_se = encoder_variance("reparam", 1, seed=32)
    plain, plain_se = encoder_variance("reparam", 16, seed=33)
    assert single / 16 - rqmc > threshold * math.hypot(single_se / 16, rqmc_se)
    assert plain - rqmc > threshold * math.hypot(plain_se, rqmc_se)


def test_reparam_rqmc_variance_falls_faster_than_one_over_k_in_two_dimensions():
    """As above with two latents (the VAE of test_estimators), where the points must be
    stratified jointly, not coordinate by coordinate: at K = 16 below var₁/16 and below reparam
    at K = 16. Measured (seeds 41-45): K·var ÷ var₁ ≈ 0.075-0.078, z ≈ 48-56 and 71-74 against a
    threshold ≈ 3.5. (Upper-triangular scrambling, which breaks the 2-D net, doubles the
    variance to ≈ 0.0237 from 0.0129 and still passes: `..._form_a_two_dimensional_net` catches
    it.)"""
    threshold = NormalDist().inv_cdf(1 - FAMILY_ERROR / N_VARIANCE_COMPARISONS)
    rqmc, rqmc_se = encoder_variance("reparam_rqmc", 16, seed=41, model_builder=small_vae)
    single, single_se = encoder_variance("reparam", 1, seed=42, model_builder=small_vae)
    plain, plain_se = encoder_variance("reparam", 16, seed=43, model_builder=small_vae)
    assert single / 16 - rqmc > threshold * math.hypot(single_se / 16, rqmc_se)
    assert plain - rqmc > threshold * math.hypot(plain_se, rqmc_se)


def test_iwae_rqmc_variance_is_below_iwae_at_equal_k():
    """L_K changes with K, and the IWAE encoder gradient's variance does not fall as 1/K even with
    Monte Carlo (Rainforth et al. 2018), so RQMC is compared at equal K: at K = 16 iwae_rqmc's
    encoder variance is below iwae's by more than z standard errors of the difference (as above).
    Measured: 0.147 against 0.242 (0.60×); 0.61× at K = 4. (RQMC in dreg gained nothing
    measurable here: 0.97× at K = 16, 0.92× at K = 4, within 1.1 standard errors.)"""
    threshold = NormalDist().inv_cdf(1 - FAMILY_ERROR / N_VARIANCE_COMPARISONS)
    rqmc, rqmc_se = encoder_variance("iwae_rqmc", 16, seed=31)
    plain, plain_se = encoder_variance("iwae", 16, seed=33)
    assert plain - rqmc > threshold * math.hypot(plain_se, rqmc_se)
