"""The look shared by the report's plots: one seaborn theme, a colour per estimator and a marker
per KL mode, figures on the Agg canvas saved without metadata (byte-identical when redrawn), and
the small helpers every plot uses."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

DPI = 120
WIDTH = 8.5  # inches: 1020 px at DPI, legible when a README scales it to ~700 px


def theme() -> dict[str, object]:
    """rcParams of the report's one theme: seaborn whitegrid/notebook, fixed dpi and fonts."""
    import seaborn as sns

    rc = dict(sns.axes_style("whitegrid"))
    rc.update(sns.plotting_context("notebook", font_scale=0.9))
    rc.update(
        {
            "figure.dpi": DPI,
            "savefig.dpi": DPI,
            "font.family": "DejaVu Sans",
            "legend.frameon": False,
            "axes.titlesize": 11,
            "figure.titlesize": 12,
        }
    )
    return rc


def palette(names: Iterable[str], name: str = "tab10") -> dict[str, tuple[float, float, float]]:
    """A fixed colour per name: the palette assigned in sorted-name order."""
    import seaborn as sns

    names = sorted(set(names))
    colours = sns.color_palette(name if len(names) <= 10 else "tab20", len(names))
    return dict(zip(names, colours, strict=True))


class Look:
    """Colour per estimator, marker per KL mode, and series labels: the estimator's name, or
    'estimator K=k' (its colour lighter for smaller K) where one estimator ran with several K."""

    def __init__(self, runs: pd.DataFrame) -> None:
        self.colour = palette(runs["estimator"])
        self.ks = {e: sorted(set(k)) for e, k in runs.groupby("estimator")["k"]}
        kls = sorted(set(runs["kl"]))
        self.marker = {kl: "os^Dv"[i % 5] for i, kl in enumerate(kls)}

    def label(self, estimator: str, k: int) -> str:
        return f"{estimator} K={k}" if len(self.ks[estimator]) > 1 else estimator

    def series_colour(self, estimator: str, k: int) -> tuple[float, ...]:
        base = np.array(self.colour[estimator])
        ks = self.ks[estimator]
        fade = 0.5 * (len(ks) - 1 - ks.index(k)) / max(1, len(ks) - 1)
        return tuple(base + (1.0 - base) * fade)


def figure(nrows: int, ncols: int, row_height: float):
    """A constrained-layout Figure on the Agg canvas (no pyplot state) and a 2-D axes array."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(WIDTH, row_height * nrows + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=DPI, metadata={"Software": None})
    return path


def where(frame: pd.DataFrame, **equal: object) -> pd.DataFrame:
    """Rows of `frame` whose columns equal the given values."""
    mask = np.ones(len(frame), dtype=bool)
    for column, value in equal.items():
        mask &= (frame[column] == value).to_numpy()
    return frame[mask]


def series_of(frame: pd.DataFrame) -> list[tuple[str, int]]:
    """The sorted (estimator, K) pairs present in `frame`: one colour and label each."""
    return sorted({(e, int(k)) for e, k in zip(frame["estimator"], frame["k"], strict=True)})


def series_legend(fig, look: Look, series: Sequence[tuple[str, int]], extra=()) -> None:
    """One figure legend: a colour per (estimator, K) series, then any `extra` handles."""
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], color=look.series_colour(e, k), lw=2.5, label=look.label(e, k))
        for e, k in series
    ]
    figure_legend(fig, handles + list(extra))


def figure_legend(fig, handles: Sequence) -> None:
    """The figure's one legend, in rows below the panels."""
    rows = math.ceil(len(handles) / 5)
    fig.legend(handles=handles, loc="outside lower center", ncol=math.ceil(len(handles) / rows))
