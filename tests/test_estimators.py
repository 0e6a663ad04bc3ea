"""Every ELBO estimator is unbiased for ∇ of the minibatch-mean ELBO, checked by a z-test against
exact references: closed forms (linear-Gaussian model) and Gauss–Hermite quadrature (a small
Bernoulli VAE with 2 latents). Tolerances come from the standard error of the mean of R draws."""

from __future__ import annotations

import pytest
import torch

from bench.check.ztest import (
    threshold_for,
    z_scores,
)
from vae_core.estimators import REGISTRY, EstimatorError, make_estimator
from vae_core.estimators.score import ScoreLeaveOneOut, score_function_surrogate
from vae_core.exact import (
    linear_gaussian_model,
    quadrature_elbo,
    reference_gradient,
    small_batch,
    small_vae,
)
from vae_core.gradients import gradient_draws, gradient_statistics
from vae_core.models import ModelConfig


def all_configurations(objective: str | None = "elbo") -> list[tuple[str, str, int]]:
    """Registered Gaussian-latent (estimator, KL mode, smallest K) whose gradient targets
    `objective` (None: all). The multi-sample estimators (objective 'iwae') are tested against
    ∇L_K in test_multisample, the binary-latent ones in test_discrete."""
    return [
        (name, kl, max(cls.min_particles, 1))
        for name, cls in REGISTRY.items()
        for kl in cls.kl_modes
        if cls.latent == "gaussian" and (objective is None or cls.objective == objective)
    ]


def give_running_baselines_state(estimator) -> None:
    """Move running baselines off their initial values (any fixed value keeps them unbiased)."""
    buffers = dict(estimator.named_buffers())
    if "baseline" in buffers:
        buffers["baseline"].fill_(-3.0)
    if "signal_var" in buffers:
        buffers["signal_mean"].fill_(-2.0)
        buffers["signal_var"].fill_(9.0)  # scale max(1, √9) = 3


def assert_unbiased(estimator, x, reference, seed: int) -> None:
    threshold = threshold_for(reference)
    for group, z in z_scores(estimator, x, reference, seed).items():
        assert z < threshold, f"{group}: max |z| = {z:.2f} >= {threshold:.2f}"


