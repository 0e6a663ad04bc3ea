"""Gaussian toy problem with closed-form answers (Mohamed et al. 2020, Section 3, Figs. 2-3).

We estimate the gradient over θ = (μ, σ) of  F(θ) = E_{x ~ N(μ, σ²)} f(x)  for three costs

    square  f(x) = (x − k)²        exp  f(x) = exp(−k x²)        cos  f(x) = cos(k x)

with four estimators, each a single-draw estimate of (∂F/∂μ, ∂F/∂σ). Every estimator below is
written as a function of *standard* noise — ε ~ N(0, 1), W ~ Rayleigh(1), or the coupled pair
(M, U) of the measure-valued σ-estimator — so the same code serves twice:

- Monte Carlo (`run_toy`): draw the noise with a numpy Generator and average `draws` estimates;
- quadrature (`exact_moments`): replace the noise by quadrature nodes and weights, which gives
  the estimator's exact mean, variance and fourth central moment.

Quadrature: composite Gauss-Legendre on the truncated support of the noise ([−12, 12] for the
normal and Maxwell, [0, 12] for Rayleigh; the mass outside is below 1e-30) times the noise
density, with panels narrow enough to resolve f⁴ (for the fourth moment): frequency 4kσ for cos,
width 1/(2σ√(2k)) for exp. Refining the panels 2.7× and truncating at 14 instead moved no moment
by over 1e-13 (relative) in checks up to kσ = 30. We do not use Gauss-Hermite: numpy's
`hermegauss` overflows beyond ~350 nodes, and 300 nodes integrate cos(aε) only up to a ≈ 20,
short of the cos⁴(kσε) in a fourth moment once kσ ≳ 5. The tests pin the quadrature to closed
forms to 1e-9.

Reference: S. Mohamed, M. Rosca, M. Figurnov, A. Mnih, "Monte Carlo Gradient Estimation in
Machine Learning", JMLR 21(132), 2020 (arXiv:1906.10652): Section 3 (this toy problem),
Section 4 (score function), Section 5 (pathwise), Section 6 (measure-valued derivatives, with the
Gaussian weak derivatives in its Table 1), Section 7 (variance reduction: coupling / common random
numbers, and control variates with the optimal baseline). The measure-valued estimator and its
coupling follow google-deepmind/mc_gradients (`gradient_estimators.py`, `dist_utils.py`).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass

import numpy as np

COSTS: tuple[str, ...] = ("square", "exp", "cos")
TOY_ESTIMATORS: tuple[str, ...] = ("pathwise", "score", "score_cv", "measure_valued")
PARAMS: tuple[str, ...] = ("mu", "sigma")


@dataclass(frozen=True)
class ToyResult:
    """Empirical and exact moments of one estimator's single-draw estimate of ∂F/∂param."""

    estimator: str
    param: str
    mean: float
    variance: float
    exact_mean: float | None
    exact_variance: float | None


# --------------------------------------------------------------------------- problem and costs


@dataclass(frozen=True)
class ToyProblem:
    """F(μ, σ) = E_{x ~ N(μ, σ²)} f(x; k) for one of `COSTS`; validates its inputs."""

    cost: str
    k: float
    mu: float
    sigma: float

    def __post_init__(self) -> None:
        if self.cost not in COSTS:
            raise ValueError(f"unknown cost {self.cost!r}; valid costs: {', '.join(COSTS)}")
        for name in ("k", "mu", "sigma"):
            value = getattr(self, name)
            if not isinstance(value, (int, float, np.integer, np.floating)) or isinstance(
                value, bool
            ):
                raise ValueError(f"{name} must be a real number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value!r}")
            object.__setattr__(self, name, float(value))
        if self.sigma <= 0:
            raise ValueError(f"sigma must be > 0, got {self.sigma!r}")
        if self.cost == "exp" and self.k < 0:
            # exp(+|k| x²) has no finite fourth moment under N(μ, σ²) once 8|k|σ² ≥ 1.
            raise ValueError(f"k must be >= 0 for the exp cost, got {self.k!r}")

    def f(self, x: np.ndarray) -> np.ndarray:
        """The cost f(x; k)."""
        if self.cost == "square":
            return (x - self.k) ** 2
        if self.cost == "exp":
            return np.exp(-self.k * x**2)
        return np.cos(self.k * x)

    def df(self, x: np.ndarray) -> np.ndarray:
        """The derivative f'(x; k), used by the pathwise estimator."""
        if self.cost == "square":
            return 2.0 * (x - self.k)
        if self.cost == "exp":
            return -2.0 * self.k * x * np.exp(-self.k * x**2)
        return -self.k * np.sin(self.k * x)

    @property
    def frequency(self) -> float:
        """How fast f(μ + σz) varies in the standard noise z; sets the quadrature's panel width."""
        if self.cost == "cos":
            return abs(self.k) * self.sigma
        if self.cost == "exp":
            return self.sigma * math.sqrt(2.0 * self.k)  # exp(−kσ²z²) has width 1/(σ√(2k))
        return 0.0


