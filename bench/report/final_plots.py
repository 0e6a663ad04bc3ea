"""Plots of final metrics, mean over seeds: encoder gradient variance against seconds per gradient
(with the efficient frontier; a colour per series, named in the legend), training throughput per
device, analytic vs Monte Carlo KL for estimators run with both, and the encoder gradient MSE split
into variance and bias². Variances are drawn with the 95% interval of their mean where runs.csv has
their standard errors (`style.variance_interval`)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from bench.report.data import GROUP, ROW
from bench.report.stats import pooled_se
from bench.report.style import (
    SERIES,
    Look,
    error_bars,
    figure,
    figure_legend,
    group_title,
    log_limits,
    log_ticks,
    save,
    series_legend,
    series_of,
    sig,
    variance_interval,
    where,
)


def _pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points no other point beats on both cost (x) and variance (y), by increasing cost."""
    frontier, best = [], math.inf
    for x, y in sorted(points):
        if y < best:
            frontier.append((x, y))
            best = y
    return frontier


def plot_variance_cost(finals: pd.DataFrame, look: Look, path: Path) -> Path | None:
    """Final encoder variance vs seconds per gradient, log–log; facets (dataset, model) × device."""
    from matplotlib.lines import Line2D

    needed = {"grad_var_encoder", "grad_seconds"}
    if finals.empty or not needed <= set(finals.columns):
        return None
    points = finals.groupby(ROW + ["device"])[sorted(needed)].mean().dropna()
    interval = variance_interval(finals.reset_index(), ROW + ["device"], "grad_var_encoder")
    points = points.join(interval[["low", "high"]]).reset_index()
    points = points[(points["grad_var_encoder"] > 0) & (points["grad_seconds"] > 0)]
    if points.empty:
        return None
    groups = sorted(points.groupby(GROUP).groups)
    devices = sorted(set(points["device"]))
    fig, axes = figure(len(groups), len(devices), 4.2)
    for i, group in enumerate(groups):
        for j, device in enumerate(devices):
            ax = axes[i, j]
            panel = where(points, dataset=group[0], model=group[1], device=device)
            for r in panel.itertuples():
                colour = look.series_colour(r.estimator, r.k, r.beta)
                ax.scatter(
                    r.grad_seconds,
                    r.grad_var_encoder,
                    color=colour,
                    marker=look.marker[r.kl],
                    s=55,
                    edgecolor="white",
                    linewidth=0.6,
                    zorder=3,
                )
            bars = panel.dropna(subset=["low", "high"])
            ax.errorbar(
                bars["grad_seconds"],
                bars["grad_var_encoder"],
                error_bars(bars, "grad_var_encoder"),
                fmt="none",
                ecolor="0.35",
                elinewidth=1,
                capsize=2.5,
                zorder=2,
            )
            costs = zip(panel["grad_seconds"], panel["grad_var_encoder"], strict=True)
            frontier = _pareto(list(costs))
            if len(frontier) > 1:
                fx, fy = zip(*frontier, strict=True)
                ax.plot(fx, fy, color="0.4", ls=":", lw=1.2, zorder=2, drawstyle="steps-post")
            ax.set_xscale("log")
            ax.set_yscale("log")
            log_limits(ax.set_xlim, panel["grad_seconds"], 0.1, 0.1)
            variances = pd.concat([panel["grad_var_encoder"], bars["low"], bars["high"]])
            log_limits(ax.set_ylim, variances, 0.08, 0.08)
            log_ticks(ax.xaxis, panel["grad_seconds"].min(), panel["grad_seconds"].max())
            log_ticks(ax.yaxis, variances.min(), variances.max())
            ax.set_title(f"{group_title(group)} — {device}")
            ax.set_xlabel("time per gradient estimate (s)")
            ax.set_ylabel("final enc. gradient variance (nats²)" if j == 0 else "")
    extra = [
        Line2D([], [], color="0.3", ls="", marker=look.marker[kl], label=f"KL {kl}")
        for kl in sorted(set(points["kl"]))
    ]
    extra.append(Line2D([], [], color="0.4", ls=":", label="efficient frontier"))
    series_legend(fig, look, points, extra)
    fig.suptitle(
        "Variance against cost: lower left is better\n(mean over seeds; bars: 95% interval of "
        "the variance, from the R draws)"
    )
    return save(fig, path)


