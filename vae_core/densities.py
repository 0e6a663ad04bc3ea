"""Densities and divergences on tensors: Gaussian, Bernoulli and categorical log densities,
closed-form KLs, and the log-mean-exp of importance weights (the IWAE bound). Nothing here knows
a model.

All log densities are summed over the event (last) dimension, the categorical ones over the last
two (variables × classes), and are in nats.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

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


def categorical_log_density(one_hot: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """log Π_l Categorical(z_l; softmax(α_l)) = Σ_l Σ_c z_lc log_softmax(α_l)_c for one-hot z;
    both of shape (..., L, C) (they broadcast), summed over the last two dimensions."""
    return (one_hot * torch.log_softmax(logits, -1)).sum((-2, -1))


def analytic_kl_uniform_categorical(logits: torch.Tensor) -> torch.Tensor:
    """KL(Π_l Cat(softmax(α_l)) ‖ Π_l Uniform{1..C}) = Σ_l [Σ_c q_lc log q_lc + log C],
    logits (..., L, C)."""
    log_q = torch.log_softmax(logits, -1)
    return (log_q.exp() * log_q).sum((-2, -1)) + logits.shape[-2] * math.log(logits.shape[-1])


def analytic_kl_standard_normal(mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, σ²) ‖ N(0, I)) = ½ Σ_d (μ_d² + σ_d² − 1 − log σ_d²)  (Kingma & Welling, App. B)."""
    return 0.5 * (mean.pow(2) + torch.exp(log_var) - 1.0 - log_var).sum(-1)


def iwae_bound(log_weights: torch.Tensor) -> torch.Tensor:
    """IWAE bound log (1/K) Σ_k w_k from log w_k = log p(x, z_k) − log q(z_k|x), over dim 0."""
    return torch.logsumexp(log_weights, dim=0) - math.log(log_weights.shape[0])
