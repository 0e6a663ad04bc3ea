"""Paper protocols beside their published figures.

A run follows a paper protocol when its protocol key names one (`paper=disarm_paper`, set by
the suites of bench.suites.PAPER_PROTOCOLS). Per protocol the report gives a table: our final
test bound (mean ± the 95% Student-t half-width over seeds, at the last step reached), the steps
reached against the protocol's, the published figure (bench/published.csv) and ours − published
with our half-width; it says in words when our runs stopped early and which settings differ from
the protocol as cited (bench/paper_protocols.csv). `paper_plot` draws the learning curves with
the published endpoints marked. Reads the results and the two data files only (no torch).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from bench.report.data import CONFIG, Results, parse_protocol
from bench.report.stats import t_interval
from bench.report.style import Look, figure, figure_legend, save, symlog_x

PUBLISHED_COLUMNS = (
    "protocol",
    "model",
    "estimator",
    "kl",
    "k",
    "metric",
    "value",
    "source",
    "setting",
    "checked",
)
PROTOCOL_COLUMNS = ("protocol", "setting", "value", "source")
ROW = ["dataset", "model", "estimator", "kl", "k", "protocol"]
METRIC = "nll_test"  # the test bound every protocol reports (−log p(x) by importance sampling)
SUPERSCRIPT = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")


@dataclass(frozen=True)
class PaperProtocol:
    """A protocol's settings as cited, in the protocol key's text (`steps` → '1000000')."""

    name: str
    settings: dict[str, str]
    sources: dict[str, str]

    @property
    def steps(self) -> int:
        return int(self.settings["steps"])


def _read_csv(name: str, columns: tuple[str, ...]) -> list[dict[str, str]]:
    """Rows of the package data file `name`; ValueError when its header is not `columns` or a
    row lacks a cell."""
    text = resources.files("bench").joinpath(name).read_text(encoding="utf-8")
    reader = csv.DictReader(text.splitlines())
    if tuple(reader.fieldnames or ()) != columns:
        raise ValueError(f"bench/{name}: header {reader.fieldnames}, expected {list(columns)}")
    rows = list(reader)
    for number, row in enumerate(rows, start=2):
        empty = [column for column in columns if not (row.get(column) or "").strip()]
        if empty:
            raise ValueError(f"bench/{name} line {number}: empty {', '.join(empty)}")
    return rows


def load_protocols() -> dict[str, PaperProtocol]:
    """bench/paper_protocols.csv: each protocol's cited settings, each with its source."""
    settings: dict[str, dict[str, str]] = {}
    sources: dict[str, dict[str, str]] = {}
    for row in _read_csv("paper_protocols.csv", PROTOCOL_COLUMNS):
        settings.setdefault(row["protocol"], {})[row["setting"]] = row["value"]
        sources.setdefault(row["protocol"], {})[row["setting"]] = row["source"]
    return {name: PaperProtocol(name, settings[name], sources[name]) for name in settings}


def load_published() -> pd.DataFrame:
    """bench/published.csv: one published figure a row, with its source (paper and table or
    figure), the setting it was measured in and how it was checked; `k` and `value` numbers."""
    frame = pd.DataFrame(_read_csv("published.csv", PUBLISHED_COLUMNS))
    frame["k"] = frame["k"].astype(int)
    frame["value"] = frame["value"].astype(float)
    return frame


def format_steps(steps: int) -> str:
    """10⁶ for a power of ten from 1,000 on, else with thousands separators."""
    exponent = math.log10(steps) if steps > 0 else 0.0
    if exponent >= 3 and exponent == int(exponent):
        return "10" + str(int(exponent)).translate(SUPERSCRIPT)
    return f"{steps:,}"


def setting_differences(dataset: str, protocol: str, cited: PaperProtocol) -> list[str]:
    """Where a run's settings differ from the protocol as cited, in words: the data set (a key
    column) and every setting of the protocol key but `steps` (said apart, as steps reached). A
    cited setting absent from the key is at the benchmark's default."""
    ours = {"dataset": dataset, **parse_protocol(protocol)}
    differences = []
    for name, value in cited.settings.items():
        if name != "steps" and ours.get(name) != value:
            differences.append(f"{name} {ours.get(name, 'at its default')} (cited {value})")
    extra = sorted(set(ours) - set(cited.settings))
    differences += [f"{name} {ours[name]} (not set by the protocol)" for name in extra]
    return differences


