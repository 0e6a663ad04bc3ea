"""Gradient estimators for categorical latents: L variables of C classes, q_φ(z|x) =
Π_l Categorical(z_l; softmax(α_l)), α = α_φ(x) the encoder's logits, z the L one-hot vectors
(`models.CategoricalLatentModel`). All noise is uniform, u ~ U(0, 1), one per (variable, class);
the model's sample is Gumbel-max, z_l = onehot(argmax_c(α_lc + G_lc)), G = −log(−log u).

No pathwise gradient exists through z, so ∇_φ E_q[f(z)] comes from the score function (REINFORCE,
RLOO), from antithetic pairs on a binary representation of each variable (stick-breaking DisARM),
or from the Gumbel-softmax relaxation and the straight-through estimators built on it, which are
biased. f is log p(x|z) with kl='analytic' (−β ∇KL exact, the prior uniform) or
log p(x|z) + β(log p(z) − log q(z|x)) with kl='mc', where, as for the binary estimators
(`discrete.DiscreteLatentEstimator`), log q(z|x) is taken at stopped φ.

The biased estimators' bias is measured against `cat_unordered_set`, the section's variance
reference (the unbiased estimator with the lowest variance here).
"""

from __future__ import annotations

import torch

from vae_core.estimators.base import Estimator, EstimatorOutput, register
from vae_core.estimators.discrete import DiscreteLatentEstimator, logit_chain_surrogate
from vae_core.estimators.score import Score, ScoreLeaveOneOut
from vae_core.models import CategoricalLatentModel, gumbel, one_hot_argmax


class CategoricalLatentEstimator(DiscreteLatentEstimator):
    """`DiscreteLatentEstimator` for categorical latents."""

    latent = "categorical"
    model: CategoricalLatentModel


@register("cat_reinforce")
class CategoricalReinforce(CategoricalLatentEstimator, Score):
    """∇_φ ≈ f(z) ∇_φ log q_φ(z|x), no baseline (Williams 1992), on categorical latents: the model
    samples z by Gumbel-max, which has no path to φ."""

    summary = "score function / REINFORCE on categorical latents, no baseline (Williams 1992)"


@register("cat_reinforce_loo")
class CategoricalReinforceLeaveOneOut(CategoricalLatentEstimator, ScoreLeaveOneOut):
    """∇_φ ≈ (1/K) Σ_k (f_k − mean_{j≠k} f_j) ∇_φ log q_φ(z_k|x), K ≥ 2 (Kool et al. 2019)."""

    summary = "score function on categorical latents, K>=2, leave-one-out baseline (RLOO)"
    variance_counterpart = None


# Stick-breaking DisARM ------------------------------------------------------------------------


def stick_logits(logits: torch.Tensor) -> torch.Tensor:
    """(..., C) → (..., C − 1): β_c = α_c − log Σ_{j>c} e^{α_j}, so σ(β_c) = p_c / Σ_{j≥c} p_j, the
    probability of stopping at class c once classes before c are passed (p = softmax(α))."""
    tails = torch.logcumsumexp(logits.flip(-1), -1).flip(-1)  # log Σ_{j≥c} e^{α_j}
    return logits[..., :-1] - tails[..., 1:]


