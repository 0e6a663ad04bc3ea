"""Gradient estimators for binary latents b ∈ {0, 1}^D with q_φ(b|x) = Π_d Bernoulli(σ(α_d)),
α = α_φ(x) the encoder's logits. There is no reparameterisation z = g(φ, ε) through a discrete
sample, so ∇_φ E_q[f(b)] comes from the score function, from antithetic pairs (ARM, DisARM), or
from a continuous relaxation (Gumbel-softmax / binary Concrete), which is biased.

All noise is uniform, u ~ U(0, 1); b = 1[u < σ(α)] is a Bernoulli(σ(α)) sample. The learning
signal f is log p(x|b) with kl='analytic' (−β ∇KL exact) or log p(x|b) + β(log p(b) − log q(b|x))
with kl='mc'. In the unbiased estimators the decoder gradient is ∇_θ f at the sampled b, exact.

With kl='mc', every estimator here (`BinaryLatentEstimator`) takes log q(b|x) in f at stopped φ,
as the papers' code does (DisARM, RELAX, double CV, RODEO): the encoder gradient is the estimate
of ∇_α E_q[f] chained to φ, without the term −β ∇_φ log q(b|x) at fixed b. Dropping it keeps
the estimators unbiased, as E_q[∇_φ log q(b|x)] = Σ_b ∇_φ q(b|x) = ∇_φ 1 = 0; it changes only
their variance.
"""

from __future__ import annotations

import torch

from vae_core.estimators.base import Estimator, EstimatorOutput, register
from vae_core.estimators.score import Score, ScoreLeaveOneOut
from vae_core.models import Posterior, stopped


