"""Tests of the Gaussian toy problem (bench/toy/): quadrature against closed forms, Monte Carlo
against quadrature by z-tests whose power is shown, and the CLI."""

from __future__ import annotations

import csv
import functools
import json
import math

import numpy as np
import pytest
from scipy.special import dawsn

from bench import toy
from bench.__main__ import main, toy_table
from bench.toy import (
    COSTS,
    PARAMS,
    TOY_ESTIMATORS,
    ToyResult,
    exact_central_moments,
    exact_moments,
    run_toy,
    true_gradient,
)

DRAWS = 200_000
Z_MAX = 4.0
# (cost, k, mu, sigma): the paper's square set-up, the brief's cos example, and one each of
# a shifted square, a narrow exp, a mild exp and a high-frequency cos.
CASES = [
    ("square", 0.0, 1.0, 1.0),
    ("square", 2.0, -0.5, 1.5),
    ("exp", 1.0, 0.5, 1.0),
    ("exp", 3.0, 1.0, 0.6),
    ("cos", 2.0, 0.3, 0.8),
    ("cos", 5.0, 1.0, 1.0),
]


def close(actual: float, expected: float, rel: float = 1e-9) -> bool:
    return abs(actual - expected) <= rel * max(1.0, abs(expected))


# ----------------------------------------------------------------- quadrature vs closed forms


def square_variances(k: float, mu: float, sigma: float) -> dict[tuple[str, str], float]:
    """Closed-form single-draw variances for f = (x − k)², from Gaussian moments 1, 3, 15, 105.

    With a = μ − k: score Var_μ = E[(a + σε)⁴ ε²]/σ² − g², Var_σ = E[(a + σε)⁴(ε² − 1)²]/σ² − g²;
    the optimal baseline removes b*² E[s²] with b*_μ = a² + 3σ², b*_σ = a² + 5σ²; measure-valued
    μ: 4aW/√(2π) with Var W = (4 − π)/2; σ: 2am(1 − u) + σm²(1 − u²) with E M² = 3, E M⁴ = 15.
    """
    a, s2 = mu - k, sigma**2
    score_mu = (a**4 + 18 * a**2 * s2 + 15 * s2**2) / s2 - 4 * a**2
    score_sigma = (2 * a**4 + 60 * a**2 * s2 + 78 * s2**2) / s2 - 4 * s2
    return {
        ("pathwise", "mu"): 4 * s2,
        ("pathwise", "sigma"): 4 * a**2 + 8 * s2,
        ("score", "mu"): score_mu,
        ("score", "sigma"): score_sigma,
        ("score_cv", "mu"): score_mu - (a**2 + 3 * s2) ** 2 / s2,
        ("score_cv", "sigma"): score_sigma - 2 * (a**2 + 5 * s2) ** 2 / s2,
        ("measure_valued", "mu"): 4 * a**2 * (4 - math.pi) / math.pi,
        ("measure_valued", "sigma"): 4 * a**2 + 4 * s2,
    }


def test_quadrature_reproduces_x_squared_variances_at_mu_sigma_one():
    expected = {"pathwise": (4.0, 12.0), "score": (30.0, 136.0), "score_cv": (14.0, 64.0)}
    for estimator, variances in expected.items():
        for param, variance in zip(PARAMS, variances, strict=True):
            mean, var = exact_moments("square", 0.0, 1.0, 1.0, estimator, param)
            assert close(mean, 2.0) and close(var, variance), (estimator, param, mean, var)


@pytest.mark.parametrize("k, mu, sigma", [(0.0, 1.0, 1.0), (2.0, -0.5, 1.5), (-1.0, 0.7, 0.3)])
def test_quadrature_matches_closed_form_moments_for_square_cost(k, mu, sigma):
    for (estimator, param), variance in square_variances(k, mu, sigma).items():
        mean, var = exact_moments("square", k, mu, sigma, estimator, param)
        expected_mean = 2 * (mu - k) if param == "mu" else 2 * sigma
        assert close(mean, expected_mean), (estimator, param, mean)
        assert close(var, variance), (estimator, param, var, variance)
    # Pathwise μ-estimate 2(a + σε) is Gaussian: fourth central moment 3 Var².
    _, var, fourth = exact_central_moments("square", k, mu, sigma, "pathwise", "mu")
    assert close(fourth, 3 * var**2)


