"""Latent-variable models with a diagonal Gaussian q(z|x).

Every model exposes the four pieces an estimator needs — q(z|x) as (mean, log-variance),
log p(z), log p(x|z) and the analytic KL(q(z|x) ‖ p(z)) — and says which parameters are the
encoder's (φ, inference network) and which the generative model's (θ, "decoder").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vae_core.objectives import (
    analytic_kl_standard_normal,
    bernoulli_log_likelihood,
    diag_gaussian_log_density,
    standard_normal_log_density,
)

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "softplus": nn.Softplus,
    "elu": nn.ELU,
}
PARAMETER_GROUPS = ("encoder", "decoder")


@dataclass(frozen=True)
class ModelConfig:
    """MLP VAE shape. Defaults: Kingma & Welling (2014) MNIST set-up, 500 tanh units, 20 latents."""

    input_dim: int = 784
    hidden: tuple[int, ...] = (500,)
    latent_dim: int = 20
    activation: str = "tanh"

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"unknown activation {self.activation!r}; valid: {', '.join(ACTIVATIONS)}"
            )
        sizes = {"input_dim": self.input_dim, "latent_dim": self.latent_dim}
        sizes.update({f"hidden[{i}]": h for i, h in enumerate(self.hidden)})
        for label, size in sizes.items():
            if not isinstance(size, int) or size < 1:
                raise ValueError(f"{label} must be a positive integer, got {size!r}")


class GaussianLatentModel(nn.Module):
    """Interface: q(z|x) = N(mean, diag exp(log_var)), prior p(z), likelihood p(x|z)."""

    latent_dim: int

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, log_var) of q(z|x), each of shape (M, latent_dim)."""
        raise NotImplementedError

    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z), summed over latent dimensions; z may carry leading sample dimensions."""
        raise NotImplementedError

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(x|z) for z of shape (..., M, latent_dim) and x of shape (M, D) → (..., M)."""
        raise NotImplementedError

    def kl_to_prior(self, mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
        """Analytic KL(q(z|x) ‖ p(z)) per example, shape (M,)."""
        raise NotImplementedError

    def parameter_group(self, name: str) -> str:
        """'encoder' (φ) or 'decoder' (θ, the whole generative model) for a parameter name."""
        return "encoder" if name.startswith("encoder") else "decoder"

    def check_input(self, x: torch.Tensor) -> None:
        """Refuse a minibatch that is not (M, input_dim) with finite values."""
        if x.dim() != 2 or x.shape[1] != self.input_dim:
            raise ValueError(
                f"expected a minibatch of shape (M, {self.input_dim}), got {tuple(x.shape)}"
            )
        if not torch.isfinite(x).all():
            raise ValueError("minibatch contains NaN or infinite values")


def mlp(sizes: list[int], activation: str) -> nn.Sequential:
    """Linear layers of the given sizes with `activation` between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


class BernoulliVAE(GaussianLatentModel):
    """MLP VAE of Kingma & Welling (2014): Gaussian encoder, N(0, I) prior, Bernoulli decoder."""

    def __init__(self, config: ModelConfig = ModelConfig()) -> None:
        super().__init__()
        self.config = config
        self.input_dim = config.input_dim
        self.latent_dim = config.latent_dim
        hidden = list(config.hidden)
        # The encoder's last layer outputs [mean, log_var] side by side.
        self.encoder = mlp([config.input_dim, *hidden, 2 * config.latent_dim], config.activation)
        self.decoder = mlp(
            [config.latent_dim, *reversed(hidden), config.input_dim], config.activation
        )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_var = self.encoder(x).chunk(2, dim=-1)
        return mean, log_var

    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        return standard_normal_log_density(z)

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return bernoulli_log_likelihood(x, self.decoder(z))

    def kl_to_prior(self, mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
        return analytic_kl_standard_normal(mean, log_var)


class LinearGaussianModel(GaussianLatentModel):
    """z ~ N(μ, I), x|z ~ N(z, I), with q(z|x) = N(a ⊙ x + b, diag exp(log_var)).

    The exact posterior is N((x + μ)/2, I/2), reached at a = ½, b = μ/2, log_var = log ½, where
    the ELBO equals log p(x) and the per-sample ELBO is constant in z. A test bed with closed forms.
    The generative parameter μ is the 'decoder' group; a, b, log_var are the 'encoder' group.
    """

    def __init__(self, dim: int, prior_mean: torch.Tensor | None = None) -> None:
        super().__init__()
        self.input_dim = dim
        self.latent_dim = dim
        self.prior_mean = nn.Parameter(torch.zeros(dim) if prior_mean is None else prior_mean)
        self.encoder_scale = nn.Parameter(torch.ones(dim))
        self.encoder_shift = nn.Parameter(torch.zeros(dim))
        self.encoder_log_var = nn.Parameter(torch.zeros(dim))

    @torch.no_grad()
    def set_exact_posterior(self) -> None:
        """Put q(z|x) at the exact posterior N((x + μ)/2, I/2)."""
        self.encoder_scale.fill_(0.5)
        self.encoder_shift.copy_(self.prior_mean / 2)
        self.encoder_log_var.fill_(torch.log(torch.tensor(0.5)).item())

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.encoder_scale * x + self.encoder_shift
        return mean, self.encoder_log_var.expand_as(mean)

    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        return diag_gaussian_log_density(z, self.prior_mean, torch.zeros_like(z))

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return diag_gaussian_log_density(x, z, torch.zeros_like(z))

    def kl_to_prior(self, mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
        # KL(N(m, s²) ‖ N(μ, I)) = ½ Σ (s² + (m − μ)² − 1 − log s²)
        return analytic_kl_standard_normal(mean - self.prior_mean, log_var)

    def exact_elbo(self, x: torch.Tensor) -> torch.Tensor:
        """Closed-form ELBO per example: E_q log N(x; z, I) − KL, with E_q (x−z)² = (x−m)² + s²."""
        mean, log_var = self.encode(x)
        expected_log_lik = -0.5 * (
            torch.log(torch.tensor(2 * torch.pi)) + (x - mean).pow(2) + torch.exp(log_var)
        ).sum(-1)
        return expected_log_lik - self.kl_to_prior(mean, log_var)

    def parameter_group(self, name: str) -> str:
        return "decoder" if name == "prior_mean" else "encoder"
