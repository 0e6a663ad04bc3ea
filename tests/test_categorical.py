"""Categorical-latent model and estimators (vae_core.estimators.categorical) against exact answers.

q(z|x) = Π_l Categorical(softmax(α_l)) on L = 2 variables of C = 3 classes has C^L = 9 joint
states, so the minibatch-mean β-ELBO is a finite sum and autograd through it is ∇L exactly. The
unbiased estimators pass test_estimators' Bonferroni z-test against it; the relaxed and
straight-through ones fail it (their bias asserted). ReinMax is checked against its Jacobian
derived by hand and against the Bernoulli ReinMax at C = 2; Gumbel-Rao against straight-through
(same mean, less variance); the pair without replacement against RLOO at equal evaluations of f.
"""

from __future__ import annotations

import math

import pytest
import torch

from bench.check.variance import encoder_draws, log_variance_ratio
from bench.check.ztest import N_DRAWS, bonferroni_threshold, threshold_for, z_scores
from tests.test_variance_reduction import CRITICAL
from vae_core.densities import categorical_log_density
from vae_core.estimators import REGISTRY, EstimatorError, make_estimator
from vae_core.estimators.categorical import (
    conditional_gumbel_perturbation,
    reinmax_one_hot,
    second_distinct_sample,
    stick_breaking_sample,
    stick_logits,
)
from vae_core.estimators.reinmax import reinmax_slope
from vae_core.exact import (
    categorical_vae,
    enumerated_elbo,
    every_latent,
    reference_gradient,
    small_batch,
)
from vae_core.gradients import gradient_draws
from vae_core.models import ModelConfig, build_model, gumbel

CATEGORICAL = [name for name, cls in REGISTRY.items() if cls.latent == "categorical"]
UNBIASED = [
    ("cat_reinforce", 1),
    ("cat_reinforce_loo", 2),
    ("cat_disarm", 2),
    ("cat_disarm", 4),
    ("cat_unordered_set", 2),
]
BIASED = ("cat_gumbel", "cat_st_gumbel", "cat_reinmax", "cat_gumbel_rao")
STRAIGHT_THROUGH = ("cat_st_gumbel", "cat_reinmax", "cat_gumbel_rao")


# The model ----------------------------------------------------------------------------------


def test_enumeration_is_a_distribution_and_the_kl_its_closed_form():
    """Σ_z q(z|x) = 1 over the 9 states; the closed-form KL to the uniform prior equals the
    enumerated Σ_z q (log q − log p(z)); the two ELBO forms agree in value and gradient."""
    model, x = categorical_vae(), small_batch()
    z = every_latent(model, len(x))
    log_q = model.log_posterior(z, model.posterior(x))
    assert torch.allclose(log_q.exp().sum(0), torch.ones(len(x), dtype=torch.float64))
    enumerated_kl = (log_q.exp() * (log_q - model.log_prior(z))).sum(0)
    assert torch.allclose(model.sample_posterior(x, 1).rate, enumerated_kl, rtol=0, atol=1e-12)
    assert enumerated_kl.min() > 0.05
    analytic = reference_gradient(model, lambda: enumerated_elbo(model, x, 2.5))
    single = reference_gradient(model, lambda: enumerated_elbo(model, x, 2.5, False))
    for group in analytic:
        assert torch.allclose(analytic[group], single[group], rtol=0, atol=1e-12)


def frequency_z(samples: torch.Tensor, probabilities: torch.Tensor) -> float:
    """max |frequency − p| / √(p (1 − p)/n) over classes, samples (n, ..., C) one-hot."""
    n = len(samples)
    error = (samples.mean(0) - probabilities).abs()
    return (error / (probabilities * (1 - probabilities) / n).sqrt()).max().item()


def test_gumbel_max_and_stick_breaking_samples_are_categorical():
    """Both samplers draw z_l ~ Categorical(softmax(α_l)): class frequencies of n = 20,000 draws
    within Bonferroni z-bounds; each draw is one-hot; σ(β_c) = p_c / Σ_{j≥c} p_j."""
    model, x, n = categorical_vae(), small_batch(), 20_000
    logits = model.grouped(model.encode(x)).detach()
    probabilities = logits.softmax(-1)
    threshold = bonferroni_threshold(2 * probabilities.numel())
    generator = torch.Generator().manual_seed(2)
    gumbel_max = model.grouped(model.sample_posterior(x, n, generator).z.detach())
    u = torch.rand((n, *logits.shape[:-1], logits.shape[-1] - 1), generator=generator).double()
    stick, _, _ = stick_breaking_sample(stick_logits(logits), u)
    tails = probabilities.flip(-1).cumsum(-1).flip(-1)
    assert torch.allclose(
        stick_logits(logits).sigmoid(), probabilities[..., :-1] / tails[..., :-1], atol=1e-15
    )
    for samples in (gumbel_max, stick):
        assert torch.equal(samples.sum(-1), torch.ones_like(samples[..., 0]))
        assert frequency_z(samples, probabilities) < threshold