def _thousands(x: float, _position: object = None) -> str:
    """Axis labels for rates: 800, 2.5k, 150k, 1.2M."""
    for scale, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:g}{suffix}"
    return f"{x:g}"


def plot_throughput(finals: pd.DataFrame, look: Look, path: Path) -> Path | None:
    """Training throughput per estimator (bars: mean, line: seed range); facets: devices."""
    from matplotlib.patches import Patch
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    if finals.empty or "throughput" not in finals:
        return None
    data = finals["throughput"].dropna().reset_index()
    if data.empty:
        return None
    stats = data.groupby(ROW + ["device"])["throughput"].agg(["mean", "min", "max"]).reset_index()
    groups = sorted(stats.groupby(GROUP).groups)
    devices = sorted(set(stats["device"]))
    kls = sorted(set(stats["kl"]))
    hatches = {kl: ["", "///", "..", "xx"][i % 4] for i, kl in enumerate(kls)}
    height = 0.8 / len(kls)
    in_group = {g: series_of(where(stats, dataset=g[0], model=g[1])) for g in groups}
    heights = [0.24 * len(in_group[g]) * len(kls) + 1.2 for g in groups]
    fig, axes = figure(len(groups), len(devices), heights)
    for i, group in enumerate(groups):
        series = in_group[group]  # the section's own estimators only
        for j, device in enumerate(devices):
            ax = axes[i, j]
            panel = where(stats, dataset=group[0], model=group[1], device=device)
            for y, (estimator, k, beta) in enumerate(series):
                for m, kl in enumerate(kls):
                    r = where(panel, estimator=estimator, k=k, beta=beta, kl=kl)
                    if r.empty:
                        continue
                    r = r.iloc[0]
                    pos = y - 0.4 + height * (m + 0.5)
                    ax.barh(
                        pos,
                        r["mean"],
                        height=height * 0.9,
                        color=look.series_colour(estimator, k, beta),
                        hatch=hatches[kl],
                        edgecolor="white",
                    )
                    ax.plot([r["min"], r["max"]], [pos, pos], color="0.2", lw=1.2)
            ax.set_yticks(range(len(series)), [look.label(*s) for s in series])
            ax.invert_yaxis()
            ax.set_xlim(left=0)
            ax.set_title(f"{group_title(group)} — {device}")
            ax.set_xlabel("throughput (training examples/s)")
            ax.xaxis.set_major_locator(MaxNLocator(nbins=5))
            ax.xaxis.set_major_formatter(FuncFormatter(_thousands))
            ax.grid(axis="y", visible=False)
    if len(kls) > 1:
        handles = [
            Patch(facecolor="0.6", hatch=hatches[kl], edgecolor="white", label=f"KL {kl}")
            for kl in kls
        ]
        figure_legend(fig, handles)
    note = "" if "cuda" in devices else " — cpu only (no GPU runs)"
    fig.suptitle(f"Training throughput (bar: mean over seeds; line: min–max){note}")
    return save(fig, path)


