"""Every uncertainty the report prints, checked by repetition (bench/report/stats.py): over many
independent synthetic repeats with a fixed seed, the share of intervals covering the truth, or of
false alarms, must lie where a correct procedure puts it with probability 1 − TAIL (a binomial
acceptance region), and the same check must reject a procedure known to be wrong."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bench.report.stats import (
    FAMILY_ALPHA,
    LEVEL,
    POWER,
    RELEVANT_GAP,
    Z,
    compare_with_best,
    log_interval,
    log_ratio_interval,
    near_floor,
    one_sided_paired_t,
    pooled_se,
    seconds_to_target,
    t_interval,
    target_elbo,
)
from bench.results import load_runs
from bench.suites import COMPARISON_SEEDS

RESULTS = Path(__file__).resolve().parent.parent / "results"
REPEATS = 4000
TAIL = 1e-3  # a correct procedure fails a check with probability ≤ 2 · TAIL (fixed seeds: never)


def binomial_region(repeats: int, p: float) -> tuple[int, int]:
    """Counts k with P(K < low) ≤ TAIL and P(K > high) ≤ TAIL for K ~ Binomial(repeats, p): the
    number of successes of a procedure whose success probability is exactly p."""
    return int(stats.binom.ppf(TAIL, repeats, p)), int(stats.binom.isf(TAIL, repeats, p))


@pytest.mark.parametrize("n", [2, 3, 5, 10])
def test_t_interval_covers_the_mean_95_percent_of_the_time(n):
    rng = np.random.default_rng(n)
    mu, sigma = -110.0, 2.0
    seeds = rng.normal(mu, sigma, size=(REPEATS, n))
    intervals = np.array([t_interval(x) for x in seeds])
    covered = int((np.abs(intervals[:, 0] - mu) <= intervals[:, 1]).sum())
    low, high = binomial_region(REPEATS, LEVEL)
    assert low <= covered <= high
    # The same check rejects the normal interval x̄ ± 1.96 s/√n (too narrow for few seeds).
    normal = Z * seeds.std(axis=1, ddof=1) / np.sqrt(n)
    wrong = int((np.abs(seeds.mean(axis=1) - mu) <= normal).sum())
    assert not low <= wrong <= high


def test_t_interval_without_spread_to_estimate():
    for values in ([3.0], [np.nan, 3.0]):
        mean, half = t_interval(values)
        assert mean == 3.0 and np.isnan(half)
    assert all(np.isnan(t_interval([])))
    mean, half = t_interval([1.0, 3.0])
    assert (mean, half) == pytest.approx((2.0, stats.t.ppf(0.975, 1) * np.sqrt(2) / np.sqrt(2)))


def test_one_sided_paired_t_false_alarm_rate_is_5_percent_under_the_null():
    """One comparison (two rows of equal mean): the p-value is exact, so p ≤ 0.05 in 5% of null
    repeats. Seeds share a large effect (same initialisation), which pairing removes."""
    rng = np.random.default_rng(1)
    seed_effect = rng.normal(0, 5.0, size=(REPEATS, 1, 4))
    values = seed_effect + rng.normal(0, 1.0, size=(REPEATS, 2, 4))
    _, p = one_sided_paired_t(values[:, 0] - values[:, 1])
    alarms = int((p <= FAMILY_ALPHA).sum())
    low, high = binomial_region(REPEATS, FAMILY_ALPHA)
    assert low <= alarms <= high
    # Unpaired (Welch) on the same data ignores the shared seed effect and almost never alarms.
    welch = stats.ttest_ind(
        values[:, 0], values[:, 1], axis=1, equal_var=False, alternative="greater"
    ).pvalue
    assert not low <= int((welch <= FAMILY_ALPHA).sum()) <= high


def test_one_sided_paired_t_power_is_that_of_the_noncentral_t():
    """Under a real difference Δ (σ of the differences 1, n seeds), P(p ≤ α) is the noncentral
    t's tail beyond the critical value: the test detects real differences as often as it can."""
    rng = np.random.default_rng(2)
    n, delta = 5, 0.9
    _, p = one_sided_paired_t(rng.normal(delta, 1.0, size=(REPEATS, n)))
    power = stats.nct.sf(stats.t.isf(FAMILY_ALPHA, n - 1), n - 1, delta * np.sqrt(n))
    low, high = binomial_region(REPEATS, power)
    assert 0.5 < power < 0.8 and low <= int((p <= FAMILY_ALPHA).sum()) <= high


def test_one_sided_paired_t_edge_cases():
    n, p = one_sided_paired_t(np.array([[1.0, np.nan, 2.0, 4.0], [1.0, np.nan, np.nan, np.nan]]))
    assert n.tolist() == [3, 1] and np.isfinite(p[0]) and np.isnan(p[1])
    assert one_sided_paired_t([0.5, 0.5, 0.5])[1] == 0.0  # the same difference on every seed
    assert one_sided_paired_t([-0.5, -0.5])[1] == 1.0 and one_sided_paired_t([0.0, 0.0])[1] == 1.0
    assert one_sided_paired_t([2.0, 1.0, 3.0])[1] < 0.05 < one_sided_paired_t([-2.0, -1.0, -3.0])[1]


