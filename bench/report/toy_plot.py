"""The toy-problem plot: Mohamed et al. (2020) Figs. 2–3, the variance of each single-draw
gradient estimator of E_{x~N(μ,σ²)} f(x; k) against k, at μ = σ = 1, drawn from DIR/toy.csv
(written by `python -m bench toy --out DIR`; nothing is computed here)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bench.report.style import figure, figure_legend, palette, save, where

SYMBOLS = {"mu": "μ", "sigma": "σ"}


def plot_toy(toy: pd.DataFrame | None, path: Path) -> Path | None:
    """Variance vs k, facets: parameter × cost (in toy.csv's order). Lines: the exact variances
    (source 'exact', by quadrature); markers: sample variances (source 'empirical'); a log k axis
    where every k of the cost is positive. None without toy.csv."""
    from matplotlib.lines import Line2D

    if toy is None or toy.empty:
        return None
    costs = list(dict.fromkeys(toy["cost"]))
    params = list(dict.fromkeys(toy["param"]))
    estimators = list(dict.fromkeys(toy["estimator"]))
    colours = palette(estimators, "colorblind")
    fig, axes = figure(len(params), len(costs), 3.0)
    for j, cost in enumerate(costs):
        for i, param in enumerate(params):
            ax = axes[i, j]
            panel = where(toy, cost=cost, param=param)
            exact = panel[panel["source"] == "exact"]
            for estimator in estimators:
                line = where(exact, estimator=estimator)
                marks = where(panel[panel["source"] == "empirical"], estimator=estimator)
                colour = colours[estimator]
                ax.plot(line["k"], line["variance"], color=colour, lw=1.8)
                ax.plot(marks["k"], marks["variance"], "o", color=colour, ms=5, mec="w", mew=0.6)
            ax.set_yscale("log")
            ax.set_ylim(bottom=max(ax.get_ylim()[0], 1e-4 * float(exact["variance"].max())))
            ax.set_xscale("log" if (panel["k"] > 0).all() else "linear")
            if i == 0:
                ax.set_title(str(panel["formula"].iloc[0]))
            if i == len(params) - 1:
                ax.set_xlabel("cost parameter k")
            if j == 0:
                ax.set_ylabel(f"variance of ∂F/∂{SYMBOLS.get(param, param)} estimate")
    draws = int(toy.loc[toy["source"] == "empirical", "draws"].max())
    handles = [Line2D([], [], color=colours[e], lw=2, label=e) for e in estimators]
    handles += [
        Line2D([], [], color="0.3", lw=1.8, label="exact (quadrature)"),
        Line2D([], [], color="0.3", ls="", marker="o", label=f"empirical ({draws:,} draws)"),
    ]
    figure_legend(fig, handles)
    fig.suptitle("Toy problem (Mohamed et al. 2020, Figs. 2–3): x ~ N(μ=1, σ=1)")
    return save(fig, path)