@pytest.mark.parametrize(
    "cost, k, mu, sigma",
    [
        ("exp", 1.0, 0.5, 1.0),
        ("exp", 20.0, -0.3, 0.7),
        ("cos", 2.0, 0.3, 0.8),
        ("cos", 10.0, 1.0, 1.0),
    ],
)
def test_quadrature_mean_of_every_estimator_is_the_closed_form_gradient(cost, k, mu, sigma):
    gradient = true_gradient(cost, k, mu, sigma)
    for estimator in TOY_ESTIMATORS:
        for param, expected in zip(PARAMS, gradient, strict=True):
            mean, _ = exact_moments(cost, k, mu, sigma, estimator, param)
            assert close(mean, expected), (estimator, param, mean, expected)


def test_closed_form_gradient_matches_finite_differences():
    h = 1e-5
    for cost, k, mu, sigma in CASES:
        value = {  # F(μ, σ) in closed form
            "square": lambda m, s, k=k: (m - k) ** 2 + s**2,
            "exp": lambda m, s, k=k: (
                math.exp(-k * m**2 / (1 + 2 * k * s**2)) / math.sqrt(1 + 2 * k * s**2)
            ),
            "cos": lambda m, s, k=k: math.cos(k * m) * math.exp(-0.5 * (k * s) ** 2),
        }[cost]
        d_mu = (value(mu + h, sigma) - value(mu - h, sigma)) / (2 * h)
        d_sigma = (value(mu, sigma + h) - value(mu, sigma - h)) / (2 * h)
        assert np.allclose(true_gradient(cost, k, mu, sigma), (d_mu, d_sigma), atol=1e-7)


@pytest.mark.parametrize("k, mu, sigma", [(2.0, 1.0, 1.0), (10.0, 0.3, 0.8), (7.0, -0.4, 1.3)])
def test_quadrature_matches_closed_form_variances_for_cos_cost(k, mu, sigma):
    # Pathwise: Var[−k sin(kx)] = k² E sin²(kx) − g², E sin²(kx) = (1 − cos(2kμ) e^{−2k²σ²})/2.
    # Measure-valued (coupled): ĝ_μ = −2 sin(kμ) sin(kσW)/(σ√(2π)), and for W ~ Rayleigh(1)
    # E cos(bW) = 1 − √2 b D(b/√2) with D Dawson's integral.
    g_mu = true_gradient("cos", k, mu, sigma)[0]
    pathwise = k**2 * (1 - math.cos(2 * k * mu) * math.exp(-2 * (k * sigma) ** 2)) / 2 - g_mu**2
    b = 2 * k * sigma
    mean_cos = 1 - math.sqrt(2) * b * dawsn(b / math.sqrt(2))
    measure_valued = 4 * math.sin(k * mu) ** 2 / (2 * math.pi * sigma**2) * (1 - mean_cos) / 2
    measure_valued -= g_mu**2
    assert close(exact_moments("cos", k, mu, sigma, "pathwise", "mu")[1], pathwise)
    assert close(exact_moments("cos", k, mu, sigma, "measure_valued", "mu")[1], measure_valued)


# ------------------------------------------------------------------ Monte Carlo vs quadrature


@functools.cache
def toy_results(case: tuple[str, float, float, float]) -> dict[tuple[str, str], ToyResult]:
    seed = 1000 + CASES.index(case)
    return {(r.estimator, r.param): r for r in run_toy(*case, draws=DRAWS, seed=seed)}


def z_scores(result: ToyResult, fourth: float, draws: int = DRAWS) -> tuple[float, float]:
    """z of the sample mean (SE √(Var/n)) and of the sample variance (SE √((μ₄ − Var²)/n)),
    with Var and the fourth central moment μ₄ exact (quadrature), not estimated from the sample."""
    z_mean = (result.mean - result.exact_mean) / math.sqrt(result.exact_variance / draws)
    se_variance = math.sqrt((fourth - result.exact_variance**2) / draws)
    return z_mean, (result.variance - result.exact_variance) / se_variance


@pytest.mark.parametrize("case", CASES, ids=lambda c: "{}-k{}-mu{}-sigma{}".format(*c))
@pytest.mark.parametrize("estimator", TOY_ESTIMATORS)
def test_empirical_moments_match_exact_within_four_standard_errors(case, estimator):
    for param in PARAMS:
        result = toy_results(case)[(estimator, param)]
        _, _, fourth = exact_central_moments(*case, estimator, param)
        z_mean, z_variance = z_scores(result, fourth)
        assert abs(z_mean) < Z_MAX, (param, result, z_mean)
        assert abs(z_variance) < Z_MAX, (param, result, z_variance)


