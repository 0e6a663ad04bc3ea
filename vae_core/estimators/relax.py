"""RELAX (Grathwohl, Choi, Wu, Roeder & Duvenaud 2018, "Backpropagation through the Void:
Optimizing control variates for black-box gradient estimation", ICLR) for binary latents.

Target: ∇_α E_{q(b|x)}[f(b)] for the encoder's logits α (then ∇_φ by the chain rule), f the
learning signal of `BinaryLatentEstimator.learning_signal`. Noise u ~ U(0, 1) gives the logistic
sample z = α + log u − log(1 − u) ~ p(z|α) and b = H(z) = 1[z > 0] ~ q(b|x). z̃ ~ p(z|b, α) is the
conditional sample z̃ = α + logit(v'), v' = v(1 − σ(α)) if b = 0, v' = 1 − σ(α)(1 − v) if b = 1,
with v ~ U(0, 1). The estimator, for any differentiable c,

    ĝ = [f(b) − c(z̃)] ∇_α log q(b|x) + ∇_α c(z) − ∇_α c(z̃),

is unbiased: E_z[c(z)] = E_b[E_{z̃|b}[c(z̃)]] for every α, and differentiating both sides gives
E[∇c(z)] = E[c(z̃) ∇ log q(b|x)] + E[∇c(z̃)], so the three control-variate terms have mean zero.

Control variate (the paper's discrete-VAE choice): c(z) = η f̃(σ(z/λ)) + r_ρ(x, z), the REBAR term
(Tucker et al. 2017) — f̃ the learning signal at the relaxed latent σ(z/λ) — plus a learned
network r_ρ. f̃ is log p(x|·) with kl='analytic'; with kl='mc' it is the whole log weight
log p(x|·) + β(log p(·) − log q(·|x)), extended linearly in the latent as in the authors' code.
The control variate sees the decoder and α as constants: it changes only the encoder's gradient,
and the decoder gradient is ∇_θ f(b), exact.

Tied noise, as in the public code of REBAR and RELAX: v is not drawn afresh but is the uniform
that u is given b (v = (u − σ(−α))/σ(α) for b = 1, u/σ(−α) for b = 0), held fixed when
differentiating. Then z̃ = z in value, (b, v) has the law of (b, fresh v), so ĝ stays unbiased,
and c and its input gradient c'(z) are computed once:

    ĝ_d = [f(b) − c(z)] (b_d − σ(α_d)) + c'(z)_d · (1 − ∂z̃_d/∂α_d),
    ∂z̃_d/∂α_d = q(b_d|x) (1 − e^{−|z_d|}),  q(b_d|x) = σ((2b_d − 1) α_d).

So f is evaluated at b and at σ(z/λ): 2 evaluations per particle (`evaluations` = 2K).

Training the control variate: φ_c = (η, λ, ρ) follows −∇_{φ_c} of V = mean_{k,m} ‖ĝ_{k,m}‖², the
squared per-example gradient with respect to the logits α (as in the authors' code); E[V] differs
from the trace of ĝ's variance by ‖E ĝ‖², which φ_c does not change. ĝ is built with α, f(b) and
the model's parameters stopped, c'(z) by torch.func.grad (composable with the harness's
vmap(grad(...))), and V enters the surrogate as V − V.detach(): zero in value, with gradient ∇V
for φ_c only. The main term uses ĝ detached, so it carries no gradient to φ_c.

Hyper-parameters (paper, Appendix "Discrete VAE", and the authors' binary-VAE code): η = 1 and
λ = ½ at the start. Our choice: one scalar each; the authors' binary_vae.py learns one η and one
λ per latent. r_ρ a ReLU MLP with 4 hidden layers of 200 units (the best
of {2, 4} layers) on the concatenated (x, z); the control variate's learning rate equals the
model's (scale 1, the best of {1, 10}), set here by the harness's single Adam. Not used: the
control variate's weight decay (searched over {1e-3, 1e-4}; 0 in the code's defaults), its 1,000
pre-training steps, and centring x by the training mean.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call, grad

from vae_core.estimators.base import EstimatorOutput, gradient_only, register
from vae_core.estimators.discrete import (
    BinaryLatentEstimator,
    logistic_sample,
    logit_chain_surrogate,
)
from vae_core.models import mlp


class RelaxControlVariate(nn.Module):
    """c(z) = η f̃(σ(z/λ)) + r_ρ(x, z) per sample, shape z.shape[:-1]."""

    def __init__(self, input_dim: int, latent_dim: int, hidden: int, depth: int) -> None:
        super().__init__()
        self.eta = nn.Parameter(torch.tensor(1.0))
        self.log_temperature = nn.Parameter(torch.tensor(math.log(0.5)))
        self.network = mlp([input_dim + latent_dim, *[hidden] * depth, 1], "relu")

    def forward(
        self,
        x: torch.Tensor,
        z: torch.Tensor,
        relaxed_signal: Callable[[torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        relaxed = torch.sigmoid(z / self.log_temperature.exp())
        features = torch.cat([x.expand(*z.shape[:-1], -1), z], dim=-1)
        return self.eta * relaxed_signal(relaxed) + self.network(features).squeeze(-1)


@register("relax")
class Relax(BinaryLatentEstimator):
    """ĝ_α = [f(b) − c(z̃)] ∇_α log q(b|x) + ∇_α c(z) − ∇_α c(z̃) with the learned
    c(z) = η f̃(σ(z/λ)) + r_ρ(x, z), tied z̃ (see the module docstring)."""

    summary = (
        "RELAX: REBAR term + learned net as control variate, variance-trained (Grathwohl 2018)"
    )
    variance_counterpart = "reinforce"
    hidden = 200
    depth = 4

    def build_state(self) -> None:
        reference = next(self.model.parameters())
        self.control_variate = RelaxControlVariate(
            self.model.input_dim, self.model.latent_dim, self.hidden, self.depth
        ).to(reference)

    @classmethod
    def evaluations(cls, n_particles: int) -> int:
        """f at b and at the relaxed σ(z/λ) per particle (z̃ = z in value, tied noise)."""
        return 2 * n_particles

    def forward(self, x: torch.Tensor, u: torch.Tensor) -> EstimatorOutput:
        posterior = self.model.posterior(x)
        (logits,) = posterior
        z = logistic_sample(logits.detach(), u)
        b = (z > 0).to(u.dtype)
        f, kl_analytic = self.learning_signal(x, b, posterior)
        logit_grad = self.logit_gradient(x, logits.detach(), z, b, f.detach())
        surrogate = logit_chain_surrogate(logit_grad.mean(0), logits, f, kl_analytic)
        # The variance objective, whose gradient reaches φ_c only.
        surrogate = surrogate - gradient_only(logit_grad.pow(2).sum(-1).mean())
        return EstimatorOutput(surrogate, self.elbo_per_example(f, kl_analytic), f.detach())

    def logit_gradient(
        self,
        x: torch.Tensor,
        logits: torch.Tensor,
        z: torch.Tensor,
        b: torch.Tensor,
        f: torch.Tensor,
    ) -> torch.Tensor:
        """ĝ per particle and example, shape (K, M, D), with autograd paths to the control
        variate's parameters φ_c only: logits, z, b and f come detached, and the model's
        parameters are stopped inside the relaxed signal."""
        score = b - torch.sigmoid(logits)
        conditional_path = torch.sigmoid((2 * b - 1) * logits) * -torch.expm1(-z.abs())

        def relaxed_signal(relaxed: torch.Tensor) -> torch.Tensor:
            if self.kl == "mc":
                log_q = self.model.log_posterior(relaxed, (logits,))
                return call_with_stopped_parameters(self.model, self.log_weight, x, relaxed, log_q)
            return call_with_stopped_parameters(self.model, self.model.log_likelihood, x, relaxed)

        def control(z_: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            c = self.control_variate(x, z_, relaxed_signal)
            return c.sum(), c

        c_grad, c = grad(control, has_aux=True)(z)  # c'(z) keeps its autograd path to φ_c
        return (f - c).unsqueeze(-1) * score + c_grad * (1 - conditional_path)


class _Holder(nn.Module):
    """Holds a model as a submodule so that `functional_call` can swap its parameters around any
    function (functional_call itself only calls `forward`)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, function: Callable[..., torch.Tensor], *args: torch.Tensor) -> torch.Tensor:
        return function(*args)


def call_with_stopped_parameters(
    model: nn.Module, function: Callable[..., torch.Tensor], *args: torch.Tensor
) -> torch.Tensor:
    """function(*args) with the model's parameters detached: no gradient reaches them."""
    stopped = {f"model.{name}": p.detach() for name, p in model.named_parameters()}
    return functional_call(_Holder(model), stopped, (function, *args))
