"""Plots across a swept setting, final values averaged over seeds: gradient SNR against the number
of samples K (Rainforth et al. 2018), and distortion against rate across estimators and β
(Alemi et al. 2018), with iso-ELBO lines."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from bench.report.final_plots import _log_ticks, _tick_label
from bench.report.plots import Look, figure, figure_legend, save, section_legend, where
from bench.report.runs import GROUP, ROW, format_beta
from bench.report.tables import group_title

PARTS = {"encoder": "encoder (φ)", "decoder": "decoder (θ)"}
# The IWAE rates of Rainforth et al. (2018): SNR ∝ K^exponent, drawn as a guide.
SNR_RATES = {"encoder": -0.5, "decoder": 0.5}


def plot_snr_vs_k(finals: pd.DataFrame, look: Look, path: Path) -> Path | None:
    """Final encoder and decoder SNR vs K, one line per (estimator, KL, β) run with ≥ 2 values of
    K; facets (dataset, model) × {encoder, decoder}; bars: min–max over seeds."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    needed = ["snr_encoder", "snr_decoder"]
    if finals.empty or not set(needed) <= set(finals.columns):
        return None
    values = finals[needed].reset_index()
    values = values[(values[needed] > 0).all(axis=1)]
    line = GROUP + ["estimator", "kl", "beta"]
    swept = values.groupby(line)["k"].transform("nunique") > 1
    values = values[swept]
    if values.empty:
        return None
    stats = values.groupby(ROW)[needed].agg(["mean", "min", "max"])
    groups = sorted(values.groupby(GROUP).groups)
    fig, axes = figure(len(groups), 2, 3.6)
    lines = sorted({tuple(key)[2:] for key in values[line].drop_duplicates().to_numpy()})
    several_kl = len({kl for _, kl, _ in lines}) > 1
    for i, group in enumerate(groups):
        in_group = stats[
            (stats.index.get_level_values("dataset") == group[0])
            & (stats.index.get_level_values("model") == group[1])
        ]
        ks = sorted(set(in_group.index.get_level_values("k")))
        for j, part in enumerate(PARTS):
            ax = axes[i, j]
            metric = f"snr_{part}"
            anchors = []
            for (estimator, kl, beta), s in in_group.groupby(level=["estimator", "kl", "beta"]):
                s = s[metric].droplevel(GROUP + ["estimator", "kl", "beta"]).sort_index()
                k = s.index.to_numpy(dtype=float)
                colour = look.series_colour(estimator, int(k.max()), beta)
                ax.errorbar(
                    k,
                    s["mean"],
                    yerr=[s["mean"] - s["min"], s["max"] - s["mean"]],
                    color=colour,
                    marker=look.marker[kl],
                    ms=6,
                    lw=1.8,
                    capsize=3,
                    mec="white",
                    mew=0.6,
                )
                anchors.append((estimator != "iwae", k[0], float(s["mean"].iloc[0])))
            if anchors:  # the IWAE rate through iwae's first point (else the smallest-K one)
                _, k0, y0 = min(anchors)
                grid = np.geomspace(k0, max(ks), 20)
                guide = y0 * (grid / k0) ** SNR_RATES[part]
                ax.plot(grid, guide, color="0.3", ls="--", lw=1.2, zorder=4)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.xaxis.set_major_locator(FixedLocator(ks))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.yaxis.set_major_formatter(FuncFormatter(_tick_label))
            _log_ticks(ax.yaxis, in_group[metric]["min"].min(), in_group[metric]["max"].max())
            ax.set_xlim(min(ks) / 1.35, max(ks) * 1.35)
            ax.set_title(f"{group_title(group)} — {PARTS[part]}")
            ax.set_xlabel("samples per example K (log)")
            ax.set_ylabel(f"final {part} SNR (|mean| / std, log)")
    handles = [
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
    handles.append(Line2D([], [], color="0.3", ls="--", lw=1.2, label="IWAE rate: 1/√K, √K"))
    figure_legend(fig, handles)
    fig.suptitle(
        "Gradient SNR vs K (mean over seeds; bars: min–max). Rainforth et al. (2018): for IWAE,\n"
        "encoder SNR falls as O(1/√K) and decoder SNR rises as O(√K)"
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
        ax = axes[i, 0]
        panel = where(points, dataset=group[0], model=group[1])
        floor = _frame_floor(-panel["neg_elbo"].to_numpy())
        for r in panel[-panel["neg_elbo"] < floor].itertuples():
            label = look.label(r.estimator, r.k, r.beta)
            left_out[label] = max(-r.neg_elbo, left_out.get(label, -math.inf))
        panel = panel[-panel["neg_elbo"] >= floor]
        vary_beta = panel.groupby(["estimator", "kl", "k"])["beta"].nunique().max() > 1
        for (estimator, kl, k), s in panel.groupby(["estimator", "kl", "k"], sort=True):
            s = s.sort_values("beta")
            drawn.setdefault(group, set()).add((estimator, int(k)))
            if len(s) > 1:
                ax.plot(
                    s["rate_test"],
                    s["distortion_test"],
                    color=look.series_colour(estimator, k, None),
                    lw=1.2,
                    alpha=0.7,
                    zorder=2,
                )
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
        ax.set_title(group_title(group))
        ax.set_xlabel("rate KL(q‖p) (nats)")
        ax.set_ylabel("distortion −E log p(x|z) (nats)")
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
