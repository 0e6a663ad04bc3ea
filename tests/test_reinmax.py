"""ReinMax on Bernoulli latents (vae_core.estimators.reinmax) against the paper's categorical
algorithm, exact gradients by enumeration, and exact means by quadrature."""

from __future__ import annotations

import pytest
import torch

from bench.check.ztest import threshold_for, z_scores
from tests.test_discrete import (
    TOY_TARGET,
    SquaredDistanceToy,
    toy_exact_gradient,
    toy_gradients_at,
    toy_quadrature,
)
from vae_core.estimators import REGISTRY, EstimatorError, make_estimator
from vae_core.estimators.reinmax import TEMPERATURE, reinmax_slope
from vae_core.exact import binary_vae, enumerated_elbo, reference_gradient, small_batch

LOGITS = torch.tensor([-3.0, -0.8, 0.0, 0.4, 2.5], dtype=torch.float64)


def categorical_reinmax_slope(logits: torch.Tensor, b: torch.Tensor, temperature: float):
    """∂(output[0])/∂α of the paper's algorithm run literally on 2 classes, θ = (α, 0),
    D = (b, 1 − b): π0 = softmax(θ), π1 = ½ (D + softmax(θ/τ)), π1 ← softmax(sg(ln π1 − θ) + θ),
    π2 = 2 π1 − ½ π0, output = π2 − sg(π2) + D."""
    alpha = logits.clone().requires_grad_(True)
    theta = torch.stack([alpha, torch.zeros_like(alpha)], -1)
    one_hot = torch.stack([b, 1 - b], -1)
    pi0 = theta.softmax(-1)
    pi1 = 0.5 * (one_hot + (theta / temperature).softmax(-1))
    pi1 = ((pi1.log() - theta).detach() + theta).softmax(-1)
    pi2 = 2 * pi1 - 0.5 * pi0
    output = pi2 - pi2.detach() + one_hot
    assert torch.equal(output.detach(), one_hot)
    (slope,) = torch.autograd.grad(output[..., 0].sum(), alpha)
    return slope


@pytest.mark.parametrize("temperature", [TEMPERATURE, 1.0, 2.0])
@pytest.mark.parametrize("value", [0.0, 1.0])
def test_slope_is_the_categorical_algorithm_on_two_classes(value, temperature):
    """The closed form ½ [1 − σ((2b − 1) α/τ)² − σ(α) σ(−α)] is the categorical algorithm's
    gradient; at τ = 1 it is ½ q(1 − b) = ½ σ(−(2b − 1) α)."""
    b = torch.full_like(LOGITS, value)
    slope = reinmax_slope(LOGITS, b, temperature)
    expected = categorical_reinmax_slope(LOGITS, b, temperature)
    assert torch.allclose(slope, expected, rtol=0, atol=1e-14)
    if temperature == 1.0:
        assert torch.allclose(slope, 0.5 * torch.sigmoid(-(2 * b - 1) * LOGITS), atol=1e-15)


def test_backward_is_the_slope_and_forward_the_exact_sample():
    """On the toy f(b) = Σ_d (b_d − 0.49)² (β = 0), the estimator's ∇_α is ∂f/∂b at the exact
    b = 1[u < σ(α)] times the slope, and the surrogate is f(b)."""
    estimator = make_estimator("reinmax", SquaredDistanceToy(), beta=0.0)
    x = torch.zeros(1, 1, dtype=torch.float64)
    noise = estimator.sample_noise(1, torch.Generator().manual_seed(21)).expand(6, -1, -1, -1)
    noise = noise * torch.linspace(0.1, 1.0, 6, dtype=torch.float64).view(6, 1, 1, 1)
    logits = estimator.model.encoder_logits.detach()
    b = (noise < torch.sigmoid(logits)).double()
    assert 0 < b.mean() < 1
    expected = (2 * (b - TOY_TARGET) * reinmax_slope(logits, b, TEMPERATURE)).squeeze((1, 2))
    assert torch.allclose(toy_gradients_at(estimator, x, noise), expected, rtol=0, atol=1e-15)
    for u, bits in zip(noise, b, strict=True):
        surrogate = estimator(x, u).surrogate
        assert torch.equal(surrogate, (bits - TOY_TARGET).pow(2).sum())


