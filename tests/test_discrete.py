"""Binary-latent estimators (vae_core.estimators.discrete) against exact gradients.

q(b|x) = Π_d Bernoulli(b_d; σ(α_d)) has 2^D atoms, so the minibatch-mean β-ELBO
    L = mean_m Σ_{b ∈ {0,1}^D} q(b|x_m) [log p(x_m|b) + β (log p(b) − log q(b|x_m))]
is a finite sum and autograd through it is ∇L exactly. The unbiased estimators (REINFORCE, RLOO,
ARM, DisARM) pass test_estimators' Bonferroni z-test against it; the relaxed ones (Gumbel-softmax,
straight-through) fail it, and that bias is asserted, not hidden. On the toy
f(b) = Σ_d (b_d − 0.49)² every estimator is piecewise polynomial in the uniform noise u, so
Gauss–Legendre quadrature on the pieces gives its exact mean and variance.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from bench.check.ztest import N_DRAWS, bonferroni_threshold, threshold_for, z_scores
from vae_core.densities import bernoulli_log_density
from vae_core.estimators import REGISTRY, EstimatorError, make_estimator
from vae_core.evaluation import log_likelihood_estimate
from vae_core.exact import (
    binary_vae,
    enumerated_elbo,
    every_latent,
    reference_gradient,
    small_batch,
)
from vae_core.gradients import gradient_draws
from vae_core.models import BernoulliLatentModel, BernoulliVAE, BinaryLatentVAE, ModelConfig

DISCRETE = [name for name, cls in REGISTRY.items() if cls.latent == "bernoulli"]
UNBIASED = [
    ("reinforce", 1),
    ("reinforce_loo", 2),
    ("arm", 2),
    ("disarm", 2),
    ("arm", 4),
    ("disarm", 4),
]
BIASED = ("gumbel", "st_gumbel")


# Exact reference by enumeration ------------------------------------------------------------------


def test_enumerated_elbo_forms_agree():
    """E_q[log p(x|b)] − β KL = E_q[log p(x|b) + β (log p(b) − log q)], values and gradients,
    and the enumerated rate Σ_b q (log q − log p(b)) is the model's closed-form `rate`."""
    model, x = binary_vae(), small_batch()
    for beta in (1.0, 2.5):
        analytic = reference_gradient(model, lambda b=beta: enumerated_elbo(model, x, b))
        single = reference_gradient(model, lambda b=beta: enumerated_elbo(model, x, b, False))
        for group in analytic:
            assert torch.allclose(analytic[group], single[group], rtol=0, atol=1e-12)
            assert analytic[group].abs().max() > 1e-3
        difference = enumerated_elbo(model, x, beta) - enumerated_elbo(model, x, beta, False)
        assert abs(difference.item()) < 1e-12
    b = every_latent(model, len(x))
    log_q = bernoulli_log_density(b, model.encode(x))
    enumerated_kl = (log_q.exp() * (log_q - model.log_prior(b))).sum(0)
    assert torch.allclose(model.sample_posterior(x, 1).rate, enumerated_kl, rtol=0, atol=1e-12)
    assert enumerated_kl.min() > 0.05


@pytest.mark.parametrize("kl", ["analytic", "mc"])
@pytest.mark.parametrize(("name", "n_particles"), UNBIASED)
@pytest.mark.parametrize("beta", [1.0, 2.5])
def test_discrete_estimator_is_unbiased(name, n_particles, kl, beta):
    model, x = binary_vae(), small_batch()
    estimator = make_estimator(name, model, kl, n_particles, beta=beta)
    reference = reference_gradient(model, lambda: enumerated_elbo(model, x, beta))
    z = z_scores(estimator, x, reference, seed=11)
    assert max(z.values()) < threshold_for(reference), z


