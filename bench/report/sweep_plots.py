"""Plots across a swept setting, averaged over seeds: gradient SNR and encoder gradient variance
against the number of samples K at step 0 and at the end of training (Rainforth et al. 2018;
Buchholz et al. 2018 for RQMC), and final distortion against rate across estimators and β
(Alemi et al. 2018), with iso-ELBO lines."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from bench.report.data import CONFIG, GROUP, ROW, format_beta
from bench.report.stats import near_floor, pooled_se
from bench.report.style import (
    Look,
    error_bars,
    figure,
    figure_legend,
    group_title,
    log_ticks,
    save,
    section_legend,
    tick_label,
    where,
)

PARTS = {"encoder": "encoder (φ)", "decoder": "decoder (θ)"}
# The IWAE rates of Rainforth et al. (2018): SNR ∝ K^exponent, drawn as a guide.
SNR_RATES = {"encoder": -0.5, "decoder": 0.5}
PHASES = {"step 0": "step 0, shared initialisation", "final": "end of training"}
LINE = GROUP + ["estimator", "kl", "beta"]  # one line of the SNR plot: its points differ in K


def snr_points(runs: pd.DataFrame, finals: pd.DataFrame) -> pd.DataFrame:
    """The points of the SNR-vs-K plot: per phase ("step 0": the measurement before training,
    where every K of a seed has the same parameters and minibatch, so that only K differs, as in
    Rainforth et al.'s prediction; "final": the last one, each K its own trained model), part G
    and row key whose line (estimator, KL, β) has ≥ 2 values of K: `mean`, `min`, `max` of the
    positive snr_G over seeds, the noise floor's mean `floor` and the standard deviation of the
    mean over seeds `floor_sd` (√(Σ sd²)/n; NaN where runs.csv predates it), and `near` (the mean
    cannot be told from the floor, `stats.near_floor`)."""
    start = runs[(runs["step"] == 0) & runs["metric"].str.startswith("snr_")]
    phases = {
        "step 0": start.pivot_table("value", CONFIG, "metric", aggfunc="first"),
        "final": finals,
    }
    parts = []
    for phase, wide in phases.items():
        for part in PARTS:
            columns = [f"snr_{part}", f"snr_floor_{part}", f"snr_floor_sd_{part}"]
            if columns[0] not in wide:
                continue
            values = wide.reindex(columns=columns).set_axis(["snr", "floor", "sd"], axis=1)
            groups = values[values["snr"] > 0].groupby(ROW)
            points = groups["snr"].agg(["mean", "min", "max"])
            points["floor"] = groups["floor"].mean()
            points["floor_sd"] = groups["sd"].agg(pooled_se)
            points = points.reset_index()
            points = points[points.groupby(LINE)["k"].transform("nunique") > 1]
            points["near"] = near_floor(points["mean"], points["floor"], points["floor_sd"])
            parts.append(points.assign(phase=phase, part=part))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def variance_points(runs: pd.DataFrame, finals: pd.DataFrame) -> pd.DataFrame:
    """The points of the variance-vs-K plot, per phase (as `snr_points`) and row key whose line
    (estimator, KL, β) has ≥ 2 values of K: `mean`, `min`, `max` over seeds of grad_var_encoder."""
    metric = "grad_var_encoder"
    start = runs[(runs["step"] == 0) & (runs["metric"] == metric)]
    phases = {
        "step 0": start.pivot_table("value", CONFIG, "metric", aggfunc="first"),
        "final": finals,
    }
    parts = []
    for phase, wide in phases.items():
        if metric not in wide:
            continue
        values = wide[wide[metric] > 0]
        points = values.groupby(ROW)[metric].agg(["mean", "min", "max"]).reset_index()
        points = points[points.groupby(LINE)["k"].transform("nunique") > 1]
        parts.append(points.assign(phase=phase))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def _k_axes(ax, ks: list[float], low: float, high: float) -> None:
    """Log–log axes with a tick at every K run."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(FixedLocator(ks))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_major_formatter(FuncFormatter(tick_label))
    log_ticks(ax.yaxis, low, high)
    ax.set_xlim(min(ks) / 1.35, max(ks) * 1.35)
    ax.set_xlabel("samples per example K (log)")


def _line_handles(points: pd.DataFrame, look: Look) -> list:
    """One legend entry per (estimator, KL, β) line."""
    from matplotlib.lines import Line2D

    lines = sorted({tuple(key) for key in points[LINE[2:]].drop_duplicates().to_numpy()})
    several_kl = len({kl for _, kl, _ in lines}) > 1
    return [
        Line2D(
            [],
            [],
            color=look.series_colour(estimator, max(look.ks[estimator]), beta),
            marker=look.marker[kl],
            lw=1.8,
            label=look.label(estimator, None, beta) + (f" (KL {kl})" if several_kl else ""),
        )
        for estimator, kl, beta in lines
    ]


def _k_lines(ax, panel: pd.DataFrame, look: Look, markers: bool) -> list[tuple]:
    """Draw a line per (estimator, KL, β) of `panel` against K with min–max bars over seeds (and
    the KL mode's marker if `markers`); return each line's (KL mode, points sorted by K, colour)."""
    lines = []
    for (estimator, kl, beta), s in panel.groupby(["estimator", "kl", "beta"], sort=True):
        s = s.sort_values("k")
        colour = look.series_colour(estimator, int(s["k"].max()), beta)
        marker = look.marker[kl] if markers else None
        ax.errorbar(
            s["k"],
            s["mean"],
            error_bars(s, low="min", high="max"),
            color=colour,
            marker=marker,
            lw=1.8,
            capsize=3,
            zorder=2,
        )
        lines.append((kl, s, colour))
    return lines


def _rate_guide(ax, panel: pd.DataFrame, exponent: float) -> None:
    """A dashed guide ∝ K^exponent from the geometric mean of the lines' values at the smallest
    K any line starts at."""
    starts = panel.sort_values("k").groupby(["estimator", "kl", "beta"]).first()
    k0 = starts["k"].min()
    y0 = float(np.exp(np.log(starts.loc[starts["k"] == k0, "mean"]).mean()))
    grid = np.geomspace(k0, panel["k"].max(), 20)
    ax.plot(grid, y0 * (grid / k0) ** exponent, color="0.3", ls="--", lw=1.2, zorder=4)


def _variance_panel(ax, panel: pd.DataFrame, look: Look) -> None:
    """One panel: a line per (estimator, KL, β) with min–max bars over seeds, and the Monte Carlo
    rate 1/K as a dashed guide from the geometric mean of the lines' variances at the smallest K."""
    _k_lines(ax, panel, look, markers=True)
    _rate_guide(ax, panel, -1.0)
    _k_axes(ax, sorted(set(panel["k"])), panel["min"].min(), panel["max"].max())
    ax.set_ylabel("encoder gradient variance (log)")


def plot_variance_vs_k(
    runs: pd.DataFrame, finals: pd.DataFrame, look: Look, path: Path
) -> Path | None:
    """Encoder gradient variance vs K (`variance_points`), one line per (estimator, KL, β) run with
    ≥ 2 values of K; facet rows (dataset, model), columns phase (step 0, final); None without
    such a line."""
    from matplotlib.lines import Line2D

    points = variance_points(runs, finals)
    if points.empty:
        return None
    sections = sorted(points.groupby(GROUP).groups)
    fig, axes = figure(len(sections), len(PHASES), 3.4)
    for i, section in enumerate(sections):
        for j, phase in enumerate(PHASES):
            dataset, model = section
            panel = where(points, dataset=dataset, model=model, phase=phase)
            if panel.empty:
                axes[i, j].set_axis_off()
                continue
            _variance_panel(axes[i, j], panel, look)
            axes[i, j].set_title(f"{group_title(section)}\n{PHASES[phase]}")
    handles = _line_handles(points, look)
    handles.append(Line2D([], [], color="0.3", ls="--", lw=1.2, label="Monte Carlo rate: 1/K"))
    figure_legend(fig, handles)
    fig.suptitle(
        "Encoder gradient variance vs K (mean over seeds; bars: min–max). For a fixed objective\n"
        "(the ELBO) Monte Carlo falls as 1/K; randomised QMC faster (Buchholz et al. 2018)"
    )
    return save(fig, path)


def _snr_panel(ax, panel: pd.DataFrame, look: Look, part: str) -> None:
    """One panel: a line per (estimator, KL, β) with min–max bars over seeds, points hollow where
    the SNR cannot be told from the noise floor; the floor ± 2 sd as a grey band; the IWAE rate
    as a dashed guide from the geometric mean of the lines' SNRs at the smallest K."""
    for kl, s, colour in _k_lines(ax, panel, look, markers=False):
        for near, points in s.groupby("near"):
            ax.scatter(
                points["k"],
                points["mean"],
                marker=look.marker[kl],
                s=40,
                zorder=3,
                color="white" if near else colour,
                edgecolor=colour,
                linewidth=1.5,
            )
    ks = sorted(set(panel["k"]))
    floors = panel.dropna(subset=["floor", "floor_sd"]).groupby("k")[["floor", "floor_sd"]].mean()
    if not floors.empty:
        low = np.maximum(floors["floor"] - 2 * floors["floor_sd"], floors["floor"] / 2)
        high = floors["floor"] + 2 * floors["floor_sd"]
        ax.fill_between(floors.index, low, high, color="0.5", alpha=0.3, lw=0, zorder=1)
    _rate_guide(ax, panel, SNR_RATES[part])
    drawn = pd.concat([panel["min"], panel["max"], floors["floor"]])
    _k_axes(ax, ks, drawn.min(), drawn.max())
    ax.set_ylabel(f"{part} SNR (|mean| / std, log)")


def plot_snr_vs_k(runs: pd.DataFrame, finals: pd.DataFrame, look: Look, path: Path) -> Path | None:
    """Encoder and decoder SNR vs K (`snr_points`), one line per (estimator, KL, β) run with ≥ 2
    values of K; facet rows (dataset, model) × phase (step 0 first, then final), columns
    {encoder, decoder}; None without such a line."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    points = snr_points(runs, finals)
    if points.empty:
        return None
    panels = sorted(
        points.groupby(GROUP + ["phase"]).groups, key=lambda g: (g[:2], list(PHASES).index(g[2]))
    )
    fig, axes = figure(len(panels), 2, 3.4)
    for i, (dataset, model, phase) in enumerate(panels):
        for j, part in enumerate(PARTS):
            panel = where(points, dataset=dataset, model=model, phase=phase, part=part)
            if panel.empty:
                axes[i, j].set_axis_off()
                continue
            _snr_panel(axes[i, j], panel, look, part)
            title = f"{group_title((dataset, model))} — {PARTS[part]}\n{PHASES[phase]}"
            axes[i, j].set_title(title)
    handles = _line_handles(points, look)
    handles.append(Line2D([], [], color="0.3", ls="--", lw=1.2, label="IWAE rate: 1/√K, √K"))
    if points["floor"].notna().any():
        handles.append(Patch(color="0.5", alpha=0.3, label="noise floor ± 2 sd"))
        handles.append(
            Line2D(
                [],
                [],
                color="0.3",
                marker="o",
                mfc="white",
                ls="",
                label="cannot be told from the floor",
            )
        )
    figure_legend(fig, handles)
    fig.suptitle(
        "Gradient SNR vs K (mean over seeds; bars: min–max). Rainforth et al. (2018), for IWAE\n"
        "at fixed parameters (step 0): encoder SNR falls as O(1/√K), decoder SNR rises as O(√K)"
    )
    return save(fig, path)


def _frame_floor(elbos: np.ndarray) -> float:
    """Lowest ELBO a rate–distortion point may have to be drawn: far enough below the best to
    keep a β sweep and every reasonable estimator, above runs that failed to train.

    floor = best − max(2 × (best − median), 25% of |best|, 10 nats).
    """
    best, median = float(np.max(elbos)), float(np.median(elbos))
    return best - max(2.0 * (best - median), 0.25 * abs(best), 10.0)


def _nice_step(span: float, lines: int = 5) -> float:
    """A 1-2-5 step giving about `lines` values over `span`."""
    raw = span / lines
    power = 10.0 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw)


def plot_rate_distortion(finals: pd.DataFrame, look: Look, path: Path) -> Path | None:
    """Final distortion vs rate, one point per (estimator, KL, K, β), mean over seeds; points of
    one (estimator, KL, K) joined in order of β; dashed: iso-ELBO lines rate + distortion = c.
    Points whose ELBO is far below the rest (`_frame_floor`) are left out and named."""
    from matplotlib.lines import Line2D

    needed = ["rate_test", "distortion_test"]
    if finals.empty or not set(needed) <= set(finals.columns):
        return None
    points = finals[needed].groupby(ROW).mean().dropna().reset_index()
    if points.empty:
        return None
    points["neg_elbo"] = points["rate_test"] + points["distortion_test"]
    groups = sorted(points.groupby(GROUP).groups)
    fig, axes = figure(len(groups), 1, 4.8)
    left_out: dict[str, float] = {}
    drawn: dict[tuple, set[tuple[str, int]]] = {}  # per section, (estimator, K): a legend entry
    for i, group in enumerate(groups):
        panel = where(points, dataset=group[0], model=group[1])
        floor = _frame_floor(-panel["neg_elbo"].to_numpy())
        for r in panel[-panel["neg_elbo"] < floor].itertuples():
            label = look.label(r.estimator, r.k, r.beta)
            left_out[label] = max(-r.neg_elbo, left_out.get(label, -math.inf))
        drawn[group] = _rate_distortion_panel(axes[i, 0], panel[-panel["neg_elbo"] >= floor], look)
        axes[i, 0].set_title(group_title(group))
    sections = {
        group: [
            Line2D(
                [],
                [],
                color=look.series_colour(e, k, None),
                ls="",
                marker="o",
                ms=7,
                label=look.label(e, k, None),
            )
            for e, k in sorted(pairs)
        ]
        for group, pairs in drawn.items()
    }
    extra = [
        Line2D([], [], color="0.3", ls="", marker=look.marker[kl], label=f"KL {kl}")
        for kl in sorted(set(points["kl"]))
    ]
    extra.append(Line2D([], [], color="0.6", ls="--", lw=1, label="iso-ELBO"))
    section_legend(fig, sections, extra)
    title = "Rate vs distortion at the end of training (mean over seeds); lower left is better"
    if left_out:
        names = sorted(left_out, key=lambda name: -left_out[name])
        shown = ", ".join(f"{name} ({left_out[name]:.0f})" for name in names[:4])
        title += f"\nleft out, final ELBO far below the rest: {shown}"
        title += ", …" if len(names) > 4 else ""
    fig.suptitle(title)
    return save(fig, path)


def _rate_distortion_panel(ax, panel: pd.DataFrame, look: Look) -> set[tuple[str, int]]:
    """One section's points (joined in order of β, each labelled with its β where β varies) and
    iso-ELBO lines; returns the (estimator, K) drawn, one legend entry each."""
    drawn = set()
    vary_beta = panel.groupby(["estimator", "kl", "k"])["beta"].nunique().max() > 1
    for (estimator, kl, k), s in panel.groupby(["estimator", "kl", "k"], sort=True):
        s = s.sort_values("beta")
        drawn.add((estimator, int(k)))
        if len(s) > 1:
            colour = look.series_colour(estimator, k, None)
            ax.plot(s["rate_test"], s["distortion_test"], color=colour, lw=1.2, alpha=0.7, zorder=2)
        for r in s.itertuples():
            ax.scatter(
                r.rate_test,
                r.distortion_test,
                color=look.series_colour(estimator, k, r.beta),
                marker=look.marker[kl],
                s=55,
                edgecolor="white",
                linewidth=0.6,
                zorder=3,
            )
            if vary_beta and len(s) > 1:
                ax.annotate(
                    f"β={format_beta(r.beta)}",
                    (r.rate_test, r.distortion_test),
                    xytext=(6, 4),
                    textcoords="offset points",
                    fontsize=8.5,
                    color=np.array(look.colour[estimator]) * 0.75,
                )
    _iso_elbo_lines(ax, panel)
    ax.set_xlabel("rate KL(q‖p) (nats)")
    ax.set_ylabel("distortion −E log p(x|z) (nats)")
    return drawn


def _iso_elbo_lines(ax, panel: pd.DataFrame) -> None:
    """Dashed lines rate + distortion = c across the panel's frame, each labelled 'ELBO −c' along
    the line near its upper-left end; sets the frame (the points with a margin)."""
    rate, distortion = panel["rate_test"], panel["distortion_test"]
    pad_x = max(0.12 * (rate.max() - rate.min()), 1.0)
    pad_y = max(0.12 * (distortion.max() - distortion.min()), 1.0)
    x0, x1 = max(rate.min() - pad_x, 0.0), rate.max() + pad_x
    y0, y1 = max(distortion.min() - pad_y, 0.0), distortion.max() + pad_y
    low, high = x0 + y0, x1 + y1
    step = _nice_step(high - low, 6)
    for c in np.arange(math.ceil(low / step) * step, high, step):
        start, end = max(x0, c - y1), min(x1, c - y0)  # the line's x extent inside the frame
        if end <= start:
            continue
        ax.plot([start, end], [c - start, c - end], color="0.6", ls="--", lw=0.9, zorder=1)
        if end - start < 0.2 * (x1 - x0):  # too short a segment to carry its label
            continue
        x = start + 0.06 * (end - start)
        ax.text(
            x,
            c - x,
            f"ELBO {-c:g}",
            rotation=-45,
            transform_rotates_text=True,
            rotation_mode="anchor",
            ha="left",
            va="bottom",
            fontsize=8,
            color="0.4",
            zorder=1,
        )
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
