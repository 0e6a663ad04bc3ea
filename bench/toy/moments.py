"""Exact moments of each single-draw estimate, by quadrature over its noise."""

from __future__ import annotations

import functools

import numpy as np

from bench.toy.estimators import ESTIMATES, TOY_ESTIMATORS
from bench.toy.problem import PARAMS, ToyProblem
from bench.toy.quadrature import expectation, quadrature_blocks


@functools.lru_cache(maxsize=1024)
def central_moments(p: ToyProblem, estimator: str, param: str) -> tuple[float, float, float]:
    """(mean, variance, fourth central moment) of one single-draw estimate, by quadrature."""
    kind, estimate = ESTIMATES[(estimator, param)]
    mean = expectation(p, kind, functools.partial(estimate, p))
    sums = [0.0, 0.0]
    for nodes, w in quadrature_blocks(kind, p.frequency):
        centred_sq = (estimate(p, *nodes) - mean) ** 2
        sums[0] += float(np.sum(w * centred_sq))
        sums[1] += float(np.sum(w * centred_sq**2))
    return mean, sums[0], sums[1]


def check_estimator_param(estimator: str, param: str) -> None:
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
    check_estimator_param(estimator, param)
    return central_moments(ToyProblem(cost, k, mu, sigma), estimator, param)


def exact_moments(
    cost: str, k: float, mu: float, sigma: float, estimator: str, param: str
) -> tuple[float, float]:
    """(exact_mean, exact_variance) of the single-draw estimate of ∂F/∂param, by quadrature.

    The mean comes from the same quadrature as the variance, so it checks the estimator rather
    than restating `true_gradient`; for these unbiased estimators the two agree (tests: 1e-9).
    """
    mean, variance, _ = exact_central_moments(cost, k, mu, sigma, estimator, param)
    return mean, variance