def test_z_tests_reject_a_two_percent_scale_error():
    # Scaling each estimate by 1.02 scales the sample mean by 1.02 and the sample variance by
    # 1.02²; the exact values stay those of the true estimator. Expected shifts: mean
    # 0.02·2/√(4/n) ≈ 8.9, variance 0.0404/√(2/n) ≈ 12.8 standard errors.
    case = ("square", 0.0, 1.0, 1.0)
    result = toy_results(case)[("pathwise", "mu")]
    _, _, fourth = exact_central_moments(*case, "pathwise", "mu")
    assert max(map(abs, z_scores(result, fourth))) < Z_MAX
    biased = ToyResult(
        "pathwise", "mu", 1.02 * result.mean, 1.02**2 * result.variance,
        result.exact_mean, result.exact_variance,
    )  # fmt: skip
    z_mean, z_variance = z_scores(biased, fourth)
    assert abs(z_mean) > Z_MAX and abs(z_variance) > Z_MAX


def test_z_tests_reject_a_score_estimator_with_the_wrong_sign():
    # ĝ_σ = f(x)(ε² + 1)/σ instead of f(x)(ε² − 1)/σ: biased by 2 E[f]/σ.
    case = ("cos", 2.0, 0.3, 0.8)
    p = toy.ToyProblem(*case)
    eps = np.random.default_rng(5).standard_normal(DRAWS)
    wrong = p.f(p.mu + p.sigma * eps) * (eps**2 + 1) / p.sigma
    exact_mean, exact_variance, fourth = exact_central_moments(*case, "score", "sigma")
    result = ToyResult(
        "score", "sigma", wrong.mean(), wrong.var(ddof=1), exact_mean, exact_variance
    )
    assert abs(z_scores(result, fourth)[0]) > Z_MAX


def test_variance_z_test_detects_a_missing_coupling():
    # Measure-valued σ with independent positive and negative parts has the right mean but, for
    # f = x² at μ = σ = 1, variance Var f(1 + M) + Var f(1 + ε) = 18 + 6 = 24, not the coupled 8.
    case = ("square", 0.0, 1.0, 1.0)
    p = toy.ToyProblem(*case)
    rng = np.random.default_rng(6)
    maxwell = rng.choice([-1.0, 1.0], DRAWS) * np.sqrt(rng.chisquare(3.0, DRAWS))
    uncoupled = p.f(p.mu + p.sigma * maxwell) - p.f(p.mu + p.sigma * rng.standard_normal(DRAWS))
    uncoupled /= p.sigma
    exact_mean, exact_variance, fourth = exact_central_moments(*case, "measure_valued", "sigma")
    result = ToyResult(
        "measure_valued", "sigma", uncoupled.mean(), uncoupled.var(ddof=1), exact_mean,
        exact_variance,
    )  # fmt: skip
    z_mean, z_variance = z_scores(result, fourth)
    assert abs(z_mean) < Z_MAX and z_variance > Z_MAX


# ----------------------------------------------------------------- qualitative findings


@pytest.mark.parametrize(
    "case", CASES + [("cos", 0.5, 0.0, 2.0), ("exp", 0.2, -2.0, 0.5), ("square", 5.0, 5.0, 0.1)]
)
def test_optimal_baseline_never_increases_score_variance(case):
    # b* minimises E[(f − b)² s²] over constants b, and b = 0 is the plain score function.
    for param in PARAMS:
        with_baseline = exact_moments(*case, "score_cv", param)[1]
        plain = exact_moments(*case, "score", param)[1]
        assert with_baseline <= plain * (1 + 1e-12), (param, with_baseline, plain)


@pytest.mark.parametrize("k", [0.1, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0])
def test_coupled_measure_valued_mu_variance_for_cos_is_bounded_in_k(k):
    # Coupled ĝ_μ = (cos(k(μ + σW)) − cos(k(μ − σW)))/(σ√(2π)) has |ĝ_μ| ≤ 2/(σ√(2π)), so its
    # variance stays below 2/(πσ²) for every k, while the pathwise f'(x) = −k sin(kx) has
    # variance → k²/2: the measure-valued estimator wins at high frequency (Fig. 3's cos cost).
    mu, sigma = 1.0, 1.0
    bound = 2 / (math.pi * sigma**2)
    measure_valued = exact_moments("cos", k, mu, sigma, "measure_valued", "mu")[1]
    assert measure_valued <= bound
    if k >= 2:
        assert exact_moments("cos", k, mu, sigma, "pathwise", "mu")[1] > bound


# ------------------------------------------------------------------------------------- API


