"""Plots of metrics during training, mean over seeds with a min–max band: encoder gradient
variance vs step (with the 95% interval of each checkpoint's mean), and test ELBO vs step and vs
wall-clock seconds."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd

from bench.report.data import CONFIG, GROUP, ROW
from bench.report.style import (
    SERIES,
    Look,
    error_bars,
    figure,
    group_title,
    save,
    series_legend,
    symlog_x,
    variance_interval,
    where,
)
from bench.results import DIVERGED

TITLE_CHARACTERS = 85  # a figure title line wider than this is cut off at WIDTH


def _seed_curves(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per (row key, step) where `metric` was measured: mean, min and max over seeds of it, plus
    mean train_seconds (checkpoints that measured only other metrics are not points)."""
    values = frame[frame["metric"] == metric].dropna(subset=["value"])
    stats = values.groupby(ROW + ["step"], sort=True)["value"].agg(["mean", "min", "max"])
    seconds = frame[frame["metric"] == "train_seconds"].groupby(ROW + ["step"])["value"].mean()
    return stats.join(seconds.rename("seconds")).reset_index()


def _variance_curves(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    """`_seed_curves` of a gradient variance with `low`, `high`: the 95% interval of the mean
    over seeds at each checkpoint (`style.variance_interval`)."""
    wanted = frame[
        frame["metric"].isin([metric, f"grad_var_se_{metric.removeprefix('grad_var_')}"])
    ]
    wide = wanted.pivot_table("value", CONFIG + ["step"], "metric", aggfunc="first")
    if metric not in wide:
        return pd.DataFrame()
    interval = variance_interval(wide.reset_index(), ROW + ["step"], metric)
    curves = _seed_curves(frame, metric)
    return curves.join(interval[["low", "high"]], on=ROW + ["step"])


def plot_grad_var(runs: pd.DataFrame, look: Look, path: Path) -> Path | None:
    """Encoder gradient variance vs step; facets: (dataset, model) × KL; band: seed range; bars:
    the 95% interval of the mean over seeds where runs.csv has grad_var_se_encoder."""
    from matplotlib.lines import Line2D

    curves = _variance_curves(runs, "grad_var_encoder")
    if curves.empty:
        return None
    groups = sorted(curves.groupby(GROUP).groups)
    kls = sorted(set(curves["kl"]))
    fig, axes = figure(len(groups), len(kls), 3.4)
    stops = runs[runs["metric"] == DIVERGED]
    for i, group in enumerate(groups):
        for j, kl in enumerate(kls):
            ax = axes[i, j]
            panel = where(curves, dataset=group[0], model=group[1], kl=kl)
            for series, c in panel.groupby(SERIES, sort=True):
                colour = look.series_colour(*series)
                ax.plot(c["step"], c["mean"], color=colour, lw=1.8)
                ax.fill_between(c["step"], c["min"], c["max"], color=colour, alpha=0.2, lw=0)
                c = c.dropna(subset=["low", "high"])
                ax.errorbar(
                    c["step"], c["mean"], error_bars(c), fmt="none", ecolor=colour, capsize=2.5
                )
            # A cross at the last point drawn before each divergence.
            for r in where(stops, dataset=group[0], model=group[1], kl=kl).itertuples():
                c = where(panel, estimator=r.estimator, k=r.k, beta=r.beta)
                c = c[c["step"] <= r.step]
                if not c.empty:
                    colour = look.series_colour(r.estimator, r.k, r.beta)
                    ax.plot(c["step"].iloc[-1], c["mean"].iloc[-1], "x", color=colour, ms=9, mew=2)
            ax.set_yscale("log")
            symlog_x(ax, where(curves, dataset=group[0], model=group[1])["step"].to_numpy())
            ax.set_title(f"{group_title(group)} — KL {kl}")
            ax.set_xlabel("training step (symlog)")
            ax.set_ylabel("enc. gradient variance (nats²)" if j == 0 else "")
    diverged = Line2D([], [], color="0.3", ls="", marker="x", ms=8, mew=2, label="diverged")
    series_legend(fig, look, curves, extra=[diverged] if not stops.empty else [])
    fig.suptitle(
        "Encoder gradient variance during training (mean over seeds; band: min–max over seeds;\n"
        "bars: 95% interval of the mean, from the standard errors of the R draws)"
    )
    return save(fig, path)


def _elbo_floor(finals: np.ndarray) -> float:
    """Lowest test ELBO drawn: frames the best third of the final ELBOs, with room around them.

    floor = best − max(4 × (best − worst of the top third), 10% of |best|, 2 nats), so the good
    estimators stay distinguishable when score-function runs end tens of nats lower.
    """
    if not finals.size:
        return -math.inf
    ranked = np.sort(finals)[::-1]
    best, third = ranked[0], ranked[max(1, math.ceil(len(ranked) / 3)) - 1]
    return float(best - max(4.0 * (best - third), 0.1 * abs(best), 2.0))


def plot_elbo(runs: pd.DataFrame, finals: pd.DataFrame, look: Look, path: Path) -> Path | None:
    """Test ELBO vs step and vs training seconds; facet rows: (dataset, model) × KL."""
    curves = _seed_curves(runs, "elbo_test")
    if curves.empty:
        return None
    rows = sorted(curves.groupby(GROUP + ["kl"]).groups)
    fig, axes = figure(len(rows), 2, 3.0)
    final_means = pd.Series(dtype=float, index=pd.MultiIndex.from_tuples([], names=ROW))
    if "elbo_test" in finals:
        final_means = finals["elbo_test"].groupby(ROW).mean().dropna()
    below: dict[str, float] = {}  # best final ELBO of each series drawn under the frame
    for i, (dataset, model, kl) in enumerate(rows):
        panel = where(curves, dataset=dataset, model=model, kl=kl)
        in_group = where(curves, dataset=dataset, model=model)
        group_finals = final_means[
            (final_means.index.get_level_values("dataset") == dataset)
            & (final_means.index.get_level_values("model") == model)
        ]
        floor = _elbo_floor(group_finals.to_numpy())
        for (_, _, estimator, _, k, beta, _), value in group_finals[group_finals < floor].items():
            label = look.label(estimator, k, beta)
            below[label] = max(value, below.get(label, -math.inf))
        top, lowest = float(in_group["mean"].max()), float(in_group["mean"].min())
        pad = 0.04 * (top - max(lowest, floor) if top > max(lowest, floor) else 1.0)
        for j, x in enumerate(("step", "seconds")):
            ax = axes[i, j]
            for series, c in panel.groupby(SERIES, sort=True):
                c = c.dropna(subset=[x])
                colour = look.series_colour(*series)
                ax.plot(c[x], c["mean"], color=colour, lw=1.8)
                ax.fill_between(c[x], c["min"], c["max"], color=colour, alpha=0.2, lw=0)
            symlog_x(ax, in_group[x].dropna().to_numpy())
            ax.set_ylim(max(lowest - pad, floor), top + pad)
            ax.set_title(f"{dataset} / {model} — KL {kl}")
            ax.set_xlabel(
                "training step (symlog)" if x == "step" else "training wall-clock (s, symlog)"
            )
            ax.set_ylabel("test ELBO (nats)" if j == 0 else "")
    series_legend(fig, look, curves)
    title = "Test ELBO (mean over seeds; band: min–max); y axis zoomed on the best estimators"
    if below:
        names = sorted(below, key=lambda name: -below[name])
        # Non-breaking spaces keep each "name (ELBO)" on one line of the wrapped title.
        entries = [f"{name} ({below[name]:.0f})".replace(" ", "\u00a0") for name in names[:4]]
        shown = ", ".join(entries)
        below_text = f"final ELBO below the frame: {shown}{', …' if len(names) > 4 else ''}"
        title += "\n" + textwrap.fill(below_text, TITLE_CHARACTERS, break_on_hyphens=False)
    fig.suptitle(title)
    return save(fig, path)
