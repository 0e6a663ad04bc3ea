"""The toy experiment: Monte Carlo moments beside exact ones (`run_toy`), and the data of the
report's toy figure (Mohamed et al. 2020, Figs. 2–3), written once to DIR/toy.csv by
`python -m bench toy --out DIR` (and `make bench`) so that the report only draws it."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.toy.estimators import ESTIMATES, TOY_ESTIMATORS, sample_noise
from bench.toy.moments import central_moments, check_estimator_param, exact_moments
from bench.toy.problem import COSTS, PARAMS, ToyProblem, true_gradient


@dataclass(frozen=True)
class ToyResult:
    """Empirical and exact moments of one estimator's single-draw estimate of ∂F/∂param."""

    estimator: str
    param: str
    mean: float
    variance: float
    exact_mean: float | None
    exact_variance: float | None


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
        check_estimator_param(name, "mu")
    gradient = dict(zip(PARAMS, true_gradient(cost, k, mu, sigma), strict=True))

    results = []
    for name in dict.fromkeys(estimators):  # ordered and without repeats
        rng = np.random.default_rng([seed, TOY_ESTIMATORS.index(name)])
        noise: dict[str, tuple[np.ndarray, ...]] = {}
        for param in PARAMS:
            kind, estimate = ESTIMATES[(name, param)]
            if kind not in noise:
                noise[kind] = sample_noise(kind, rng, draws)
            values = estimate(problem, *noise[kind])
            _, exact_variance, _ = central_moments(problem, name, param)
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


# The figure: per cost, the k grid of the exact curves, the k of the empirical markers, and the
# cost's formula (the panel title), at μ = σ = 1 as in the paper.
FIGURE_DRAWS = 20_000
FIGURE_SEED = 0
FIGURE_K = {
    "square": (np.linspace(-3.0, 3.0, 60), (-2.5, -1.0, 0.5, 2.0), "f(x) = (x − k)²"),
    "exp": (np.geomspace(0.05, 10.0, 60), (0.1, 0.5, 2.0, 8.0), "f(x) = exp(−k x²)"),
    "cos": (np.geomspace(0.1, 10.0, 60), (0.2, 0.7, 2.0, 7.0), "f(x) = cos(k x)"),
}
FIGURE_COLUMNS = ("cost", "formula", "param", "estimator", "k", "source", "draws", "variance")


def figure_data(
    draws: int = FIGURE_DRAWS, seed: int = FIGURE_SEED, grid_points: int | None = None
) -> Iterator[tuple[object, ...]]:
    """Rows of FIGURE_COLUMNS: the exact variance of every estimator of ∂F/∂μ and ∂F/∂σ on each
    cost's k grid (source 'exact', by quadrature, draws 0), and the sample variance of `draws`
    single-draw estimates at each marker k (source 'empirical', `run_toy` with `seed`).
    `grid_points` thins the grids (for tests)."""
    mu = sigma = 1.0
    for cost in COSTS:
        grid, marks, formula = FIGURE_K[cost]
        if grid_points is not None:
            grid = grid[:: max(1, len(grid) // grid_points)]
        for param in PARAMS:
            for estimator in TOY_ESTIMATORS:
                for k in grid:
                    variance = exact_moments(cost, float(k), mu, sigma, estimator, param)[1]
                    yield cost, formula, param, estimator, float(k), "exact", 0, variance
        for k in marks:
            for r in run_toy(cost, float(k), mu, sigma, draws, seed):
                yield cost, formula, r.param, r.estimator, float(k), "empirical", draws, r.variance


def write_figure_data(out_dir: Path, **options: int) -> Path:
    """DIR/toy.csv from `figure_data(**options)`, written whole and atomically."""
    path = Path(out_dir) / "toy.csv"
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(FIGURE_COLUMNS)
        for row in figure_data(**options):
            writer.writerow((*row[:-1], repr(float(row[-1]))))
    os.replace(tmp, path)
    return path