def true_gradient(cost: str, k: float, mu: float, sigma: float) -> tuple[float, float]:
    """Closed-form (∂F/∂μ, ∂F/∂σ) of F = E_{N(μ, σ²)} f."""
    p = ToyProblem(cost, k, mu, sigma)
    k, mu, sigma = p.k, p.mu, p.sigma
    if p.cost == "square":
        # F = (μ − k)² + σ².
        return 2.0 * (mu - k), 2.0 * sigma
    if p.cost == "exp":
        # F = exp(−kμ²/s)/√s with s = 1 + 2kσ² (a Gaussian integral); ds/dσ = 4kσ and
        # ∂ log F/∂s = kμ²/s² − 1/(2s).
        s = 1.0 + 2.0 * k * sigma**2
        value = math.exp(-k * mu**2 / s) / math.sqrt(s)
        return -2.0 * k * mu / s * value, (k * mu**2 / s**2 - 0.5 / s) * 4.0 * k * sigma * value
    # F = Re E[exp(ikx)] = cos(kμ) exp(−k²σ²/2), the Gaussian characteristic function.
    damping = math.exp(-0.5 * (k * sigma) ** 2)
    return -k * math.sin(k * mu) * damping, -(k**2) * sigma * math.cos(k * mu) * damping


# --------------------------------------------------------------------------------- estimators
# Each function maps standard noise to single-draw estimates, elementwise (noise may be any
# broadcastable shape: a vector of draws, or a grid of quadrature nodes).


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


_Estimate = Callable[..., np.ndarray]
# (estimator, param) → (noise kind, estimate as a function of that noise).
_ESTIMATES: dict[tuple[str, str], tuple[str, _Estimate]] = {
    ("pathwise", "mu"): ("normal", pathwise_mu),
    ("pathwise", "sigma"): ("normal", pathwise_sigma),
    ("score", "mu"): ("normal", score_mu),
    ("score", "sigma"): ("normal", score_sigma),
    ("score_cv", "mu"): ("normal", score_cv_mu),
    ("score_cv", "sigma"): ("normal", score_cv_sigma),
    ("measure_valued", "mu"): ("rayleigh", measure_valued_mu),
    ("measure_valued", "sigma"): ("maxwell_uniform", measure_valued_sigma),
}


def _sample_noise(kind: str, rng: np.random.Generator, n: int) -> tuple[np.ndarray, ...]:
    """n draws of the standard noise that an estimator consumes."""
    if kind == "normal":
        return (rng.standard_normal(n),)
    if kind == "rayleigh":
        return (rng.rayleigh(1.0, n),)  # = √2 · Weibull(shape 2) = Weibull(scale √2, shape 2)
    # Double-sided Maxwell: a random sign times a chi variable with 3 degrees of freedom.
    sign = np.where(rng.random(n) < 0.5, -1.0, 1.0)
    maxwell = sign * np.sqrt(rng.chisquare(3.0, n))
    return maxwell, rng.random(n)


# --------------------------------------------------------------------------------- quadrature

_TRUNCATION = 12.0  # P(|ε| > 12) ≈ 2e-33; Maxwell and Rayleigh tails are as light.
_NODES_PER_PANEL = 20  # exact for polynomials of degree 39 on each panel
_PHASE_PER_PANEL = 8.0  # radians of the fastest integrand (frequency 4 × p.frequency) per panel
_BLOCK_SIZE = 1 << 20  # quadrature points evaluated at once (bounds memory for the 2-D rule)


