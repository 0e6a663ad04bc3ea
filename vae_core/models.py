"""Latent-variable models: a diagonal Gaussian, a factorised Bernoulli or a factorised categorical
q(z|x).

Every model owns its sampling and exposes the pieces an estimator needs: the parameters of q(z|x)
(`posterior`), noise of its own kind (`sample_noise`: ε ~ N(0, I) or u ~ U(0, 1)), the sample
z = g(posterior, noise) (`transform`: μ + σ ε, b = 1[u < σ(α)], or the one-hot argmax of α plus
Gumbel noise), log q(z|x), log p(z),
log p(x|z) and the analytic KL(q(z|x) ‖ p(z)); and it says which parameters are the encoder's
(φ, inference network) and which the generative model's (θ, "decoder"). `sample` composes them
for estimators, which may first reshape the gradient reaching the posterior parameters (NVIL's
scale, DReG's stopped φ); `sample_posterior` composes them for evaluation.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import ClassVar, NamedTuple

import torch
from torch import nn

from vae_core.densities import (
    analytic_kl_bernoulli,
    analytic_kl_standard_normal,
    analytic_kl_uniform_categorical,
    bernoulli_log_density,
    bernoulli_log_likelihood,
    categorical_log_density,
    diag_gaussian_log_density,
    standard_normal_log_density,
)

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "softplus": nn.Softplus,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,  # negative slope 0.01 (PyTorch's default)
    "leaky_relu_0.3": partial(nn.LeakyReLU, 0.3),  # as in the DisARM code (Dong et al. 2020)
}
PARAMETER_GROUPS = ("encoder", "decoder")
LATENT_TYPES = ("gaussian", "bernoulli", "categorical")


@dataclass(frozen=True)
class ModelConfig:
    """MLP VAE shape. Defaults: Kingma & Welling (2014) MNIST set-up, 500 tanh units, 20 Gaussian
    latents. `latent='bernoulli'` gives binary latents (`BinaryLatentVAE`); `latent='categorical'`
    gives `latent_dim` categorical latents of `classes` classes each (`CategoricalVAE`)."""

    input_dim: int = 784
    hidden: tuple[int, ...] = (500,)
    latent_dim: int = 20
    activation: str = "tanh"
    latent: str = "gaussian"
    classes: int = 1  # classes per latent variable: C ≥ 2 for categorical latents, else 1

    def __post_init__(self) -> None:
        if self.latent not in LATENT_TYPES:
            raise ValueError(
                f"unknown latent type {self.latent!r}; valid: {', '.join(LATENT_TYPES)}"
            )
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"unknown activation {self.activation!r}; valid: {', '.join(ACTIVATIONS)}"
            )
        if (self.latent == "categorical") != (isinstance(self.classes, int) and self.classes > 1):
            raise ValueError(
                f"classes must be an integer >= 2 for categorical latents and 1 otherwise,"
                f" got {self.classes!r} with {self.latent} latents"
            )
        sizes = {"input_dim": self.input_dim, "latent_dim": self.latent_dim}
        sizes.update({f"hidden[{i}]": h for i, h in enumerate(self.hidden)})
        for label, size in sizes.items():
            if not isinstance(size, int) or size < 1:
                raise ValueError(f"{label} must be a positive integer, got {size!r}")


Posterior = tuple[torch.Tensor, ...]  # the parameters of q(z|x): (mean, log_var) or (logits,)


def gumbel(uniform: torch.Tensor) -> torch.Tensor:
    """G = −log(−log u) ~ Gumbel(0, 1) for u ~ U(0, 1) (u clamped to [tiny, 1 − eps] of its
    dtype, so G is finite)."""
    info = torch.finfo(uniform.dtype)
    return -torch.log(-torch.log(uniform.clamp(info.tiny, 1 - info.eps)))


def one_hot_argmax(scores: torch.Tensor) -> torch.Tensor:
    """The one-hot vector of argmax over the last dimension (ties have probability zero for
    continuous noise); written as a comparison so that it vmaps."""
    return (scores == scores.amax(-1, keepdim=True)).to(scores.dtype)


def stopped(posterior: Posterior) -> Posterior:
    """The posterior's parameters with φ stopped: log q(z|x) under them has no gradient to φ."""
    return tuple(t.detach() for t in posterior)


class LatentSample(NamedTuple):
    """z = g(posterior, noise), shape (..., M, latent_dim), and log q(z|x), shape (..., M)."""

    z: torch.Tensor
    log_q: torch.Tensor


class PosteriorSample(NamedTuple):
    """z: n draws z ~ q(z|x), (n, M, latent_dim); log_q: log q(z|x), (n, M); rate: the closed-form
    KL(q(z|x) ‖ p(z)) per example, (M,) (Alemi et al. 2018's rate)."""

    z: torch.Tensor
    log_q: torch.Tensor
    rate: torch.Tensor