def test_results_come_in_estimator_then_param_order_and_do_not_depend_on_the_selection():
    everything = run_toy("exp", 1.0, 0.2, 0.9, draws=1_000, seed=3)
    assert [(r.estimator, r.param) for r in everything] == [
        (e, p) for e in TOY_ESTIMATORS for p in PARAMS
    ]
    subset = run_toy("exp", 1.0, 0.2, 0.9, draws=1_000, seed=3, estimators=["measure_valued"])
    assert subset == everything[-2:]
    assert run_toy("exp", 1.0, 0.2, 0.9, draws=1_000, seed=4) != everything


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"cost": "tan"}, "unknown cost 'tan'; valid costs: square, exp, cos"),
        ({"estimators": ["reinforce"]}, "unknown estimator 'reinforce'; valid estimators:"),
        ({"sigma": 0.0}, "sigma must be > 0, got 0.0"),
        ({"sigma": -1.0}, "sigma must be > 0"),
        ({"draws": 1}, "draws must be an integer >= 2, got 1"),
        ({"draws": 2.5}, "draws must be an integer >= 2"),
        ({"mu": math.inf}, "mu must be finite, got inf"),
        ({"k": math.nan}, "k must be finite, got nan"),
        ({"cost": "exp", "k": -0.5}, "k must be >= 0 for the exp cost"),
        ({"seed": -1}, "seed must be an integer >= 0"),
        ({"estimators": []}, "estimators must be a non-empty list"),
    ],
)
def test_bad_input_raises_value_error_naming_the_value(kwargs, message):
    arguments = {"cost": "cos", "k": 2.0, "mu": 0.0, "sigma": 1.0, "draws": 10, "seed": 0}
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        run_toy(**{**arguments, **kwargs})


def test_format_table_has_a_header_and_one_row_per_result():
    results = run_toy("cos", 2.0, 0.3, 0.8, draws=100, seed=0)
    lines = toy_table(results).splitlines()
    assert lines[0].split() == [
        "estimator", "param", "mean", "exact_mean", "variance", "exact_variance",
    ]  # fmt: skip
    assert len(lines) == 2 + len(results)
    assert len({len(line) for line in lines}) == 1  # fixed width


# ------------------------------------------------------------------------------------- CLI


def main_toy(argv: list[str]) -> int:
    return main(["toy", *argv])


def test_cli_json_has_one_object_per_estimator_and_param(capsys):
    argv = "--cost cos --k 2 --mu 0.3 --sigma 0.8 --draws 1000 --seed 0 --json".split()
    assert main_toy(argv) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 8
    keys = ["estimator", "param", "mean", "variance", "exact_mean", "exact_variance"]
    assert all(list(row) == keys for row in rows)
    assert {(row["estimator"], row["param"]) for row in rows} == {
        (e, p) for e in TOY_ESTIMATORS for p in PARAMS
    }
    assert all(isinstance(row[key], float) for row in rows for key in keys[2:])


def test_cli_prints_a_table_for_a_subset_of_estimators(capsys):
    assert main_toy(["--draws", "100", "--estimators", "score, pathwise"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in lines[2:]] == [
        ["score", "mu"], ["score", "sigma"], ["pathwise", "mu"], ["pathwise", "sigma"],
    ]  # fmt: skip


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--sigma", "0"], "error: sigma must be > 0, got 0.0"),
        (["--draws", "1"], "error: draws must be an integer >= 2, got 1"),
        (["--estimators", "pathwise,magic"], "error: unknown estimator 'magic'; valid"),
        (["--mu", "nan"], "error: mu must be finite, got nan"),
    ],
)
def test_cli_errors_exit_2_with_one_line_on_stderr(capsys, argv, message):
    assert main_toy(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(message) and captured.err.count("\n") == 1


def test_cli_rejects_unknown_cost_through_argparse(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main_toy(["--cost", "tan"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'tan'" in capsys.readouterr().err
    assert set(COSTS) == {"square", "exp", "cos"}


def test_figure_data_has_exact_curves_and_empirical_markers(tmp_path):
    """toy.csv, which the report draws: every cost, parameter and estimator, exact variances on
    each k grid equal to exact_moments', and empirical ones from run_toy at the marker k."""
    path = toy.write_figure_data(tmp_path, draws=500, grid_points=4)
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {(r["cost"], r["param"], r["estimator"]) for r in rows} == {
        (c, p, e) for c in COSTS for p in PARAMS for e in TOY_ESTIMATORS
    }
    exact = next(r for r in rows if r["source"] == "exact" and r["cost"] == "cos")
    expected = exact_moments("cos", float(exact["k"]), 1.0, 1.0, exact["estimator"], exact["param"])
    assert float(exact["variance"]) == expected[1]
    marker = next(r for r in rows if r["source"] == "empirical" and r["estimator"] == "score")
    again = run_toy(marker["cost"], float(marker["k"]), 1.0, 1.0, 500, 0)
    assert float(marker["variance"]) == next(
        r.variance for r in again if r.estimator == "score" and r.param == marker["param"]
    )
