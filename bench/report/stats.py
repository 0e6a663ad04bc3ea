"""The statistics behind every uncertainty the report prints: small pure functions, each checked
by repetition in tests/test_report_statistics.py (the spread over independent repeats must match
what they claim).

- `pooled_se`: the standard error of a mean over seeds of independent estimates.
- `t_interval`: the 95% Student-t interval of a mean over seeds.
- `log_interval`, `log_ratio_interval`: 95% intervals of a variance and of a ratio of variances,
  on the log scale (the delta method).
- `paired_t_test`, `holm`, `compare_with_best`: the paired-by-seed comparison of every row of a
  section with its best, at family-wise 5%.
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


def paired_t_test(differences: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Two-sided t-test of E d = 0 on paired differences d along the last axis (NaN: the seed is
    missing on either side): n, and p = 2 P(T_{n−1} ≥ |t|) with t = d̄ / (s_d / √n).

    p is NaN with n < 2 (no test); with s_d = 0 it is 1 if d̄ = 0, else 0 (every pair differs by
    the same amount)."""
    d = np.asarray(differences, dtype=float)
    present = np.isfinite(d)
    n = present.sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.where(present, d, 0.0).sum(axis=-1) / n
        squares = np.where(present, (d - mean[..., None]) ** 2, 0.0).sum(axis=-1)
        sd = np.sqrt(squares / (n - 1))
        t = np.abs(mean) / (sd / np.sqrt(n))
        p = np.where(sd > 0, 2 * stats.t.sf(t, np.maximum(n - 1, 1)), np.where(mean == 0, 1, 0))
    return n, np.where(n >= 2, p, np.nan)


def holm(p_values: ArrayLike) -> np.ndarray:
    """Holm's step-down adjusted p-values: with the m present p sorted p_(1) ≤ … ≤ p_(m),
    p̃_(i) = max_{j ≤ i} min(1, (m − j + 1) · p_(j)). Rejecting where p̃ ≤ α keeps the
    family-wise error rate ≤ α under any dependence. NaN entries (no test) stay NaN and are not
    counted in m."""
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full(p.shape, np.nan)
    present = np.flatnonzero(np.isfinite(p))
    order = present[np.argsort(p[present], kind="stable")]
    factors = len(order) - np.arange(len(order))
    adjusted[order] = np.maximum.accumulate(np.minimum(1.0, factors * p[order]))
    return adjusted


def compare_with_best(values: ArrayLike, best: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row of `values` (rows × seeds, lower is better, NaN where a seed has no value)
    against row `best`, paired by seed: n (common seeds), d̄ (mean of row − best over them) and
    the Holm-adjusted p of the paired t-test, NaN for `best` itself and where n < 2.

    The family Holm adjusts over is every pair of rows, not only the pairs with `best`: the best
    is picked from the same data, and testing against it alone raises the family-wise false-alarm
    rate under the null above the nominal one (7–12% at 5%, for 5–27 rows of 3–5 seeds)."""
    x = np.asarray(values, dtype=float)
    rows = len(x)
    first, second = np.triu_indices(rows, k=1)
    n, p = paired_t_test(x[first] - x[second])
    adjusted = np.full((rows, rows), np.nan)
    adjusted[first, second] = adjusted[second, first] = holm(p)
    differences = x - x[best]
    common = np.isfinite(differences).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.nansum(differences, axis=1) / common
    return common, mean, adjusted[:, best]


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