def test_relaxed_estimators_are_biased():
    """Gumbel-softmax and straight-through Gumbel (τ = ½) estimate neither ∇_φ L nor, for gumbel,
    ∇_θ L, and the z-test at R = 20,000 detects it. Measured (seed 12; threshold 4.4 over 112
    coordinates): encoder max |z| ≈ 29 (gumbel) and 40 (st_gumbel), gumbel decoder ≈ 49; relative
    biases ‖mean − ∇L‖ / ‖∇L‖ 1-2.5 %, stable over seeds. st_gumbel decodes the exact
    b ~ q(b|x), so its decoder gradient is ∇_θ L, unbiased (max |z| ≈ 2.1)."""
    model, x = binary_vae(), small_batch()
    reference = reference_gradient(model, lambda: enumerated_elbo(model, x))
    threshold = threshold_for(reference)
    gumbel = z_scores(make_estimator("gumbel", model), x, reference, seed=12)
    straight_through = z_scores(make_estimator("st_gumbel", model), x, reference, seed=12)
    assert min(gumbel["encoder"], gumbel["decoder"], straight_through["encoder"]) > 5 * threshold
    assert straight_through["decoder"] < threshold_for({"decoder": reference["decoder"]})


def test_gumbel_decoder_bias_shrinks_with_the_temperature():
    """As τ → 0, z = σ((α + L)/τ) → b = 1[α + L > 0] almost surely, so gumbel's decoder gradient
    tends to ∇_θ log p(x|b), unbiased. ‖bias‖² is estimated without bias by
    ‖mean − ∇_θ L‖² − tr Cov / R; measured ≈ 6.5e-4 ‖∇_θ L‖² at τ = ½ and 1.3e-5 ‖∇_θ L‖² at
    τ = 0.1, with tr Cov / R ≈ 4-5e-6 ‖∇_θ L‖²."""
    model, x = binary_vae(), small_batch()
    reference = reference_gradient(model, lambda: enumerated_elbo(model, x))["decoder"]
    squared_bias = {}
    for temperature in (0.5, 0.1):
        estimator = make_estimator("gumbel", model)
        estimator.tau = temperature
        generator = torch.Generator().manual_seed(17)
        draws = gradient_draws(estimator, x, N_DRAWS, generator, chunk_size=None)["decoder"]
        squared_error = (draws.mean(0) - reference).pow(2).sum()
        squared_bias[temperature] = squared_error - draws.var(0).sum() / N_DRAWS
    assert squared_bias[0.1] < squared_bias[0.5] / 4


# The toy f(b) = Σ_d (b_d − 0.49)² ----------------------------------------------------------------

TOY_LOGITS = (-1.5, -0.3, 0.4, 2.0)
TOY_TARGET = 0.49


class SquaredDistanceToy(BernoulliLatentModel):
    """E_q[f(b)], f(b) = Σ_d (b_d − 0.49)², q(b) = Π_d Bern(σ(α_d)) with α a free parameter: as
    log p(x|b) = f(b) with zero prior and KL, the β = 0 analytic-KL objective is E_q[f]. Exactly
    ∂E_q[f]/∂α_d = σ(α_d) σ(−α_d) [(1 − 0.49)² − 0.49²] = 0.02 σ(α_d) σ(−α_d)."""

    def __init__(self) -> None:
        super().__init__()
        self.input_dim, self.latent_dim = 1, len(TOY_LOGITS)
        self.encoder_logits = nn.Parameter(torch.tensor(TOY_LOGITS, dtype=torch.float64))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder_logits.expand(len(x), -1)

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return (z - TOY_TARGET).pow(2).sum(-1)

    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(z[..., 0])

    def kl_to_prior(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(logits[..., 0])


def toy_exact_gradient() -> torch.Tensor:
    alpha = torch.tensor(TOY_LOGITS, dtype=torch.float64)
    return ((1 - TOY_TARGET) ** 2 - TOY_TARGET**2) * torch.sigmoid(alpha) * torch.sigmoid(-alpha)


def toy_quadrature(noise_shape: tuple[int, ...], nodes_per_piece: int):
    """Tensor-product Gauss–Legendre rule over the noise u ∈ [0, 1]^(K×1×D), split in every
    coordinate at σ(±α_d), where b_d = 1[u_d < σ(α_d)] and b̃_d = 1[1 − u_d < σ(α_d)] jump.
    Exact for integrands of degree < 2·nodes_per_piece in each u on every cell.
    Returns nodes (N, *noise_shape) and weights (N,)."""
    base_nodes, base_weights = np.polynomial.legendre.leggauss(nodes_per_piece)
    probabilities = torch.sigmoid(torch.tensor(TOY_LOGITS, dtype=torch.float64)).numpy()
    axes, axis_weights = [], []
    for index in range(math.prod(noise_shape)):
        p = probabilities[index % len(TOY_LOGITS)]
        edges = np.array([0.0, *sorted((p, 1 - p)), 1.0])
        low, high = edges[:-1, None], edges[1:, None]
        axes.append(((low + high) / 2 + (high - low) / 2 * base_nodes).ravel())
        axis_weights.append(((high - low) / 2 * base_weights).ravel())
    nodes = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, *noise_shape)
    weights = np.stack(np.meshgrid(*axis_weights, indexing="ij"), -1).prod(-1).ravel()
    return torch.tensor(nodes), torch.tensor(weights)


