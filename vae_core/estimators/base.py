"""The estimator interface and its registry.

An estimator is an `nn.Module` wrapping a model. Its `forward(x, noise)` returns a *surrogate*:
a scalar whose autograd gradient is the estimator's estimate of ∇ of the minibatch-mean ELBO

    L = (1/M) Σ_m E_{q_φ(z|x_m)}[log p_θ(x_m|z)] − KL(q_φ(z|x_m) ‖ p(z)),

together with the detached per-example ELBO estimate. Training *ascends* the surrogate. All the
randomness is in `noise` (drawn by `sample_noise`), so `forward` is a pure function of
(parameters, buffers, x, noise): the harness can vmap it over independent noise draws.

Estimators differ only in the encoder gradient ∇_φ; the decoder gradient ∇_θ is always the exact
gradient of the sampled objective. State that changes during training (running baselines) lives in
buffers and changes only in `update_state`, never in `forward`.

Multi-sample estimators (`objective = "iwae"`, see `multisample`) target instead the K-sample
importance-weighted bound L_K = E[log (1/K) Σ_k w_k] (Burda et al. 2016), which equals the ELBO at
K = 1 and tightens with K; for them `elbo` is the per-example estimate of L_K.

Estimators for binary latents (`latent = "bernoulli"`, see `discrete`) and categorical latents
(`latent = "categorical"`, see `categorical`) have the same interface with uniform noise
u ~ U(0, 1) in place of ε and the model's Bernoulli q(b|x) or categorical q(z|x); `make_estimator`
refuses to pair an estimator with a model of another latent type.

Every estimator takes a KL weight β (β-VAE; Higgins et al. 2017), default 1: the objective becomes
E_q[log p(x|z)] − β KL, i.e. log p(z) − log q(z|x) is weighted by β inside every log weight.

An estimator may declare options (`options`: name → default, each a positive number, e.g. the
relaxation temperature `tau`); `make_estimator(..., options={"tau": 1.0})` checks and sets them,
and the estimator reads each as an attribute of its name (`self.tau`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from vae_core.models import LatentModel

KL_MODES = ("analytic", "mc")
# The estimator every other one's gradient variance is compared with, by latent type: the
# pathwise gradient for Gaussian latents, DisARM (the lowest-variance unbiased one) for binary,
# two samples without replacement (vae_core.estimators.categorical) for categorical latents.
VARIANCE_REFERENCES = {
    "gaussian": "reparam",
    "bernoulli": "disarm",
    "categorical": "cat_unordered_set",
}


class EstimatorError(ValueError):
    """An estimator name or option combination that is not supported."""


@dataclass(frozen=True)
class EstimatorOutput:
    """surrogate: scalar to ascend; elbo: (M,) detached ELBO estimate per example;
    learning_signal: (K, M) detached f(z_k) (the Monte Carlo integrand per sample);
    stats: estimator-specific detached tensors read by `update_state`."""

    surrogate: torch.Tensor
    elbo: torch.Tensor
    learning_signal: torch.Tensor
    stats: dict[str, torch.Tensor] = field(default_factory=dict)


class Estimator(nn.Module):
    """Base class. Subclasses set the class attributes below and implement `forward`."""

    name: ClassVar[str]
    summary: ClassVar[str]  # one line: the gradient it computes, and the reference
    latent: ClassVar[str] = "gaussian"
    kl_modes: ClassVar[tuple[str, ...]] = KL_MODES
    min_particles: ClassVar[int] = 1
    max_particles: ClassVar[int | None] = None  # a largest K, for an estimator written for one K
    unsupported_reason: ClassVar[dict[str, str]] = {}  # KL mode → why it is refused
    objective: ClassVar[str] = "elbo"  # what the gradient estimates: "elbo", or "iwae" (L_K)
    particles_multiple: ClassVar[int] = 1  # K must be a multiple of this (antithetic pairs: 2)
    # A biased estimator names an unbiased one of the same gradient; the harness measures the
    # bias against many draws of it.
    bias_reference: ClassVar[str | None] = None
    # K is a dimension of the suites' grids (not just the estimator's smallest K): it changes the
    # objective (the IWAE bound L_K) or the noise's point set (RQMC).
    sweeps_particles: ClassVar[bool] = False
    # The same estimator with i.i.d. noise, for one whose noise is not (RQMC): compared at equal K.
    monte_carlo_counterpart: ClassVar[str | None] = None
    # The plain estimator whose encoder gradient variance this one claims to reduce at equal
    # evaluations of f (`python -m bench check` tests the claim), e.g. "score" for a baseline.
    variance_counterpart: ClassVar[str | None] = None
    # Settings that change the gradient (name → default, a positive number), set per run.
    options: ClassVar[dict[str, float]] = {}

    def __init__(
        self,
        model: LatentModel,
        kl: str = "analytic",
        n_particles: int = 1,
        beta: float = 1.0,
        options: dict[str, float] | None = None,
    ):
        super().__init__()
        check_options(type(self), kl, n_particles, beta)
        values = resolve_options(type(self), options or {})
        if model.latent != self.latent:
            raise EstimatorError(
                f"estimator {self.name!r} needs a model with {self.latent} latents,"
                f" got one with {model.latent} latents"
            )
        self.model = model
        self.kl = kl
        self.n_particles = n_particles
        self.beta = float(beta)
        for name, value in values.items():
            setattr(self, name, value)
        self.build_state()

    def build_state(self) -> None:
        """Create the running state (buffers, baseline networks) that `update_state` advances.
        Default: none."""

    @classmethod
    def is_biased(cls, n_particles: int) -> bool:
        """Whether E[ĝ] ≠ ∇ of the objective at K = n_particles: an estimator naming a
        `bias_reference` is biased unless it says otherwise."""
        return cls.bias_reference is not None

    @classmethod
    def evaluations(cls, n_particles: int) -> int:
        """Evaluations of the learning signal f per example per step: K for every estimator
        here (antithetic pairs count both halves)."""
        return n_particles

    @classmethod
    def variance_reference(cls) -> str:
        """The estimator whose gradient variance this one's is compared with."""
        return VARIANCE_REFERENCES[cls.latent]

    def noise_shape(self, batch_size: int) -> tuple[int, ...]:
        """(K, M, latent_dim): one noise vector per particle and example."""
        return (self.n_particles, batch_size, self.model.latent_dim)

    def sample_noise(
        self, batch_size: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """The model's noise in shape `noise_shape`: ε ~ N(0, I) for Gaussian latents,
        u ~ U(0, 1) for binary ones."""
        return self.model.sample_noise(self.noise_shape(batch_size), generator)

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> EstimatorOutput:
        raise NotImplementedError

    def update_state(self, output: EstimatorOutput) -> None:
        """Advance running state (baselines) after an optimiser step. Default: no state."""

    def encoder_gradient_scale(self) -> float:
        """c in E[ĝ_φ] = c · ∇_φ L: 1 for an unbiased estimator; NVIL's normalisation makes it
        1/max(1, √v). Variance measurements divide by it to compare estimates of ∇_φ L."""
        return 1.0

    # Shared pieces -----------------------------------------------------------------------------

    def sample_terms(
        self,
        x: torch.Tensor,
        noise: torch.Tensor,
        stop_path: bool,
        encoder_grad_scale: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """z = g(posterior(x), noise) from the model (μ + σ ε, or b = 1[u < σ(α)]), detached when
        `stop_path` (score-function estimators).

        `encoder_grad_scale` multiplies every gradient that reaches φ through the posterior's
        parameters, leaving the forward values unchanged.

        Returns (f, kl_analytic, log_q): f is the learning signal per sample, shape (K, M):
        log p(x|z) with kl='analytic', `log_weight` (log p(x|z) + β(log p(z) − log q(z|x))) with
        kl='mc'. kl_analytic is β·KL(q‖p) per example (zeros with kl='mc'); log_q is log q(z|x)
        with gradients to φ through the density (not through z when `stop_path`).
        """
        posterior = self.model.posterior(x)
        if encoder_grad_scale is not None:
            posterior = tuple(scale_gradient(t, encoder_grad_scale) for t in posterior)
        z, log_q = self.model.sample(posterior, noise, stop_path)
        return self.signal_terms(x, z, log_q, posterior)

    def signal_terms(
        self,
        x: torch.Tensor,
        z: torch.Tensor,
        log_q: torch.Tensor,
        posterior: tuple[torch.Tensor, ...],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(f, kl_analytic, log_q) of `sample_terms` at samples z with log q(z|x), for either
        latent type; `posterior` holds the parameters of q(z|x) that the model's `kl_to_prior`
        takes: (mean, log_var) or (logits,)."""
        if self.kl == "mc":
            return self.log_weight(x, z, log_q), torch.zeros_like(posterior[0][..., 0]), log_q
        kl_analytic = self.beta * self.model.kl_to_prior(*posterior)
        return self.model.log_likelihood(x, z), kl_analytic, log_q

    def log_weight(self, x: torch.Tensor, z: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
        """log p(x|z) + β (log p(z) − log q(z|x)): the β-ELBO's integrand (log w at β = 1)."""
        return self.model.log_likelihood(x, z) + self.beta * (self.model.log_prior(z) - log_q)

    def elbo_per_example(self, f: torch.Tensor, kl_analytic: torch.Tensor) -> torch.Tensor:
        """Detached objective estimate per example: mean_k f_k − β KL (KL zero in mc mode)."""
        return (f.mean(0) - kl_analytic).detach()


def adapt_auxiliary_state(
    estimator: Estimator,
    minibatches: Iterable[torch.Tensor],
    learning_rate: float,
    generator: torch.Generator,
) -> None:
    """Train the estimator's own state at fixed model parameters, one step per minibatch: Adam
    (at `learning_rate`) ascends the surrogate on its parameters outside the model (learned
    baselines, control variates), then `update_state` advances its buffers. The noise of each
    step comes from `generator`, drawn after the minibatch."""
    own = [p for name, p in estimator.named_parameters() if not name.startswith("model.")]
    optimiser = torch.optim.Adam(own, lr=learning_rate) if own else None
    for x in minibatches:
        output = estimator(x, estimator.sample_noise(x.shape[0], generator))
        if optimiser is not None:
            gradients = torch.autograd.grad(-output.surrogate, own, allow_unused=True)
            for parameter, gradient in zip(own, gradients, strict=True):
                parameter.grad = gradient
            optimiser.step()
        estimator.update_state(output)


def gradient_only(loss: torch.Tensor) -> torch.Tensor:
    """loss − loss.detach(): zero in value, with the gradient of `loss`. A learned control
    variate's own loss enters the surrogate this way (built from detached model tensors, so the
    gradient reaches the control variate only), leaving the surrogate's value the objective."""
    return loss - loss.detach()


def scale_gradient(tensor: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Identity in the forward pass; multiplies the gradient by `scale` in the backward pass."""
    return tensor.detach() + (tensor - tensor.detach()) * scale


def check_options(cls: type[Estimator], kl: str, n_particles: int, beta: float = 1.0) -> None:
    """Raise EstimatorError naming what is wrong and what is valid."""
    if not isinstance(beta, (int, float)) or not math.isfinite(beta) or beta < 0:
        raise EstimatorError(f"beta (the KL weight) must be a finite number >= 0, got {beta!r}")
    if kl not in KL_MODES:
        raise EstimatorError(f"unknown KL mode {kl!r}; valid: {', '.join(KL_MODES)}")
    if kl not in cls.kl_modes:
        reason = cls.unsupported_reason.get(kl, "")
        raise EstimatorError(
            f"estimator {cls.name!r} does not support kl={kl!r}"
            f" (supported: {', '.join(cls.kl_modes)}){': ' + reason if reason else ''}"
        )
    largest = cls.max_particles
    if (
        not isinstance(n_particles, int)
        or n_particles < cls.min_particles
        or (largest is not None and n_particles > largest)
        or n_particles % cls.particles_multiple
    ):
        step = cls.particles_multiple
        multiple = f" and a multiple of {step}" if step > 1 else ""
        bound = f">= {cls.min_particles}"
        if largest == cls.min_particles:
            bound = f"= {largest}"
        elif largest is not None:
            bound = f"in {cls.min_particles}..{largest}"
        raise EstimatorError(
            f"estimator {cls.name!r} needs n_particles (K) {bound}{multiple}, got {n_particles!r}"
        )


def resolve_options(cls: type[Estimator], options: dict[str, float]) -> dict[str, float]:
    """Every option of `cls`: its default, or the value given (a finite number > 0); an option
    `cls` does not declare is an EstimatorError naming the valid ones."""
    unknown = sorted(set(options) - set(cls.options))
    if unknown:
        valid = ", ".join(cls.options) or "none"
        raise EstimatorError(
            f"estimator {cls.name!r} has no option {unknown[0]!r}; its options: {valid}"
        )
    for name, value in options.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise EstimatorError(f"option {cls.name}.{name} must be a number, got {value!r}")
        if not (math.isfinite(value) and value > 0):
            raise EstimatorError(f"option {cls.name}.{name} must be finite and > 0, got {value!r}")
    return {**cls.options, **{name: float(value) for name, value in options.items()}}


REGISTRY: dict[str, type[Estimator]] = {}


def register(name: str) -> Callable[[type[Estimator]], type[Estimator]]:
    """Class decorator: `@register("score_loo")` adds the estimator to the registry."""

    def add(cls: type[Estimator]) -> type[Estimator]:
        if name in REGISTRY:
            raise ValueError(
                f"estimator {name!r} is already registered (by {REGISTRY[name].__module__});"
                " choose another name"
            )
        cls.name = name
        REGISTRY[name] = cls
        return cls

    return add


def make_estimator(
    name: str,
    model: LatentModel,
    kl: str = "analytic",
    n_particles: int = 1,
    beta: float = 1.0,
    options: dict[str, float] | None = None,
) -> Estimator:
    """Build a registered estimator with its `options` set (defaults for those not given);
    unknown names and unsupported options get a clear error."""
    if name not in REGISTRY:
        raise EstimatorError(f"unknown estimator {name!r}; valid: {', '.join(REGISTRY)}")
    return REGISTRY[name](model, kl=kl, n_particles=n_particles, beta=beta, options=options)