def bernoulli_sample(logits: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """b = 1[u < σ(α)] ~ Bernoulli(σ(α)) for u ~ U(0, 1), as a float tensor (no path to α)."""
    return (uniform < torch.sigmoid(logits)).to(logits.dtype)


def data_log_odds(mean: torch.Tensor) -> torch.Tensor:
    """log(p / (1 − p)) of per-pixel probabilities `mean`, clipped to [0.001, 0.999] first."""
    p = mean.clamp(0.001, 0.999)
    return torch.log(p) - torch.log1p(-p)


class LatentModel(nn.Module):
    """Interface shared by every latent type: prior p(z), likelihood p(x|z), posterior q(z|x)."""

    latent: ClassVar[str]
    noise_sampler: ClassVar[Callable[..., torch.Tensor]]  # torch.randn or torch.rand
    input_dim: int
    latent_dim: int

    def posterior(self, x: torch.Tensor) -> Posterior:
        """The parameters of q(z|x), each (M, latent_dim): (mean, log_var) or (logits,)."""
        raise NotImplementedError

    def transform(self, posterior: Posterior, noise: torch.Tensor) -> torch.Tensor:
        """z = g(posterior, noise), a sample of q(z|x) for noise from `sample_noise`."""
        raise NotImplementedError

    def log_posterior(self, z: torch.Tensor, posterior: Posterior) -> torch.Tensor:
        """log q(z|x) under the given posterior parameters, (..., M)."""
        raise NotImplementedError

    def kl_to_prior(self, *posterior: torch.Tensor) -> torch.Tensor:
        """Analytic KL(q(z|x) ‖ p(z)) per example, shape (M,)."""
        raise NotImplementedError

    def sample_noise(
        self, shape: tuple[int, ...], generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Noise of `shape` (last dimension latent_dim) on the model's device and dtype."""
        reference = next(self.parameters())
        return self.noise_sampler(
            shape, generator=generator, device=reference.device, dtype=reference.dtype
        )

    def sample(
        self, posterior: Posterior, noise: torch.Tensor, stop_path: bool = False
    ) -> LatentSample:
        """z = g(posterior, noise) with log q(z|x); `stop_path` detaches z (score-function
        estimators reach φ through log q only), log q keeps its gradient to the posterior."""
        z = self.transform(posterior, noise)
        if stop_path:
            z = z.detach()
        return LatentSample(z, self.log_posterior(z, posterior))

    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z), summed over latent dimensions; z may carry leading sample dimensions."""
        raise NotImplementedError

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(x|z) for z of shape (..., M, latent_dim) and x of shape (M, D) → (..., M)."""
        raise NotImplementedError

    def sample_posterior(
        self, x: torch.Tensor, n_samples: int, generator: torch.Generator | None = None
    ) -> PosteriorSample:
        """n_samples draws z ~ q(z|x) per example with their log q and the rate, from one
        encoder pass; for evaluation (no gradient path is promised)."""
        posterior = self.posterior(x)
        noise = self.sample_noise((n_samples, *posterior[0].shape), generator)
        z = self.transform(posterior, noise)
        return PosteriorSample(z, self.log_posterior(z, posterior), self.kl_to_prior(*posterior))

    def initialise_output_bias(self, train_mean: torch.Tensor) -> None:
        """Start the decoder's output bias at the log-odds of the per-pixel training mean p̄,
        log(p̄ / (1 − p̄)) with p̄ clipped to [0.001, 0.999], so that with small last-layer weights
        p(x|z) starts near the data's marginal (Burda et al.'s and Dong et al.'s code)."""
        with torch.no_grad():
            self.decoder[-1].bias.copy_(data_log_odds(train_mean))

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


class GaussianLatentModel(LatentModel):
    """q(z|x) = N(mean, diag exp(log_var)), sampled as z = mean + exp(½ log_var) ⊙ ε."""

    latent = "gaussian"
    noise_sampler = staticmethod(torch.randn)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, log_var) of q(z|x), each of shape (M, latent_dim)."""
        raise NotImplementedError

    def posterior(self, x: torch.Tensor) -> Posterior:
        return self.encode(x)

    def transform(self, posterior: Posterior, noise: torch.Tensor) -> torch.Tensor:
        mean, log_var = posterior
        return mean + torch.exp(0.5 * log_var) * noise

    def log_posterior(self, z: torch.Tensor, posterior: Posterior) -> torch.Tensor:
        mean, log_var = posterior
        return diag_gaussian_log_density(z, mean, log_var)


class BernoulliLatentModel(LatentModel):
    """q(b|x) = Π_d Bernoulli(b_d; σ(α_d)) with logits α = `encode(x)`, b ∈ {0, 1}^latent_dim,
    sampled as b = 1[u < σ(α)]."""

    latent = "bernoulli"
    noise_sampler = staticmethod(torch.rand)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Logits α of q(b|x), shape (M, latent_dim)."""
        raise NotImplementedError

    def posterior(self, x: torch.Tensor) -> Posterior:
        return (self.encode(x),)

    def transform(self, posterior: Posterior, noise: torch.Tensor) -> torch.Tensor:
        (logits,) = posterior
        return bernoulli_sample(logits, noise)

    def log_posterior(self, z: torch.Tensor, posterior: Posterior) -> torch.Tensor:
        (logits,) = posterior
        return bernoulli_log_density(z, logits)