def test_quadrature_reference_has_converged():
    model, x = small_vae(), small_batch()
    coarse = reference_gradient(model, lambda: quadrature_elbo(model, x, 30))
    fine = reference_gradient(model, lambda: quadrature_elbo(model, x, 40))
    for group in coarse:
        assert torch.allclose(coarse[group], fine[group], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(("name", "kl", "n_particles"), all_configurations())
def test_estimator_is_unbiased_on_small_bernoulli_vae(name, kl, n_particles):
    model, x = small_vae(), small_batch()
    estimator = make_estimator(name, model, kl, n_particles)
    give_running_baselines_state(estimator)
    reference = reference_gradient(model, lambda: quadrature_elbo(model, x))
    assert_unbiased(estimator, x, reference, seed=2)


@pytest.mark.parametrize(("name", "kl", "n_particles"), all_configurations())
def test_estimator_is_unbiased_for_the_beta_elbo(name, kl, n_particles):
    """β = 2.5 weights log p(z) − log q(z|x) (or the analytic KL) in every learning signal."""
    model, x = small_vae(), small_batch()
    estimator = make_estimator(name, model, kl, n_particles, beta=2.5)
    give_running_baselines_state(estimator)
    reference = reference_gradient(model, lambda: quadrature_elbo(model, x, beta=2.5))
    assert_unbiased(estimator, x, reference, seed=10)


@pytest.mark.parametrize("beta", [-1.0, float("nan"), float("inf")])
def test_bad_beta_is_refused(beta):
    with pytest.raises(
        EstimatorError, match="beta \\(the KL weight\\) must be a finite number >= 0"
    ):
        make_estimator("reparam", small_vae(), beta=beta)


@pytest.mark.parametrize(("name", "kl", "n_particles"), all_configurations())
def test_estimator_is_unbiased_on_linear_gaussian_model(name, kl, n_particles):
    model, x = linear_gaussian_model()
    estimator = make_estimator(name, model, kl, n_particles)
    give_running_baselines_state(estimator)
    reference = reference_gradient(model, lambda: model.exact_elbo(x).mean())
    assert_unbiased(estimator, x, reference, seed=3)


class LeaveOneIn(ScoreLeaveOneOut):
    """A planted bias: a leave-one-*in* baseline (the mean of all K signals, which depends on
    z_k) shrinks the score term by (K − 1)/K."""

    def forward(self, x, noise):
        out = super().forward(x, noise)
        f, kl_analytic, log_q = self.sample_terms(x, noise, stop_path=True)
        signal = f - f.mean(0, keepdim=True)
        surrogate = score_function_surrogate(f, log_q, kl_analytic, signal)
        return type(out)(surrogate, out.elbo, out.learning_signal)


def test_z_test_detects_a_known_bias():
    """Power check at the same R: LeaveOneIn must fail the test."""
    model, x = small_vae(), small_batch()
    estimator = LeaveOneIn(model, kl="analytic", n_particles=2)
    reference = reference_gradient(model, lambda: quadrature_elbo(model, x))
    with pytest.raises(AssertionError, match="encoder: max"):
        assert_unbiased(estimator, x, reference, seed=2)


def test_stl_has_zero_encoder_variance_at_exact_posterior():
    """At q = p(z|x) the per-sample ELBO log p(x, z) − log q(z|x) = log p(x) is constant in z, so
    STL's encoder gradient is exactly zero for every draw; reparam keeps the score term."""
    model, x = linear_gaussian_model()
    model.set_exact_posterior()
    stl = gradient_statistics(make_estimator("stl", model, "mc"), x, 200)
    reparam = gradient_statistics(make_estimator("reparam", model, "mc"), x, 200)
    assert reparam["grad_var_encoder"] > 0.1
    assert stl["grad_var_encoder"] < 1e-12 * reparam["grad_var_encoder"]  # float64 round-off


@pytest.mark.parametrize(("name", "kl", "n_particles"), all_configurations(objective=None))
def test_vmap_and_loop_draws_agree(name, kl, n_particles):
    model, x = small_vae(), small_batch()
    estimator = make_estimator(name, model, kl, n_particles)
    batched = gradient_draws(estimator, x, 5, torch.Generator().manual_seed(4), method="vmap")
    looped = gradient_draws(estimator, x, 5, torch.Generator().manual_seed(4), method="loop")
    for group in batched:
        assert torch.allclose(batched[group], looped[group], rtol=1e-10, atol=1e-12)


def test_decoder_gradient_is_the_same_for_every_estimator():
    """Only ∇_φ differs between ELBO estimators: with the same noise, ∇_θ is identical. (RQMC
    estimators draw other noise; their forward is their counterpart's, test_quasirandom.)"""
    model, x = small_vae(), small_batch()
    decoder = {}
    for name, kl, _ in all_configurations():
        if REGISTRY[name].monte_carlo_counterpart is not None:
            continue
        estimator = make_estimator(name, model, kl, 2)
        decoder[name, kl] = gradient_draws(estimator, x, 3, torch.Generator().manual_seed(5))[
            "decoder"
        ]
    first = next(iter(decoder.values()))
    for key, value in decoder.items():
        assert torch.allclose(value, first, rtol=1e-10), key


def test_nvil_draws_are_rescaled_to_estimate_the_elbo_gradient():
    """NVIL's optimiser sees ∇L / max(1, √v); gradient_draws reports c⁻¹ times that, so the
    encoder draws scale with the normalisation exactly and the decoder draws not at all."""
    model, x = small_vae(), small_batch()
    estimator = make_estimator("score_nvil", model, "mc")
    plain = gradient_draws(estimator, x, 4, torch.Generator().manual_seed(8))
    estimator.signal_var.fill_(16.0)  # normalisation factor 4
    assert estimator.encoder_gradient_scale() == 0.25
    rescaled = gradient_draws(estimator, x, 4, torch.Generator().manual_seed(8))
    for group in plain:
        assert torch.allclose(plain[group], rescaled[group], rtol=1e-9, atol=1e-12)
    surrogate = estimator(x, estimator.sample_noise(len(x), torch.Generator().manual_seed(8)))
    encoder_weight = model.encoder[0].weight
    (raw,) = torch.autograd.grad(surrogate.surrogate, [encoder_weight])
    assert torch.allclose(raw * 4, plain["encoder"][0][: raw.numel()].view_as(raw), rtol=1e-9)


def test_nvil_baseline_network_learns_from_its_regression_term():
    model, x = small_vae(), small_batch()
    estimator = make_estimator("score_nvil", model, "analytic")
    out = estimator(x, estimator.sample_noise(len(x), torch.Generator().manual_seed(6)))
    out.surrogate.backward()
    assert all(
        p.grad is not None and p.grad.abs().sum() > 0 for p in estimator.baseline_net.parameters()
    )


def test_running_baselines_are_exponential_moving_averages():
    """The first update sets the running statistics to the batch's; later ones blend with the
    estimator's decay: b ← d·b + (1 − d)·(batch value)."""
    model, x = small_vae(), small_batch()
    generator = torch.Generator().manual_seed(7)
    for name, tracked, signal in (
        ("score_ma", "baseline", lambda out: out.learning_signal),
        ("score_nvil", "signal_mean", lambda out: out.stats["residual"]),
    ):
        estimator = make_estimator(name, model, "mc")
        first = estimator(x, estimator.sample_noise(len(x), generator))
        estimator.update_state(first)
        assert getattr(estimator, tracked) == pytest.approx(signal(first).mean().item())
        second = estimator(x, estimator.sample_noise(len(x), generator))
        estimator.update_state(second)
        decay = estimator.decay
        expected = decay * signal(first).mean() + (1 - decay) * signal(second).mean()
        assert getattr(estimator, tracked) == pytest.approx(expected.item())
    first_var = first.stats["residual"].var(unbiased=False)
    second_var = second.stats["residual"].var(unbiased=False)
    expected_var = decay * first_var + (1 - decay) * second_var
    assert estimator.signal_var == pytest.approx(expected_var.item())


def test_unknown_estimator_lists_valid_names():
    with pytest.raises(EstimatorError, match="unknown estimator 'foo'; valid: reparam, stl"):
        make_estimator("foo", small_vae())


def test_unknown_kl_mode_lists_valid_modes():
    with pytest.raises(EstimatorError, match="unknown KL mode 'exact'; valid: analytic, mc"):
        make_estimator("reparam", small_vae(), kl="exact")


def test_stl_refuses_analytic_kl_and_says_why():
    with pytest.raises(EstimatorError, match="does not support kl='analytic'.*score term"):
        make_estimator("stl", small_vae(), kl="analytic")


def test_leave_one_out_needs_two_particles():
    with pytest.raises(EstimatorError, match="needs n_particles \\(K\\) >= 2, got 1"):
        make_estimator("score_loo", small_vae(), n_particles=1)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (dict(activation="sigmoidal"), "unknown activation 'sigmoidal'; valid: tanh"),
        (dict(latent_dim=0), "latent_dim must be a positive integer"),
        (dict(hidden=(500, -1)), "hidden\\[1\\] must be a positive integer"),
        (dict(latent="poisson"), "unknown latent type 'poisson'; valid: gaussian, bernoulli"),
    ],
)
def test_bad_model_config_is_refused(config, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**config)


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        (torch.zeros(4, 5), "expected a minibatch of shape \\(M, 6\\), got \\(4, 5\\)"),
        (torch.zeros(6), "expected a minibatch of shape"),
        (torch.full((2, 6), float("nan")), "NaN or infinite"),
    ],
)
def test_bad_minibatch_is_refused(batch, message):
    with pytest.raises(ValueError, match=message):
        small_vae().check_input(batch)