def toy_gradients_at(estimator, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The estimator's ∇_α at each noise value, (N, *noise_shape) → (N, D)."""

    def surrogate(params: dict[str, torch.Tensor], u: torch.Tensor) -> torch.Tensor:
        return functional_call(estimator, params, (x, u), strict=False).surrogate

    params = {"model.encoder_logits": estimator.model.encoder_logits.detach()}
    return vmap(grad(surrogate), in_dims=(None, 0))(params, noise)["model.encoder_logits"]


def toy_estimator(name: str, n_particles: int):
    return make_estimator(name, SquaredDistanceToy(), "analytic", n_particles, beta=0.0)


TOY_ESTIMATORS = [("reinforce", 1, 1), ("reinforce_loo", 2, 1), ("arm", 2, 2), ("disarm", 2, 2)]


def toy_exact_moments(name: str, n_particles: int, nodes_per_piece: int):
    """(mean, variance) of the estimator's ∇_α over u, by `toy_quadrature`. REINFORCE, RLOO and
    DisARM are piecewise constant in u; ARM's (f(b̃) − f(b))(u_d − ½), squared, is quadratic."""
    estimator, x = toy_estimator(name, n_particles), torch.zeros(1, 1, dtype=torch.float64)
    nodes, weights = toy_quadrature(estimator.noise_shape(1), nodes_per_piece)
    gradients = toy_gradients_at(estimator, x, nodes)
    mean = weights @ gradients
    return mean, weights @ (gradients - mean).pow(2)


@pytest.mark.parametrize(("name", "n_particles", "nodes_per_piece"), TOY_ESTIMATORS)
def test_toy_exact_mean_is_the_true_gradient(name, n_particles, nodes_per_piece):
    mean, variance = toy_exact_moments(name, n_particles, nodes_per_piece)
    assert torch.allclose(mean, toy_exact_gradient(), rtol=0, atol=1e-14)
    assert variance.min() > 0


@pytest.mark.parametrize(("name", "n_particles", "_"), TOY_ESTIMATORS)
def test_toy_sampled_gradients_are_unbiased(name, n_particles, _):
    estimator, x = toy_estimator(name, n_particles), torch.zeros(1, 1, dtype=torch.float64)
    reference = {"encoder": toy_exact_gradient()}
    z = z_scores(estimator, x, reference, seed=13)
    assert z["encoder"] < threshold_for(reference), z


def toy_closed_form_variances() -> dict[str, torch.Tensor]:
    """f is separable, f(b) = Σ_j g(b_j): with c = g(1) − g(0) = 0.02, m_j = σ(−|α_j|) and
    Δ_j = g(b̃_j) − g(b_j) (E Δ_j = 0, E Δ_j² = 2 m_j c², independent over j),
    ARM:    E ĝ_d² = c² · 2∫_0^{m_d} (u − ½)² du + (1/12) Σ_{j≠d} E Δ_j²,
    DisARM: E ĝ_d² = ¼ σ(|α_d|)² · P(b_d ≠ b̃_d) · (c² + Σ_{j≠d} E Δ_j²), P(b_d ≠ b̃_d) = 2 m_d;
    Var = E ĝ_d² − (∂E[f]/∂α_d)²."""
    alpha = torch.tensor(TOY_LOGITS, dtype=torch.float64)
    m, c = torch.sigmoid(-alpha.abs()), (1 - TOY_TARGET) ** 2 - TOY_TARGET**2
    others = (2 * m * c**2).sum() - 2 * m * c**2
    arm = c**2 * 2 * ((m - 0.5) ** 3 + 0.125) / 3 + others / 12
    disarm = 0.25 * torch.sigmoid(alpha.abs()) ** 2 * 2 * m * (c**2 + others)
    squared_mean = toy_exact_gradient().pow(2)
    return {"arm": arm - squared_mean, "disarm": disarm - squared_mean}


def test_toy_disarm_variance_is_below_arm():
    """DisARM = E[ARM | b, b̃] (u integrated out given the pair), so Var(DisARM) ≤ Var(ARM) in
    every coordinate: here ≈ (6.2, 4.4, 4.8, 5.1)e-5 against (7.9, 5.6, 5.8, 8.1)e-5. The
    implementations' exact variances (quadrature) equal the closed forms, and the sampled
    variances s² of R draws agree with them within Bonferroni z-bounds, SE(s²) ≈ √((m₄ − s⁴)/R)."""
    closed_form = toy_closed_form_variances()
    assert (closed_form["disarm"] < closed_form["arm"]).all()
    x = torch.zeros(1, 1, dtype=torch.float64)
    threshold = bonferroni_threshold(2 * len(TOY_LOGITS))
    for name, variance in closed_form.items():
        exact = toy_exact_moments(name, 2, 2)[1]
        assert torch.allclose(exact, variance, rtol=1e-10, atol=0), name
        generator = torch.Generator().manual_seed(14)
        draws = gradient_draws(toy_estimator(name, 2), x, N_DRAWS, generator, chunk_size=None)
        centred = draws["encoder"] - draws["encoder"].mean(0)
        s2, m4 = centred.pow(2).mean(0), centred.pow(4).mean(0)
        standard_error = ((m4 - s2.pow(2)) / len(centred)).sqrt()
        z = ((s2 - variance).abs() / standard_error).max()
        assert z < threshold, (name, z)


# Options -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["arm", "disarm"])
@pytest.mark.parametrize("n_particles", [1, 3])
def test_antithetic_estimators_need_an_even_k(name, n_particles):
    with pytest.raises(EstimatorError, match=f">= 2 and a multiple of 2, got {n_particles}"):
        make_estimator(name, binary_vae(), n_particles=n_particles)


def test_reinforce_loo_needs_two_particles():
    with pytest.raises(EstimatorError, match="needs n_particles \\(K\\) >= 2, got 1"):
        make_estimator("reinforce_loo", binary_vae(), n_particles=1)


@pytest.mark.parametrize("name", BIASED)
def test_relaxed_estimators_refuse_mc_kl_and_say_why(name):
    with pytest.raises(EstimatorError, match="does not support kl='mc'.*no Bernoulli log q"):
        make_estimator(name, binary_vae(), kl="mc")


@pytest.mark.parametrize("name", DISCRETE)
def test_discrete_estimator_refuses_a_gaussian_model(name):
    model = BernoulliVAE(ModelConfig(input_dim=6, hidden=(5,), latent_dim=2))
    with pytest.raises(EstimatorError, match="needs a model with bernoulli latents"):
        make_estimator(name, model, n_particles=2)


def test_gaussian_estimator_refuses_a_binary_latent_model():
    with pytest.raises(EstimatorError, match="needs a model with gaussian latents"):
        make_estimator("reparam", binary_vae())


def test_discrete_estimators_are_registered():
    assert set(DISCRETE) == {
        "reinforce",
        "reinforce_loo",
        "arm",
        "disarm",
        "gumbel",
        "st_gumbel",
        "double_cv",
        "rodeo",
        "relax",
        "reinmax",
    }
    assert {name for name in DISCRETE if REGISTRY[name].bias_reference} == {*BIASED, "reinmax"}


# The learning signal with the Monte Carlo KL ------------------------------------------------------

MC_SIGNAL_ESTIMATORS = [
    ("reinforce", 2),
    ("reinforce_loo", 2),
    ("arm", 2),
    ("disarm", 2),
    ("double_cv", 2),
    ("rodeo", 2),
    ("relax", 1),
]


def exact_prior_posterior_vae() -> BernoulliLatentModel:
    """binary_vae with log p(x|b) constant in b (the decoder's first weights zero) and
    q(b|x) = p(b) (the encoder's last weights zero, its bias the prior logits), the exact
    posterior: log p(b) − log q(b|x) = 0 for every b, to the bit, and ∇_α KL(q‖p) = 0."""
    model = binary_vae()
    with torch.no_grad():
        model.decoder[0].weight.zero_()
        model.encoder[-1].weight.zero_()
        model.encoder[-1].bias.copy_(model.prior_logits)
    return model


@pytest.mark.parametrize(("name", "n_particles"), MC_SIGNAL_ESTIMATORS)
def test_mc_kl_learning_signal_has_no_score_term_at_fixed_b(name, n_particles):
    """With kl='mc' the binary estimators take log q(b|x) in f at stopped φ, as the papers do:
    the encoder gradient is their estimate of ∇_α E_q[f], chained to φ, without the zero-mean
    −β ∇_φ log q(b|x) at the sampled b. Where q = p (`exact_prior_posterior_vae`) the MC-KL
    signal f = log p(x|b) + β(log p(b) − log q(b|x)) is the analytic-KL one, log p(x|b), for every
    b, and ∇KL = 0; so the encoder draws must be the same in both modes, noise for noise, with
    the control variates at a random state. Keeping the term adds −β mean_k ∇_φ log q(b_k|x)."""
    model, x = exact_prior_posterior_vae(), small_batch()
    draws = {}
    for kl in ("analytic", "mc"):
        torch.manual_seed(19)  # RODEO's and RELAX's networks start from the global generator
        estimator = make_estimator(name, model, kl, n_particles, beta=2.5)
        generator = torch.Generator().manual_seed(18)
        with torch.no_grad():
            for parameter in estimator.parameters():
                if all(parameter is not p for p in model.parameters()):
                    parameter.add_(0.5 * torch.randn(parameter.shape, generator=generator))
        draws[kl] = gradient_draws(estimator, x, 20, generator, chunk_size=None)["encoder"]
    assert torch.allclose(draws["mc"], draws["analytic"], rtol=1e-10, atol=1e-12)


# Draw methods and evaluation ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kl"), [(name, kl) for name in DISCRETE for kl in REGISTRY[name].kl_modes]
)
def test_vmap_and_loop_draws_agree(name, kl):
    model, x = binary_vae(), small_batch()
    estimator = make_estimator(name, model, kl, max(REGISTRY[name].min_particles, 2))
    batched = gradient_draws(estimator, x, 5, torch.Generator().manual_seed(4), method="vmap")
    looped = gradient_draws(estimator, x, 5, torch.Generator().manual_seed(4), method="loop")
    for group in batched:
        assert torch.allclose(batched[group], looped[group], rtol=1e-10, atol=1e-12)