def _section(rng, means: np.ndarray, sds: np.ndarray, seeds: int) -> np.ndarray:
    """One synthetic section (rows × seeds) of a positive metric: a shared seed effect (same
    initialisation) plus each row's own spread; the last row misses its first seed."""
    values = (
        means[:, None]
        + rng.normal(0, 3.0, size=(1, seeds))
        + sds[:, None] * rng.normal(size=(len(means), seeds))
    )
    values[-1, 0] = np.nan
    return values


@pytest.mark.parametrize(("rows", "seeds"), [(6, 4), (12, 3), (27, 5)])
def test_the_best_is_told_apart_at_most_5_percent_of_the_time(rows, seeds):
    """Hsu's guarantee: whatever the other rows, the row of smallest true mean is called worse in
    ≤ 5% of repeats. Least favourable: every other row ties with it (means equal, heterogeneous
    spreads, a missing seed); the count may not exceed the binomial bound of a 5% procedure.
    The best picked from the data and compared with alone (one-sided, no correction) exceeds it."""
    rng = np.random.default_rng(rows)
    means, sds = np.full(rows, 100.0), np.linspace(0.2, 2.0, rows)
    told, naive = 0, 0
    for _ in range(REPEATS):
        values = _section(rng, means, sds, seeds)
        shown = int(np.argmin(np.nanmean(values, axis=1)))
        told += bool(compare_with_best(values, shown)[2][0] <= FAMILY_ALPHA)
        logs = np.log(values)
        if shown != 0:
            naive += bool(one_sided_paired_t(logs[0] - logs[shown])[1] <= FAMILY_ALPHA)
    high = binomial_region(REPEATS, FAMILY_ALPHA)[1]
    assert told <= high
    if rows == 27:
        assert naive > high


ROW = ["dataset", "model", "estimator", "kl", "k", "beta", "protocol", "device"]  # a summary row


def _committed_sections() -> list[tuple[float, np.ndarray, np.ndarray, list[tuple]]]:
    """Per section (data set, model) of the committed results/runs.csv: the best row's mean final
    test NLL, and per other row its mean gap to the best, the sd over seeds of its paired log
    differences with the best, and its key (ROW). Rows with a seed that diverged (or has no final
    NLL) are left out: their spread is the size of a blow-up, which no number of seeds tames, and
    the report marks them "too few seeds" where its test lacks the power (test_report.py)."""
    runs = load_runs(RESULTS)
    finals = runs[runs["metric"] == "nll_test"].pivot_table("value", ROW, "seed")
    sections = []
    for _, section in finals.groupby(level=["dataset", "model", "device"]):
        means = section.mean(axis=1)
        best = section.loc[means.idxmin()]
        logs = np.log(section.to_numpy()) - np.log(best.to_numpy())
        common = np.isfinite(logs).all(axis=1)
        gaps = (means - means.min()).to_numpy()[common]
        sds = np.std(logs[common], axis=1, ddof=1)
        keys = section.index[common]
        keep = gaps > 0
        sections.append((float(means.min()), gaps[keep], sds[keep], list(keys[keep])))
    return sections


def _undetected_rows(seeds: int) -> list[tuple]:
    """Power by simulation from the committed results: in each section, every row is placed
    max(its gap, 10 nats) behind the best with its own committed seed-to-seed spread (log scale),
    at `seeds` seeds; the key of each row told apart in fewer than POWER of the repeats (less the
    binomial slack)."""
    rng = np.random.default_rng(7)
    repeats = REPEATS // 8
    low = binomial_region(repeats, POWER)[0]
    missed = []
    for best, gaps, sds, keys in _committed_sections():
        rows = len(gaps) + 1
        gaps = np.maximum(gaps, RELEVANT_GAP)
        means = np.log(best + np.concatenate([[0.0], gaps]))
        spread = np.concatenate([[0.0], sds])
        detected = np.zeros(rows)
        for _ in range(repeats):
            values = np.exp(means[:, None] + spread[:, None] * rng.normal(size=(rows, seeds)))
            detected += compare_with_best(values, 0)[2] <= FAMILY_ALPHA
        missed += [key for key, count in zip(keys, detected[1:], strict=True) if count < low]
    return missed


def test_the_reference_seeds_tell_a_10_nat_gap_apart_or_the_report_says_too_few_seeds():
    """How many seeds the comparison needs, from the spreads measured in the committed results:
    at 3 seeds some row 10 nats (or more) behind its best is told apart in fewer than 80% of
    the repeats. The reference runs COMPARISON_SEEDS = 5, chosen on the 2-3-seed results of
    commit 64e2c33 (minimum 4) and enough for every row of the four suites of 4819939. It is not
    enough where a row's seeds end in different optima: on 4 × 8 with Monte Carlo KL, one of
    RLOO's five seeds and two of the unordered-set estimator's end 10-16 nats behind the rest.
    Every row that 5 seeds miss must be one the committed report did not call ≈best: told apart
    from the best, or marked too few seeds (its own power calculation)."""
    assert _undetected_rows(3)
    summary = pd.read_csv(RESULTS / "summary.csv", dtype={"protocol": str})
    summary = summary.fillna({"protocol": ""}).set_index(ROW)  # as load_runs reads it
    for key in _undetected_rows(COMPARISON_SEEDS):
        row = summary.loc[key]
        assert row["best_p"] <= FAMILY_ALPHA or row["best_gap"] > RELEVANT_GAP, key


