"""Figures of the summary table that compare the rows of a (dataset, model) section: the
paired-by-seed comparison of every row with the section's best, and the equal-cost view (seconds
of training until the test ELBO first reaches a target shared by the section).

Both read per-seed values of the row's own configurations (its primary device, see
`tables.summary_table`); the maths is in `stats`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from bench.report.runs import CONFIG, GROUP, ROW, format_beta
from bench.report.stats import compare_with_best, seconds_to_target, target_elbo


def add_comparisons(table: pd.DataFrame, runs: pd.DataFrame, finals: pd.DataFrame) -> pd.DataFrame:
    """`table` (sorted, the best row first in each section) with the columns of `best_comparison`
    and `time_to_target` added."""
    parts = [
        pd.concat([best_comparison(section, finals), time_to_target(section, runs)], axis=1)
        for _, section in table.groupby(GROUP, sort=False)
    ]
    return table.join(pd.concat(parts))


def _keys(frame: pd.DataFrame) -> pd.Series:
    """(row key, device) of every row of `frame`, as tuples: how rows meet their seeds."""
    return pd.Series(list(zip(*(frame[c] for c in ROW + ["device"]), strict=True)), frame.index)


def best_comparison(section: pd.DataFrame, finals: pd.DataFrame) -> pd.DataFrame:
    """Per row of one section: `best_n` (seeds it and the section's first row both finished),
    `best_diff` (mean over them of row − best in the ranked metric, oriented so that > 0 is
    worse: NLL, or −ELBO when the section is ranked by ELBO) and `best_p` (the paired t-test's
    Holm-adjusted p, `stats.compare_with_best`; NaN for the best row and where best_n < 2)."""
    metric = str(section["ranked_by"].iloc[0])
    sign = 1.0 if metric == "nll_test" else -1.0
    values = pd.DataFrame(index=section.index, dtype=float)
    if metric in finals:
        seeds = finals[metric].dropna().reset_index()
        seeds = seeds[_keys(seeds).isin(set(_keys(section)))]
        by_key = seeds.set_index(ROW + ["device", "seed"])[metric].unstack("seed")
        values = by_key.reindex(pd.MultiIndex.from_tuples(_keys(section), names=ROW + ["device"]))
        values.index = section.index
    n, diff, p = compare_with_best(sign * values.to_numpy(dtype=float), 0)
    return pd.DataFrame({"best_n": n, "best_diff": diff, "best_p": p}, index=section.index)


def _target(section: pd.DataFrame) -> tuple[float, str]:
    """The section's target test ELBO and what it is based on: the final mean test ELBO of its
    variance reference (smallest K, β = 1 first, analytic KL first), else the section's median
    final mean test ELBO, − 5 nats, rounded (`stats.target_elbo`); NaN without any ELBO."""
    finite = section[np.isfinite(section["elbo_test_mean"])]
    reference = finite[finite["estimator"] == finite["variance_reference"]]
    if not reference.empty:
        order = reference.assign(_beta=reference["beta"] != 1.0, _kl=reference["kl"] != "analytic")
        r = order.sort_values(["k", "_beta", "_kl", "kl"], kind="mergesort").iloc[0]
        where = f"KL {r['kl']}, K = {r['k']}, β = {format_beta(r['beta'])}"
        basis = f"{r['estimator']} ({where})'s final mean test ELBO"
        return target_elbo(r["elbo_test_mean"]), basis
    if finite.empty:
        return np.nan, ""
    basis = "the median final mean test ELBO of the section's rows (no reference estimator)"
    return target_elbo(float(finite["elbo_test_mean"].median())), basis


def time_to_target(section: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Per row of one section: `target_elbo` and `target_basis` (`_target`); `target_reached`,
    the number of its seeds (finished or diverged) whose test ELBO reaches the target, and
    `target_seconds`, their mean training seconds to it (`stats.seconds_to_target` on each seed's
    curve of test ELBO against `train_seconds`; NaN if none reached it)."""
    target, basis = _target(section)
    curves = runs[runs["metric"].isin(["elbo_test", "train_seconds"])]
    curves = curves[_keys(curves).isin(set(_keys(section)))]
    curves = curves.pivot_table("value", CONFIG + ["step"], "metric", aggfunc="first")
    reached: dict[tuple, list[float]] = {}
    if {"elbo_test", "train_seconds"} <= set(curves.columns):
        for config, curve in curves.groupby(level=CONFIG, sort=True):
            seconds = seconds_to_target(curve["train_seconds"], curve["elbo_test"], target)
            if np.isfinite(seconds):
                reached.setdefault(tuple(config[:-1]), []).append(seconds)  # ROW + device
    hits = [reached.get(key, []) for key in _keys(section)]
    return pd.DataFrame(
        {
            "target_elbo": target,
            "target_basis": basis,
            "target_reached": [len(h) for h in hits],
            "target_seconds": [float(np.mean(h)) if h else np.nan for h in hits],
        },
        index=section.index,
    )