def _gauss_legendre(a: float, b: float, n_panels: int) -> tuple[np.ndarray, np.ndarray]:
    """Composite Gauss-Legendre nodes and weights on [a, b] with `n_panels` equal panels."""
    x, w = np.polynomial.legendre.leggauss(_NODES_PER_PANEL)
    edges = np.linspace(a, b, n_panels + 1)
    half = 0.5 * np.diff(edges)[:, None]
    nodes = (0.5 * (edges[:-1] + edges[1:]))[:, None] + half * x
    return nodes.ravel(), (half * w).ravel()


def _panels(length: float, frequency: float) -> int:
    """Panels for an interval so each spans at most _PHASE_PER_PANEL radians of cos(4·freq·z)."""
    return max(1, math.ceil(4.0 * max(frequency, 1.0) * length / _PHASE_PER_PANEL))


def _quadrature_blocks(
    kind: str, frequency: float
) -> Iterator[tuple[tuple[np.ndarray, ...], np.ndarray]]:
    """Nodes and weights (summing to 1) for the noise `kind`, in blocks of ≤ _BLOCK_SIZE points."""
    L = _TRUNCATION
    if kind == "rayleigh":
        w, weights = _gauss_legendre(0.0, L, _panels(L, frequency))
        yield (w,), weights * w * np.exp(-0.5 * w**2)
        return
    z, weights = _gauss_legendre(-L, L, _panels(2 * L, frequency))
    normal_density = np.exp(-0.5 * z**2) / math.sqrt(2 * math.pi)
    if kind == "normal":
        yield (z,), weights * normal_density
        return
    # (M, U): M ~ double-sided Maxwell, density m² φ(m); U ~ Uniform(0, 1). f(μ + σuM) has
    # frequency up to |M|·frequency ≤ L·frequency along u.
    u, u_weights = _gauss_legendre(0.0, 1.0, _panels(1.0, L * frequency))
    m_weights = weights * z**2 * normal_density
    rows = max(1, _BLOCK_SIZE // u.size)
    for start in range(0, z.size, rows):
        block = slice(start, start + rows)
        yield (z[block, None], u[None, :]), m_weights[block, None] * u_weights[None, :]


def _expectation(p: ToyProblem, kind: str, function: Callable[..., np.ndarray]) -> float:
    """E[function(*noise)] by quadrature, for the noise `kind` and resolution of problem `p`."""
    return math.fsum(
        float(np.sum(w * function(*nodes))) for nodes, w in _quadrature_blocks(kind, p.frequency)
    )


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
    moment = _expectation(
        p, "normal", lambda eps: p.f(p.mu + p.sigma * eps) * _score(p, param, eps) ** 2
    )
    return moment / fisher


@functools.lru_cache(maxsize=1024)
def _central_moments(p: ToyProblem, estimator: str, param: str) -> tuple[float, float, float]:
    """(mean, variance, fourth central moment) of one single-draw estimate, by quadrature."""
    kind, estimate = _ESTIMATES[(estimator, param)]
    mean = _expectation(p, kind, functools.partial(estimate, p))
    sums = [0.0, 0.0]
    for nodes, w in _quadrature_blocks(kind, p.frequency):
        centred_sq = (estimate(p, *nodes) - mean) ** 2
        sums[0] += float(np.sum(w * centred_sq))
        sums[1] += float(np.sum(w * centred_sq**2))
    return mean, sums[0], sums[1]


def _check_estimator_param(estimator: str, param: str) -> None:
    if estimator not in TOY_ESTIMATORS:
        raise ValueError(
            f"unknown estimator {estimator!r}; valid estimators: {', '.join(TOY_ESTIMATORS)}"
        )
    if param not in PARAMS:
        raise ValueError(f"unknown param {param!r}; valid params: {', '.join(PARAMS)}")


def exact_central_moments(
    cost: str, k: float, mu: float, sigma: float, estimator: str, param: str
) -> tuple[float, float, float]:
    """(mean, variance, fourth central moment) of the single-draw estimate, by quadrature.

    The fourth central moment μ₄ gives the standard error of a sample variance,
    √((μ₄ − variance²)/n).
    """
    _check_estimator_param(estimator, param)
    return _central_moments(ToyProblem(cost, k, mu, sigma), estimator, param)


def exact_moments(
    cost: str, k: float, mu: float, sigma: float, estimator: str, param: str
) -> tuple[float, float]:
    """(exact_mean, exact_variance) of the single-draw estimate of ∂F/∂param, by quadrature.

    The mean comes from the same quadrature as the variance, so it checks the estimator rather
    than restating `true_gradient`; for these unbiased estimators the two agree (tests: 1e-9).
    """
    mean, variance, _ = exact_central_moments(cost, k, mu, sigma, estimator, param)
    return mean, variance


# -------------------------------------------------------------------------------- experiment


def _check_count(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def run_toy(
    cost: str,
    k: float,
    mu: float,
    sigma: float,
    draws: int,
    seed: int,
    estimators: Sequence[str] = TOY_ESTIMATORS,
) -> list[ToyResult]:
    """Empirical mean and variance (ddof=1) of `draws` single-draw estimates, beside exact ones.

    Each estimator draws from its own stream, numpy Generator([seed, its index in
    TOY_ESTIMATORS]), so its numbers do not depend on which other estimators run. The μ- and
    σ-estimates of one draw share its noise where they consume the same kind (ε for pathwise and
    score); the measure-valued μ and σ parts draw their own (Rayleigh, and Maxwell-uniform).
    `exact_mean` is the closed-form gradient; `exact_variance` comes from `exact_moments`.
    """
    problem = ToyProblem(cost, k, mu, sigma)
    draws = _check_count("draws", draws, 2)
    seed = _check_count("seed", seed, 0)
    if isinstance(estimators, str) or not estimators:
        raise ValueError(
            f"estimators must be a non-empty list drawn from: {', '.join(TOY_ESTIMATORS)}"
        )
    for name in estimators:
        _check_estimator_param(name, "mu")
    gradient = dict(zip(PARAMS, true_gradient(cost, k, mu, sigma), strict=True))

    results = []
    for name in dict.fromkeys(estimators):  # ordered and without repeats
        rng = np.random.default_rng([seed, TOY_ESTIMATORS.index(name)])
        noise: dict[str, tuple[np.ndarray, ...]] = {}
        for param in PARAMS:
            kind, estimate = _ESTIMATES[(name, param)]
            if kind not in noise:
                noise[kind] = _sample_noise(kind, rng, draws)
            values = estimate(problem, *noise[kind])
            _, exact_variance, _ = _central_moments(problem, name, param)
            results.append(
                ToyResult(
                    estimator=name,
                    param=param,
                    mean=float(np.mean(values)),
                    variance=float(np.var(values, ddof=1)),
                    exact_mean=gradient[param],
                    exact_variance=exact_variance,
                )
            )
    return results


def format_table(results: list[ToyResult]) -> str:
    """Fixed-width table: one row per (estimator, param), empirical beside exact."""
    columns = ("estimator", "param", "mean", "exact_mean", "variance", "exact_variance")
    header = f"{columns[0]:<16}{columns[1]:<7}" + "".join(f"{c:>16}" for c in columns[2:])
    lines = [header, "-" * len(header)]
    for r in results:
        numbers = (r.mean, r.exact_mean, r.variance, r.exact_variance)
        cells = "".join(f"{'-':>16}" if x is None else f"{x:>16.6g}" for x in numbers)
        lines.append(f"{r.estimator:<16}{r.param:<7}{cells}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------- CLI


def add_toy_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `python -m bench toy`; defaults are the paper's μ = σ = 1."""
    parser.add_argument("--cost", choices=COSTS, default="cos", help="cost f (default: cos)")
    parser.add_argument("--k", type=float, default=2.0, help="cost parameter k (default: 2)")
    parser.add_argument("--mu", type=float, default=1.0, help="mean μ (default: 1)")
    parser.add_argument("--sigma", type=float, default=1.0, help="std σ > 0 (default: 1)")
    parser.add_argument("--draws", type=int, default=100_000, help="draws, >= 2 (default: 1e5)")
    parser.add_argument("--seed", type=int, default=0, help="random seed, >= 0 (default: 0)")
    parser.add_argument(
        "--estimators",
        default=",".join(TOY_ESTIMATORS),
        help=f"comma-separated subset of {','.join(TOY_ESTIMATORS)} (default: all)",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON list, not a table")


def main_toy(args: argparse.Namespace) -> int:
    """Run the toy experiment from parsed arguments; print JSON or a table; return exit code."""
    estimators = [name.strip() for name in args.estimators.split(",") if name.strip()]
    try:
        results = run_toy(args.cost, args.k, args.mu, args.sigma, args.draws, args.seed, estimators)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps([asdict(r) for r in results]) if args.json else format_table(results))
    return 0
