"""KL, densities and the log-likelihood estimate against closed forms."""

import dataclasses
import math

import pytest
import torch

from bench.suites import MODELS
from vae_core.densities import (
    analytic_kl_standard_normal,
    diag_gaussian_log_density,
    iwae_bound,
    standard_normal_log_density,
)
from vae_core.evaluation import distortion_and_rate, elbo_estimate, log_likelihood_estimate
from vae_core.models import LinearGaussianModel, build_model

MEAN = torch.tensor([0.5, -1.2, 0.0, 2.0], dtype=torch.float64)
LOG_VAR = torch.tensor([0.0, -1.0, 0.7, -0.3], dtype=torch.float64)


def test_analytic_kl_equals_closed_form():
    var = LOG_VAR.exp()
    expected = 0.5 * (MEAN**2 + var - 1 - torch.log(var)).sum()
    assert analytic_kl_standard_normal(MEAN, LOG_VAR).item() == pytest.approx(expected.item())


def test_analytic_kl_is_zero_only_at_the_prior():
    zeros = torch.zeros(3)
    assert analytic_kl_standard_normal(zeros, zeros).item() == 0.0
    assert analytic_kl_standard_normal(zeros + 0.1, zeros).item() > 0.0


def test_gaussian_log_density_matches_torch_distributions():
    z = torch.tensor([0.1, 0.2, -0.3, 1.5], dtype=torch.float64)
    reference = torch.distributions.Normal(MEAN, (0.5 * LOG_VAR).exp()).log_prob(z).sum()
    assert diag_gaussian_log_density(z, MEAN, LOG_VAR).item() == pytest.approx(reference.item())


def test_mc_kl_mean_and_variance_match_theory():
    """log q − log p at z = μ + σε equals ½Σ[μ² + 2μσε + (σ²−1)ε² − log σ²], so its mean is the
    analytic KL and its variance Σ[μ²σ² + (σ²−1)²/2]. Checked within 4 standard errors."""
    n = 400_000
    generator = torch.Generator().manual_seed(0)
    eps = torch.randn((n, MEAN.numel()), generator=generator, dtype=torch.float64)
    z = MEAN + (0.5 * LOG_VAR).exp() * eps
    samples = diag_gaussian_log_density(z, MEAN, LOG_VAR) - standard_normal_log_density(z)

    var = LOG_VAR.exp()
    exact_mean = analytic_kl_standard_normal(MEAN, LOG_VAR).item()
    exact_var = (MEAN**2 * var + (var - 1) ** 2 / 2).sum().item()
    sample_mean, sample_var = samples.mean().item(), samples.var().item()
    fourth_moment = (samples - samples.mean()).pow(4).mean().item()

    assert abs(sample_mean - exact_mean) < 4 * math.sqrt(exact_var / n)
    assert abs(sample_var - exact_var) < 4 * math.sqrt((fourth_moment - exact_var**2) / n)


def test_iwae_bound_of_equal_weights_is_their_value():
    log_w = torch.full((7, 3), -2.5)
    assert torch.allclose(iwae_bound(log_w), torch.full((3,), -2.5))


def test_log_likelihood_is_exact_at_the_exact_posterior():
    """With q the exact posterior every importance weight equals p(x): the estimate is log p(x)
    for any k, and x ~ N(μ, 2I) marginally."""
    model = LinearGaussianModel(3, prior_mean=torch.tensor([0.5, -1.0, 0.0]))
    model.set_exact_posterior()
    x = torch.tensor([[1.0, 0.0, -2.0], [0.3, 0.3, 0.3]])
    log_px = torch.distributions.Normal(model.prior_mean, math.sqrt(2.0)).log_prob(x).sum(-1)
    estimate = log_likelihood_estimate(model, x, n_samples=1200, chunk_size=500)
    assert torch.allclose(estimate, log_px.detach(), atol=1e-4)
    assert torch.allclose(model.exact_elbo(x), log_px, atol=1e-5)


def test_log_likelihood_bound_tightens_with_k():
    """E[IWAE_k] increases with k towards log p(x) (Burda et al. 2016, Thm 1)."""
    model = LinearGaussianModel(2)  # q = N(x, I), far from the posterior N(x/2, I/2)
    x = torch.tensor([[1.0, -1.0]])
    generator = torch.Generator().manual_seed(0)
    one = torch.stack([log_likelihood_estimate(model, x, 1, generator) for _ in range(2000)])
    many = torch.stack([log_likelihood_estimate(model, x, 100, generator) for _ in range(200)])
    log_px = torch.distributions.Normal(0.0, math.sqrt(2.0)).log_prob(x).sum()
    assert one.mean() < many.mean() - 4 * many.std() / 200**0.5
    assert many.mean() <= log_px + 4 * many.std() / 200**0.5
    exact_elbo = model.exact_elbo(x).item()
    assert abs(one.mean().item() - exact_elbo) < 4 * one.std().item() / 2000**0.5


def test_elbo_estimate_is_unbiased_for_the_closed_form():
    model = LinearGaussianModel(3)
    x = torch.randn(2000, 3, generator=torch.Generator().manual_seed(1))
    estimate = elbo_estimate(model, x, torch.Generator().manual_seed(2))
    differences = estimate - model.exact_elbo(x).detach()
    assert abs(differences.mean()) < 4 * differences.std() / len(differences) ** 0.5


def test_rate_and_distortion_add_up_to_the_elbo_and_rate_is_the_closed_form_kl():
    model = LinearGaussianModel(3)
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(3))
    distortion, rate = distortion_and_rate(model, x, torch.Generator().manual_seed(4))
    elbo = elbo_estimate(model, x, torch.Generator().manual_seed(4))
    assert torch.allclose(-(distortion + rate), elbo)
    mean, log_var = model.encode(x)
    assert torch.allclose(rate, model.kl_to_prior(mean, log_var))


def test_log_likelihood_rejects_nonpositive_samples():
    with pytest.raises(ValueError, match="n_samples must be >= 1"):
        log_likelihood_estimate(LinearGaussianModel(2), torch.zeros(1, 2), 0)


def test_log_likelihood_chunks_on_cpu_take_the_same_draws():
    """The CPU default of CPU_CHUNK_ROWS rows a chunk (20 samples of 100 digits) reads the same
    noise from the generator as 500 samples a chunk: the estimates agree to float32 rounding of
    the logsumexp over chunks (a different stream would move them by their Monte Carlo error,
    ~1e-3 relative here)."""
    torch.manual_seed(0)
    model = build_model(dataclasses.replace(MODELS["mlp500"], input_dim=784))
    x = torch.bernoulli(torch.full((100, 784), 0.3), generator=torch.Generator().manual_seed(1))
    estimates = [
        log_likelihood_estimate(model, x, 1000, torch.Generator().manual_seed(2), chunk_size=size)
        for size in (None, 500)
    ]
    assert torch.allclose(estimates[0], estimates[1], rtol=1e-6, atol=0)
