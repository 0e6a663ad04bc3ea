"""Gradient estimators for the VAE encoder, one registry.

Interface (see `base.Estimator`): `est = make_estimator(name, model, kl, n_particles)`;
`noise = est.sample_noise(M, generator)`; `out = est(x, noise)` gives `out.surrogate`, a scalar
whose gradient estimates ∇ of the minibatch-mean ELBO, and `out.elbo`, the detached per-example
ELBO. After an optimiser step, `est.update_state(out)` advances any running baseline.

Each estimator declares what it supports (`latent`, `kl_modes`, `min_particles`); `make_estimator`
refuses anything else with a message that says what is valid.
"""

from vae_core.estimators import pathwise, score  # noqa: F401  (registers the estimators)
from vae_core.estimators.base import (
    KL_MODES,
    REGISTRY,
    Estimator,
    EstimatorError,
    EstimatorOutput,
    adapt_auxiliary_state,
    check_options,
    make_estimator,
    register,
)

from vae_core.estimators import multisample  # noqa: F401  # isort: skip  (listed after)
from vae_core.estimators import quasi_monte_carlo  # noqa: F401  # isort: skip
from vae_core.estimators import discrete  # noqa: F401  # isort: skip
from vae_core.estimators import relax  # noqa: F401  # isort: skip
from vae_core.estimators import control_variates  # noqa: F401  # isort: skip
from vae_core.estimators import reinmax  # noqa: F401  # isort: skip
from vae_core.estimators import categorical  # noqa: F401  # isort: skip

__all__ = [
    "KL_MODES",
    "REGISTRY",
    "Estimator",
    "EstimatorError",
    "EstimatorOutput",
    "adapt_auxiliary_state",
    "check_options",
    "make_estimator",
    "register",
]