# Exact gradients ----------------------------------------------------------------------------


@pytest.mark.parametrize("kl", ["analytic", "mc"])
@pytest.mark.parametrize(("name", "n_particles"), UNBIASED)
@pytest.mark.parametrize("beta", [1.0, 2.5])
def test_categorical_estimator_is_unbiased(name, n_particles, kl, beta):
    model, x = categorical_vae(), small_batch()
    estimator = make_estimator(name, model, kl, n_particles, beta=beta)
    reference = reference_gradient(model, lambda: enumerated_elbo(model, x, beta))
    z = z_scores(estimator, x, reference, seed=11)
    assert max(z.values()) < threshold_for(reference), z


def test_relaxed_and_straight_through_estimators_are_biased():
    """The z-test at R = 20,000 detects the encoder bias of every relaxed and straight-through
    estimator, and gumbel's decoder bias; the straight-through ones decode the exact z, so their
    decoder gradient is ∇_θ L and passes. Measured (seed 12; threshold 4.5 over 142
    coordinates): encoder max |z| ≈ 233 (gumbel), 272 (st_gumbel), 44 (reinmax), 596 (gumbel_rao:
    st_gumbel's bias with less noise), gumbel's decoder ≈ 182, the others' decoders 1.6-2.5."""
    model, x = categorical_vae(), small_batch()
    reference = reference_gradient(model, lambda: enumerated_elbo(model, x))
    decoder_threshold = threshold_for({"decoder": reference["decoder"]})
    for name in BIASED:
        z = z_scores(make_estimator(name, model), x, reference, seed=12)
        assert z["encoder"] > threshold_for(reference), (name, z)
        if name in STRAIGHT_THROUGH:
            assert z["decoder"] < decoder_threshold, (name, z)
        else:
            assert z["decoder"] > decoder_threshold, (name, z)


# ReinMax ------------------------------------------------------------------------------------

FIXED_LOGITS = torch.tensor([0.5, -1.0, 0.2], dtype=torch.float64)
FIXED_SAMPLE = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)


def test_reinmax_jacobian_is_the_hand_derived_one_on_a_fixed_input():
    """Algorithm 2 of Liu et al. (2023) on θ = (0.5, −1, 0.2), D = e_2, τ = 1.3: the output's value
    is D and its Jacobian 2 (diag π1 − π1 π1ᵀ) − ½ (diag π0 − π0 π0ᵀ), π0 = softmax(θ),
    π1 = ½ (D + softmax(θ/τ)), from π0 and softmax(θ/τ) worked out by hand (scalar exponentials,
    6 digits), not from the implementation."""
    theta = FIXED_LOGITS.clone().requires_grad_(True)
    output = reinmax_one_hot(theta, FIXED_SAMPLE, 1.3)
    assert torch.equal(output.detach(), FIXED_SAMPLE)
    rows = [torch.autograd.grad(output[i], theta, retain_graph=True)[0] for i in range(3)]
    jacobian = torch.stack(rows)
    pi0 = torch.tensor([0.509178, 0.113613, 0.377209], dtype=torch.float64)
    tempered = torch.tensor([0.474081, 0.149535, 0.376384], dtype=torch.float64)
    assert torch.allclose(FIXED_LOGITS.softmax(-1), pi0, atol=1e-6)
    assert torch.allclose((FIXED_LOGITS / 1.3).softmax(-1), tempered, atol=1e-6)
    pi1 = 0.5 * (FIXED_SAMPLE + tempered)
    expected = 2 * (torch.diag(pi1) - torch.outer(pi1, pi1)) - 0.5 * (
        torch.diag(pi0) - torch.outer(pi0, pi0)
    )
    assert torch.allclose(jacobian, expected, atol=1e-5)
    assert torch.allclose(jacobian.sum(0), torch.zeros(3, dtype=torch.float64), atol=1e-12)


