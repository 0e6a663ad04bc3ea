"""ELBO pieces: Gaussian and Bernoulli densities, analytic and Monte Carlo KL, the IWAE bound,
log p(x).

All log densities are summed over the event (last) dimension and are in nats.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from vae_core.models import GaussianLatentModel, LatentModel

LOG_2PI = math.log(2.0 * math.pi)


def diag_gaussian_log_density(
    z: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor
) -> torch.Tensor:
    """log N(z; mean, diag(exp(log_var))) = −½ Σ_d [log 2π + log σ²_d + (z_d − μ_d)² / σ²_d]."""
    return -0.5 * (LOG_2PI + log_var + (z - mean).pow(2) * torch.exp(-log_var)).sum(-1)


def standard_normal_log_density(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) = −½ Σ_d [log 2π + z_d²]."""
    return -0.5 * (LOG_2PI + z.pow(2)).sum(-1)


def bernoulli_log_likelihood(x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """log Bernoulli(x; sigmoid(logits)) = Σ_d [x_d log p_d + (1 − x_d) log(1 − p_d)].

    `logits` may carry leading sample dimensions; `x` broadcasts against them.
    """
    return -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(
        -1
    )


def bernoulli_log_density(b: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """log Π_d Bernoulli(b_d; σ(α_d)) = Σ_d [b_d log σ(α_d) + (1 − b_d) log σ(−α_d)];
    `b` and `logits` broadcast against each other (either may carry sample dimensions)."""
    b, logits = torch.broadcast_tensors(b, logits)
    return -F.binary_cross_entropy_with_logits(logits, b, reduction="none").sum(-1)


def analytic_kl_bernoulli(logits: torch.Tensor, prior_logits: torch.Tensor) -> torch.Tensor:
    """KL(Π Bern(σ(α)) ‖ Π Bern(σ(c))) = Σ_d [q_d (log σ(α_d) − log σ(c_d))
    + (1 − q_d)(log σ(−α_d) − log σ(−c_d))], q = σ(α)."""
    q = torch.sigmoid(logits)
    return (
        q * (F.logsigmoid(logits) - F.logsigmoid(prior_logits))
        + (1 - q) * (F.logsigmoid(-logits) - F.logsigmoid(-prior_logits))
    ).sum(-1)


def analytic_kl_standard_normal(mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, σ²) ‖ N(0, I)) = ½ Σ_d (μ_d² + σ_d² − 1 − log σ_d²)  (Kingma & Welling, App. B)."""
    return 0.5 * (mean.pow(2) + torch.exp(log_var) - 1.0 - log_var).sum(-1)


def mc_kl(
    model: GaussianLatentModel, z: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor
) -> torch.Tensor:
    """Single-sample Monte Carlo KL: log q(z|x) − log p(z) at z ~ q(z|x). Unbiased for the KL."""
    return diag_gaussian_log_density(z, mean, log_var) - model.log_prior(z)


def iwae_bound(log_weights: torch.Tensor) -> torch.Tensor:
    """IWAE bound log (1/K) Σ_k w_k from log w_k = log p(x, z_k) − log q(z_k|x), over dim 0."""
    return torch.logsumexp(log_weights, dim=0) - math.log(log_weights.shape[0])


@torch.no_grad()
def log_weights(
    model: LatentModel, x: torch.Tensor, n_samples: int, generator: torch.Generator | None
) -> torch.Tensor:
    """log w_k = log p(x|z_k) + log p(z_k) − log q(z_k|x) for z_k ~ q(z|x); shape (n_samples, M)."""
    z, log_q, _ = model.sample_posterior(x, n_samples, generator)
    return model.log_likelihood(x, z) + model.log_prior(z) - log_q


@torch.no_grad()
def log_likelihood_estimate(
    model: LatentModel,
    x: torch.Tensor,
    n_samples: int,
    generator: torch.Generator | None = None,
    chunk_size: int = 500,
) -> torch.Tensor:
    """Importance-sampled log p(x) ≈ log (1/k) Σ_k p(x, z_k)/q(z_k|x) per example (Burda et al.).

    A lower bound in expectation (the IWAE bound with k = n_samples) that tightens as k grows.
    Samples are drawn `chunk_size` at a time and combined exactly with logsumexp.
    """
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    chunks = []
    remaining = n_samples
    while remaining > 0:
        size = min(chunk_size, remaining)
        chunks.append(torch.logsumexp(log_weights(model, x, size, generator), dim=0))
        remaining -= size
    return torch.logsumexp(torch.stack(chunks), dim=0) - math.log(n_samples)


@torch.no_grad()
def distortion_and_rate(
    model: LatentModel, x: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per example: distortion −log p(x|z) at one z ~ q(z|x), and rate KL(q(z|x) ‖ p(z)) in
    closed form (Alemi et al. 2018). ELBO = −(distortion + rate)."""
    z, _, rate = model.sample_posterior(x, 1, generator)
    return -model.log_likelihood(x, z[0]), rate


def elbo_estimate(
    model: LatentModel, x: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Per-example ELBO, E_q[log p(x|z)] − KL(q‖p), with one z per example and the analytic KL."""
    distortion, rate = distortion_and_rate(model, x, generator)
    return -(distortion + rate)
