"""Is estimator A less variable than estimator B? A one-sided test on the trace of the covariance.

For R encoder-gradient draws g_r ∈ R^P the quantity compared is tr Σ = E‖ĝ − E ĝ‖², estimated by
tr S = Σ_j Var_r g_rj (unbiased, R − 1). Coordinates share samples, so they are correlated;
instead of a per-coordinate formula, note that tr S = (1/(R(R − 1))) Σ_{r<s} ‖g_r − g_s‖² is a
U-statistic with kernel h = ½‖g − g'‖², whose first Hoeffding projection is
E[h | g] = ½(‖g − μ‖² + tr Σ). Hence, with no assumption on the covariance or the distribution,
Var(tr S) = Var‖ĝ − μ‖²/R + O(R⁻²), estimated by Var_r(a_r)/R with a_r = ‖g_r − ḡ‖². By the delta
method, log tr S ≈ log tr Σ + mean_r(a_r/tr Σ) − 1, so

    Var log(tr S_A / tr S_B) ≈ Var_r(a_r/tr S_A)/R_A + Var_r(b_r/tr S_B)/R_B   (independent draws)
                             ≈ Var_r(a_r/tr S_A − b_r/tr S_B)/R                  (paired draws),

paired meaning both estimators see the same noise in draw r (common random numbers, used whenever
their noise shapes match; the covariance of a_r and b_r then shrinks the standard error).
tr Σ_A < tr Σ_B is declared when the upper confidence bound exp(log(tr S_A/tr S_B) + z·SE) is
below 1, z = Φ⁻¹(1 − α) one-sided (α Bonferroni-divided by the caller). The standard error is
checked by repetition in tests/test_variance_reduction.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from bench.check.ztest import gradient_draws_at_once
from vae_core.estimators import Estimator


@dataclass(frozen=True)
class LogVarianceRatio:
    """log(tr S_A / tr S_B) and its delta-method standard error (module docstring)."""

    estimate: float
    standard_error: float

    @property
    def ratio(self) -> float:
        return math.exp(self.estimate)

    def upper_bound(self, critical: float) -> float:
        """exp(log ratio + z·SE): a one-sided upper confidence bound on tr Σ_A / tr Σ_B."""
        return math.exp(self.estimate + critical * self.standard_error)

    def describe(self, critical: float) -> str:
        return (
            f"tr S ratio {self.ratio:.4g}, upper bound {self.upper_bound(critical):.4g} "
            f"(log ratio {self.estimate:.3f} ± {self.standard_error:.3g}, z = {critical:.2f})"
        )


def normalised_squared_deviations(draws: torch.Tensor) -> tuple[float, torch.Tensor]:
    """(tr S, a_r / tr S) for draws (R, P): tr S = Σ_j Var_r g_rj (R − 1), a_r = ‖g_r − ḡ‖²."""
    trace = draws.var(0, unbiased=True).sum()
    return trace.item(), (draws - draws.mean(0)).pow(2).sum(1) / trace


def log_variance_ratio(
    draws_a: torch.Tensor, draws_b: torch.Tensor, paired: bool
) -> LogVarianceRatio:
    """log(tr S_A / tr S_B) with SE² = Var_r(a_r/tr S_A − b_r/tr S_B)/R when draw r of A and of
    B share their noise (`paired`), else Var_r(a_r/tr S_A)/R_A + Var_r(b_r/tr S_B)/R_B."""
    trace_a, terms_a = normalised_squared_deviations(draws_a)
    trace_b, terms_b = normalised_squared_deviations(draws_b)
    if paired:
        variance = (terms_a - terms_b).var() / len(terms_a)
    else:
        variance = terms_a.var() / len(terms_a) + terms_b.var() / len(terms_b)
    return LogVarianceRatio(math.log(trace_a / trace_b), math.sqrt(variance.item()))


def encoder_draws(estimator: Estimator, x: torch.Tensor, n_draws: int, seed: int) -> torch.Tensor:
    """R = n_draws encoder-gradient draws (R, P), all in one vmap."""
    return gradient_draws_at_once(estimator, x, n_draws, seed)["encoder"]


def same_noise(a: Estimator, b: Estimator, batch_size: int) -> bool:
    return a.noise_shape(batch_size) == b.noise_shape(batch_size)


def compare(
    a: Estimator, b: Estimator, x: torch.Tensor, n_draws: int, seed: int
) -> LogVarianceRatio:
    """log(tr S_A / tr S_B) from n_draws draws each: paired (one seed, the same noise) when the
    noise shapes match, otherwise independent (seeds `seed`, `seed + 1`)."""
    paired = same_noise(a, b, len(x))
    draws_a = encoder_draws(a, x, n_draws, seed)
    draws_b = encoder_draws(b, x, n_draws, seed if paired else seed + 1)
    return log_variance_ratio(draws_a, draws_b, paired)