@pytest.mark.parametrize("temperature", [1.0, 1.1, 1.3, 2.0])
@pytest.mark.parametrize("value", [0.0, 1.0])
def test_reinmax_at_two_classes_is_the_bernoulli_reinmax(value, temperature):
    """With θ = (α, 0) and D = (b, 1 − b), ∂ output[0] / ∂α is the Bernoulli ReinMax slope
    ½ [1 − σ((2b − 1) α/τ)² − σ(α) σ(−α)] (vae_core.estimators.reinmax), for every α."""
    alpha = torch.tensor([-3.0, -0.8, 0.0, 0.4, 2.5], dtype=torch.float64, requires_grad=True)
    b = torch.full_like(alpha, value)
    theta = torch.stack([alpha, torch.zeros_like(alpha)], -1)
    output = reinmax_one_hot(theta, torch.stack([b, 1 - b], -1), temperature)
    (slope,) = torch.autograd.grad(output[..., 0].sum(), alpha)
    expected = reinmax_slope(alpha.detach(), b, temperature)
    assert torch.allclose(slope, expected, rtol=0, atol=1e-14)


# Gumbel-Rao ---------------------------------------------------------------------------------


def test_conditional_gumbels_keep_the_argmax_and_the_gumbel_law():
    """G' drawn given D = onehot(argmax(θ + G)) keeps argmax(θ + G') = D, and mixed over D it is
    Gumbel(0, 1)^C again: per coordinate mean γ = 0.5772 and variance π²/6 within Bonferroni
    z-bounds (n = 40,000; each standard error from the draws' own spread)."""
    n, generator = 40_000, torch.Generator().manual_seed(3)
    theta = FIXED_LOGITS.expand(n, -1)
    uniforms = torch.rand((3, n, 3), generator=generator, dtype=torch.float64)
    one_hot = (theta + gumbel(uniforms[0])).argmax(-1)
    one_hot = torch.nn.functional.one_hot(one_hot, 3).double()
    noise = conditional_gumbel_perturbation(theta, one_hot, uniforms[1][:, :1], uniforms[2])
    assert torch.equal((theta + noise).argmax(-1), one_hot.argmax(-1))
    threshold = bonferroni_threshold(6)
    mean_z = (noise.mean(0) - 0.5772156649) / (noise.std(0) / math.sqrt(n))
    centred = (noise - noise.mean(0)).pow(2)
    variance_z = (centred.mean(0) - math.pi**2 / 6) / (centred.std(0) / math.sqrt(n))
    assert mean_z.abs().max() < threshold and variance_z.abs().max() < threshold


def test_gumbel_rao_has_straight_through_mean_and_less_variance():
    """E[∂y/∂α | z] replaces ∂y/∂α, so Gumbel-Rao's mean gradient is straight-through's and its
    variance is not larger. Mean: two-sample z-test per coordinate (R = 20,000 each, independent
    draws), Bonferroni. Variance: the one-sided test of test_variance_reduction on the encoder
    (independent draws), measured ratio 0.31 (|log ratio|/SE ≈ 171)."""
    model, x = categorical_vae(), small_batch()
    rao, straight = make_estimator("cat_gumbel_rao", model), make_estimator("cat_st_gumbel", model)
    draws_rao = encoder_draws(rao, x, N_DRAWS, seed=31)
    draws_st = encoder_draws(straight, x, N_DRAWS, seed=32)
    standard_error = (draws_rao.var(0) / N_DRAWS + draws_st.var(0) / N_DRAWS).sqrt()
    varies = standard_error > 0  # the weights of pixels that are 0 in every example get none
    assert torch.equal(draws_rao[:, ~varies], draws_st[:, ~varies])
    z = ((draws_rao.mean(0) - draws_st.mean(0)).abs()[varies] / standard_error[varies]).max()
    assert z < bonferroni_threshold(int(varies.sum())), z
    ratio = log_variance_ratio(draws_rao, draws_st, paired=False)
    assert ratio.upper_bound(CRITICAL) < 1, ratio.describe(CRITICAL)


# Variance against RLOO ----------------------------------------------------------------------


def test_unordered_set_pair_is_less_variable_than_rloo_at_equal_evaluations():
    """cat_unordered_set against RLOO at K = 2 (2 evaluations of f each), independent draws, the
    one-sided test of test_variance_reduction at its critical value (stricter than the 2
    one-sided tests of this file need). Its second moment is never above RLOO's (docstring);
    measured ratio 0.76 (R = 4,000, |log ratio|/SE ≈ 13). RLOO's ratio against
    cat_disarm is not asserted (measured 0.90: the stick-breaking one is the noisier)."""
    model, x = categorical_vae(), small_batch()
    pair = make_estimator("cat_unordered_set", model, "analytic", 2)
    rloo = make_estimator("cat_reinforce_loo", model, "analytic", 2)
    ratio = log_variance_ratio(
        encoder_draws(pair, x, 4000, seed=33), encoder_draws(rloo, x, 4000, seed=34), False
    )
    assert ratio.upper_bound(CRITICAL) < 1, ratio.describe(CRITICAL)


