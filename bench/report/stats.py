"""The statistics behind every uncertainty the report prints: small pure functions, each checked
by repetition in tests/test_report_statistics.py (the spread over independent repeats must match
what they claim).

- `pooled_se`: the standard error of a mean over seeds of independent estimates.
- `t_interval`: the 95% Student-t interval of a mean over seeds.
- `log_interval`, `log_ratio_interval`: 95% intervals of a variance and of a ratio of variances,
  on the log scale (the delta method).
- `one_sided_paired_t`, `compare_with_best`, `detectable_gap`: which rows of a
  section are worse than its best (Hsu's comparisons with the best, paired by seed, at
  family-wise 5%), and whether a row not told apart was tested with enough power to say so.
- `near_floor`: whether an SNR cannot be told from the noise floor.
- `seconds_to_target`, `target_elbo`: the equal-cost view (training seconds to a target ELBO).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import stats

LEVEL = 0.95  # of every interval the report prints
Z = float(stats.norm.ppf(0.5 + LEVEL / 2))  # 1.95996…: the two-sided normal quantile
FAMILY_ALPHA = 0.05  # family-wise error rate of the comparisons with the best
POWER = 0.8  # "≈best" needs this probability of telling apart a row RELEVANT_GAP behind
RELEVANT_GAP = 10.0  # nats of the ranked metric that a comparison must be able to tell
SD_CONFIDENCE = 0.8  # of the upper bound on the seeds' sd behind that power (detectable_gap)
FLOOR_SDS = 2.0  # an SNR below floor + FLOOR_SDS · sd cannot be told from the floor
TARGET_MARGIN = 5.0  # nats below the reference's final test ELBO: the equal-cost target


def pooled_se(errors: pd.Series) -> float:
    """Standard error of the mean of n independent estimates with standard errors se_i:
    √(Σ se_i²) / n. NaN when there is none, or when any se_i is missing (the mean's error is
    then unknown)."""
    errors = pd.Series(errors, dtype=float)
    if errors.empty or errors.isna().any():
        return np.nan
    return float(np.sqrt((errors**2).sum()) / len(errors))


def t_interval(values: ArrayLike) -> tuple[float, float]:
    """Mean x̄ and half-width h of the 95% interval x̄ ± h for the mean of n independent normal
    values (NaN ones dropped): h = t_{0.975, n−1} · s / √n, s the sample standard deviation
    (n − 1 in its denominator). h is NaN with n < 2 (no spread to estimate), x̄ NaN with n = 0."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return np.nan, np.nan
    if len(x) < 2:
        return float(x[0]), np.nan
    quantile = stats.t.ppf(0.5 + LEVEL / 2, len(x) - 1)
    return float(x.mean()), float(quantile * x.std(ddof=1) / np.sqrt(len(x)))


