"""ReinMax (Liu, Gao, Cheng, Jiao & Han 2023, "Bridging Discrete and Backpropagation:
Straight-Through and Beyond", NeurIPS): a second-order straight-through gradient for discrete
latents, reduced here to factorised Bernoulli latents.

The paper's categorical algorithm, for logits θ and a one-hot draw D ~ π0 = softmax(θ):
π1 = ½ (D + softmax(θ/τ)), re-attached as softmax(sg(ln π1 − θ) + θ) (value π1, Jacobian
diag π1 − π1 π1ᵀ), π2 = 2 π1 − ½ π0, output π2 − sg(π2) + D (value D). A bit b_d ~ Bern(σ(α_d))
is a 2-class categorical with θ = (α_d, 0), D = (b_d, 1 − b_d), π0 = (σ(α), σ(−α)); its first
coordinate is b, and with s = π1[0] = ½ (b + σ(α/τ)), 1 − s = ½ (1 − b + σ(−α/τ)), so

    ∂b/∂α = 2 s (1 − s) − ½ σ(α) σ(−α) = ½ [1 − σ((2b − 1) α/τ)² − σ(α) σ(−α)],

σ((2b − 1) α/τ) being the tempered probability of the drawn value. The second coordinate, 1 − b,
carries −∂b/∂α (softmax Jacobians have zero column sums), and the decoder reads b alone, so this
slope is the whole backward pass.

The gradient, with f(b) = log p(x|b): ∇_θ f(b) exactly (unbiased), and
∇_φ ≈ Σ_d ∂_d f(b) · ∂b_d/∂α_d · ∇_φ α_d − β ∇_φ KL(q(b|x) ‖ p(b)), a biased estimate of ∇_φ L.
Why second order: at τ = 1 the slope is ½ σ(−(2b − 1) α) = ½ q(1 − b), so with q_d = σ(α_d),
E_{b_d}[∂_d f(b) ∂b_d/∂α_d] = q_d (1 − q_d) · ½ [∂_d f(b_{−d}, 0) + ∂_d f(b_{−d}, 1)]: the
trapezoid (Heun) rule for the exact f(b_{−d}, 1) − f(b_{−d}, 0) = ∫₀¹ ∂_d f, exact when f is
quadratic in b_d, where plain straight-through (slope q_d (1 − q_d)) is exact only when f is
linear in b_d. τ ≠ 1 shifts the weights and gives up that exactness.
"""

from __future__ import annotations

import torch

from vae_core.estimators.base import Estimator, EstimatorOutput, register

# τ of the paper's binary MNIST VAE (200 two-class latents, the Dong et al. 2020 set-up; the
# authors' mnist_vae/reinmax_2_200_rodeo.sh: MNIST 1.1, Omniglot 1.2). Their categorical MNIST
# VAEs use 1.1-1.5, and their reinmax() refuses τ < 1.
TEMPERATURE = 1.1


def reinmax_slope(logits: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """ReinMax's ∂b/∂α = ½ [1 − σ((2b − 1) α/τ)² − σ(α) σ(−α)] (module docstring)."""
    tempered = torch.sigmoid((2 * b - 1) * logits / temperature)
    return 0.5 * (1 - tempered.pow(2) - torch.sigmoid(logits) * torch.sigmoid(-logits))


@register("reinmax")
class ReinMax(Estimator):
    """∇ ≈ ∇ [log p(x|b) − β KL(q(b|x) ‖ p(b))] with the exact b = 1[u < σ(α)] in the forward pass
    (so `elbo` and the decoder gradient are unbiased) and ∂b/∂α = `reinmax_slope` in the backward
    pass, τ = 1.1: a second-order approximation, biased for φ (Liu et al. 2023)."""

    summary = "ReinMax: exact b forward, second-order (Heun) straight-through back, tau = 1.1"
    latent = "bernoulli"
    kl_modes = ("analytic",)
    unsupported_reason = {
        "mc": "ReinMax approximates the path through b only; −β log q(b|x) also depends on φ at "
        "fixed b (a score term), and the KL of q(b|x) is taken in closed form instead"
    }
    options = {"tau": TEMPERATURE}  # τ
    tau: float
    bias_reference = "disarm"

    def forward(self, x: torch.Tensor, u: torch.Tensor) -> EstimatorOutput:
        logits = self.model.encode(x)
        b = self.model.transform((logits,), u)
        slope = reinmax_slope(logits.detach(), b, self.tau)
        z = b + slope * (logits - logits.detach())  # value b, ∂z/∂α = slope
        f = self.model.log_likelihood(x, z)
        objective = f.mean(0) - self.beta * self.model.kl_to_prior(logits)
        return EstimatorOutput(objective.mean(), objective.detach(), f.detach())