def plot_kl_modes(finals: pd.DataFrame, look: Look, path: Path) -> Path | None:
    """Analytic vs Monte Carlo KL for estimators run with both: final ELBO and enc. variance."""
    from matplotlib.lines import Line2D

    needed = [m for m in ("elbo_test", "grad_var_encoder") if m in finals]
    if finals.empty or not needed:
        return None
    means = finals[needed].groupby(ROW).mean()
    if "grad_var_encoder" in needed:
        interval = variance_interval(finals.reset_index(), ROW, "grad_var_encoder")
        means = means.join(interval[["low", "high"]])
    means = means.reset_index()
    modes = means.groupby(GROUP + SERIES)["kl"].nunique()
    paired = modes[modes > 1].reset_index()[GROUP + SERIES]
    if paired.empty:
        return None
    means = means.merge(paired, on=GROUP + SERIES)
    groups = sorted(means.groupby(GROUP).groups)
    kls = sorted(set(means["kl"]))
    n_series = means.drop_duplicates(GROUP + SERIES).groupby(GROUP).size()
    fig, axes = figure(len(groups), len(needed), [0.45 * n_series[g] + 1.4 for g in groups])
    labels = {
        "elbo_test": "final test ELBO (nats)",
        "grad_var_encoder": "final enc. gradient variance (nats², log)",
    }
    for i, group in enumerate(groups):
        panel = where(means, dataset=group[0], model=group[1])
        series = series_of(panel)
        for j, metric in enumerate(needed):
            ax = axes[i, j]
            _kl_modes_panel(ax, panel, series, metric, look)
            if metric == "grad_var_encoder":
                ax.set_xscale("log")
            ax.margins(x=0.2)
            ax.set_yticks(range(len(series)), [look.label(*s) for s in series])
            ax.set_ylim(len(series) - 0.5, -0.5)
            ax.set_title(group_title(group))
            ax.set_xlabel(labels[metric])
    handles = [
        Line2D([], [], color="0.3", ls="", marker=look.marker[kl], ms=8, label=f"KL {kl}")
        for kl in kls
    ]
    figure_legend(fig, handles)
    first, last = kls[0], kls[-1]
    fig.suptitle(
        f"KL term: analytic vs Monte Carlo (mean over seeds)\n"
        f"Δ = {last} − {first} (nats), × = {last} ÷ {first}; bars: 95% interval of the variance"
    )
    return save(fig, path)


def _kl_modes_panel(ax, panel: pd.DataFrame, series: list, metric: str, look: Look) -> None:
    """One section's rows of `metric`: per series its KL modes on one line, the variance's 95%
    interval as bars, and the change between the two modes (Δ for the ELBO, × for the variance)."""
    for y, (estimator, k, beta) in enumerate(series):
        s = where(panel, estimator=estimator, k=k, beta=beta)
        s = s.dropna(subset=[metric]).sort_values("kl")
        colour = look.series_colour(estimator, k, beta)
        ax.plot(s[metric], [y] * len(s), color=colour, lw=2, alpha=0.6, zorder=2)
        for r in s.itertuples():
            ax.scatter(
                getattr(r, metric),
                y,
                color=colour,
                marker=look.marker[r.kl],
                s=60,
                edgecolor="white",
                zorder=3,
            )
        if metric == "grad_var_encoder":
            bars = s.dropna(subset=["low", "high"])
            ax.errorbar(
                bars[metric],
                [y] * len(bars),
                xerr=error_bars(bars, metric),
                fmt="none",
                ecolor="0.25",
                elinewidth=1,
                capsize=4,
                zorder=2.5,
            )
        if len(s) == 2:
            a, b = s[metric].to_numpy()
            text = f"Δ {b - a:+.2f}" if metric == "elbo_test" else f"×{sig(b / a)}"
            right = s.reindex(columns=[metric, "high"]).max(axis=None)
            ax.annotate(
                text,
                (right, y),
                xytext=(8, 0),
                textcoords="offset points",
                va="center",
                fontsize=8.5,
            )


BIAS_COLUMNS = ("grad_var_encoder", "grad_bias_encoder", "grad_bias_se_encoder")


def _bias_points(finals: pd.DataFrame) -> pd.DataFrame:
    """Per row key with a positive final encoder variance, in sections with any bias measured:
    mean variance and bias² over seeds, the pooled standard error of the bias² (√Σse² / n),
    `bias_drawn` (bias² clipped at 0) and `mse` (variance + bias_drawn)."""
    if finals.empty or not set(BIAS_COLUMNS[:2]) <= set(finals.columns):
        return pd.DataFrame()
    data = finals.reindex(columns=list(BIAS_COLUMNS)).reset_index()
    stats = data.groupby(ROW).agg(
        variance=("grad_var_encoder", "mean"),
        bias=("grad_bias_encoder", "mean"),
        se=("grad_bias_se_encoder", pooled_se),
    )
    stats = stats[stats["variance"] > 0].reset_index()
    measured = stats.groupby(GROUP)["bias"].transform(lambda b: b.notna().any())
    stats = stats[measured].copy()
    stats["bias_drawn"] = stats["bias"].clip(lower=0.0)
    stats["mse"] = stats["variance"] + stats["bias_drawn"].fillna(0.0)
    return stats