def log_interval(value: ArrayLike, se: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """95% interval of a positive estimate v with standard error se, on the log scale:
    v · exp(∓ z · se / v) (se / v is the delta-method standard error of log v). NaN where v ≤ 0
    or se is missing."""
    value, se = np.asarray(value, dtype=float), np.asarray(se, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        spread = np.where(value > 0, np.exp(Z * se / value), np.nan)
        return value / spread, value * spread


def log_ratio_interval(
    a: ArrayLike, se_a: ArrayLike, b: ArrayLike, se_b: ArrayLike
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """r = a / b and its 95% interval r · exp(∓ z · s), for independent positive estimates a, b
    with standard errors se_a, se_b: by the delta method, s = √((se_a/a)² + (se_b/b)²) is the
    standard error of log r. The bounds are NaN where either se is missing."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = a / b
        s = np.hypot(np.asarray(se_a, dtype=float) / a, np.asarray(se_b, dtype=float) / b)
        low, high = log_interval(ratio, s * ratio)
    return ratio, low, high


def _moments(values: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Along the last axis, NaN left out: the count n, the mean and the sum of squared
    deviations from it (NaN mean where n = 0)."""
    d = np.asarray(values, dtype=float)
    present = np.isfinite(d)
    n = present.sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.where(present, d, 0.0).sum(axis=-1) / n
        squares = np.where(present, (d - mean[..., None]) ** 2, 0.0).sum(axis=-1)
    return n, mean, squares


def one_sided_paired_t(differences: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """One-sided paired t-test of E d > 0 on differences d along the last axis (NaN: a seed
    missing on either side): n, and p = P(T_{n−1} ≥ t), t = d̄ / (s_d / √n); NaN with n < 2.
    With s_d = 0: p = 0 if d̄ > 0, else 1."""
    n, mean, squares = _moments(differences)
    with np.errstate(divide="ignore", invalid="ignore"):
        sd = np.sqrt(squares / (n - 1))
        t = mean / (sd / np.sqrt(n))
        p = np.where(sd > 0, stats.t.sf(t, np.maximum(n - 1, 1)), np.where(mean > 0, 0.0, 1.0))
    return n, np.where(n >= 2, p, np.nan)


def compare_with_best(
    values: ArrayLike, best: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Which rows of `values` (rows × seeds of a positive metric, lower is better: NLL or −ELBO;
    NaN where a seed has no value) are not the best, by Hsu's multiple comparisons with the best
    (MCB) on log values, paired by seed. Returns, per row: n (seeds in common with row `best`,
    the section's displayed best), d̄ (mean of row − best over them, in the metric's units), p
    and the detectable gap (`detectable_gap`; NaN where p ≤ α or n < 2).

    Row i is told apart ("worse than the best") when p_i = m_i · min_j p_ij ≤ α, with p_ij the
    one-sided paired t-test of E[log x_i − log x_j] > 0 and m_i the number of rows j it could be
    tested against (n_ij ≥ 2). Why the family-wise rate is ≤ α without a correction over rows
    (Hsu 1984): let b be the row of smallest true mean. The best is wrongly told apart only if
    some p_bj ≤ α/m_b, and since E[log x_b − log x_j] ≤ 0 for every j, each of these m_b
    one-sided tests errs with probability ≤ α/m_b: together ≤ α, whatever the other rows do.
    Every other row truly is worse than b, so telling it apart is never an error. The best
    picked from the data needs no correction: j runs over every row. An exact copy of the best
    (dreg at K = 1 is stl) is told apart exactly when the best is. Log values: seeds that blow
    up (REINFORCE's NLL of 10²–10⁴) are heavy-tailed on the natural scale; near the best, log
    differences are differences ÷ the metric, so the test's power there is unchanged."""
    x = np.asarray(values, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.where(x > 0, np.log(x), np.nan)
    _, p_pairs = one_sided_paired_t(logs[:, None, :] - logs[None, :, :])
    np.fill_diagonal(p_pairs, np.nan)
    tested = np.isfinite(p_pairs)
    m = tested.sum(axis=1)
    with np.errstate(invalid="ignore"):
        smallest = np.where(tested, p_pairs, np.inf).min(axis=1)
        p = np.where(m > 0, np.minimum(1.0, m * smallest), np.nan)
    differences = x - x[best]
    common = np.isfinite(differences).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.nansum(differences, axis=1) / common
    gap = detectable_gap(logs - logs[best], np.nanmean(x[best]), np.maximum(m, 1))
    gap = np.where((p > FAMILY_ALPHA) & (common >= 2), gap, np.nan)
    gap[best] = np.nan
    return common, mean, p, gap


def detectable_gap(log_differences: ArrayLike, best_value: float, tests: ArrayLike) -> np.ndarray:
    """The gap (in the metric's units, above `best_value`) that the comparison of each row with
    the best detects with probability POWER: on the log scale, with s the sd of the n paired log
    differences, δ = (t_{n−1}(1 − α/m) + t_{n−1}(POWER)) · s⁺ / √n (the normal-approximation
    power formula with t quantiles), back on the natural scale best · (e^δ − 1). s⁺ is the upper
    SD_CONFIDENCE bound of the true sd, s · √((n−1) / χ²_{n−1}(1 − SD_CONFIDENCE)): s from 2 or 3
    seeds is often far below the truth, and the plain s would call a row ≈best on luck. A row
    not told apart is called "≈best" only where this is ≤ RELEVANT_GAP: otherwise "too few
    seeds"."""
    n, _, squares = _moments(log_differences)
    dof = np.maximum(n - 1, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        sd = np.sqrt(squares / stats.chi2.ppf(1 - SD_CONFIDENCE, dof))
        quantiles = stats.t.isf(FAMILY_ALPHA / np.asarray(tests), dof) + stats.t.ppf(POWER, dof)
        delta = quantiles * sd / np.sqrt(n)
        return np.where(n >= 2, best_value * np.expm1(delta), np.nan)


def near_floor(snr: ArrayLike, floor: ArrayLike, floor_sd: ArrayLike) -> np.ndarray:
    """Whether an SNR cannot be told from the noise floor (the SNR the same draws give when the
    true gradient is zero, mean `floor`, standard deviation `floor_sd`): snr < floor + 2 · sd.
    False where the floor is not known."""
    bound = np.asarray(floor, dtype=float) + FLOOR_SDS * np.asarray(floor_sd, dtype=float)
    with np.errstate(invalid="ignore"):
        return np.asarray(snr, dtype=float) < bound


def seconds_to_target(seconds: ArrayLike, elbo: ArrayLike, target: float) -> float:
    """Training seconds at which a test-ELBO curve (checkpoints in step order) first reaches
    `target`: with i the first checkpoint where elbo_i ≥ target, linear interpolation
    s_{i−1} + (target − e_{i−1}) / (e_i − e_{i−1}) · (s_i − s_{i−1}) (s_0 when already
    there at the first checkpoint); NaN if the curve never reaches it. Checkpoints missing either
    value are skipped."""
    s, e = np.asarray(seconds, dtype=float), np.asarray(elbo, dtype=float)
    keep = np.isfinite(s) & np.isfinite(e)
    s, e = s[keep], e[keep]
    reached = np.flatnonzero(e >= target)
    if not len(reached):
        return np.nan
    i = int(reached[0])
    if i == 0:
        return float(s[0])
    return float(s[i - 1] + (target - e[i - 1]) / (e[i] - e[i - 1]) * (s[i] - s[i - 1]))


def target_elbo(reference_elbo: float) -> float:
    """The equal-cost target: the reference's final mean test ELBO − 5 nats, to a whole nat."""
    return float(np.round(reference_elbo - TARGET_MARGIN))
