"""Pathwise (reparameterisation) gradients: z = μ_φ(x) + σ_φ(x) ⊙ ε, ε ~ N(0, I)."""

from __future__ import annotations

import torch

from vae_core.estimators.base import Estimator, EstimatorOutput, register
from vae_core.models import stopped


@register("reparam")
class Reparam(Estimator):
    """∇_φ L ≈ (1/K) Σ_k ∇_φ f(μ + σ ε_k) − ∇_φ KL: differentiate through the sample
    (Kingma & Welling 2014; Rezende et al. 2014)."""

    summary = "pathwise gradient through z = mu + sigma*eps (Kingma & Welling 2014)"

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> EstimatorOutput:
        f, kl_analytic, _ = self.sample_terms(x, noise, stop_path=False)
        objective = f.mean(0) - kl_analytic
        return EstimatorOutput(objective.mean(), objective.detach(), f.detach())


@register("stl")
class StickingTheLanding(Estimator):
    """Pathwise gradient of log p(x, z) − log q_φ'(z|x) with φ' = stop_gradient(φ) in the density:
    drops the zero-mean score term −∇_φ log q_φ(z|x)|_z, so the encoder gradient vanishes
    whenever q is the exact posterior (Roeder, Wu & Duvenaud 2017)."""

    summary = (
        "pathwise, score term of log q stopped; zero variance at exact posterior (Roeder 2017)"
    )
    variance_counterpart = "reparam"
    kl_modes = ("mc",)
    unsupported_reason = {
        "analytic": "STL removes the score term of the Monte Carlo log q(z|x); "
        "a closed-form KL has no such term to remove"
    }

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> EstimatorOutput:
        posterior = self.model.posterior(x)
        z = self.model.transform(posterior, noise)
        log_q_stopped = self.model.log_posterior(z, stopped(posterior))
        f = self.log_weight(x, z, log_q_stopped)
        objective = f.mean(0)
        return EstimatorOutput(objective.mean(), objective.detach(), f.detach())