class CategoricalLatentModel(LatentModel):
    """q(z|x) = Π_l Categorical(z_l; softmax(α_l)), L = `n_latents` variables of C = `n_classes`
    classes, with logits α = `encode(x)` of shape (M, L·C); z is the L one-hot vectors side by
    side, so `latent_dim` = L·C. Sampled by Gumbel-max from uniform noise u of the same shape:
    z_l = onehot(argmax_c (α_lc + G_lc)), G = −log(−log u), exactly Categorical(softmax(α_l))."""

    latent = "categorical"
    noise_sampler = staticmethod(torch.rand)
    n_latents: int
    n_classes: int

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Logits α of q(z|x), shape (M, L·C)."""
        raise NotImplementedError

    def grouped(self, t: torch.Tensor) -> torch.Tensor:
        """(..., L·C) → (..., L, C): one row per latent variable."""
        return t.unflatten(-1, (self.n_latents, self.n_classes))

    def posterior(self, x: torch.Tensor) -> Posterior:
        return (self.encode(x),)

    def transform(self, posterior: Posterior, noise: torch.Tensor) -> torch.Tensor:
        (logits,) = posterior
        return one_hot_argmax(self.grouped(logits) + gumbel(self.grouped(noise))).flatten(-2)

    def log_posterior(self, z: torch.Tensor, posterior: Posterior) -> torch.Tensor:
        (logits,) = posterior
        return categorical_log_density(self.grouped(z), self.grouped(logits))


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


class BinaryLatentVAE(BernoulliLatentModel):
    """VAE with binary latents (the DisARM set-up, Dong, Mnih & Tucker 2020): q(b|x) an MLP to
    Bernoulli logits, a factorised Bernoulli prior with learned logits (part of θ), and a
    Bernoulli decoder MLP from b. `hidden=()` is the linear model D→200→D. After
    `centre_inputs(p̄)` the encoder reads x − p̄ and the decoder 2b − 1 (the DisARM code's
    `--demean_input`)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.input_dim = config.input_dim
        self.latent_dim = config.latent_dim
        hidden = list(config.hidden)
        self.encoder = mlp([config.input_dim, *hidden, config.latent_dim], config.activation)
        self.decoder = mlp(
            [config.latent_dim, *reversed(hidden), config.input_dim], config.activation
        )
        self.prior_logits = nn.Parameter(torch.zeros(config.latent_dim))
        # Not in the state dict: set from the data whenever the model is built (centre_inputs).
        self.register_buffer("input_mean", torch.zeros(config.input_dim), persistent=False)
        self.centred = False

    def centre_inputs(self, train_mean: torch.Tensor) -> None:
        """Feed the encoder x − p̄ (p̄ the per-pixel training mean) and the decoder 2b − 1 in
        {−1, 1} instead of x and b. The model family is the same (an affine change of each first
        layer's input, absorbed by its weights and bias); the gradients' geometry, hence what
        Adam does with them, is not."""
        self.input_mean.copy_(train_mean)
        self.centred = True

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x - self.input_mean if self.centred else x)

    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        return bernoulli_log_density(z, self.prior_logits)

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return bernoulli_log_likelihood(x, self.decoder(2 * z - 1 if self.centred else z))

    def kl_to_prior(self, logits: torch.Tensor) -> torch.Tensor:
        return analytic_kl_bernoulli(logits, self.prior_logits)


class CategoricalVAE(CategoricalLatentModel):
    """VAE with categorical latents (Jang, Gu & Poole 2017): q(z|x) an MLP to L·C logits, a
    uniform prior p(z) = Π_l Uniform{1..C} (log p(z) = −L log C, no parameters; the KL in closed
    form), and a Bernoulli decoder MLP from the L one-hot vectors."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.input_dim = config.input_dim
        self.n_latents, self.n_classes = config.latent_dim, config.classes
        self.latent_dim = config.latent_dim * config.classes
        hidden = list(config.hidden)
        self.encoder = mlp([config.input_dim, *hidden, self.latent_dim], config.activation)
        self.decoder = mlp(
            [self.latent_dim, *reversed(hidden), config.input_dim], config.activation
        )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        return torch.full_like(z[..., 0], -self.n_latents * math.log(self.n_classes))

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return bernoulli_log_likelihood(x, self.decoder(z))

    def kl_to_prior(self, logits: torch.Tensor) -> torch.Tensor:
        return analytic_kl_uniform_categorical(self.grouped(logits))


MODEL_CLASSES: dict[str, Callable[[ModelConfig], LatentModel]] = {
    "gaussian": BernoulliVAE,
    "bernoulli": BinaryLatentVAE,
    "categorical": CategoricalVAE,
}


def build_model(config: ModelConfig) -> LatentModel:
    """The MLP VAE for `config.latent`: `BernoulliVAE` (Gaussian z), `BinaryLatentVAE` or
    `CategoricalVAE`."""
    return MODEL_CLASSES[config.latent](config)


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