def _bias_share_text(r) -> str:
    """The text right of a biased row's bars: the share of bias² in the MSE, or that none shows."""
    if r.bias <= 0:
        return "bias² ≤ 0: none detected"
    return f"bias² {r.bias_drawn / r.mse:.0%} of MSE"


def _draw_bias_panel(ax, panel: pd.DataFrame, look: Look, several_kl: bool) -> None:
    """One section: per row, a variance bar, below it (biased rows) a hatched bias² bar with
    ±1 se, and a tick at the MSE; rows by MSE, lowest first; log x axis starting a decade or
    more below the smallest value, so that every bar shows."""
    panel = panel.sort_values(["mse", "estimator", "kl"], kind="mergesort")
    values = pd.concat([panel["variance"], panel["mse"], panel["bias_drawn"]])
    values = values[values > 0]
    low, high = math.log10(values.min()), math.log10(values.max())
    below = max(1.0, 0.15 * (high - low)) / max(high - low, 0.3)
    x_span = log_limits(ax.set_xlim, values, below, 0.3)
    floor = 10.0 ** x_span[0]
    height = 0.38
    labels = []
    for y, r in enumerate(panel.itertuples()):
        colour = look.series_colour(r.estimator, r.k, r.beta)
        biased = np.isfinite(r.bias)
        ax.barh(
            y - height / 2 if biased else y,
            r.variance,
            height=height,
            color=colour,
            edgecolor="white",
        )
        if biased:
            light = tuple(np.array(colour) + (1.0 - np.array(colour)) * 0.55)
            ax.barh(
                y + height / 2, r.bias_drawn, height=height, color=light, hatch="///", ec=colour
            )
            if np.isfinite(r.se) and r.bias + r.se > floor:
                ends = [max(r.bias - r.se, floor), r.bias + r.se]
                ax.plot(ends, [y + height / 2] * 2, color="0.2", lw=1.2)
        ax.plot([r.mse] * 2, [y - height, y + height], color="0.1", lw=2.2, zorder=4)
        if biased:
            ax.annotate(
                _bias_share_text(r),
                (max(r.mse, r.bias + (r.se if np.isfinite(r.se) else 0.0)), y),
                xytext=(6, 0),
                textcoords="offset points",
                va="center",
                fontsize=8.5,
            )
        labels.append(
            look.label(r.estimator, r.k, r.beta) + (f" · KL {r.kl}" if several_kl else "")
        )
    ax.set_xscale("log")
    ax.set_yticks(range(len(panel)), labels)
    ax.set_ylim(len(panel) - 0.5, -0.5)
    ax.grid(axis="y", visible=False)
    ax.set_xlabel("final encoder gradient error (nats², log)")


def plot_bias_variance(
    finals: pd.DataFrame, references: dict[str, str | None], look: Look, path: Path
) -> Path | None:
    """Final encoder gradient MSE split into variance and bias², per row key, in each (dataset,
    model) with bias measurements (titled with the unbiased `references` of its biased
    estimators, by estimator); None when no run has them."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    points = _bias_points(finals)
    if points.empty:
        return None
    groups = sorted(points.groupby(GROUP).groups)
    sizes = points.groupby(GROUP).size()
    fig, axes = figure(len(groups), 1, [0.42 * sizes[g] + 1.3 for g in groups])
    for i, group in enumerate(groups):
        panel = where(points, dataset=group[0], model=group[1])
        _draw_bias_panel(axes[i, 0], panel, look, panel["kl"].nunique() > 1)
        biased = panel.dropna(subset=["bias"])["estimator"]
        against = "/".join(sorted({name for e in biased if (name := references.get(e))}))
        axes[i, 0].set_title(f"{group_title(group)} — bias² against {against or 'a reference'}")
    handles = [
        Patch(facecolor="0.55", edgecolor="white", label="variance"),
        Patch(facecolor="0.85", edgecolor="0.55", hatch="///", label="bias² (± 1 se)"),
        Line2D([], [], color="0.1", lw=2.2, label="MSE = variance + bias²"),
    ]
    figure_legend(fig, handles)
    fig.suptitle(
        "Encoder gradient error at the end of training (mean over seeds): variance and bias²\n"
        "bias² is debiased, so ≤ 0 where no bias is detectable: drawn as 0; lower MSE is better"
    )
    return save(fig, path)
