"""The small problems an estimator is checked on, each with its exact objective (vae_core.exact).

An estimator declares its latent type and `objective`; the problems are those of the tests:
Gaussian latents and the ELBO, the 2-latent VAE by quadrature and the linear-Gaussian closed
form; the IWAE bound L_K, the 1-latent VAE by quadrature over K noise variables; binary and
categorical latents, enumeration.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import repeat

import torch

from vae_core.estimators import Estimator, EstimatorError, adapt_auxiliary_state
from vae_core.exact import (
    binary_vae,
    categorical_vae,
    enumerated_elbo,
    linear_gaussian_model,
    one_latent_vae,
    quadrature_elbo,
    quadrature_iwae_bound,
    small_batch,
    small_vae,
)
from vae_core.models import LatentModel

MAX_QUADRATURE_PARTICLES = 3  # L_K by quadrature costs 40^K nodes
WARM_UP_STEPS = 100
WARM_UP_LEARNING_RATE = 1e-2  # Adam on the estimator's own parameters (baselines, control variates)


@dataclass(frozen=True)
class Problem:
    """A model, a minibatch and the exact objective whose gradient the estimator must estimate."""

    label: str
    model: LatentModel
    x: torch.Tensor
    objective: Callable[[], torch.Tensor]


def problems(cls: type[Estimator], n_particles: int, beta: float = 1.0) -> list[Problem]:
    """The problems for `cls` at K = n_particles and KL weight β, the first the primary one."""
    if cls.objective not in ("elbo", "iwae"):
        raise EstimatorError(f"unknown objective {cls.objective!r}; valid: elbo, iwae")
    if cls.latent == "gaussian" and cls.objective == "iwae":
        if n_particles > MAX_QUADRATURE_PARTICLES:
            raise EstimatorError(f"L_K by quadrature needs K <= {MAX_QUADRATURE_PARTICLES}")
        model, x = one_latent_vae(), small_batch()
        return [
            Problem(
                "L_K quadrature",
                model,
                x,
                lambda: quadrature_iwae_bound(model, x, n_particles, beta=beta),
            )
        ]
    if cls.latent == "gaussian":
        model, x = small_vae(), small_batch()
        found = [Problem("quadrature", model, x, lambda: quadrature_elbo(model, x, beta=beta))]
        if beta == 1.0:  # the closed form is the β = 1 ELBO
            linear, y = linear_gaussian_model()
            found.append(Problem("linear-Gaussian", linear, y, lambda: linear.exact_elbo(y).mean()))
        return found
    builders = {"bernoulli": binary_vae, "categorical": categorical_vae}
    if cls.latent not in builders:
        raise EstimatorError(f"no exact reference for {cls.latent} latents")
    model, x = builders[cls.latent](), small_batch()
    return [Problem("enumeration", model, x, lambda: enumerated_elbo(model, x, beta))]


def smallest_particles(cls: type[Estimator], at_least: int = 1) -> int:
    """The smallest K >= at_least that `cls` declares valid (>= min_particles, a multiple of
    particles_multiple)."""
    k = max(cls.min_particles, at_least, 1)
    return k + (-k) % cls.particles_multiple


def checked_particles(cls: type[Estimator]) -> int:
    """The K checked: the smallest valid one, or the smallest valid K >= 2 when K changes the
    objective (L_K) or the noise (RQMC), so that what depends on K is checked."""
    return smallest_particles(cls, 2 if cls.objective == "iwae" or cls.sweeps_particles else 1)


def warmed_up(estimator: Estimator, x: torch.Tensor, seed: int) -> Estimator:
    """The estimator after WARM_UP_STEPS of its own state's training on `x` at fixed model
    parameters (`adapt_auxiliary_state`). Any fixed state must leave it unbiased; this is one
    where baselines track the learning signal."""
    generator = torch.Generator().manual_seed(seed)
    adapt_auxiliary_state(estimator, repeat(x, WARM_UP_STEPS), WARM_UP_LEARNING_RATE, generator)
    return estimator
