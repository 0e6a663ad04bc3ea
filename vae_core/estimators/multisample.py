"""Multi-sample estimators: gradients of the importance-weighted bound (Burda et al. 2016)

    L_K = E_{z_1..K ~ q(z|x)}[log (1/K) Σ_k w_k],   log w_k = log p(x, z_k) − log q(z_k|x),

with z_k = μ + σ ε_k. L_1 is the ELBO; L_K ≤ L_{K+1} ≤ log p(x). These estimators target ∇L_K,
not ∇ELBO (`objective = "iwae"`): their `elbo` output is the per-example estimate of L_K, a
tighter bound than the ELBO, and `learning_signal` is log w, shape (K, M).

Write w̃_k = w_k / Σ_j w_j (normalised weights, detached). Every estimator here has the same
decoder gradient Σ_k w̃_k ∇_θ log p(x, z_k), the exact gradient of the sampled bound; they differ
in ∇_φ. The bound needs the per-sample log weights, so the KL is always inside log w (kl='mc').
"""

from __future__ import annotations

import math

import torch

from vae_core.densities import iwae_bound
from vae_core.estimators.base import Estimator, EstimatorOutput, register, scale_gradient
from vae_core.models import Posterior, stopped


class MultiSampleEstimator(Estimator):
    """Shared pieces of the IWAE-bound estimators (not registered itself)."""

    objective = "iwae"
    sweeps_particles = True
    kl_modes = ("mc",)
    unsupported_reason = {
        "analytic": "the IWAE bound needs per-sample log weights log p(x, z_k) − log q(z_k|x); "
        "there is no closed-form KL inside log (1/K) Σ_k w_k"
    }

    def sample(self, x: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, Posterior]:
        """(z, posterior): z = μ + σ ε of shape (K, M, D), with a path to φ, and (μ, log σ²)."""
        posterior = self.model.posterior(x)
        return self.model.transform(posterior, noise), posterior

    def log_weights(self, x: torch.Tensor, z: torch.Tensor, posterior: Posterior) -> torch.Tensor:
        """log w_k = log p(x|z_k) + β (log p(z_k) − log q(z_k|x)), q under `posterior`, (K, M)."""
        return self.log_weight(x, z, self.model.log_posterior(z, posterior))

    def output(self, surrogate: torch.Tensor, log_weights: torch.Tensor) -> EstimatorOutput:
        """`elbo` is the per-example IWAE bound estimate log (1/K) Σ_k w_k (L_K, not the ELBO)."""
        log_weights = log_weights.detach()
        return EstimatorOutput(surrogate, iwae_bound(log_weights), log_weights)


@register("iwae")
class IWAE(MultiSampleEstimator):
    """∇ ≈ ∇ log (1/K) Σ_k w_k(μ + σ ε_k): the pathwise gradient of the sampled bound
    (Burda et al. 2016). ∇_φ = Σ_k w̃_k ∇_φ log w_k; at K = 1 it is `reparam` with kl='mc'."""

    summary = "importance-weighted bound, K samples, pathwise gradient (Burda et al. 2016)"

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> EstimatorOutput:
        z, posterior = self.sample(x, noise)
        log_weights = self.log_weights(x, z, posterior)
        return self.output(iwae_bound(log_weights).mean(), log_weights)


