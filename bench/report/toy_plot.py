"""The toy-problem plot: Mohamed et al. (2020) Figs. 2–3, the variance of each single-draw
gradient estimator of E_{x~N(μ,σ²)} f(x; k) against k, at μ = σ = 1."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.report.plots import figure, figure_legend, palette, save

TOY_DRAWS = 20_000
TOY_SEED = 0
# Per cost: the k grid of the exact curves, the k of the empirical markers, the x scale.
TOY_K_GRIDS = {
    "square": (np.linspace(-3.0, 3.0, 60), (-2.5, -1.0, 0.5, 2.0), "linear"),
    "exp": (np.geomspace(0.05, 10.0, 60), (0.1, 0.5, 2.0, 8.0), "log"),
    "cos": (np.geomspace(0.1, 10.0, 60), (0.2, 0.7, 2.0, 7.0), "log"),
}
TOY_SYMBOLS = {"mu": "μ", "sigma": "σ"}
TOY_TITLES = {"square": "f(x) = (x − k)²", "exp": "f(x) = exp(−k x²)", "cos": "f(x) = cos(k x)"}


def plot_toy(path: Path) -> Path:
    """Variance vs k, facets: parameter (μ, σ) × cost. Lines: exact variances by quadrature
    (`toy.exact_moments`); markers: sample variances of TOY_DRAWS single-draw estimates
    (`toy.run_toy`, seed TOY_SEED)."""
    from matplotlib.lines import Line2D

    from bench import toy

    mu = sigma = 1.0
    colours = palette(toy.TOY_ESTIMATORS, "colorblind")
    fig, axes = figure(len(toy.PARAMS), len(toy.COSTS), 3.0)
    for j, cost in enumerate(toy.COSTS):
        grid, marks, scale = TOY_K_GRIDS[cost]
        empirical = {k: toy.run_toy(cost, float(k), mu, sigma, TOY_DRAWS, TOY_SEED) for k in marks}
        for i, param in enumerate(toy.PARAMS):
            ax = axes[i, j]
            top = 0.0
            for estimator in toy.TOY_ESTIMATORS:
                exact = np.array(
                    [
                        toy.exact_moments(cost, float(k), mu, sigma, estimator, param)[1]
                        for k in grid
                    ]
                )
                top = max(top, float(exact.max()))
                ax.plot(grid, exact, color=colours[estimator], lw=1.8)
                sample = [
                    next(
                        r.variance
                        for r in empirical[k]
                        if r.estimator == estimator and r.param == param
                    )
                    for k in marks
                ]
                ax.plot(marks, sample, "o", color=colours[estimator], ms=5, mec="white", mew=0.6)
            ax.set_yscale("log")
            ax.set_ylim(bottom=max(ax.get_ylim()[0], 1e-4 * top))
            ax.set_xscale(scale)
            if i == 0:
                ax.set_title(TOY_TITLES[cost])
            if i == len(toy.PARAMS) - 1:
                ax.set_xlabel("cost parameter k")
            if j == 0:
                ax.set_ylabel(f"variance of ∂F/∂{TOY_SYMBOLS[param]} estimate")
    handles = [Line2D([], [], color=colours[e], lw=2, label=e) for e in toy.TOY_ESTIMATORS]
    handles += [
        Line2D([], [], color="0.3", lw=1.8, label="exact (quadrature)"),
        Line2D([], [], color="0.3", ls="", marker="o", label=f"empirical ({TOY_DRAWS:,} draws)"),
    ]
    figure_legend(fig, handles)
    fig.suptitle("Toy problem (Mohamed et al. 2020, Figs. 2–3): x ~ N(μ=1, σ=1)")
    return save(fig, path)