def _variance_estimates(rng, sigma2: np.ndarray, shape: tuple, draws: int = 100):
    """Estimates of Σ_j σ_j² from `draws` normal draws per coordinate (sample variances are
    σ² χ²_{R−1} / (R − 1)), and their standard errors from the same draws,
    √(Σ_j 2 s_j⁴ / (R − 1)) (Var s² = 2σ⁴ / (R − 1) for normal draws)."""
    s2 = sigma2 * rng.chisquare(draws - 1, size=(*shape, len(sigma2))) / (draws - 1)
    return s2.sum(axis=-1), np.sqrt((2 * s2**2 / (draws - 1)).sum(axis=-1))


def test_variance_interval_covers_the_variance_95_percent_of_the_time():
    rng = np.random.default_rng(4)
    sigma2 = np.array([4.0, 2.0, 1.0, 0.5, 0.5, 0.2])
    value, se = _variance_estimates(rng, sigma2, (REPEATS,))
    low, high = log_interval(value, se)
    covered = int(((low <= sigma2.sum()) & (sigma2.sum() <= high)).sum())
    region = binomial_region(REPEATS, LEVEL)
    assert region[0] <= covered <= region[1]
    assert np.isnan(log_interval(0.0, 1.0)[0]) and np.isnan(log_interval(2.0, np.nan)[1])


@pytest.mark.parametrize("seeds", [1, 3])
def test_variance_ratio_interval_covers_the_ratio_95_percent_of_the_time(seeds):
    """Two rows, each the mean over `seeds` seeds of a variance estimate with its standard error;
    the seeds' errors pooled as the report pools them (√(Σ se²)/n). The same check rejects the
    interval that forgets the reference's error, and the one that does not divide by n."""
    rng = np.random.default_rng(5 + seeds)
    row, reference = np.array([3.0, 1.0, 1.0, 0.4]), np.array([8.0, 2.0, 2.0, 1.0, 0.5])
    a, se_a = _variance_estimates(rng, row, (REPEATS, seeds))
    b, se_b = _variance_estimates(rng, reference, (REPEATS, seeds))
    pooled_a = np.array([pooled_se(x) for x in se_a])
    pooled_b = np.array([pooled_se(x) for x in se_b])
    truth = row.sum() / reference.sum()
    region = binomial_region(REPEATS, LEVEL)

    def covered(error_a: np.ndarray, error_b: np.ndarray) -> int:
        _, low, high = log_ratio_interval(a.mean(axis=1), error_a, b.mean(axis=1), error_b)
        return int(((low <= truth) & (truth <= high)).sum())

    assert region[0] <= covered(pooled_a, pooled_b) <= region[1]
    assert not region[0] <= covered(pooled_a, 0 * pooled_b) <= region[1]
    if seeds > 1:
        assert not region[0] <= covered(pooled_a * seeds, pooled_b * seeds) <= region[1]


def test_pooled_se_is_that_of_the_mean_and_unknown_with_a_missing_one():
    assert pooled_se([3.0, 4.0]) == pytest.approx(2.5)
    assert np.isnan(pooled_se([3.0, np.nan])) and np.isnan(pooled_se([]))


def test_snr_is_near_the_floor_exactly_below_floor_plus_2_sd():
    floor, sd = 0.08, 0.01
    assert near_floor([0.0999, 0.1, 0.1001, 0.05], floor, sd).tolist() == [True, False, False, True]
    assert not near_floor(0.01, np.nan, np.nan)


def test_seconds_to_target_interpolates_the_first_crossing():
    seconds = [0.0, 10.0, 20.0, 40.0, 80.0]
    elbo = [-500.0, -200.0, -120.0, -100.0, -90.0]
    assert seconds_to_target(seconds, elbo, -110.0) == pytest.approx(30.0)  # 20 + ½ · 20
    assert seconds_to_target(seconds, elbo, -100.0) == pytest.approx(40.0)
    assert seconds_to_target(seconds, elbo, -600.0) == 0.0
    assert np.isnan(seconds_to_target(seconds, elbo, -89.0))  # never reached
    # The first crossing, not the last; checkpoints missing a value are skipped.
    bumpy = [-500.0, -105.0, -130.0, np.nan, -90.0]
    assert seconds_to_target(seconds, bumpy, -110.0) == pytest.approx(10 * 390 / 395)
    assert seconds_to_target([0, np.nan, 20, 40], [-300, -100, -200, -100], -150) == 30.0


def test_target_is_the_reference_elbo_minus_5_nats_to_a_whole_nat():
    assert target_elbo(-111.4) == -116.0
    assert target_elbo(-110.6) == -116.0
    assert target_elbo(-97.0) == -102.0