def logistic_sample(logits: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """z = α + log u − log(1 − u), a Logistic(α, 1) sample with b = 1[z > 0] ~ Bernoulli(σ(α))
    (u clamped to [eps, 1 − eps] of its dtype, so z is finite)."""
    eps = torch.finfo(u.dtype).eps
    u = u.clamp(eps, 1 - eps)
    return logits + torch.log(u) - torch.log1p(-u)


def logit_chain_surrogate(
    logit_grad: torch.Tensor, logits: torch.Tensor, f: torch.Tensor, kl_analytic: torch.Tensor
) -> torch.Tensor:
    """mean_m[ĝ_αᐟ · α] + mean f − mean KL, ĝ_α (M, D) an estimate of ∇_α E_q[f(b)] (ᐟ detached):
    ∇_φ is the chain rule from ĝ_α, plus −β ∇KL exact (kl='analytic'); f has no path to φ
    (`BinaryLatentEstimator.learning_signal`); ∇_θ is ∇_θ f at the sampled b, exact."""
    return (logit_grad.detach() * logits).sum(-1).mean() + f.mean() - kl_analytic.mean()


class DiscreteLatentEstimator(Estimator):
    """An estimator for discrete latents whose learning signal f reaches φ only through its
    estimate of ∇_α E_q[f] (module docstring): with kl='mc' f's log q(b|x) is taken at stopped φ;
    ∇_b f (the continuous extension's input gradient) and the decoder and prior gradients stay."""

    def learning_signal(
        self, x: torch.Tensor, b: torch.Tensor, posterior: Posterior
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(f, β KL) of `Estimator.signal_terms` at the samples b, f's log q(b|x) at stopped φ."""
        log_q_stopped = self.model.log_posterior(b, stopped(posterior))
        f, kl_analytic, _ = super().signal_terms(x, b, log_q_stopped, posterior)
        return f, kl_analytic

    def signal_terms(
        self, x: torch.Tensor, z: torch.Tensor, log_q: torch.Tensor, posterior: Posterior
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`learning_signal`, with log_q returned as given: the score term of REINFORCE and
        RLOO (`Score.forward`) keeps its gradient."""
        return (*self.learning_signal(x, z, posterior), log_q)


class BinaryLatentEstimator(DiscreteLatentEstimator):
    """`DiscreteLatentEstimator` for Bernoulli latents b ∈ {0, 1}^D."""

    latent = "bernoulli"


@register("reinforce")
class Reinforce(BinaryLatentEstimator, Score):
    """∇_φ ≈ f(b) ∇_φ log q_φ(b|x), no baseline (Williams 1992), on binary latents: the model
    samples b = 1[u < σ(α)], which has no path to φ."""

    summary = "score function / REINFORCE on Bernoulli latents, no baseline (Williams 1992)"


@register("reinforce_loo")
class ReinforceLeaveOneOut(BinaryLatentEstimator, ScoreLeaveOneOut):
    """∇_φ ≈ (1/K) Σ_k (f_k − mean_{j≠k} f_j) ∇_φ log q_φ(b_k|x), K ≥ 2 (Kool et al. 2019)."""

    summary = "score function on Bernoulli latents, K>=2, leave-one-out baseline (RLOO)"
    variance_counterpart = "reinforce"


class AntitheticPairEstimator(BinaryLatentEstimator):
    """K/2 antithetic pairs per example from one u each: b = 1[u < σ(α)], b̃ = 1[1 − u < σ(α)],
    both marginally q(b|x). K counts evaluations of f, so K = 2 costs what RLOO with 2 samples
    does. Subclasses give the per-pair gradient with respect to the logits α."""

    min_particles = 2
    particles_multiple = 2

    def noise_shape(self, batch_size: int) -> tuple[int, ...]:
        return (self.n_particles // 2, batch_size, self.model.latent_dim)

    def logit_gradient(
        self,
        u: torch.Tensor,
        logits: torch.Tensor,
        b: torch.Tensor,
        b_anti: torch.Tensor,
        f: torch.Tensor,
        f_anti: torch.Tensor,
    ) -> torch.Tensor:
        """Estimate of ∇_α E_q[f(b)] per pair, shape (K/2, M, D)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, u: torch.Tensor) -> EstimatorOutput:
        posterior = self.model.posterior(x)
        (logits,) = posterior
        b, b_anti = self.model.transform(posterior, u), self.model.transform(posterior, 1 - u)
        both = torch.cat([b, b_anti])
        f, kl_analytic = self.learning_signal(x, both, posterior)
        f_pair, f_anti = f.detach().chunk(2)
        logit_grad = self.logit_gradient(u, logits.detach(), b, b_anti, f_pair, f_anti)
        surrogate = logit_chain_surrogate(logit_grad.mean(0), logits, f, kl_analytic)
        return EstimatorOutput(surrogate, self.elbo_per_example(f, kl_analytic), f.detach())


@register("arm")
class ARM(AntitheticPairEstimator):
    """ARM (Yin & Zhou 2019): ∇_α E_q[f] = E_u[(f(1[u > σ(−α)]) − f(1[u < σ(α)])) (u − ½)],
    i.e. (f(b̃) − f(b)) (u − ½) per pair."""

    summary = "augment-REINFORCE-merge, antithetic pairs, K evaluations (Yin & Zhou 2019)"
    variance_counterpart = "reinforce"

    def logit_gradient(self, u, logits, b, b_anti, f, f_anti):
        return (f_anti - f).unsqueeze(-1) * (u - 0.5)


@register("disarm")
class DisARM(AntitheticPairEstimator):
    """DisARM (Dong, Mnih & Tucker 2020): ARM with u integrated out given the pair (b, b̃),
    ∇_α ≈ ½ (f(b) − f(b̃)) (−1)^b̃ 1[b ≠ b̃] σ(|α|) per pair; never more variance than ARM."""

    summary = "ARM with the uniform integrated out given the pair (Dong et al. 2020)"
    variance_counterpart = "reinforce"

    def logit_gradient(self, u, logits, b, b_anti, f, f_anti):
        sign = 1 - 2 * b_anti  # (−1)^b̃
        differ = (b != b_anti).to(logits.dtype)
        return 0.5 * (f - f_anti).unsqueeze(-1) * sign * differ * torch.sigmoid(logits.abs())


class RelaxedEstimator(Estimator):
    """Binary Concrete / Gumbel-softmax relaxation (Maddison et al. 2017; Jang et al. 2017):
    z = σ((α + L)/τ) with logistic noise L = log u − log(1 − u), a smooth stand-in for
    b = 1[α + L > 0] ~ Bernoulli(σ(α)). Pathwise gradients through z are biased for ∇ELBO."""

    latent = "bernoulli"
    kl_modes = ("analytic",)
    unsupported_reason = {
        "mc": "the relaxed sample z ∈ (0, 1) has no Bernoulli log q(z|x); the relaxation is "
        "applied to log p(x|b) and the KL of the discrete q(b|x) is taken in closed form"
    }
    options = {"tau": 0.5}  # τ
    tau: float
    bias_reference = "disarm"

    def relax(self, logits: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(z, b): the relaxed sample σ((α + L)/τ) and the exact sample 1[α + L > 0]."""
        pre_activation = logistic_sample(logits, u)
        return torch.sigmoid(pre_activation / self.tau), (pre_activation > 0).to(u.dtype)

    def decoder_input(self, z: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, u: torch.Tensor) -> EstimatorOutput:
        logits = self.model.encode(x)
        z, b = self.relax(logits, u)
        f = self.model.log_likelihood(x, self.decoder_input(z, b))
        objective = f.mean(0) - self.beta * self.model.kl_to_prior(logits)
        return EstimatorOutput(objective.mean(), objective.detach(), f.detach())


@register("gumbel")
class GumbelSoftmax(RelaxedEstimator):
    """∇ ≈ ∇ [log p(x|z) − β KL(q(b|x) ‖ p(b))] at the relaxed z, τ = ½: biased for φ and θ;
    `elbo` is the relaxed objective. (Jang et al. 2017; Maddison et al. 2017)"""

    summary = "Gumbel-softmax / binary Concrete relaxation, tau = 0.5, biased (Jang 2017)"

    def decoder_input(self, z: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return z


@register("st_gumbel")
class StraightThroughGumbel(RelaxedEstimator):
    """Straight-through: the forward pass uses the exact sample b (so `elbo` and the decoder
    gradient are unbiased), the backward pass treats ∂b/∂α as ∂z/∂α of the relaxed z, τ = ½:
    biased for φ (Bengio et al. 2013; Jang et al. 2017)."""

    summary = "straight-through Gumbel: exact b forward, relaxed gradient back, biased"

    def decoder_input(self, z: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return b + z - z.detach()
