"""The four single-draw estimators of (∂F/∂μ, ∂F/∂σ), each a function of standard noise, and
that noise. Each function maps noise to estimates elementwise (noise may be any broadcastable
shape: a vector of draws, or a grid of quadrature nodes)."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np

from bench.toy.problem import ToyProblem
from bench.toy.quadrature import expectation

TOY_ESTIMATORS: tuple[str, ...] = ("pathwise", "score", "score_cv", "measure_valued")


def pathwise_mu(p: ToyProblem, eps: np.ndarray) -> np.ndarray:
    """Pathwise (Section 5): x = μ + σε, ∂x/∂μ = 1, so ĝ_μ = f'(x)."""
    return p.df(p.mu + p.sigma * eps)


def pathwise_sigma(p: ToyProblem, eps: np.ndarray) -> np.ndarray:
    """Pathwise (Section 5): x = μ + σε, ∂x/∂σ = ε, so ĝ_σ = f'(x) ε."""
    return p.df(p.mu + p.sigma * eps) * eps


def score_mu(p: ToyProblem, eps: np.ndarray) -> np.ndarray:
    """Score function (Section 4): ĝ_μ = f(x) ∂_μ log N(x; μ, σ²) = f(x) (x − μ)/σ² = f(x) ε/σ."""
    return p.f(p.mu + p.sigma * eps) * eps / p.sigma


def score_sigma(p: ToyProblem, eps: np.ndarray) -> np.ndarray:
    """Score function: ĝ_σ = f(x) ((x − μ)²/σ³ − 1/σ) = f(x) (ε² − 1)/σ."""
    return p.f(p.mu + p.sigma * eps) * (eps**2 - 1.0) / p.sigma


def score_cv_mu(p: ToyProblem, eps: np.ndarray) -> np.ndarray:
    """Score function with the oracle optimal constant baseline: ĝ_μ = (f(x) − b*_μ) ε/σ."""
    return (p.f(p.mu + p.sigma * eps) - optimal_baseline(p, "mu")) * eps / p.sigma


def score_cv_sigma(p: ToyProblem, eps: np.ndarray) -> np.ndarray:
    """Score function with the oracle optimal constant baseline: ĝ_σ = (f(x) − b*_σ)(ε² − 1)/σ."""
    return (p.f(p.mu + p.sigma * eps) - optimal_baseline(p, "sigma")) * (eps**2 - 1.0) / p.sigma


def measure_valued_mu(p: ToyProblem, w: np.ndarray) -> np.ndarray:
    """Measure-valued (Section 6, Table 1): ∂_μ N(x; μ, σ²) = c_μ (N⁺ − N⁻), c_μ = 1/(σ√(2π)).

    N⁺ is the law of μ + σW and N⁻ that of μ − σW, W ~ Weibull(scale √2, shape 2) = Rayleigh(1)
    (density w exp(−w²/2), w > 0). Coupled as in mc_gradients: both parts use the *same* W, so
    ĝ_μ = (f(μ + σW) − f(μ − σW)) / (σ√(2π)).
    """
    return (p.f(p.mu + p.sigma * w) - p.f(p.mu - p.sigma * w)) / (p.sigma * math.sqrt(2 * math.pi))


def measure_valued_sigma(p: ToyProblem, m: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Measure-valued (Section 6, Table 1): ∂_σ N(x; μ, σ²) = c_σ (N⁺ − N⁻), c_σ = 1/σ.

    N⁺ is the law of μ + σM, M ~ double-sided Maxwell (density m² exp(−m²/2)/√(2π)), and N⁻ is
    N(μ, σ²) itself. Coupled as in mc_gradients (`std_gaussian_from_std_dsmaxwell`): the negative
    part's standard normal is U·M with U ~ Uniform(0, 1) independent of M (U·M ~ N(0, 1) exactly:
    |M| has density ∝ m² e^{−m²/2}, and U|M| then has density ∝ ∫_y^∞ m e^{−m²/2} dm = e^{−y²/2}).
    So ĝ_σ = (f(μ + σM) − f(μ + σUM)) / σ.
    """
    return (p.f(p.mu + p.sigma * m) - p.f(p.mu + p.sigma * u * m)) / p.sigma


def _score(p: ToyProblem, param: str, eps: np.ndarray) -> np.ndarray:
    """s_θ(x) = ∂_θ log N(x; μ, σ²) at x = μ + σε."""
    return eps / p.sigma if param == "mu" else (eps**2 - 1.0) / p.sigma


@functools.lru_cache(maxsize=256)
def optimal_baseline(p: ToyProblem, param: str) -> float:
    """b*_θ = E[f(x) s_θ(x)²] / E[s_θ(x)²], the constant baseline minimising Var[(f − b) s_θ].

    An *oracle*: computed exactly by quadrature, so the `score_cv` estimator is unbiased and its
    variance is the lowest any constant baseline can reach. In practice b* would itself be
    estimated. E[s_μ²] = 1/σ² and E[s_σ²] = 2/σ² (the Fisher information).
    """
    fisher = 1.0 / p.sigma**2 if param == "mu" else 2.0 / p.sigma**2
    moment = expectation(
        p, "normal", lambda eps: p.f(p.mu + p.sigma * eps) * _score(p, param, eps) ** 2
    )
    return moment / fisher


Estimate = Callable[..., np.ndarray]
# (estimator, param) → (noise kind, estimate as a function of that noise).
ESTIMATES: dict[tuple[str, str], tuple[str, Estimate]] = {
    ("pathwise", "mu"): ("normal", pathwise_mu),
    ("pathwise", "sigma"): ("normal", pathwise_sigma),
    ("score", "mu"): ("normal", score_mu),
    ("score", "sigma"): ("normal", score_sigma),
    ("score_cv", "mu"): ("normal", score_cv_mu),
    ("score_cv", "sigma"): ("normal", score_cv_sigma),
    ("measure_valued", "mu"): ("rayleigh", measure_valued_mu),
    ("measure_valued", "sigma"): ("maxwell_uniform", measure_valued_sigma),
}


def sample_noise(kind: str, rng: np.random.Generator, n: int) -> tuple[np.ndarray, ...]:
    """n draws of the standard noise that an estimator consumes."""
    if kind == "normal":
        return (rng.standard_normal(n),)
    if kind == "rayleigh":
        return (rng.rayleigh(1.0, n),)  # = √2 · Weibull(shape 2) = Weibull(scale √2, shape 2)
    # Double-sided Maxwell: a random sign times a chi variable with 3 degrees of freedom.
    sign = np.where(rng.random(n) < 0.5, -1.0, 1.0)
    maxwell = sign * np.sqrt(rng.chisquare(3.0, n))
    return maxwell, rng.random(n)
