"""Score-function (REINFORCE) gradients, ∇_φ E_q[f] = E_q[f(z) ∇_φ log q_φ(z|x)] (Williams 1992),
with the baselines of Mnih & Gregor (2014) and the leave-one-out baseline (Kool et al. 2019).

z is sampled without a path to φ. A baseline b subtracted from f keeps the estimator unbiased as
long as b does not depend on the sample z_k it multiplies, since E_q[∇_φ log q] = 0.
"""

from __future__ import annotations

import torch

from vae_core.estimators.base import Estimator, EstimatorOutput, register
from vae_core.models import mlp


def score_function_surrogate(
    f: torch.Tensor, log_q: torch.Tensor, kl_analytic: torch.Tensor, signal: torch.Tensor
) -> torch.Tensor:
    """mean_{k,m}[signalᐟ · log q(z_k|x_m) + f_k] − mean_m KL, with ᐟ = detached.

    ∇_φ: signal · ∇_φ log q (the score term) plus ∇_φ f at fixed z, which is −∇_φ log q (mean
    zero) with kl='mc' and nothing with kl='analytic', where −∇_φ KL is exact.
    ∇_θ: ∇_θ log p(x|z) at the sampled z, exact.
    """
    return (signal.detach() * log_q + f).mean() - kl_analytic.mean()


@register("score")
class Score(Estimator):
    """∇_φ ≈ f(z) ∇_φ log q_φ(z|x), no baseline (REINFORCE, Williams 1992)."""

    summary = "score function / REINFORCE, no baseline (Williams 1992)"

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> EstimatorOutput:
        f, kl_analytic, log_q = self.sample_terms(x, noise, stop_path=True)
        surrogate = score_function_surrogate(f, log_q, kl_analytic, f)
        return EstimatorOutput(surrogate, self.elbo_per_example(f, kl_analytic), f.detach())


@register("score_ma")
class ScoreMovingAverage(Estimator):
    """∇_φ ≈ (f(z) − b) ∇_φ log q_φ(z|x), b an exponential moving average of past minibatch-mean
    learning signals (decay 0.9), fixed within a step."""

    summary = "score function with a moving-average baseline"
    variance_counterpart = "score"
    decay = 0.9

    def build_state(self) -> None:
        self.register_buffer("baseline", torch.zeros(()))
        self.register_buffer("n_updates", torch.zeros((), dtype=torch.long))

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> EstimatorOutput:
        f, kl_analytic, log_q = self.sample_terms(x, noise, stop_path=True)
        surrogate = score_function_surrogate(f, log_q, kl_analytic, f - self.baseline)
        return EstimatorOutput(surrogate, self.elbo_per_example(f, kl_analytic), f.detach())

    @torch.no_grad()
    def update_state(self, output: EstimatorOutput) -> None:
        batch_mean = output.learning_signal.mean()
        decay = self.decay if self.n_updates > 0 else 0.0
        self.baseline.mul_(decay).add_((1 - decay) * batch_mean)
        self.n_updates += 1


@register("score_nvil")
class ScoreNVIL(Estimator):
    """NVIL (Mnih & Gregor 2014): ∇_φ ≈ (f(z) − b_ψ(x) − c) ∇_φ log q_φ(z|x), the whole encoder
    gradient (direct and KL terms included) divided by max(1, √v).

    b_ψ is a 100-unit tanh MLP of x trained on its own objective E[(f − c − b_ψ(x))²]; c and v are
    running mean and variance (decay 0.8) of f − b_ψ(x). The expected encoder gradient is
    ∇_φ L / max(1, √v): unbiased in direction, with a step-size factor fixed within a step.
    """

    summary = "score function, input-dependent learned baseline + variance normalisation (NVIL)"
    variance_counterpart = "score"
    decay = 0.8
    baseline_hidden = 100

    def build_state(self) -> None:
        reference = next(self.model.parameters())
        sizes = [self.model.input_dim, self.baseline_hidden, 1]
        self.baseline_net = mlp(sizes, "tanh").to(reference)
        self.register_buffer("signal_mean", torch.zeros(()))
        self.register_buffer("signal_var", torch.ones(()))
        self.register_buffer("n_updates", torch.zeros((), dtype=torch.long))

    def signal_scale(self) -> torch.Tensor:
        """The normalising factor max(1, √v) that divides the encoder gradient."""
        return self.signal_var.sqrt().clamp(min=1.0)

    def encoder_gradient_scale(self) -> float:
        return 1.0 / self.signal_scale().item()

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> EstimatorOutput:
        f, kl_analytic, log_q = self.sample_terms(
            x, noise, stop_path=True, encoder_grad_scale=1.0 / self.signal_scale()
        )
        baseline = self.baseline_net(x).squeeze(-1)  # (M,), trained only by the regression term
        residual = f.detach() - baseline.detach()
        signal = residual - self.signal_mean
        regression = (f.detach() - self.signal_mean - baseline).pow(2).mean()
        surrogate = score_function_surrogate(f, log_q, kl_analytic, signal) - regression
        return EstimatorOutput(
            surrogate,
            self.elbo_per_example(f, kl_analytic),
            f.detach(),
            stats={"residual": residual},
        )

    @torch.no_grad()
    def update_state(self, output: EstimatorOutput) -> None:
        residual = output.stats["residual"]
        decay = self.decay if self.n_updates > 0 else 0.0
        self.signal_mean.mul_(decay).add_((1 - decay) * residual.mean())
        self.signal_var.mul_(decay).add_((1 - decay) * residual.var(unbiased=False))
        self.n_updates += 1


@register("score_loo")
class ScoreLeaveOneOut(Estimator):
    """RLOO (Kool et al. 2019; cf. Mnih & Rezende 2016): K ≥ 2 samples per example,
    ∇_φ ≈ (1/K) Σ_k (f_k − (1/(K−1)) Σ_{j≠k} f_j) ∇_φ log q_φ(z_k|x)."""

    summary = "score function, K>=2 samples, leave-one-out baseline (RLOO)"
    variance_counterpart = "score"
    min_particles = 2

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> EstimatorOutput:
        f, kl_analytic, log_q = self.sample_terms(x, noise, stop_path=True)
        k = f.shape[0]
        leave_one_out_mean = (f.sum(0, keepdim=True) - f) / (k - 1)
        surrogate = score_function_surrogate(f, log_q, kl_analytic, f - leave_one_out_mean)
        return EstimatorOutput(surrogate, self.elbo_per_example(f, kl_analytic), f.detach())