def stick_breaking_sample(
    sticks: torch.Tensor, u: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(z, b, reached) for stick logits β (..., C − 1) and u (..., C − 1): the bits
    b_c = 1[u_c < σ(β_c)], the one-hot z of the first class c with b_c = 1 (the last class if
    none), ~ Categorical(softmax(α)), and reached_c = 1[z ≥ c], whether bit c was read."""
    b = (u < torch.sigmoid(sticks)).to(u.dtype)
    ones = torch.ones_like(b[..., :1])
    reached = torch.cat([ones, torch.cumprod(1 - b, -1)], -1)  # Π_{j<c} (1 − b_j), (..., C)
    z = torch.cat([b, ones], -1) * reached
    return z, b, reached[..., :-1]


@register("cat_disarm")
class StickBreakingDisARM(CategoricalLatentEstimator):
    """DisARM (Dong, Mnih & Tucker 2020) on the stick-breaking representation of each categorical
    variable, with the bits that neither sample reads Rao-Blackwellised away, after Dong, Mnih &
    Tucker (2021), "Coupled gradient estimators for discrete latent variables".

    z_l ~ Categorical(softmax(α_l)) is the first class c whose bit b_lc ~ Bernoulli(σ(β_lc)) is 1,
    β = `stick_logits(α)`: a function of L(C − 1) independent bits. The antithetic pair
    b = 1[u < σ(β)], b̃ = 1[1 − u < σ(β)] gives two samples z, z̃, each exactly q(z|x), and
    DisARM's unbiased estimate of ∇_β E[f]: ĝ_c = ½ (f(z) − f(z̃)) (−1)^b̃_c 1[b_c ≠ b̃_c] σ(|β_c|),
    chained to φ through β(α(x)). Where neither z nor z̃ reaches bit c (both stop earlier, an
    event fixed by u_{<c}), f(z) − f(z̃) does not depend on u_c while E_{u_c}[(−1)^b̃ 1[b ≠ b̃]] = 0;
    so ĝ_c is replaced by its conditional mean, 0: still unbiased, never more variance.

    Dong et al. (2021) build their categorical estimators on such binary representations; this is
    the simplest of them, DisARM's own formula on the bits. Measured at initialisation it is not
    below RLOO at equal evaluations of f: encoder variance 1.11× RLOO's on the test model of
    tests/test_categorical.py (K = 2, 1.9× at K = 4, where RLOO's baseline uses 3 other samples
    and DisARM's pairs none) and 1.16-1.17× on mnist5k with the 20 × 10 and 4 × 8 models at K = 2.
    K counts evaluations of f (K/2 pairs), as for `disarm`.
    """

    summary = "DisARM on stick-breaking bits, unread bits Rao-Blackwellised (Dong et al. 2021)"
    min_particles = 2
    particles_multiple = 2

    def noise_shape(self, batch_size: int) -> tuple[int, ...]:
        return (self.n_particles // 2, batch_size, self.model.latent_dim)

    def forward(self, x: torch.Tensor, u: torch.Tensor) -> EstimatorOutput:
        posterior = self.model.posterior(x)
        (logits,) = posterior
        grouped = self.model.grouped(logits)
        order = grouped.detach().argsort(-1, descending=True)  # most probable class first
        sticks = stick_logits(grouped.gather(-1, order))  # (M, L, C − 1), with a path to φ
        fixed = sticks.detach()
        v = self.model.grouped(u)[..., :-1]  # C − 1 uniforms per variable; the last is unused
        z, b, reached = stick_breaking_sample(fixed, v)
        z_anti, b_anti, reached_anti = stick_breaking_sample(fixed, 1 - v)
        z, z_anti = (torch.zeros_like(t).scatter(-1, order.expand_as(t), t) for t in (z, z_anti))
        both = torch.cat([z.flatten(-2), z_anti.flatten(-2)])
        f, kl_analytic = self.learning_signal(x, both, posterior)
        f_pair, f_anti = f.detach().chunk(2)
        read = torch.maximum(reached, reached_anti)
        differ = (b != b_anti).to(u.dtype)
        stick_grad = (
            0.5 * (f_pair - f_anti)[..., None, None] * (1 - 2 * b_anti) * differ * read
        ) * torch.sigmoid(fixed.abs())
        surrogate = logit_chain_surrogate(
            stick_grad.mean(0).flatten(-2), sticks.flatten(-2), f, kl_analytic
        )
        return EstimatorOutput(surrogate, self.elbo_per_example(f, kl_analytic), f.detach())


# Sampling without replacement ----------------------------------------------------------------


def second_distinct_sample(
    logits: torch.Tensor, first: torch.Tensor, u_classes: torch.Tensor, u_index: torch.Tensor
) -> torch.Tensor:
    """z' ~ q(z | z ≠ `first`) for q = Π_l Cat(softmax(α_l)), logits and first (..., L, C),
    u_classes (..., L, C), u_index (..., 1). The first variable where z' differs from `first` is
    l with probability Π_{j<l} q_j(first_j) (1 − q_l(first_l)) / (1 − q(first)); there z'_l is
    drawn from q_l without first_l, before it z' copies `first`, after it z' is drawn from q."""
    log_p = torch.log_softmax(logits, -1)
    log_kept = (first * log_p).sum(-1)  # log q_l(first_l), (..., L)
    before = torch.cumsum(log_kept, -1) - log_kept  # log Π_{j<l} q_j(first_j)
    weights = before.exp() * -torch.expm1(log_kept)
    thresholds = torch.cumsum(weights, -1) / weights.sum(-1, keepdim=True).clamp_min(1e-300)
    index = (thresholds < u_index).sum(-1, keepdim=True).clamp(max=logits.shape[-2] - 1)
    position = torch.arange(logits.shape[-2], device=logits.device)
    masked = torch.where(first.bool(), float("-inf"), log_p)  # q_l without first_l
    scores = torch.where((position == index)[..., None], masked, log_p) + gumbel(u_classes)
    return torch.where((position < index)[..., None], first, one_hot_argmax(scores))


@register("cat_unordered_set")
class UnorderedSetPair(CategoricalLatentEstimator):
    """Two distinct joint samples without replacement, a ≠ b, with a leave-one-out baseline: the
    unordered-set estimator of Kool, van Hoof & Welling (2020) at K = 2, in closed form.

    a ~ q(z|x), b ~ q(z | z ≠ a) (`second_distinct_sample`), p_s = q(s|x) of the joint state s;
    the pair {a, b} has probability P = p_a p_b (1/(1 − p_a) + 1/(1 − p_b)). Then
        ∇_φ E_q[f] ≈ c (f(a) − f(b)) (∇_φ log q(a|x) − ∇_φ log q(b|x)),  c = p_a p_b / P,
    unbiased: Σ_{a≠b} over unordered pairs of p_a p_b (f_a − f_b)(∇log p_a − ∇log p_b) equals
    ½ Σ_{a,b} of the same = E_q[f ∇ log q] − E_q[f] E_q[∇ log q] = ∇E_q[f]. RLOO at K = 2 has the
    same mean and the same form with i.i.d. samples and c = ½ (zero when they coincide). With
    h = (f_a − f_b)(∇log p_a − ∇log p_b), coordinate by coordinate the second moments are
    Σ_{a≠b} P c² h² = Σ_{a≠b} p_a p_b c h² here and Σ_{a≠b} p_a p_b h²/2 for RLOO, and
    2c = 2/(1/(1 − p_a) + 1/(1 − p_b)) ≤ 1: never more variance than RLOO at equal evaluations
    of f (2), and less the more peaked q(z|x) is (2c → 1 when every p_s → 0, as at
    initialisation with C^L states). ∇_θ and `elbo` weight f(a), f(b) by w_a = (1 − p_b)/
    ((1 − p_a) + (1 − p_b)) and w_b = 1 − w_a, the unbiased weights for E_q[h] from the pair.

    Why this one: it needs no more than RLOO's two evaluations, its variance is provably never
    above RLOO's, and it is a few lines; ARSM needs up to C(C − 1)/2 + 1 evaluations and trails
    RLOO in Dong et al. (2021), whose stick-breaking estimator (`cat_disarm`) measured above RLOO
    on our models (tests/test_categorical.py).
    """

    summary = "2 joint samples without replacement, built-in baseline (Kool et al. 2020, K=2)"
    variance_counterpart = "cat_reinforce_loo"
    min_particles = max_particles = 2  # written for one pair

    def noise_shape(self, batch_size: int) -> tuple[int, ...]:
        """(3, M, L·C): the first sample's uniforms, the second's, and (in [2][..., :1]) the one
        that picks the first variable where they differ."""
        return (3, batch_size, self.model.latent_dim)

    def forward(self, x: torch.Tensor, u: torch.Tensor) -> EstimatorOutput:
        posterior = self.model.posterior(x)
        (logits,) = posterior
        grouped = self.model.grouped
        first = self.model.transform(posterior, u[0]).detach()
        second = second_distinct_sample(
            grouped(logits.detach()), grouped(first), grouped(u[1]), u[2][..., :1]
        ).flatten(-2)
        both = torch.stack([first, second])
        f, kl_analytic = self.learning_signal(x, both, posterior)
        log_q = self.model.log_posterior(both, posterior)  # (2, M), with a path to φ
        left_out = -torch.expm1(log_q.detach())  # 1 − p_s
        weights = left_out.flip(0) / left_out.sum(0)  # w_a, w_b
        scale = left_out.prod(0) / left_out.sum(0)  # c = p_a p_b / P
        difference = f.detach()[0] - f.detach()[1]
        score = scale * difference * (log_q[0] - log_q[1])
        objective = (weights * f).sum(0) - kl_analytic
        surrogate = (score + objective).mean()
        return EstimatorOutput(surrogate, objective.detach(), f.detach())


# Relaxations and straight-through estimators ----------------------------------------------------


def reinmax_one_hot(logits: torch.Tensor, one_hot: torch.Tensor, temperature: float):
    """ReinMax (Liu et al. 2023, Algorithm 2) for logits θ (..., C) and a one-hot D ~ softmax(θ):
    π0 = softmax(θ), π1 = ½ (D + softmax(θ/τ)), re-attached as softmax(sg(ln π1 − θ) + θ) (value
    π1, Jacobian diag π1 − π1 π1ᵀ), π2 = 2 π1 − ½ π0; returns π2 − sg(π2) + D: value D, Jacobian
    ∂/∂θ = 2 (diag π1 − π1 π1ᵀ) − ½ (diag π0 − π0 π0ᵀ)."""
    pi0 = torch.softmax(logits, -1)
    pi1 = 0.5 * (one_hot + torch.softmax(logits / temperature, -1))
    pi1 = torch.softmax((torch.log(pi1) - logits).detach() + logits, -1)
    pi2 = 2 * pi1 - 0.5 * pi0
    return one_hot + (pi2 - pi2.detach())


def conditional_gumbel_perturbation(
    logits: torch.Tensor, one_hot: torch.Tensor, u_max: torch.Tensor, u_rest: torch.Tensor
) -> torch.Tensor:
    """G ~ Gumbel(0, 1)^C conditioned on argmax(θ + G) = D, as noise (no path to θ), from
    uniforms u_max (..., 1) and u_rest (..., C) (Gumbel top-down sampling, Maddison et al. 2014):
    the maximum T = log Σ_c e^{θ_c} + Gumbel(u_max) at D, and below it each other θ_c + G_c a
    Gumbel(θ_c) truncated at T, −log(e^{−θ_c} E_c + e^{−T}) with E_c = −log u_c ~ Exp(1)."""
    theta = logits.detach()
    top = torch.logsumexp(theta, -1, keepdim=True) + gumbel(u_max)
    exponential = -torch.log(u_rest.clamp(torch.finfo(u_rest.dtype).tiny, 1))
    below = -torch.logaddexp(-theta + torch.log(exponential), -top)
    return torch.where(one_hot.bool(), top, below) - theta


class CategoricalRelaxedEstimator(Estimator):
    """Gumbel-softmax (Jang, Gu & Poole 2017; Maddison, Mnih & Teh 2017) and the straight-through
    estimators built on it: pathwise through a smooth stand-in for the exact z, biased for ∇ELBO.
    The KL of the discrete q(z|x) is taken in closed form. Subclasses give the decoder's input
    from the logits θ (M, L, C), the exact one-hot z and the uniforms of the sample."""

    latent = "categorical"
    kl_modes = ("analytic",)
    unsupported_reason = {
        "mc": "the relaxation replaces the path through z only; the categorical log q(z|x) also "
        "depends on φ at fixed z (a score term), and the KL of q(z|x) is taken in closed form"
    }
    bias_reference = "cat_unordered_set"
    tau: float  # τ, declared by each subclass's `options`
    model: CategoricalLatentModel

    def decoder_input(
        self, logits: torch.Tensor, one_hot: torch.Tensor, u: torch.Tensor
    ) -> torch.Tensor:
        raise NotImplementedError

    def sample_uniforms(self, u: torch.Tensor) -> torch.Tensor:
        """The uniforms of the Gumbel-max sample within `u` (all of it by default)."""
        return u

    def forward(self, x: torch.Tensor, u: torch.Tensor) -> EstimatorOutput:
        posterior = self.model.posterior(x)
        (logits,) = posterior
        one_hot = self.model.transform(posterior, self.sample_uniforms(u)).detach()
        grouped = self.model.grouped
        z = self.decoder_input(grouped(logits), grouped(one_hot), u).flatten(-2)
        f = self.model.log_likelihood(x, z)
        objective = f.mean(0) - self.beta * self.model.kl_to_prior(logits)
        return EstimatorOutput(objective.mean(), objective.detach(), f.detach())


# τ of Jang et al.'s categorical MNIST VAE at the start of its schedule max(0.5, exp(−3e−5 t)),
# which after our 3,000 steps is still 0.91.
GUMBEL_TEMPERATURE = 1.0
# τ of ReinMax's MNIST VAEs (the authors' mnist_vae/reinmax_8_4.sh and reinmax_10_30.sh; 1.5 in
# reinmax_16_12.sh); their reinmax() refuses τ < 1.
REINMAX_TEMPERATURE = 1.3
# Conditional Gumbel samples per draw (Paulus et al. 2021 report K = 10, 100, 1000; 10 costs a
# few softmaxes, nothing next to the decoder).
GUMBEL_RAO_SAMPLES = 10


@register("cat_gumbel")
class CategoricalGumbelSoftmax(CategoricalRelaxedEstimator):
    """∇ ≈ ∇ [log p(x|y) − β KL(q(z|x) ‖ p(z))] at the relaxed y_l = softmax((α_l + G_l)/τ),
    τ = `GUMBEL_TEMPERATURE`: biased for φ and θ; `elbo` is the relaxed objective (Jang et al.
    2017; Maddison et al. 2017)."""

    summary = "Gumbel-softmax relaxation on categorical latents, tau = 1, biased (Jang 2017)"
    options = {"tau": GUMBEL_TEMPERATURE}

    def decoder_input(self, logits, one_hot, u):
        return torch.softmax((logits + gumbel(self.model.grouped(u))) / self.tau, -1)


@register("cat_st_gumbel")
class CategoricalStraightThroughGumbel(CategoricalRelaxedEstimator):
    """Straight-through Gumbel: the exact one-hot z forward (so `elbo` and the decoder gradient
    are unbiased), ∂z/∂α := ∂y/∂α of the relaxed y = softmax((α + G)/τ) backward, τ =
    `GUMBEL_TEMPERATURE`: biased for φ (Bengio et al. 2013; Jang et al. 2017)."""

    summary = "straight-through Gumbel on categorical latents: exact z forward, relaxed back"
    options = {"tau": GUMBEL_TEMPERATURE}

    def decoder_input(self, logits, one_hot, u):
        relaxed = torch.softmax((logits + gumbel(self.model.grouped(u))) / self.tau, -1)
        return one_hot + (relaxed - relaxed.detach())


@register("cat_reinmax")
class CategoricalReinMax(CategoricalRelaxedEstimator):
    """ReinMax (Liu et al. 2023) in its native categorical form (`reinmax_one_hot`): the exact
    one-hot z forward, its second-order (Heun) Jacobian backward, τ = `REINMAX_TEMPERATURE`;
    biased for φ, the decoder gradient unbiased. `reinmax.ReinMax` is its reduction to C = 2."""

    summary = "ReinMax on categorical latents: exact z forward, second-order ST back, tau = 1.3"
    options = {"tau": REINMAX_TEMPERATURE}

    def decoder_input(self, logits, one_hot, u):
        return reinmax_one_hot(logits, one_hot, self.tau)


@register("cat_gumbel_rao")
class GumbelRao(CategoricalRelaxedEstimator):
    """Gumbel-Rao (Paulus, Maddison & Krause 2021): straight-through Gumbel Rao-Blackwellised over
    the noise given the sample. Forward the exact z = onehot(argmax(α + G)); backward
    ∂z/∂α := (1/S) Σ_s ∂/∂α softmax((α + G_s)/τ), G_1..G_S drawn from the Gumbels conditioned on
    argmax(α + G) = z (`conditional_gumbel_perturbation`), S = `conditional_samples`, τ =
    `GUMBEL_TEMPERATURE`. E[∂y/∂α | z] replaces ∂y/∂α: the same mean as `cat_st_gumbel`, hence
    the same bias, and no more variance. 1 evaluation of f."""

    summary = "Gumbel-Rao: straight-through with S = 10 conditional Gumbel samples, biased"
    variance_counterpart = "cat_st_gumbel"
    options = {"tau": GUMBEL_TEMPERATURE}
    conditional_samples = GUMBEL_RAO_SAMPLES  # S

    def noise_shape(self, batch_size: int) -> tuple[int, ...]:
        """(1 + 2S, K, M, L·C): the sample's uniforms, then S for the conditional maxima (one per
        variable is read) and S for the truncated Gumbels."""
        return (1 + 2 * self.conditional_samples, *super().noise_shape(batch_size))

    def sample_uniforms(self, u: torch.Tensor) -> torch.Tensor:
        return u[0]

    def decoder_input(self, logits, one_hot, u):
        samples = self.conditional_samples
        grouped = self.model.grouped
        u_max = grouped(u[1 : 1 + samples])[..., :1]
        u_rest = grouped(u[1 + samples :])
        noise = conditional_gumbel_perturbation(logits, one_hot, u_max, u_rest)
        relaxed = torch.softmax((logits + noise) / self.tau, -1).mean(0)
        return one_hot + (relaxed - relaxed.detach())