@pytest.mark.parametrize("beta", [1.0, 2.5])
def test_elbo_is_the_exact_sample_elbo(beta):
    """elbo = log p(x|b) − β KL(q‖p) at b = 1[u < σ(α)], and the surrogate is its mean."""
    model, x = binary_vae(), small_batch()
    estimator = make_estimator("reinmax", model, n_particles=2, beta=beta)
    u = estimator.sample_noise(len(x), torch.Generator().manual_seed(22))
    out = estimator(x, u)
    with torch.no_grad():
        logits = model.encode(x)
        log_likelihood = model.log_likelihood(x, (u < torch.sigmoid(logits)).double())
        elbo = log_likelihood.mean(0) - beta * model.kl_to_prior(logits)
    assert torch.equal(out.learning_signal, log_likelihood)
    assert torch.equal(out.elbo, elbo)
    assert torch.allclose(out.surrogate, elbo.mean(), rtol=0, atol=1e-14)


def test_exact_for_quadratic_f_at_unit_temperature():
    """Theory: at τ = 1, E_{b_d}[∂_d f · ∂b_d/∂α_d] = σ(α) σ(−α) · ½ [∂_d f(b_{−d}, 0) +
    ∂_d f(b_{−d}, 1)], the trapezoid rule for f(·, 1) − f(·, 0), exact for f quadratic in b_d
    such as the toy's; at τ = 1.1 the weights p·slope(1), (1 − p)·slope(0) are not (1 − p) p/2,
    p (1 − p)/2 and the mean is biased. The estimate is constant in u on every quadrature cell, so
    one node per cell gives its exact mean."""
    x = torch.zeros(1, 1, dtype=torch.float64)
    alpha = SquaredDistanceToy().encoder_logits.detach()
    p, ones, zeros = torch.sigmoid(alpha), torch.ones_like(alpha), torch.zeros_like(alpha)
    means = {}
    for temperature in (1.0, TEMPERATURE):
        estimator = make_estimator("reinmax", SquaredDistanceToy(), beta=0.0)
        estimator.tau = temperature
        nodes, weights = toy_quadrature(estimator.noise_shape(1), 1)
        means[temperature] = weights @ toy_gradients_at(estimator, x, nodes)
        expected = 2 * (1 - TOY_TARGET) * p * reinmax_slope(alpha, ones, temperature) - (
            2 * TOY_TARGET * (1 - p) * reinmax_slope(alpha, zeros, temperature)
        )
        assert torch.allclose(means[temperature], expected, rtol=0, atol=1e-15)
    assert torch.allclose(means[1.0], toy_exact_gradient(), rtol=0, atol=1e-15)
    assert (means[TEMPERATURE] - toy_exact_gradient()).abs().min() > 1e-4


def test_encoder_is_biased_decoder_is_not():
    """The z-test at R = 20,000 against the enumerated ∇L detects ReinMax's encoder bias, and its
    decoder gradient (∇_θ log p(x|b) at the exact b) passes. Measured (seed 12; thresholds 4.4
    over 112 coordinates, 4.3 over the decoder's): encoder max |z| ≈ 14 (12 at τ = 1), decoder
    ≈ 2.5. ‖E ĝ_φ − ∇_φ L‖², estimated without bias as ‖mean − ∇L‖² − tr Cov/R (tr Cov/R ≈ 6e-8):
    ≈ 1.0e-5 = 1.7e-5 ‖∇_φ L‖² for ReinMax (3.5e-6 at τ = 1) against ≈ 1.0e-4 = 1.6e-4 ‖∇_φ L‖²
    for st_gumbel (τ = ½), stable over seeds 12-14; no ordering is asserted, as none is
    guaranteed for a general f."""
    model, x = binary_vae(), small_batch()
    reference = reference_gradient(model, lambda: enumerated_elbo(model, x))
    z = z_scores(make_estimator("reinmax", model), x, reference, seed=12)
    assert z["encoder"] > threshold_for(reference), z
    assert z["decoder"] < threshold_for({"decoder": reference["decoder"]}), z


def test_declared_facts_and_refused_options():
    cls = REGISTRY["reinmax"]
    assert (cls.latent, cls.bias_reference, cls.kl_modes) == ("bernoulli", "disarm", ("analytic",))
    assert cls.is_biased(1) and cls.evaluations(1) == 1
    with pytest.raises(EstimatorError, match="does not support kl='mc'.*score term"):
        make_estimator("reinmax", binary_vae(), kl="mc")