@register("dreg")
class DReG(MultiSampleEstimator):
    """Doubly reparameterised gradient (Tucker, Lawson, Gu & Maddison 2019):
    ∇_φ ≈ Σ_k w̃_k² ∂log w_k/∂z_k · ∂z_k/∂φ (φ stopped inside q), ∇_θ = Σ_k w̃_k ∇_θ log p(x, z_k).
    Unbiased for ∇L_K; the encoder gradient vanishes at q = p(z|x). At K = 1 it is `stl`.

    Surrogate Σ_k w̃_k log w_k(z'_k), φ stopped in q, where z' = z in value but carries w̃_k × its
    gradient. Proof: θ is not behind z', so ∇_θ = Σ_k w̃_k ∇_θ log p(x, z_k); φ is reached only
    through z', so ∇_φ = Σ_k w̃_k · w̃_k ∂log w_k/∂z_k ∂z_k/∂φ. w̃ comes from a gradient-free
    forward pass, so there is one backward pass: a training step costs ~1.25× IWAE's (mlp500,
    K = 5, CPU), against ~1.75× for a second, decoder-only backward pass.

    With a KL weight β (log w_k = log p(x|z_k) + β log p(z_k) − β log q), the score term is
    −β Σ_k w̃_k ∇_φ log q(z_k), and E[w̃_k ∇_φ log q(z_k)] = E[∂w̃_k/∂z_k ∂z_k/∂φ] with
    ∂w̃_k/∂z_k = w̃_k (1 − w̃_k) ∂log w_k/∂z_k: the weight becomes w̃_k (1 − β + β w̃_k), so z'
    carries (1 − β + β w̃_k) × its gradient.
    """

    summary = "doubly reparameterised IWAE encoder gradient, weights w~^2 (Tucker et al. 2019)"
    variance_counterpart = "iwae"

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> EstimatorOutput:
        z, posterior = self.sample(x, noise)
        posterior = stopped(posterior)  # φ stopped inside q
        with torch.no_grad():
            weights = torch.softmax(self.log_weights(x, z, posterior), dim=0)
        path_weights = 1 - self.beta + self.beta * weights  # w̃_k at β = 1 (see the docstring)
        log_weights = self.log_weights(x, scale_gradient(z, path_weights[..., None]), posterior)
        return self.output((weights * log_weights).sum(0).mean(), log_weights)


@register("iwae_stl")
class IWAESTL(MultiSampleEstimator):
    """STL applied to IWAE: ∇ of log (1/K) Σ_k w_k with φ stopped inside q, pathwise through z,
    so ∇_φ ≈ Σ_k w̃_k ∂log w_k/∂z_k · ∂z_k/∂φ (Roeder et al. 2017's trick at K samples).

    BIASED for K > 1: the dropped score term Σ_k w̃_k ∇_φ log q(z_k|x) has mean zero only at K = 1,
    where this is `stl` (Tucker et al. 2019; DReG is the unbiased correction, and the harness
    measures the bias against it at the same K). tests/test_multisample.py detects the bias. The
    decoder gradient is IWAE's, unbiased.
    """

    summary = "IWAE with the score term of log q stopped (STL); BIASED for K>1 (Tucker 2019)"
    bias_reference = "dreg"

    @classmethod
    def is_biased(cls, n_particles: int) -> bool:
        return n_particles > 1  # at K = 1 it is stl, unbiased

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> EstimatorOutput:
        z, posterior = self.sample(x, noise)
        log_weights = self.log_weights(x, z, stopped(posterior))  # φ stopped in q
        return self.output(iwae_bound(log_weights).mean(), log_weights)


@register("vimco")
class VIMCO(MultiSampleEstimator):
    """Multi-sample score function with leave-one-out baselines (Mnih & Rezende 2016):
    ∇_φ ≈ Σ_k (L̂ − L̂_{−k}) ∇_φ log q(z_k|x) + Σ_k w̃_k ∇_φ log w_k|_z (the last = −∇_φ log q),
    L̂ = log (1/K) Σ_j w_j, L̂_{−k} = L̂ with log w_k replaced by the mean of the other K − 1 log
    weights (the geometric-mean baseline). L̂_{−k} does not depend on z_k, so it is unbiased.

    Surrogate Σ_k (L̂ − L̂_{−k})ᐟ log q(z_k|x) + L̂, with z detached everywhere.
    """

    summary = "multi-sample score function, leave-one-out baselines, K>=2 (Mnih & Rezende 2016)"
    min_particles = 2

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> EstimatorOutput:
        # No pathwise gradient: φ is reached through the density q only.
        z, log_q = self.model.sample(self.model.posterior(x), noise, stop_path=True)
        log_weights = self.log_weight(x, z, log_q)
        bound = iwae_bound(log_weights)  # (M,)
        signal = bound.detach() - self.leave_one_out_bounds(log_weights.detach())
        return self.output((signal * log_q).sum(0).mean() + bound.mean(), log_weights)

    @staticmethod
    def leave_one_out_bounds(log_weights: torch.Tensor) -> torch.Tensor:
        """L̂_{−k} for each k, shape (K, M): row k of the (K, K, M) table holds log w with entry
        k replaced by the mean of the other log weights."""
        k = log_weights.shape[0]
        others_mean = (log_weights.sum(0, keepdim=True) - log_weights) / (k - 1)
        diagonal = torch.eye(k, dtype=torch.bool, device=log_weights.device)[:, :, None]
        replaced = torch.where(diagonal, others_mean[:, None, :], log_weights[None, :, :])
        return torch.logsumexp(replaced, dim=1) - math.log(k)