def test_posterior_samples_and_log_likelihood_estimate():
    """sample_posterior draws b_d ~ Bern(σ(α_d)) with log q(b|x); the importance-sampled
    log p̂(x) = log mean_k p(x, b_k)/q(b_k|x) is within z-bounds of the exact
    log p(x) = log Σ_b p(b) p(x|b), with the delta-method SE √Var_q(w) / (p(x) √n) and
    Var_q(w) = Σ_b p(x, b)²/q(b|x) − p(x)², both by enumeration."""
    model, x, n = binary_vae(), small_batch(), 20_000
    logits = model.encode(x).detach()
    with torch.no_grad():
        b, log_q, _ = model.sample_posterior(x, n, torch.Generator().manual_seed(15))
        assert torch.equal(log_q, bernoulli_log_density(b, logits))
        probability = torch.sigmoid(logits)
        z_frequency = (b.mean(0) - probability).abs() / (probability * (1 - probability) / n).sqrt()
        assert z_frequency.max() < bonferroni_threshold(probability.numel())

        atoms = every_latent(model, len(x))
        log_joint = model.log_prior(atoms) + model.log_likelihood(x, atoms)
        log_px = torch.logsumexp(log_joint, 0)
        log_q_atoms = bernoulli_log_density(atoms, logits)
        second_moment = torch.exp(torch.logsumexp(2 * log_joint - log_q_atoms, 0) - 2 * log_px)
        standard_error = (second_moment - 1).sqrt() / math.sqrt(n)  # √Var(w)/(p √n)
        estimate = log_likelihood_estimate(model, x, n, torch.Generator().manual_seed(16))
    z = ((estimate - log_px).abs() / standard_error).max()
    assert z < bonferroni_threshold(len(x)), z