def paper_rows(results: Results, protocols: dict[str, PaperProtocol]) -> pd.DataFrame:
    """One row per (data set, model, estimator, KL, K, protocol key) of runs that follow a paper
    protocol: seeds, the fewest steps any of its seeds reached, our final METRIC mean ± half-width
    over the finished seeds, the published figure and the difference."""
    status = results.status.reset_index()
    status["paper"] = status["protocol"].map(lambda text: parse_protocol(text).get("paper", ""))
    status = status[status["paper"].isin(list(protocols)) & (status["status"] != "running")]
    if status.empty:
        return pd.DataFrame()
    published = load_published()
    finals = results.finals
    rows = []
    for key, group in status.groupby(ROW, sort=True):
        dataset, model, estimator, kl, k, protocol = key
        paper = group["paper"].iloc[0]
        configs = pd.MultiIndex.from_frame(group[CONFIG])
        values = finals.loc[finals.index.isin(configs)].get(METRIC, pd.Series(dtype=float))
        mean, half = t_interval(values)
        match = published[
            (published["protocol"] == paper)
            & (published["model"] == model)
            & (published["estimator"] == estimator)
            & (published["kl"] == kl)
            & (published["k"] == k)
            & (published["metric"] == METRIC)
        ]
        figure_ = float(match["value"].iloc[0]) if len(match) else np.nan
        rows.append(
            {
                "paper": paper,
                "dataset": dataset,
                "model": model,
                "estimator": estimator,
                "kl": kl,
                "k": int(k),
                "protocol": protocol,
                "seeds": len(group),
                "diverged": int((group["status"] == "diverged").sum()),
                "steps_reached": int(group["last_step"].min()),
                "steps_protocol": protocols[paper].steps,
                "ours": mean,
                "half_width": half,
                "published": figure_,
                "source": match["source"].iloc[0] if len(match) else "",
                "checked": match["checked"].iloc[0] if len(match) else "",
                "difference": mean - figure_,
            }
        )
    return pd.DataFrame(rows)


def _number(value: float, half: float = np.nan) -> str:
    if not np.isfinite(value):
        return "—"
    return f"{value:.2f}" + (f" ± {half:.2f}" if np.isfinite(half) else "")


def stopped_early(rows: pd.DataFrame, steps: int) -> str:
    """The bold note naming each (data set, model) of a protocol's rows (paper_rows) whose runs
    stopped before the protocol's `steps`, at the fewest steps any of its runs reached; "" when
    every run reached them. Per model: one model's runs may be finished and another's not."""
    short = rows[rows["steps_reached"] < steps]
    if short.empty:
        return ""
    reached = short.groupby(["dataset", "model"], sort=True)["steps_reached"].min()
    where = "; ".join(f"{data} / {model} stopped at {n:,}" for (data, model), n in reached.items())
    return (
        f"**Stopped early**: {where} of {format_steps(steps)} steps (the protocol's); the"
        " published figures are at the protocol's end, so for those runs the difference says"
        " nothing about the estimators."
    )


