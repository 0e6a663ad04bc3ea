"""Gaussian toy problem with closed-form answers (Mohamed et al. 2020, Section 3, Figs. 2-3).

We estimate the gradient over θ = (μ, σ) of  F(θ) = E_{x ~ N(μ, σ²)} f(x)  for three costs

    square  f(x) = (x − k)²        exp  f(x) = exp(−k x²)        cos  f(x) = cos(k x)

with four estimators, each a single-draw estimate of (∂F/∂μ, ∂F/∂σ). Every estimator is
written as a function of *standard* noise — ε ~ N(0, 1), W ~ Rayleigh(1), or the coupled pair
(M, U) of the measure-valued σ-estimator — so the same code serves twice:

- Monte Carlo (`run_toy`): draw the noise with a numpy Generator and average `draws` estimates;
- quadrature (`exact_moments`): replace the noise by quadrature nodes and weights, which gives
  the estimator's exact mean, variance and fourth central moment.

Modules: `problem` (F, the costs and the closed-form gradient), `estimators` (the single-draw
estimators and their noise), `quadrature` (expectations over the noise), `moments` (exact
moments), `experiment` (`run_toy`, and the data of the report's toy figure, DIR/toy.csv).

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

from bench.toy.estimators import TOY_ESTIMATORS, optimal_baseline
from bench.toy.experiment import ToyResult, figure_data, run_toy, write_figure_data
from bench.toy.moments import exact_central_moments, exact_moments
from bench.toy.problem import COSTS, PARAMS, ToyProblem, true_gradient

__all__ = [
    "COSTS",
    "PARAMS",
    "TOY_ESTIMATORS",
    "ToyProblem",
    "ToyResult",
    "exact_central_moments",
    "exact_moments",
    "figure_data",
    "optimal_baseline",
    "run_toy",
    "true_gradient",
    "write_figure_data",
]