def test_centred_inputs_are_a_reparameterisation_of_the_same_model():
    """With inputs centred (encoder x − p̄, decoder 2b − 1) the binary VAE is the uncentred one
    whose first layers absorb the shift: encoder bias c − W p̄, decoder weight 2W and bias
    c − W 1. Posterior logits, log p(x|b) and log p(b) agree to rounding."""
    torch.manual_seed(0)
    config = ModelConfig(input_dim=12, hidden=(), latent_dim=5, latent="bernoulli")
    centred = BinaryLatentVAE(config).double()
    mean = torch.rand(12, dtype=torch.float64)
    centred.centre_inputs(mean)
    plain = BinaryLatentVAE(config).double()
    plain.load_state_dict(centred.state_dict())  # the centring is not in the state dict
    with torch.no_grad():
        encoder, decoder = plain.encoder[0], plain.decoder[0]
        encoder.bias.sub_(encoder.weight @ mean)
        decoder.bias.sub_(decoder.weight.sum(1))
        decoder.weight.mul_(2)
    x = (torch.rand(7, 12) < 0.4).double()
    b = (torch.rand(3, 7, 5) < 0.5).double()
    same_parameters = BinaryLatentVAE(config).double()
    same_parameters.load_state_dict(centred.state_dict())
    assert not torch.allclose(centred.posterior(x)[0], same_parameters.posterior(x)[0])
    assert not torch.allclose(centred.log_likelihood(x, b), same_parameters.log_likelihood(x, b))
    torch.testing.assert_close(centred.posterior(x)[0], plain.posterior(x)[0])
    torch.testing.assert_close(centred.log_likelihood(x, b), plain.log_likelihood(x, b))
    torch.testing.assert_close(centred.log_prior(b), plain.log_prior(b))


def test_output_bias_from_data_starts_the_decoder_at_the_data_marginal():
    """initialise_output_bias(p̄): with the last layer's weights at 0, p(x_d = 1 | b) is p̄_d
    clipped to [0.001, 0.999], for every b."""
    config = ModelConfig(input_dim=4, hidden=(), latent_dim=3, latent="bernoulli")
    model = BinaryLatentVAE(config).double()
    mean = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=torch.float64)
    model.initialise_output_bias(mean)
    with torch.no_grad():
        model.decoder[-1].weight.zero_()
    b = (torch.rand(6, 3) < 0.5).double()
    expected = torch.tensor([0.001, 0.25, 0.5, 0.999], dtype=torch.float64)
    torch.testing.assert_close(torch.sigmoid(model.decoder(b)), expected.expand(6, 4))