def paper_markdown(results: Results) -> list[str]:
    """The report's section on paper protocols (empty when no run follows one)."""
    protocols = load_protocols()
    table = paper_rows(results, protocols)
    if table.empty:
        return []
    lines = [
        "## Paper protocols",
        "",
        f"Our test bound (`{METRIC}`, nats: −log p(x) by importance sampling with the protocol's"
        " samples; mean ± the 95% Student-t half-width over seeds) at the last step reached,"
        " against the published figure (bench/published.csv, with its source); the difference is"
        " ours − published ± our half-width (the published figures carry no interval).",
        "",
    ]
    for paper, rows in table.groupby("paper", sort=True):
        cited = protocols[paper]
        lines += [f"### {paper}", "", f"Protocol as cited: {cited.sources['dataset']}.", ""]
        note = stopped_early(rows, cited.steps)
        if note:
            lines.append(note)
        for protocol, group in rows.groupby("protocol", sort=True):
            differences = setting_differences(group["dataset"].iloc[0], protocol, cited)
            if differences:
                lines.append(f"**Settings differ** from the protocol: {'; '.join(differences)}.")
        lines += [
            "",
            "| dataset | model | estimator | KL | K | seeds | steps reached | ours (nats)"
            " | published | ours − published |",
            "| :--- | :--- | :--- | :--- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in rows.itertuples():
            steps = f"{r.steps_reached:,} of {format_steps(r.steps_protocol)}"
            seeds = f"{r.seeds}" + (f" ({r.diverged} diverged)" if r.diverged else "")
            lines.append(
                f"| {r.dataset} | {r.model} | {r.estimator} | {r.kl} | {r.k} | {seeds} | {steps}"
                f" | {_number(r.ours, r.half_width)} | {_number(r.published)}"
                f" | {_number(r.difference, r.half_width)} |"
            )
        if rows["published"].isna().all():
            lines += ["", "No published figure of this protocol is on file (bench/published.csv)."]
        sources = sorted(
            {f"{s} ({c})" for s, c in zip(rows["source"], rows["checked"], strict=True) if s}
        )
        if sources:
            lines += ["", f"Published figures: {'; '.join(sources)}."]
        lines += ["", f"![learning curves of {paper}](plots/paper_{paper}.png)", ""]
    return lines


def series_keys(runs: pd.DataFrame) -> list[tuple[str, str, int]]:
    """The (estimator, KL, K) of a protocol's runs, each once: one legend entry and one colour in
    every model's panel, although a model whose runs stopped early carries another protocol key
    (steps=...)."""
    return sorted(set(zip(runs["estimator"], runs["kl"], runs["k"], strict=True)))


def paper_plot(results: Results, paper: str, look: Look, path: Path) -> Path | None:
    """Test ELBO (as −ELBO, nats) against steps for each estimator and K of `paper`'s runs, mean
    over seeds, one panel per model, in the report's colours (`look`); our final bound as a dot
    at the last step reached and the published figure as a star at the protocol's last step.
    None when no run follows `paper`."""
    from matplotlib.lines import Line2D

    protocols = load_protocols()
    runs = results.primary
    papers = runs["protocol"].map(lambda text: parse_protocol(text).get("paper", ""))
    runs = runs[papers == paper]
    if runs.empty:
        return None
    published = load_published()
    published = published[(published["protocol"] == paper) & (published["metric"] == METRIC)]
    models = sorted(set(runs["model"]))
    fig, axes = figure(1, len(models), 3.2)
    series = ["estimator", "kl", "k", "protocol"]
    colours = {(e, kl, k): look.series_colour(e, k) for e, kl, k in series_keys(runs)}
    steps = [protocols[paper].steps]
    for ax, model in zip(axes[0], models, strict=True):
        frame = runs[runs["model"] == model]
        for key, group in frame.groupby(series, sort=True):
            estimator, kl, k, _ = key
            colour = colours[(estimator, kl, k)]
            curve = group[group["metric"] == "elbo_test"].groupby("step")["value"].mean()
            ax.plot(curve.index, -curve.values, color=colour)
            final = group[group["metric"] == METRIC]
            if len(final):
                ax.plot(final["step"].max(), final["value"].mean(), "o", color=colour)
            figure_ = published[
                (published["model"] == model)
                & (published["estimator"] == estimator)
                & (published["kl"] == kl)
                & (published["k"] == k)
            ]
            if len(figure_):
                ax.plot(steps[0], figure_["value"].iloc[0], "*", color=colour, markersize=11)
            steps.extend(curve.index)
        symlog_x(ax, np.asarray(steps, dtype=float))
        ax.set_title(f"{paper}: {model}")
        ax.set_xlabel("step")
        ax.set_ylabel("−ELBO (test), nats")
    handles = [
        Line2D([], [], color=colour, label=f"{estimator} {kl} K={k}")
        for (estimator, kl, k), colour in colours.items()
    ]
    marker = {"color": "grey", "linestyle": ""}
    handles += [
        Line2D([], [], marker="o", label="our final bound", **marker),
        Line2D([], [], marker="*", markersize=11, label="published bound", **marker),
    ]
    figure_legend(fig, handles)
    return save(fig, path)
