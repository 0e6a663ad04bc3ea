"""The report's shared look: number formats and section titles (tables and plots); for plots, one
seaborn theme, a colour per estimator (shaded by K and β; distinct within each (dataset, model))
and a marker per KL mode, figures on the Agg canvas saved without metadata (byte-identical when
redrawn), legends, axis helpers, and the seed statistics every plot draws."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from bench.report.data import GROUP, format_beta
from bench.report.stats import log_interval, pooled_se

MISSING = "—"


def group_title(key: tuple[str, str]) -> str:
    """'dataset / model': the heading of a summary section and of a plot panel."""
    return f"{key[0]} / {key[1]}"


def sci(x: float) -> str:
    """3 significant figures in scientific notation: 1.23e4, 4.56e-3."""
    if not np.isfinite(x):
        return MISSING
    if x == 0:
        return "0"
    mantissa, exponent = f"{x:.2e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def sig(x: float, digits: int = 3) -> str:
    """`digits` significant figures: positional from 0.01 to 10^digits, scientific outside."""
    if not np.isfinite(x):
        return MISSING
    if x == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(float(f"{x:.{digits - 1}e}"))))
    if not -2 <= magnitude < digits:
        return sci(x)
    return f"{x:.{max(0, digits - 1 - magnitude)}f}"


DPI = 120
WIDTH = 8.5  # inches: 1020 px at DPI, legible when a README scales it to ~700 px
LEGEND_COLUMNS = 5  # at most, in a figure legend
LEGEND_CHARACTER_WIDTH = 0.075  # inches per character of a legend label, a generous average
LEGEND_ENTRY_PADDING = 6  # characters' width of a legend entry's marker and gaps


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


def section_palette(runs: pd.DataFrame) -> dict[str, tuple[float, float, float]]:
    """A colour per estimator, distinct among the estimators of each (dataset, model) section.

    `palette` (tab10 in sorted-name order) when there are at most 10 estimators, or when a
    section has more; else tab10 assigned greedily, sections with most estimators first, each
    estimator taking the first colour no estimator sharing a section with it has (so the largest
    section keeps its sorted-name colours and sections with other estimators reuse them).
    """
    import seaborn as sns

    names = sorted(set(runs["estimator"]))
    sections = sorted(
        (sorted(set(s)) for _, s in runs.groupby(GROUP)["estimator"]), key=lambda s: (-len(s), s)
    )
    if len(names) <= 10 or len(sections[0]) > 10:
        return palette(names)
    index: dict[str, int] = {}
    for section in sections:
        for name in section:
            if name not in index:
                taken = {index.get(o) for s in sections if name in s for o in s}
                free = [i for i in range(10) if i not in taken]
                if not free:
                    return palette(names)
                index[name] = free[0]
    colours = sns.color_palette("tab10", 10)
    return {name: colours[i] for name, i in sorted(index.items())}


Series = tuple[str, int, float]  # (estimator, K, β): one line, colour and label
SERIES: list[str] = ["estimator", "k", "beta"]


class Look:
    """Colour per estimator, marker per KL mode, and series labels: the estimator's name, plus
    'K=k' where it ran with several K and 'β=b' where it ran with several β (or only with a
    β other than 1); within an estimator, smaller (K, β) are drawn lighter."""

    def __init__(self, runs: pd.DataFrame) -> None:
        self.colour = section_palette(runs)
        self.ks = {e: sorted(set(k)) for e, k in runs.groupby("estimator")["k"]}
        self.betas = {e: sorted(set(b)) for e, b in runs.groupby("estimator")["beta"]}
        self.shades = {
            e: sorted(set(zip(s["k"], s["beta"], strict=True)))
            for e, s in runs.groupby("estimator")
        }
        kls = sorted(set(runs["kl"]))
        self.marker = {kl: "os^Dv"[i % 5] for i, kl in enumerate(kls)}

    def label(self, estimator: str, k: int | None, beta: float | None = 1.0) -> str:
        """'estimator', plus 'K=k' and 'β=b' where they vary; None leaves that part out."""
        parts = [estimator]
        if k is not None and len(self.ks[estimator]) > 1:
            parts.append(f"K={k}")
        if beta is not None and self.betas[estimator] != [1.0]:
            parts.append(f"β={format_beta(beta)}")
        return " ".join(parts)

    def series_colour(self, estimator: str, k: int, beta: float | None = 1.0) -> tuple[float, ...]:
        """The estimator's colour, lighter for smaller (K, β); beta=None: the darkest at K."""
        base = np.array(self.colour[estimator])
        shades = self.shades[estimator]
        at_k = [i for i, (k_, b) in enumerate(shades) if k_ == k and beta in (None, b)]
        index = at_k[-1] if at_k else len(shades) - 1
        fade = 0.5 * (len(shades) - 1 - index) / max(1, len(shades) - 1)
        return tuple(base + (1.0 - base) * fade)