def test_second_distinct_sample_is_q_conditioned_on_differing():
    """b ~ q(z | z ≠ a): never a, and over n = 40,000 draws each joint state's frequency is
    q(s)/(1 − q(a)) within Bonferroni z-bounds (the 9 states of one example)."""
    model, x, n = categorical_vae(), small_batch()[:1], 40_000
    logits = model.grouped(model.encode(x)).detach().expand(n, -1, -1)
    first = torch.eye(3, dtype=torch.float64)[[0, 2]].expand(n, -1, -1)
    generator = torch.Generator().manual_seed(6)
    u = torch.rand((n, 2, 3), generator=generator, dtype=torch.float64)
    u_index = torch.rand((n, 1), generator=generator, dtype=torch.float64)
    second = second_distinct_sample(logits, first, u, u_index).flatten(-2)
    states = every_latent(model, 1)[:, 0]
    counts = (second[:, None] == states[None]).all(-1).double()  # (n, 9)
    assert counts.sum(1).eq(1).all()
    q = model.log_posterior(states[:, None], model.posterior(x)).detach().exp()[:, 0]
    excluded = (states == first[0].flatten()).all(-1)
    assert counts[:, excluded].sum() == 0
    expected = torch.where(excluded, 0.0, q / (1 - q[excluded]))
    z = frequency_z(counts[:, ~excluded], expected[~excluded])
    assert z < bonferroni_threshold(8), z


# Options and registry -----------------------------------------------------------------------


def test_categorical_estimators_are_registered_with_their_references():
    assert set(CATEGORICAL) == {n for n, _ in UNBIASED} | set(BIASED)
    assert {n for n in CATEGORICAL if REGISTRY[n].bias_reference} == set(BIASED)
    assert {REGISTRY[n].bias_reference for n in BIASED} == {"cat_unordered_set"}
    assert {REGISTRY[n].variance_reference() for n in CATEGORICAL} == {"cat_unordered_set"}
    assert all(REGISTRY[n].evaluations(1) == 1 for n in BIASED)


@pytest.mark.parametrize("name", BIASED)
def test_relaxed_estimators_refuse_mc_kl_and_say_why(name):
    with pytest.raises(EstimatorError, match="does not support kl='mc'.*score term"):
        make_estimator(name, categorical_vae(), kl="mc")


@pytest.mark.parametrize("n_particles", [1, 3])
def test_stick_breaking_disarm_needs_an_even_k(n_particles):
    with pytest.raises(EstimatorError, match=f"multiple of 2, got {n_particles}"):
        make_estimator("cat_disarm", categorical_vae(), n_particles=n_particles)


@pytest.mark.parametrize("n_particles", [1, 4])
def test_unordered_set_pair_needs_k_two(n_particles):
    with pytest.raises(EstimatorError, match="K\\) >= 2|K\\) = 2"):
        make_estimator("cat_unordered_set", categorical_vae(), n_particles=n_particles)


@pytest.mark.parametrize("name", CATEGORICAL)
def test_categorical_estimator_refuses_a_binary_latent_model(name):
    model = build_model(ModelConfig(input_dim=6, hidden=(5,), latent_dim=2, latent="bernoulli"))
    with pytest.raises(EstimatorError, match="needs a model with categorical latents"):
        make_estimator(name, model, n_particles=2)


def test_binary_estimator_refuses_a_categorical_model():
    with pytest.raises(EstimatorError, match="needs a model with bernoulli latents"):
        make_estimator("disarm", categorical_vae(), n_particles=2)


@pytest.mark.parametrize(("latent", "classes"), [("categorical", 1), ("bernoulli", 3)])
def test_model_config_refuses_classes_that_do_not_fit_the_latent_type(latent, classes):
    with pytest.raises(ValueError, match="classes must be an integer >= 2 for categorical"):
        ModelConfig(latent=latent, classes=classes)


@pytest.mark.parametrize(
    ("name", "kl"), [(name, kl) for name in CATEGORICAL for kl in REGISTRY[name].kl_modes]
)
def test_vmap_and_loop_draws_agree(name, kl):
    model, x = categorical_vae(), small_batch()
    estimator = make_estimator(name, model, kl, 2)
    batched = gradient_draws(estimator, x, 5, torch.Generator().manual_seed(4), method="vmap")
    looped = gradient_draws(estimator, x, 5, torch.Generator().manual_seed(4), method="loop")
    for group in batched:
        assert torch.allclose(batched[group], looped[group], rtol=1e-10, atol=1e-12)


def test_log_posterior_is_the_categorical_density():
    model, x = categorical_vae(), small_batch()
    sample = model.sample_posterior(x, 4, torch.Generator().manual_seed(5))
    logits = model.grouped(model.encode(x))
    expected = categorical_log_density(model.grouped(sample.z), logits)
    assert torch.equal(sample.log_q, expected)
