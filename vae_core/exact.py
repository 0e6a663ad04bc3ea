"""Exact objectives of small float64 models, the references estimators are tested against.

Gaussian latents: the ELBO and the IWAE bound L_K = E[log (1/K) Σ_k w_k] by tensor-product
Gauss–Hermite quadrature (a 2-latent and a 1-latent VAE), and the linear-Gaussian model's closed
form. Binary and categorical latents: q(z|x) has finitely many atoms, so the β-ELBO is a finite sum
(enumeration). Autograd through any of them (`reference_gradient`) is the exact ∇, grouped as
`vae_core.gradients.gradient_draws` groups its draws. Used by tests/ and `python -m bench check`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import numpy as np
import torch

from vae_core.densities import diag_gaussian_log_density
from vae_core.models import (
    BernoulliVAE,
    LatentModel,
    LinearGaussianModel,
    ModelConfig,
    build_model,
)

QUADRATURE_NODES = 40  # per dimension: converged to ~1e-10 (tests/test_estimators, multisample)


# Small models and minibatches ---------------------------------------------------------------


def small_vae() -> BernoulliVAE:
    """Input 6, hidden (5,), 2 Gaussian latents, float64; q(z|x) moved off the prior."""
    torch.manual_seed(0)
    model = BernoulliVAE(ModelConfig(input_dim=6, hidden=(5,), latent_dim=2)).double()
    with torch.no_grad():  # a q(z|x) away from the prior, so KL gradients are not trivial
        model.encoder[-1].bias.copy_(torch.tensor([0.4, -0.3, -0.5, 0.2], dtype=torch.float64))
    return model


def one_latent_vae() -> BernoulliVAE:
    """Input 6, hidden (5,), one Gaussian latent, float64; q(z|x) moved off the prior."""
    torch.manual_seed(0)
    model = BernoulliVAE(ModelConfig(input_dim=6, hidden=(5,), latent_dim=1)).double()
    with torch.no_grad():
        model.encoder[-1].bias.copy_(torch.tensor([0.4, -0.5], dtype=torch.float64))
    return model


def binary_vae() -> LatentModel:
    """Input 6, hidden (5,), 3 binary latents, float64; q(b|x) and p(b) moved off σ(0) = ½."""
    torch.manual_seed(0)
    config = ModelConfig(input_dim=6, hidden=(5,), latent_dim=3, latent="bernoulli")
    model = build_model(config).double()
    with torch.no_grad():
        model.encoder[-1].bias.copy_(torch.tensor([0.8, -0.6, 1.2], dtype=torch.float64))
        model.prior_logits.copy_(torch.tensor([-0.7, 0.5, 0.3], dtype=torch.float64))
    return model


def categorical_vae() -> LatentModel:
    """Input 6, hidden (5,), 2 variables of 3 classes, float64; q(z|x) moved off uniform."""
    torch.manual_seed(0)
    config = ModelConfig(input_dim=6, hidden=(5,), latent_dim=2, classes=3, latent="categorical")
    model = build_model(config).double()
    with torch.no_grad():
        bias = torch.tensor([0.8, -0.6, 0.1, 1.2, 0.0, -0.9], dtype=torch.float64)
        model.encoder[-1].bias.copy_(bias)
    return model


def small_batch() -> torch.Tensor:
    """3 binary examples of 6 pixels (the minibatch of every small VAE here)."""
    generator = torch.Generator().manual_seed(1)
    return torch.bernoulli(torch.full((3, 6), 0.4, dtype=torch.float64), generator=generator)


def linear_gaussian_model() -> tuple[LinearGaussianModel, torch.Tensor]:
    """The 3-dimensional linear-Gaussian model (prior mean off zero) and 2 examples."""
    model = LinearGaussianModel(3, prior_mean=torch.tensor([0.5, -1.0, 0.2])).double()
    x = torch.tensor([[1.0, 0.0, -2.0], [0.3, 0.3, 0.3]], dtype=torch.float64)
    return model, x


def exact_posterior_model() -> tuple[LinearGaussianModel, torch.Tensor]:
    """`linear_gaussian_model` with q(z|x) at the exact posterior, log ½ to float64 precision."""
    model, x = linear_gaussian_model()
    model.set_exact_posterior()
    with torch.no_grad():  # set_exact_posterior rounds log ½ to float32
        model.encoder_log_var.fill_(math.log(0.5))
    return model, x


def linear_gaussian_log_marginal(model: LinearGaussianModel, x: torch.Tensor) -> torch.Tensor:
    """log p(x) per example: x ~ N(μ, 2I)."""
    return diag_gaussian_log_density(x, model.prior_mean, torch.full_like(x, math.log(2.0)))


# Gaussian latents: quadrature ---------------------------------------------------------------


def gauss_hermite(n_nodes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes and weights of E_{ε~N(0,1)}[g(ε)] ≈ Σ_i W_i g(ε_i)."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(n_nodes)
    return torch.tensor(nodes), torch.tensor(weights / math.sqrt(2 * math.pi))


def quadrature_elbo(
    model: BernoulliVAE, x: torch.Tensor, n_nodes: int = QUADRATURE_NODES, beta: float = 1.0
) -> torch.Tensor:
    """Minibatch-mean β-ELBO, E_q[log p(x|z)] − β KL, the expectation by tensor-product
    Gauss–Hermite quadrature over the latent dimensions (2 for `small_vae`)."""
    nodes, weights = gauss_hermite(n_nodes)
    dim = model.latent_dim
    grid = torch.cartesian_prod(*[nodes] * dim).reshape(-1, 1, dim)
    grid_weights = torch.cartesian_prod(*[weights] * dim).reshape(-1, dim).prod(-1, keepdim=True)
    mean, log_var = model.encode(x)
    z = mean + torch.exp(0.5 * log_var) * grid
    expected_log_lik = (grid_weights * model.log_likelihood(x, z)).sum(0)
    return (expected_log_lik - beta * model.kl_to_prior(mean, log_var)).mean()


def node_log_weights(
    model: BernoulliVAE, x: torch.Tensor, nodes: torch.Tensor, beta: float = 1.0
) -> torch.Tensor:
    """log w = log p(x|z) + β(log p(z) − log q(z|x)) at z = μ + σ ε_i per node of a one-latent
    model: shape (n, M)."""
    mean, log_var = model.encode(x)
    z = mean + torch.exp(0.5 * log_var) * nodes.view(-1, 1, 1)
    log_q = diag_gaussian_log_density(z, mean, log_var)
    return model.log_likelihood(x, z) + beta * (model.log_prior(z) - log_q)


def quadrature_iwae_bound(
    model: BernoulliVAE, x: torch.Tensor, k: int, n_nodes: int = QUADRATURE_NODES, beta: float = 1.0
) -> torch.Tensor:
    """Minibatch-mean L_K of a one-latent model: E over K independent ε of log (1/K) Σ_k w_k, on
    the n^K product grid."""
    nodes, weights = gauss_hermite(n_nodes)
    log_w = node_log_weights(model, x, nodes, beta)
    axis_shapes = [[n_nodes if j == i else 1 for j in range(k)] for i in range(k)]
    per_axis = [log_w.view(*shape, -1) for shape in axis_shapes]  # log w_i on grid axis i
    bound = torch.logsumexp(torch.stack(torch.broadcast_tensors(*per_axis)), 0) - math.log(k)
    grid_weights = math.prod(weights.view(shape) for shape in axis_shapes)
    return (grid_weights.unsqueeze(-1) * bound).sum(tuple(range(k))).mean()


def quadrature_log_marginal(model: BernoulliVAE, x: torch.Tensor) -> torch.Tensor:
    """Minibatch-mean log p(x) = log E_q[w] of a one-latent model (the K → ∞ limit of L_K)."""
    nodes, weights = gauss_hermite(QUADRATURE_NODES)
    log_w = node_log_weights(model, x, nodes)
    return torch.logsumexp(log_w + weights.log().unsqueeze(-1), 0).mean()


# Binary and categorical latents: enumeration ------------------------------------------------


def every_latent(model: LatentModel, batch_size: int) -> torch.Tensor:
    """Every value of z, shape (atoms, M, latent_dim): all b ∈ {0, 1}^D for binary latents, all
    C^L joint states as side-by-side one-hot vectors for categorical ones."""
    if model.latent == "bernoulli":
        atoms = torch.tensor(list(itertools.product((0.0, 1.0), repeat=model.latent_dim)))
    elif model.latent == "categorical":
        eye = torch.eye(model.n_classes)
        states = itertools.product(range(model.n_classes), repeat=model.n_latents)
        atoms = torch.stack([torch.cat([eye[c] for c in state]) for state in states])
    else:
        raise ValueError(f"cannot enumerate {model.latent} latents")
    return atoms.double().unsqueeze(1).expand(-1, batch_size, -1)


def enumerated_elbo(
    model: LatentModel, x: torch.Tensor, beta: float = 1.0, analytic_kl: bool = True
) -> torch.Tensor:
    """Exact minibatch-mean β-ELBO of discrete latents: Σ_z q(z|x) log p(x|z) − β KL(q‖p)
    (analytic_kl), or Σ_z q(z|x) [log p(x|z) + β (log p(z) − log q(z|x))]."""
    z, posterior = every_latent(model, len(x)), model.posterior(x)
    log_q = model.log_posterior(z, posterior)
    q = log_q.exp()
    if analytic_kl:
        per_example = (q * model.log_likelihood(x, z)).sum(0) - beta * model.kl_to_prior(*posterior)
    else:
        log_weight = model.log_likelihood(x, z) + beta * (model.log_prior(z) - log_q)
        per_example = (q * log_weight).sum(0)
    return per_example.mean()


# The exact gradient -------------------------------------------------------------------------


def reference_gradient(
    model: LatentModel, objective: Callable[[], torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Exact ∇ of `objective()` flattened per parameter group, in gradient_draws' order."""
    named = list(model.named_parameters())
    grads = torch.autograd.grad(objective(), [p for _, p in named])
    groups: dict[str, list[torch.Tensor]] = {}
    for (name, _), g in zip(named, grads, strict=True):
        groups.setdefault(model.parameter_group(name), []).append(g.flatten())
    return {group: torch.cat(parts) for group, parts in groups.items()}