def figure(nrows: int, ncols: int, row_height: float | Sequence[float]):
    """A constrained-layout Figure on the Agg canvas (no pyplot state) and a 2-D axes array;
    `row_height` in inches, one for every row or one per row."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    heights = [row_height] * nrows if np.ndim(row_height) == 0 else list(row_height)
    fig = Figure(figsize=(WIDTH, sum(heights) + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False, height_ratios=heights)


def save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=DPI, metadata={"Software": None})
    return path


def where(frame: pd.DataFrame, **equal: object) -> pd.DataFrame:
    """Rows of `frame` whose columns equal the given values."""
    mask = np.ones(len(frame), dtype=bool)
    for column, value in equal.items():
        mask &= (frame[column] == value).to_numpy()
    return frame[mask]


def variance_interval(wide: pd.DataFrame, by: list[str], metric: str) -> pd.DataFrame:
    """Per `by` group of `wide` (a row per configuration, a column per metric): the mean over
    seeds of the gradient variance `metric` (grad_var_G) and its 95% interval `low`, `high`
    (`stats.log_interval` with the mean's standard error √(Σ se²)/n from the grad_var_se_G
    column; NaN where a seed lacks it, or runs.csv predates it)."""
    values = wide.dropna(subset=[metric])
    se = f"grad_var_se_{metric.removeprefix('grad_var_')}"
    errors = values[se] if se in values else pd.Series(np.nan, index=values.index)
    groups = values.assign(_se=errors).groupby(by, sort=True)
    result = pd.DataFrame({"mean": groups[metric].mean(), "se": groups["_se"].agg(pooled_se)})
    result["low"], result["high"] = log_interval(result["mean"], result["se"])
    return result.drop(columns="se")


def error_bars(
    frame: pd.DataFrame, value: str = "mean", low: str = "low", high: str = "high"
) -> np.ndarray:
    """[below, above]: the distances from column `value` to columns `low` and `high`, as
    matplotlib's errorbar takes them."""
    return np.array([frame[value] - frame[low], frame[high] - frame[value]])


def series_of(frame: pd.DataFrame) -> list[Series]:
    """The sorted (estimator, K, β) triples present in `frame`: one colour and label each."""
    columns = (frame["estimator"], frame["k"], frame["beta"])
    return sorted({(e, int(k), float(b)) for e, k, b in zip(*columns, strict=True)})


def series_legend(fig, look: Look, frame: pd.DataFrame, extra=()) -> None:
    """One figure legend: a colour per (estimator, K, β) series of `frame`, by (dataset, model)
    section (see `section_legend`), then any `extra` handles."""
    from matplotlib.lines import Line2D

    sections = {
        key: [
            Line2D([], [], color=look.series_colour(*s), lw=2.5, label=look.label(*s))
            for s in series_of(group)
        ]
        for key, group in frame.groupby(GROUP, sort=True)
    }
    section_legend(fig, sections, extra)


