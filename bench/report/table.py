"""The summary table's figures: one row per (dataset, model, estimator, KL mode, K, β), seeds
pooled, with the estimators' facts, each row's comparison with its section's best (paired by
seed) and the equal-cost view (seconds of training until the test ELBO first reaches a target
shared by the section). The maths of every interval and test is in `stats`; written as
summary.csv and drawn as markdown by `markdown`.

Quality and variance figures of a row come from its primary device's runs (cpu when it ran
there); throughput has a column per device.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from bench.report.data import CONFIG, GROUP, ROW, Results, format_beta, primary_device
from bench.report.shared_view import shared_columns
from bench.report.stats import (
    compare_with_best,
    log_interval,
    log_ratio_interval,
    pooled_se,
    seconds_to_target,
    t_interval,
    target_elbo,
)

FACTS = ("objective", "biased", "bias_reference", "evaluations")  # estimators.csv, per row
DEVICES: tuple[str, ...] = ("cpu", "cuda")  # always given a throughput column (NaN if absent)
SEED_MEANS = (
    "nll_samples",
    "grad_var_encoder",
    "grad_var_decoder",
    "snr_encoder",
    "snr_floor_encoder",
    "grad_seconds",
    "work_var_encoder",
    "grad_draws",
    "grad_bias_encoder",
    "grad_mse_encoder",
    "grad_bias_decoder",
    "grad_mse_decoder",
)
# Standard errors (and the floor's standard deviation) of per-seed estimates: pooled as that of
# their mean over seeds, √(Σ se²) / n.
SEED_STANDARD_ERRORS = (
    "grad_var_se_encoder",
    "grad_var_se_decoder",
    "grad_bias_se_encoder",
    "grad_bias_se_decoder",
    "snr_floor_sd_encoder",
)


def summary_table(results: Results) -> pd.DataFrame:
    """One row per (dataset, model, estimator, kl, k, beta): seed statistics of final metrics.

    Columns: the row key; the estimator's facts at K (`objective`, `biased`, `bias_reference`,
    `evaluations`; estimators.csv); `device` (whose runs give the quality figures); `seeds`,
    `finished`, `diverged` (counts) and `divergence` (e.g. "diverged at step 300");
    `elbo_test_mean`, `nll_test_mean` and their `_ci` (half-width of the 95% t-interval over
    finished seeds, `stats.t_interval`; NaN with one seed), `rate_test_mean`,
    `distortion_test_mean`, `nll_samples`; final `grad_var_G`, `snr_encoder`, `snr_floor_encoder`,
    `grad_seconds`, `work_var_encoder`, `grad_draws`, `grad_bias_G`, `grad_mse_G` (means over
    finished seeds; the bias ones NaN for unbiased estimators) and `grad_var_se_G`,
    `grad_bias_se_G`, `snr_floor_sd_encoder` (those of the mean, `stats.pooled_se`);
    `grad_var_G_low/high` (the variance's 95% interval, `stats.log_interval`); `variance_reference`
    (the section's reference estimator, see `section_reference`) and `grad_var_G_rel` with its
    interval `grad_var_G_rel_low/high` (÷ that reference, see `_relative`); `throughput_<device>`
    for cpu, cuda and any other device present; `ranked_by` ("nll_test" or "elbo_test"); the
    comparison with the section's best and the equal-cost view (`add_comparisons`); the variance
    ratios at shared parameters (`shared_view.shared_columns`). Sorted within
    each (dataset, model) so the first row is the estimator to use: rows without divergence first,
    then by final test NLL, lowest first, when every such row has one (NLL compares ELBO- and
    IWAE-trained models fairly), else by final test ELBO, highest first.
    """
    runs, status, finals = results.runs, results.status, results.finals
    devices = list(DEVICES) + sorted(set(runs["device"]) - set(DEVICES))
    records = []
    for key, configs in status[status["status"] != "running"].groupby(ROW, sort=True):
        configs = configs.reset_index()
        device = primary_device(configs["device"])
        own = configs[configs["device"] == device]
        done = own[own["status"] == "finished"]
        final = _finals_of(finals, done)
        broken = own[own["status"] == "diverged"]
        record: dict[str, object] = dict(zip(ROW, key, strict=True))
        estimator, k = record["estimator"], record["k"]
        record.update(
            {fact: results.fact(estimator, k, fact) for fact in FACTS},
            device=device,
            seeds=len(own),
            finished=len(done),
            diverged=len(broken),
            divergence=_divergence_text(broken, len(own)),
            rate_test_mean=_mean(final, "rate_test"),
            distortion_test_mean=_mean(final, "distortion_test"),
        )
        for metric in ("elbo_test", "nll_test"):
            values = final[metric] if metric in final else []
            record[f"{metric}_mean"], record[f"{metric}_ci"] = t_interval(values)
        for metric in SEED_MEANS:
            record[metric] = _mean(final, metric)
        for metric in SEED_STANDARD_ERRORS:
            record[metric] = pooled_se(final[metric]) if metric in final else np.nan
        for name in devices:
            on_device = configs[(configs["device"] == name) & (configs["status"] == "finished")]
            record[f"throughput_{name}"] = _mean(_finals_of(finals, on_device), "throughput")
        records.append(record)
    if not records:
        return pd.DataFrame(columns=ROW)
    table = pd.DataFrame.from_records(records)
    references = {key: section_reference(g, results) for key, g in table.groupby(GROUP)}
    table["variance_reference"] = [
        references[key] for key in zip(table["dataset"], table["model"], strict=True)
    ]
    for part in ("encoder", "decoder"):
        variance, se = table[f"grad_var_{part}"], table[f"grad_var_se_{part}"]
        table[f"grad_var_{part}_low"], table[f"grad_var_{part}_high"] = log_interval(variance, se)
        table = table.join(_relative(table, part))
    table["_healthy"] = table["diverged"] == 0
    by_nll = (
        table[table["_healthy"]]
        .groupby(GROUP)["nll_test_mean"]
        .agg(lambda nll: bool(np.isfinite(nll).all()))
        .rename("_by_nll")
    )
    table = table.join(by_nll, on=GROUP)
    by_nll = table["_by_nll"].fillna(False).astype(bool)
    table["ranked_by"] = np.where(by_nll, "nll_test", "elbo_test")
    table["_rank"] = np.where(by_nll, table["nll_test_mean"], -table["elbo_test_mean"])
    table = table.sort_values(
        GROUP + ["_healthy", "_rank", "estimator", "kl", "k", "beta"],
        ascending=[True, True, False, True, True, True, True, True],
        na_position="last",
        kind="mergesort",
    )
    table = table.drop(columns=["_healthy", "_by_nll", "_rank"]).reset_index(drop=True)
    table = add_comparisons(table, results.primary, finals)
    table = table.join(shared_columns(table, results))
    # The protocol column only where a run has one: default-protocol results read as before.
    return table.drop(columns=["protocol"] if table["protocol"].eq("").all() else [])


def _finals_of(finals: pd.DataFrame, configs: pd.DataFrame) -> pd.DataFrame:
    """The rows of `finals` for the configurations listed in `configs`."""
    return finals.loc[finals.index.isin(pd.MultiIndex.from_frame(configs[CONFIG]))]


def _mean(frame: pd.DataFrame, column: str) -> float:
    return (
        float(frame[column].mean()) if column in frame and frame[column].notna().any() else np.nan
    )


def _divergence_text(broken: pd.DataFrame, seeds: int) -> str:
    """'' if no seed diverged; 'diverged at step N' (all seeds), else which seeds and where."""
    if broken.empty:
        return ""
    steps = sorted({int(s) for s in broken["diverged_step"]})
    if len(broken) == seeds:
        where = ", ".join(str(s) for s in steps)
        return f"diverged at step{'s' if len(steps) > 1 else ''} {where}"
    parts = [
        f"seed {int(r.seed)} diverged at step {int(r.diverged_step)}"
        for r in broken.sort_values("seed").itertuples()
    ]
    return "; ".join(parts)


def section_reference(section: pd.DataFrame, results: Results) -> str | None:
    """The reference of relative variances in a section: the variance reference its estimators
    name (estimators.csv; reparam for Gaussian latents, disarm for binary ones) when it ran in
    the section, else None."""
    named = {results.any_fact(e, "variance_reference") for e in section["estimator"]}
    present = sorted(named & set(section["estimator"]))
    return present[0] if present else None


def _relative(table: pd.DataFrame, part: str) -> pd.DataFrame:
    """grad_var_{part} ÷ the `variance_reference` row's in the same (dataset, model), at the
    reference's smallest K (reparam: K = 1) whatever the row's K: same KL mode, else analytic;
    same β, else β = 1. Columns `grad_var_{part}_rel` (NaN where no such reference row has a
    finite positive value) and its 95% interval `_rel_low`, `_rel_high` from the two rows' pooled
    standard errors (`stats.log_ratio_interval`; NaN for the reference row itself, whose ratio is
    exactly 1, and without standard errors). A K-sample row's extra cost shows in
    `work_var_encoder`."""
    column = f"grad_var_{part}"
    reference: dict[tuple, int] = {}  # (dataset, model, kl, β) → the reference row's index
    rows = table[table["estimator"] == table["variance_reference"]]
    for r in rows.sort_values("k", kind="mergesort").itertuples():
        value = getattr(r, column)
        if np.isfinite(value) and value > 0:
            reference.setdefault((r.dataset, r.model, r.kl, r.beta), r.Index)
    bases = [
        next(
            (
                reference[key]
                for kl in dict.fromkeys([row.kl, "analytic"])
                for beta in dict.fromkeys([row.beta, 1.0])
                if (key := (row.dataset, row.model, kl, beta)) in reference
            ),
            -1,
        )
        for row in table.itertuples()
    ]
    base = table.reindex(bases)
    se = table[f"grad_var_se_{part}"].to_numpy()
    base_se = np.where(base.index == table.index, np.nan, base[f"grad_var_se_{part}"])
    ratio, low, high = log_ratio_interval(table[column], se, base[column], base_se)
    return pd.DataFrame(
        {f"{column}_rel": ratio, f"{column}_rel_low": low, f"{column}_rel_high": high},
        index=table.index,
    )


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
    worse: NLL, or −ELBO when the section is ranked by ELBO), `best_p` (p of the comparison with
    the best, `stats.compare_with_best`: ≤ 5% tells the row apart) and `best_gap` (for a row not
    told apart, the gap the test detects with 80% power, `stats.detectable_gap`)."""
    metric = str(section["ranked_by"].iloc[0])
    sign = 1.0 if metric == "nll_test" else -1.0
    values = pd.DataFrame(index=section.index, dtype=float)
    if metric in finals:
        seeds = finals[metric].dropna().reset_index()
        seeds = seeds[_keys(seeds).isin(set(_keys(section)))]
        by_key = seeds.set_index(ROW + ["device", "seed"])[metric].unstack("seed")
        values = by_key.reindex(pd.MultiIndex.from_tuples(_keys(section), names=ROW + ["device"]))
        values.index = section.index
    n, diff, p, gap = compare_with_best(sign * values.to_numpy(dtype=float), 0)
    return pd.DataFrame(
        {"best_n": n, "best_diff": diff, "best_p": p, "best_gap": gap}, index=section.index
    )


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
                named = dict(zip(CONFIG, config, strict=True))
                reached.setdefault(tuple(named[c] for c in [*ROW, "device"]), []).append(seconds)
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
