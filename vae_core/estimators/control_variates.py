"""Score-function estimators for binary latents with learned control variates on top of the
leave-one-out baseline: double control variates (Titsias & Shi 2022) and RODEO (Shi et al. 2022).

Both estimate g = ∇_α E_q[f(b)] with respect to the encoder's logits α, shape (M, D), and chain it
to φ. With θ = σ(α) the score is ∇_α log q(b|x) = b − θ, so g = E_q[f(b) (b − θ)]. K ≥ 2
samples b_1..b_K = 1[u_k < θ] per example; f is log p(x|b) with kl='analytic' (−β ∇KL exact) or
log p(x|b) + β (log p(b) − log q(b|x)) with kl='mc' (log q at stopped φ, as in the authors'
code: `discrete.BinaryLatentEstimator`), evaluated at the K samples only (K evaluations of f).
Both also use ∇_b f(b_k), the gradient of f's continuous extension (the decoder is an MLP of b)
at those same samples: one vector-Jacobian product, no new point.

Each control variate's scale is a learned parameter, initialised at 0 (the estimator then is
RLOO), and trained as in the authors' code: the surrogate carries −mean_{m,d} ĝ_{m,d}² (as
`gradient_only`, zero in value), with gradient only to the control-variate parameters (the model's
tensors enter it detached), and the
estimator's main term uses ĝ detached, so no gradient of it reaches them. As E[ĝ] does not depend
on those parameters, descending E‖ĝ‖² descends the variance; the training loop's one Adam over
`estimator.parameters()` does it (the authors use Adam, learning rate 1e-3, for these too).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import vjp

from vae_core.estimators.base import EstimatorOutput, gradient_only, register
from vae_core.estimators.discrete import BinaryLatentEstimator, logit_chain_surrogate


def leave_one_out_mean(t: torch.Tensor) -> torch.Tensor:
    """mean_{j≠k} t_j for every k along dimension 0."""
    return (t.sum(0, keepdim=True) - t) / (t.shape[0] - 1)


class LearnedControlVariateEstimator(BinaryLatentEstimator):
    """K ≥ 2 samples; subclasses give the logit gradient ĝ from detached (θ, b, f, ∇_b f), with
    gradient to their control-variate parameters only."""

    min_particles = 2

    def logit_gradient(
        self, theta: torch.Tensor, b: torch.Tensor, f: torch.Tensor, f_grad: torch.Tensor
    ) -> torch.Tensor:
        """Estimate of ∇_α E_q[f(b)] per example, (M, D), from θ (M, D), the samples b
        (K, M, D), f(b) (K, M) and ∇_b f(b) (K, M, D)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, u: torch.Tensor) -> EstimatorOutput:
        posterior = self.model.posterior(x)
        (logits,) = posterior
        b = self.model.transform(posterior, u)

        def signal(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self.learning_signal(x, z, posterior)

        f, pullback, kl_analytic = vjp(signal, b, has_aux=True)
        (f_grad,) = pullback(torch.ones_like(f))
        theta = torch.sigmoid(logits.detach())
        logit_grad = self.logit_gradient(theta, b, f.detach(), f_grad.detach())
        surrogate = logit_chain_surrogate(logit_grad, logits, f, kl_analytic)
        # The variance objective, whose gradient reaches the control-variate parameters only.
        surrogate = surrogate - gradient_only(logit_grad.pow(2).mean())
        return EstimatorOutput(surrogate, self.elbo_per_example(f, kl_analytic), f.detach())


@register("double_cv")
class DoubleControlVariate(LearnedControlVariateEstimator):
    """Double control variates (Titsias & Shi 2022, AISTATS; code github.com/thjashin/double-cv):
    RLOO plus a second, global control variate from the first-order Taylor expansion of f,

        h_k = f(b_k) + γ ḡ_kᵀ (b_k − θ),     ḡ_k = mean_{j≠k} ∇_b f(b_j),
        ĝ = (1/K) Σ_k (h_k − mean_{j≠k} h_j)(b_k − θ) − γ (1/K) Σ_k ∇_b f(b_k) ⊙ θ(1 − θ).

    ḡ_k stands in for ∇f(μ) at the mean μ = θ of q (so no extra evaluation) and does not depend
    on b_k; as E[(b − θ)(b − θ)ᵀ] = diag θ(1 − θ), the γ term in h_k has mean γ E[∇_b f] ⊙ θ(1 − θ),
    which the last term removes exactly in expectation: the exactly known gradient of the linear
    Taylor term is added back. The baseline mean_{j≠k} h_j depends on b_k only through ḡ_j, where
    it multiplies b_j − θ (mean zero given the rest), so it times (b_k − θ) has mean zero.
    Unbiased for every γ; γ = −1 subtracts the whole linear term. γ is a scalar learned by
    minimising mean ĝ², from 0, as in the authors' code (`alpha`)."""

    summary = "RLOO + learned global Taylor control variate, K>=2 (Titsias & Shi 2022)"
    variance_counterpart = "reinforce_loo"

    def build_state(self) -> None:
        reference = next(self.model.parameters())
        self.taylor_scale = nn.Parameter(reference.new_zeros(()))  # γ

    def logit_gradient(self, theta, b, f, f_grad):
        score = b - theta
        h = f + self.taylor_scale * (leave_one_out_mean(f_grad) * score).sum(-1)
        signal = h - leave_one_out_mean(h)
        correction = self.taylor_scale * f_grad.mean(0) * theta * (1 - theta)
        return (signal.unsqueeze(-1) * score).mean(0) - correction


class SteinControlNet(nn.Module):
    """The control functions (u₀, u₁)(y) = W₂ LeakyReLU₀.₃(W_t t + W_s s) of RODEO's code: t a
    linear Taylor term of f at y, s a function value; 100 hidden units, two outputs."""

    def __init__(self, hidden: int = 100) -> None:
        super().__init__()
        self.taylor = nn.Linear(1, hidden)
        self.signal = nn.Linear(1, hidden)
        self.activation = nn.LeakyReLU(0.3)
        self.out = nn.Linear(hidden, 2)

    def forward(self, taylor: torch.Tensor, signal: torch.Tensor) -> torch.Tensor:
        """taylor (..., 1) and signal broadcasting against it → (..., 2)."""
        return self.out(self.activation(self.taylor(taylor) + self.signal(signal)))


@register("rodeo")
class Rodeo(LearnedControlVariateEstimator):
    """RODEO (Shi, Zhou, Hwang, Titsias & Mackey 2022, "Gradient Estimation with Discrete Stein
    Operators", NeurIPS; code github.com/thjashin/rodeo, `discrete_stein_avg` at K = 2 and
    `discrete_stein_output_avg` at K > 2, which agree at K = 2).

    The Stein operator of the random-scan Gibbs chain of q, which picks a coordinate i uniformly
    and redraws it from q: with y_i = b with coordinate i flipped and w_i the probability under q
    of the flipped value (θ_i if the flip sets it to 1, 1 − θ_i otherwise),

        (A u)(b) = (1/D) Σ_i w_i (u(y_i) − u(b)),   E_q[(A u)(b)] = 0 for every u,

    as q is stationary for the chain. For sample k the neighbours are scored by control functions
    built from the other samples j ≠ k: u^k(y) = mean_{j≠k} net(∇_b f(b_j)ᵀ(y − b_j), f(b_j)),
    outputs (u₀, u₁), a learned function of f's first-order Taylor expansion around b_j. Then

        ĝ = (1/K) Σ_k [(f_k − mean_{j≠k} (f_j + γ₀ (A u₀^j)(b_j))) (b_k − θ)
                        + γ₁ (A [u₁^k(y)(y − θ)])(b_k)].

    The second term has mean zero given the other samples (u₁^k does not depend on b_k); the
    baseline's Stein term (A u₀^j)(b_j) has mean zero given every sample but b_j, so even though
    u₀^j depends on b_k, its product with b_k − θ has mean zero: ĝ is unbiased for all γ₀, γ₁
    and network weights. γ₀ = γ₁ = 0 at initialisation (then ĝ is RLOO), as in the code (`alpha`,
    `beta`); they and the network (PyTorch's default initialisation) are trained by minimising
    mean ĝ², as the paper does.
    """

    summary = "RLOO + learned discrete Stein operator control variates, K>=2 (Shi et al. 2022)"
    variance_counterpart = "reinforce_loo"

    def build_state(self) -> None:
        reference = next(self.model.parameters())
        self.control = SteinControlNet().to(reference)
        self.baseline_scale = nn.Parameter(reference.new_zeros(()))  # γ₀
        self.cv_scale = nn.Parameter(reference.new_zeros(()))  # γ₁

    def control_functions(
        self, b: torch.Tensor, f: torch.Tensor, f_grad: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(u^k(b_k), u^k(y_{k,i})) of shapes (K, M, 2) and (K, M, D, 2), averaged over j ≠ k."""
        k = f.shape[0]
        others = torch.tensor([[j for j in range(k) if j != i] for i in range(k)], device=f.device)
        grad_j, b_j, f_j = f_grad[others], b[others], f[others]  # (K, K−1, M, ...)
        at_sample = (grad_j * (b.unsqueeze(1) - b_j)).sum(-1)  # ∇f(b_j)ᵀ(b_k − b_j)
        at_neighbours = at_sample.unsqueeze(-1) + grad_j * (1 - 2 * b).unsqueeze(1)
        signal = f_j.unsqueeze(-1)
        u_sample = self.control(at_sample.unsqueeze(-1), signal).mean(1)
        u_neighbours = self.control(at_neighbours.unsqueeze(-1), signal.unsqueeze(-1)).mean(1)
        return u_sample, u_neighbours

    def logit_gradient(self, theta, b, f, f_grad):
        u_sample, u_neighbours = self.control_functions(b, f, f_grad)
        flip = 1 - 2 * b  # y_{k,i} − b_k = flip_{k,i} e_i
        weight = theta * (1 - b) + (1 - theta) * b  # q_i of the flipped value
        score = b - theta

        # (A u₀)(b_k), and (A [u₁(y)(y − θ)])(b_k) with (y_i − θ) = (b − θ) + flip_i e_i.
        baseline_cv = (weight * (u_neighbours[..., 0] - u_sample[..., :1])).mean(-1)
        jump = (weight * (u_neighbours[..., 1] - u_sample[..., 1:])).mean(-1, keepdim=True)
        score_cv = score * jump + weight * u_neighbours[..., 1] * flip / b.shape[-1]

        signal = f - leave_one_out_mean(f + self.baseline_scale * baseline_cv)
        return (signal.unsqueeze(-1) * score + self.cv_scale * score_cv).mean(0)