def section_legend(fig, sections: dict[tuple[str, str], Sequence], extra: Sequence = ()) -> None:
    """The figure's one legend below the panels, `sections` keyed by (dataset, model): with one
    section its handles then `extra` (see `figure_legend`); with several, each section's handles
    in whole columns under its title in bold (the model, with the dataset where several), as
    colours repeat across sections; `extra` after the last one."""
    from matplotlib.lines import Line2D

    if len(sections) <= 1:
        figure_legend(fig, [h for handles in sections.values() for h in handles] + list(extra))
        return
    several = len({dataset for dataset, _ in sections}) > 1
    titles = [f"{d} / {m}" if several else m for d, m in sections]
    blocks = [
        [Line2D([], [], ls="", label=title), *handles]
        for title, handles in zip(titles, sections.values(), strict=True)
    ]
    rows = _legend_rows(blocks)

    def blank() -> Line2D:
        return Line2D([], [], ls="", label=" ")

    if extra and len(extra) < -len(blocks[-1]) % rows:  # room below the last section, spaced
        blocks[-1] += [blank(), *extra]
    elif extra:
        blocks.append(list(extra))
        rows = _legend_rows(blocks)
    handles = []
    for block in blocks:
        handles += block + [blank() for _ in range(-len(block) % rows)]
    _fitted_legend(fig, handles, ncol=len(handles) // rows, bold=titles)


def _legend_rows(blocks: Sequence[Sequence]) -> int:
    """The fewest legend rows that fit `blocks`, each starting a column, in LEGEND_COLUMNS; with
    more blocks than that, one column each (as many rows as the longest block)."""
    longest = max(len(b) for b in blocks)
    rows = 1
    while sum(math.ceil(len(b) / rows) for b in blocks) > LEGEND_COLUMNS and rows < longest:
        rows += 1
    return rows


def figure_legend(fig, handles: Sequence) -> None:
    """The figure's one legend, in rows below the panels: as many columns (at most
    LEGEND_COLUMNS) as labels of the longest one's length fit across the figure."""
    longest = max(len(handle.get_label()) for handle in handles)
    fitting = max(int(WIDTH / ((longest + LEGEND_ENTRY_PADDING) * LEGEND_CHARACTER_WIDTH)), 1)
    rows = math.ceil(len(handles) / min(fitting, LEGEND_COLUMNS))
    _fitted_legend(fig, handles, ncol=math.ceil(len(handles) / rows))


def _fitted_legend(fig, handles: Sequence, ncol: int, bold: Sequence[str] = ()):
    """A legend below the panels in `ncol` columns, the labels in `bold` in bold, its font made
    smaller until it is no wider than the figure (a legend's paddings and markers scale with its
    font, so its width does too): columns under several sections' titles can outgrow the figure,
    and the saved image would cut them. The bold labels are set before measuring, as they are
    wider."""
    import matplotlib as mpl
    from matplotlib.font_manager import FontProperties

    def legend_at(size: float):
        legend = fig.legend(handles=handles, loc="outside lower center", ncol=ncol, fontsize=size)
        for text in legend.get_texts():
            if text.get_text() in bold:
                text.set_fontweight("bold")
        return legend

    size = FontProperties(size=mpl.rcParams["legend.fontsize"]).get_size_in_points()
    legend = legend_at(size)
    for _ in range(3):
        width = legend.get_window_extent(fig.canvas.get_renderer()).width
        if width <= fig.bbox.width:
            break
        size *= 0.98 * fig.bbox.width / width
        legend.remove()
        legend = legend_at(size)
    return legend


def log_limits(set_limits, values: pd.Series, below: float, above: float) -> tuple[float, float]:
    """Set log-axis limits around `values` with margins (fractions of the span in decades)."""
    low, high = math.log10(values.min()), math.log10(values.max())
    span = max(high - low, 0.3)
    limits = (low - below * span, high + above * span)
    set_limits(10.0 ** limits[0], 10.0 ** limits[1])
    return limits


def tick_label(x: float, _position: object = None) -> str:
    """Short tick labels: 0.05, 300, 2e-3, 1.5e6."""
    if x == 0 or 1e-2 <= abs(x) < 1e4:
        return f"{x:g}"
    mantissa, exponent = f"{x:.1e}".split("e")
    return f"{float(mantissa):g}e{int(exponent)}"


def log_ticks(axis, low: float, high: float) -> None:
    """On a log axis spanning under two decades, fixed 1-2-5 (or finer) ticks with short labels."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator

    if not (0 < low <= high) or high / low >= 100:
        return
    decades = range(math.floor(math.log10(low)) - 1, math.ceil(math.log10(high)) + 1)
    for mantissas in ((1, 2, 5), (1, 1.5, 2, 3, 5, 7), (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8)):
        ticks = [m * 10.0**e for e in decades for m in mantissas]
        inside = [t for t in ticks if low / 1.3 <= t <= high * 1.3]
        if len(inside) >= 3:
            break
    axis.set_major_locator(FixedLocator(ticks))
    axis.set_major_formatter(FuncFormatter(tick_label))
    axis.set_minor_locator(NullLocator())
    axis.set_minor_formatter(NullFormatter())


def symlog_x(ax, values: np.ndarray) -> None:
    """Log-like x axis that keeps 0: linear below the smallest positive value's decade."""
    if not values.size:
        return
    positive = values[values > 0]
    threshold = 10.0 ** math.floor(math.log10(positive.min())) if positive.size else 1.0
    ax.set_xscale("symlog", linthresh=threshold, linscale=0.4)
    ax.set_xlim(0, max(float(values.max()), threshold) * 1.15)
