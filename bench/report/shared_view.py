"""The shared-parameter view (bench.shared): each estimator's gradient variance ÷ its variance
reference's, both drawn at the same parameters (the reference trajectory's, seed 0) and on the
same minibatch, at a few steps of that trajectory; and, for a biased estimator, its bias² ÷ the
reference's variance. The two variances are independent estimates (independent noise, same
fixed parameters and minibatch), so the ratio's 95% interval is `stats.log_ratio_interval`.

`shared_points` gives every (row, step) point (the plot's data), `shared_columns` the summary
table's columns at the first, a middle and the last step of each section.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from bench.report.data import CONFIG, GROUP, ROW, Results
from bench.report.stats import log_ratio_interval
from bench.report.style import (
    Look,
    error_bars,
    figure,
    group_title,
    save,
    series_legend,
    symlog_x,
    where,
)

PARTS = ("encoder", "decoder")
POSITIONS = ("first", "mid", "last")  # the table's steps: first, middle and last of a section
COMPLETE = "shared_complete"


def shared_points(results: Results) -> pd.DataFrame:
    """Per seed-0 configuration (primary device, non-running) with `shared_complete` and step: ROW,
    `step`, and per part G `var_G` = shared_grad_var_G ÷ shared_ref_grad_var_G with its 95%
    interval `var_G_low`, `var_G_high`; `bias_encoder` = shared_grad_bias_encoder ÷
    shared_ref_grad_var_encoder with `bias_encoder_low/high` (NaN for unbiased estimators, and
    bounds NaN where the debiased bias² is ≤ 0). Empty when no configuration has them."""
    runs = results.primary
    # The shared pass measures seed-0 configurations only; rows of other seeds (a directory
    # grown by copying, say) would repeat a (row, step) point.
    shared = runs[runs["metric"].str.startswith("shared_") & (runs["seed"] == 0)]
    done = shared.loc[shared["metric"] == COMPLETE, CONFIG].drop_duplicates()
    columns = ROW + ["step"]
    if done.empty:
        return pd.DataFrame(columns=columns)
    shared = shared.merge(done, on=CONFIG)
    wide = shared.pivot_table("value", CONFIG + ["step"], "metric", aggfunc="first").reset_index()
    if "shared_ref_grad_var_encoder" not in wide:
        return pd.DataFrame(columns=columns)
    wide = wide.dropna(subset=["shared_ref_grad_var_encoder"])
    points = wide[columns].copy()
    for part in PARTS:
        reference = wide.get(f"shared_ref_grad_var_{part}", np.nan)
        reference_se = wide.get(f"shared_ref_grad_var_se_{part}", np.nan)
        for name, metric in ((f"var_{part}", "grad_var"), (f"bias_{part}", "grad_bias")):
            value = wide.get(f"shared_{metric}_{part}", np.nan)
            se = wide.get(f"shared_{metric}_se_{part}", np.nan)
            ratio, low, high = log_ratio_interval(value, se, reference, reference_se)
            points[name], points[f"{name}_low"], points[f"{name}_high"] = ratio, low, high
    return points.drop(columns=["bias_decoder", "bias_decoder_low", "bias_decoder_high"])


def section_steps(points: pd.DataFrame) -> dict[str, int]:
    """The first, a middle and the last step with shared points in one section."""
    steps = sorted(set(points["step"]))
    return dict(zip(POSITIONS, (steps[0], steps[len(steps) // 2], steps[-1]), strict=True))


def shared_columns(table: pd.DataFrame, results: Results) -> pd.DataFrame:
    """The summary table's shared-parameter columns, aligned with `table`: per position P of
    POSITIONS `shared_step_P` (its section's step) and `shared_var_G_rel_P` with `_low`,
    `_high`; `shared_bias_encoder_rel_last` with `_low`, `_high`. NaN where absent."""
    points = shared_points(results)
    names = [f"shared_step_{p}" for p in POSITIONS]
    for part in PARTS:
        names += [f"shared_var_{part}_rel_{p}{s}" for p in POSITIONS for s in ("", "_low", "_high")]
    names += [f"shared_bias_encoder_rel_last{s}" for s in ("", "_low", "_high")]
    columns = pd.DataFrame(np.nan, index=table.index, columns=names)
    for key, section in points.groupby(GROUP, sort=True):
        steps = section_steps(section)
        rows = table.index[(table["dataset"] == key[0]) & (table["model"] == key[1])]
        columns.loc[rows, [f"shared_step_{p}" for p in POSITIONS]] = list(steps.values())
        indexed = section.set_index(ROW + ["step"])
        for position, step in steps.items():
            wanted = pd.MultiIndex.from_frame(table.loc[rows, ROW].assign(step=step))
            found = indexed.reindex(wanted)
            for part in PARTS:
                for suffix in ("", "_low", "_high"):
                    column = f"shared_var_{part}_rel_{position}{suffix}"
                    columns.loc[rows, column] = found[f"var_{part}{suffix}"].to_numpy()
            if position == "last":
                for suffix in ("", "_low", "_high"):
                    column = f"shared_bias_encoder_rel_last{suffix}"
                    columns.loc[rows, column] = found[f"bias_encoder{suffix}"].to_numpy()
    return columns


def plot_shared_variance(results: Results, look: Look, path: Path) -> Path | None:
    """Encoder variance ÷ the reference's at shared parameters against the reference
    trajectory's step: a line per (estimator, KL, K, β) with its 95% interval, log y, one panel
    per (dataset, model); None without shared points."""
    points = shared_points(results)
    if points.empty:
        return None
    sections = sorted(points.groupby(GROUP).groups)
    fig, axes = figure(len(sections), 1, 3.6)
    for ax, section in zip(axes[:, 0], sections, strict=True):
        panel = where(points, dataset=section[0], model=section[1])
        for (estimator, kl, k, beta), line in panel.groupby(["estimator", "kl", "k", "beta"]):
            line = line.sort_values("step").assign(
                low=lambda f: f["var_encoder_low"].fillna(f["var_encoder"]),
                high=lambda f: f["var_encoder_high"].fillna(f["var_encoder"]),
            )
            ax.errorbar(
                line["step"],
                line["var_encoder"],
                error_bars(line, "var_encoder"),
                color=look.series_colour(estimator, k, beta),
                marker=look.marker[kl],
                lw=1.5,
                capsize=3,
            )
        ax.axhline(1.0, color="0.3", ls="--", lw=1)
        ax.set_yscale("log")
        symlog_x(ax, panel["step"].to_numpy(dtype=float))
        ax.set_xlabel("step of the reference trajectory (symlog)")
        ax.set_ylabel("enc. variance ÷ reference's (log)")
        ax.set_title(group_title(section))
    series_legend(fig, look, points)
    fig.suptitle(
        "Encoder gradient variance ÷ the variance reference's, both at the reference trajectory's\n"
        "parameters and minibatch (seed 0); bars: 95% interval; marker: KL mode"
    )
    return save(fig, path)
