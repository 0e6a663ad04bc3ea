"""runs.csv → summary.md tables and seaborn plots (`python -m bench report --out DIR`).

Reads DIR/runs.csv (and DIR/gpu/runs.csv when present) in the long format the harness appends,
`dataset, model, estimator, kl, k, device, seed, step, metric, value`, plus DIR/env.json, and
writes DIR/summary.md and DIR/plots/*.png. Nothing here trains or measures: the report can be
regenerated at any time, and two runs on the same files give byte-identical output (fixed sort
orders, no timestamps, PNGs saved without software metadata).

A configuration is (dataset, model, estimator, kl, k, device, seed). It is *finished* with a
`run_complete` row, *diverged* with a `diverged` row (its later metrics are absent), and
*running* otherwise; running configurations are left out. "Final" means the last step at which a
finished configuration has the metric. Quality and variance figures of a table row come from its
cpu runs (the device of a row that ran elsewhere only); throughput has a column per device.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

REQUIRED_COLUMNS: tuple[str, ...] = (
    "dataset",
    "model",
    "estimator",
    "kl",
    "k",
    "device",
    "seed",
    "step",
    "metric",
    "value",
)
CONFIG: list[str] = ["dataset", "model", "estimator", "kl", "k", "device", "seed"]
ROW: list[str] = ["dataset", "model", "estimator", "kl", "k"]  # one table row: seeds pooled
GROUP: list[str] = ["dataset", "model"]  # one table / one facet row per (dataset, model)
INTEGER_COLUMNS = ("k", "seed", "step")
DEVICES: tuple[str, ...] = ("cpu", "cuda")  # always given a throughput column ("—" if absent)
DIVERGED = "diverged"
COMPLETE = "run_complete"
REFERENCE = "reparam"  # relative variances are against this estimator

PLOT_NAMES: tuple[str, ...] = (
    "grad_var_encoder",
    "elbo_test",
    "variance_cost",
    "throughput",
    "kl_modes",
    "toy_variance",
)
DPI = 120
WIDTH = 8.5  # inches: 1020 px at DPI, legible when a README scales it to ~700 px
TOY_DRAWS = 20_000
TOY_SEED = 0
MISSING = "—"
NO_RUNS = "no runs.csv in {out}: run `make bench` or `python -m bench run ...` first"


class NoRunsError(FileNotFoundError):
    """DIR/runs.csv is absent or holds no measurements."""


# ------------------------------------------------------------------------------------ loading


def _read_one(path: Path) -> pd.DataFrame:
    """One runs.csv as strings, columns validated; a zero-byte file gives an empty frame."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except pd.errors.EmptyDataError:
        return pd.DataFrame(columns=list(REQUIRED_COLUMNS))
    except pd.errors.ParserError as error:
        first_line = str(error).strip().splitlines()[0]
        raise ValueError(f"{path} is not a readable CSV: {first_line}") from error
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{path} lacks column(s) {', '.join(missing)}; expected {', '.join(REQUIRED_COLUMNS)}"
        )
    return frame[list(REQUIRED_COLUMNS)]


def load_runs(out_dir: Path) -> pd.DataFrame:
    """DIR/runs.csv and DIR/gpu/runs.csv (if present), concatenated, typed and de-duplicated.

    Raises NoRunsError (a FileNotFoundError) when DIR/runs.csv is absent, and ValueError naming
    the missing columns (or the bad values) of a malformed file. Rows with empty key fields (a
    line cut short while the harness was writing) are dropped; a non-finite `value` is kept as
    NaN and treated as absent. When a measurement repeats (a re-run), the row written last wins.
    """
    out_dir = Path(out_dir)
    path = out_dir / "runs.csv"
    if not path.is_file():
        raise NoRunsError(f"no runs.csv in {out_dir}")
    paths = [path] + [p for p in [out_dir / "gpu" / "runs.csv"] if p.is_file()]
    frame = pd.concat([_read_one(p) for p in paths], ignore_index=True)
    frame = frame[frame["metric"] != "metric"]  # a header repeated by a later append

    keys = [c for c in REQUIRED_COLUMNS if c != "value"]
    cut = frame[keys].isna().any(axis=1)
    if cut.any():
        log.warning("dropping %d incomplete row(s) of %s", int(cut.sum()), path)
        frame = frame[~cut]
    frame = frame.copy()
    for column in keys:
        frame[column] = frame[column].str.strip()
    for column in INTEGER_COLUMNS:
        numbers = pd.to_numeric(frame[column], errors="coerce")
        bad = numbers.isna() | (numbers != numbers.round())
        if bad.any():
            example = frame.loc[bad, column].iloc[0]
            raise ValueError(f"{path}: column {column} must hold integers, found {example!r}")
        frame[column] = numbers.astype("int64")
    value = pd.to_numeric(frame["value"], errors="coerce")
    frame["value"] = value.where(np.isfinite(value))

    frame = frame.drop_duplicates(subset=CONFIG + ["step", "metric"], keep="last")
    frame = frame.sort_values(CONFIG + ["step", "metric"], kind="mergesort")
    return frame.reset_index(drop=True)


def _load_env(path: Path) -> dict[str, object]:
    """env.json as a dict; {} when absent or unreadable (the report does not depend on it)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


# --------------------------------------------------------------------------------- statistics


def _status(runs: pd.DataFrame) -> pd.DataFrame:
    """Per configuration: status (finished / diverged / running) and the divergence step."""
    configs = runs.groupby(CONFIG, sort=True)["step"].max().rename("last_step").to_frame()
    diverged = runs[runs["metric"] == DIVERGED].groupby(CONFIG)["step"].min()
    complete = runs[runs["metric"] == COMPLETE].groupby(CONFIG)["step"].max()
    # Files without any run_complete row (an older harness) count every configuration finished.
    any_complete = (runs["metric"] == COMPLETE).any()
    configs["diverged_step"] = diverged.reindex(configs.index)
    finished = configs.index.isin(complete.index) if any_complete else True
    configs["status"] = np.where(
        configs["diverged_step"].notna(), "diverged", np.where(finished, "finished", "running")
    )
    return configs


def _finals(runs: pd.DataFrame, status: pd.DataFrame) -> pd.DataFrame:
    """Per finished configuration, each metric's value at the last step where it is present."""
    finished = status.index[status["status"] == "finished"]
    present = runs[runs["value"].notna()].set_index(CONFIG)
    present = present[present.index.isin(finished)].reset_index()
    if present.empty:
        return pd.DataFrame(index=pd.MultiIndex.from_tuples([], names=CONFIG))
    last = present.loc[present.groupby(CONFIG + ["metric"])["step"].idxmax()]
    return last.set_index(CONFIG + ["metric"])["value"].unstack("metric").sort_index()


def _primary_device(devices: Iterable[str]) -> str:
    """The device whose runs stand for a table row: cpu when present, else the first by name."""
    devices = sorted(set(devices))
    return "cpu" if "cpu" in devices else devices[0]


def _device_columns(runs: pd.DataFrame) -> list[str]:
    return list(DEVICES) + sorted(set(runs["device"]) - set(DEVICES))


def _mean(frame: pd.DataFrame, column: str) -> float:
    return (
        float(frame[column].mean()) if column in frame and frame[column].notna().any() else np.nan
    )


def _std(frame: pd.DataFrame, column: str) -> float:
    values = frame[column].dropna() if column in frame else pd.Series(dtype=float)
    return float(values.std(ddof=1)) if len(values) > 1 else np.nan


def summary_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset, model, estimator, kl, k): seed statistics of final metrics.

    Columns: the row key; `device` (whose runs give the quality figures); `seeds`, `finished`,
    `diverged` (counts) and `divergence` (e.g. "diverged at step 300"); `elbo_test_mean/std`,
    `nll_test_mean/std`, `nll_samples`; final `grad_var_encoder`, `grad_var_decoder`,
    `snr_encoder`, `grad_seconds`, `work_var_encoder`, `grad_draws` (means over finished seeds);
    `grad_var_encoder_rel`, `grad_var_decoder_rel` (÷ reparam with the same KL, else analytic);
    `throughput_<device>` for cpu, cuda and any other device present. Sorted within each
    (dataset, model) so the first row is the estimator to use: rows without divergence first,
    then by final test ELBO, highest first.
    """
    status = _status(runs)
    finals = _finals(runs, status)
    devices = _device_columns(runs)
    records = []
    for key, configs in status[status["status"] != "running"].groupby(ROW, sort=True):
        configs = configs.reset_index()
        device = _primary_device(configs["device"])
        own = configs[configs["device"] == device]
        done = own[own["status"] == "finished"]
        final = finals.loc[finals.index.isin(pd.MultiIndex.from_frame(done[CONFIG]))]
        broken = own[own["status"] == "diverged"]
        record: dict[str, object] = dict(zip(ROW, key, strict=True))
        record.update(
            device=device,
            seeds=len(own),
            finished=len(done),
            diverged=len(broken),
            divergence=_divergence_text(broken, len(own)),
            elbo_test_mean=_mean(final, "elbo_test"),
            elbo_test_std=_std(final, "elbo_test"),
            nll_test_mean=_mean(final, "nll_test"),
            nll_test_std=_std(final, "nll_test"),
        )
        for metric in (
            "nll_samples",
            "grad_var_encoder",
            "grad_var_decoder",
            "snr_encoder",
            "grad_seconds",
            "work_var_encoder",
            "grad_draws",
        ):
            record[metric] = _mean(final, metric)
        for name in devices:
            on_device = configs[(configs["device"] == name) & (configs["status"] == "finished")]
            rows = finals.loc[finals.index.isin(pd.MultiIndex.from_frame(on_device[CONFIG]))]
            record[f"throughput_{name}"] = _mean(rows, "throughput")
        records.append(record)
    if not records:
        return pd.DataFrame(columns=ROW)
    table = pd.DataFrame.from_records(records)
    for part in ("encoder", "decoder"):
        table[f"grad_var_{part}_rel"] = _relative(table, f"grad_var_{part}")
    table["_healthy"] = table["diverged"] == 0
    table = table.sort_values(
        GROUP + ["_healthy", "elbo_test_mean", "estimator", "kl", "k"],
        ascending=[True, True, False, False, True, True, True],
        na_position="last",
        kind="mergesort",
    )
    return table.drop(columns="_healthy").reset_index(drop=True)


def _divergence_text(broken: pd.DataFrame, seeds: int) -> str:
    """'' if no seed diverged; 'diverged at step N' (all seeds), else which seeds and where."""
    if broken.empty:
        return ""
    steps = sorted({int(s) for s in broken["diverged_step"]})
    if len(broken) == seeds:
        where = ", ".join(str(s) for s in steps)
        return f"diverged at step{'s' if len(steps) > 1 else ''} {where}"
    parts = [
        f"seed {int(r.seed)} diverged at step {int(r.diverged_step)}"
        for r in broken.sort_values("seed").itertuples()
    ]
    return "; ".join(parts)


def _relative(table: pd.DataFrame, column: str) -> pd.Series:
    """column ÷ reparam's in the same (dataset, model): same KL mode, else analytic; same K, else
    reparam's smallest K. NaN where no such reparam row has a finite positive value."""
    reference = {
        (r.dataset, r.model, r.kl, r.k): getattr(r, column)
        for r in table[table["estimator"] == REFERENCE].itertuples()
        if np.isfinite(getattr(r, column)) and getattr(r, column) > 0
    }
    ratios = []
    for row in table.itertuples():
        base = np.nan
        for kl in dict.fromkeys([row.kl, "analytic"]):
            ks = sorted(
                k for d, m, mode, k in reference if (d, m, mode) == (row.dataset, row.model, kl)
            )
            if ks:
                base = reference[(row.dataset, row.model, kl, row.k if row.k in ks else ks[0])]
                break
        ratios.append(getattr(row, column) / base)
    return pd.Series(ratios, index=table.index, dtype=float)


# ------------------------------------------------------------------------------------ markdown


def _sci(x: float) -> str:
    """3 significant figures in scientific notation: 1.23e4, 4.56e-3."""
    if not np.isfinite(x):
        return MISSING
    if x == 0:
        return "0"
    mantissa, exponent = f"{x:.2e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def _sig(x: float, digits: int = 3) -> str:
    """`digits` significant figures: positional from 0.01 to 10^digits, scientific outside."""
    if not np.isfinite(x):
        return MISSING
    if x == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(float(f"{x:.{digits - 1}e}"))))
    if not -2 <= magnitude < digits:
        return _sci(x)
    return f"{x:.{max(0, digits - 1 - magnitude)}f}"


def _count(x: float) -> str:
    """A rate to 3 significant figures with thousands separators: 12,300."""
    if not np.isfinite(x):
        return MISSING
    if abs(x) < 1000:
        return _sig(x)
    return f"{round(x, 2 - math.floor(math.log10(abs(x)))):,.0f}"


def _mean_std(mean: float, std: float) -> str:
    if not np.isfinite(mean):
        return MISSING
    return f"{mean:.1f} ± {std:.1f}" if np.isfinite(std) else f"{mean:.1f}"


def _markdown(header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool]) -> str:
    """A GitHub-flavoured markdown table; `right` aligns numeric columns to the right."""
    rule = ["---:" if r else ":---" for r in right]
    lines = [header, rule, *rows]
    return "\n".join(
        "| " + " | ".join(c.replace("|", "\\|") for c in line) + " |" for line in lines
    )


def _env_line(env: dict[str, object], device: str) -> str:
    parts = []
    name = env.get("device_name") or env.get("cpu")
    if name:
        parts.append(str(name))
    if env.get("torch"):
        parts.append(f"torch {env['torch']}")
    if env.get("threads"):
        parts.append(f"{env['threads']} threads")
    if env.get("git_commit"):
        commit, _, suffix = str(env["git_commit"]).partition("-")  # e.g. 037e26b-dirty
        parts.append(f"commit {commit[:12]}{'-' + suffix if suffix else ''}")
    if env.get("suite"):
        parts.append(f"suite {env['suite']}")
    return f"Environment ({device}): " + ("; ".join(parts) if parts else "no env.json")


def _format_group(table: pd.DataFrame, envs: dict[str, dict[str, object]]) -> list[str]:
    """Markdown lines for one (dataset, model): headline, table, notes, environment."""
    vary_k = table["k"].nunique() > 1
    devices = [c.removeprefix("throughput_") for c in table.columns if c.startswith("throughput_")]
    nll_k = sorted({int(k) for k in table["nll_samples"].dropna()})
    nll_header = "test NLL (nats" + (f", k={nll_k[0]})" if len(nll_k) == 1 else ")")
    header = ["estimator", "KL"] + (["K"] if vary_k else [])
    header += [
        "test ELBO (nats)",
        nll_header,
        "enc. grad var (nats²)",
        "enc. var ÷ reparam",
        "dec. grad var (nats²)",
        "dec. var ÷ reparam",
        "enc. SNR",
        *[f"throughput {d} (examples/s)" for d in devices],
        "time per gradient (s)",
        "enc. var × time (nats²·s)",
    ]
    rows = []
    for r in table.itertuples():
        row = [f"**{r.estimator}**" if not rows else r.estimator, r.kl]
        row += [str(r.k)] if vary_k else []
        if r.finished == 0:
            row += [r.divergence] + [MISSING] * (len(header) - len(row) - 1)
            rows.append(row)
            continue
        elbo = _mean_std(r.elbo_test_mean, r.elbo_test_std)
        if r.diverged:
            elbo += f" ({r.finished} of {r.seeds} seeds; {r.divergence})"
        nll = _mean_std(r.nll_test_mean, r.nll_test_std)
        if len(nll_k) > 1 and np.isfinite(r.nll_samples):
            nll += f" (k={int(r.nll_samples)})"
        row += [
            elbo,
            nll,
            _sci(r.grad_var_encoder),
            _sig(r.grad_var_encoder_rel),
            _sci(r.grad_var_decoder),
            _sig(r.grad_var_decoder_rel),
            _sig(r.snr_encoder),
            *[_count(getattr(r, f"throughput_{d}")) for d in devices],
            _sci(r.grad_seconds),
            _sci(r.work_var_encoder),
        ]
        rows.append(row)
    right = [False, False] + [True] * (len(header) - 2)

    seeds = sorted(set(table["seeds"]))
    draws = sorted({int(x) for x in table["grad_draws"].dropna()})
    best = table.iloc[0]
    lines = []
    if best["finished"] > 0 and np.isfinite(best["elbo_test_mean"]):
        k_text = f", K={best['k']}" if vary_k else ""
        lines.append(
            f"Best final test ELBO: **{best['estimator']}** (KL {best['kl']}{k_text}), "
            f"{best['elbo_test_mean']:.1f} nats.\n"
        )
    lines.append(_markdown(header, rows, right))
    lines.append("")
    seed_text = "/".join(str(s) for s in seeds)
    draw_text = f" from R = {'/'.join(str(d) for d in draws)} draws" if draws else ""
    lines.append(
        f"Mean ± std over {seed_text} seed(s), at the final training step; rows sorted by test "
        "ELBO, configurations that diverged last. Gradient variance: trace of the covariance of "
        f"the minibatch-mean ELBO gradient{draw_text}; ÷ reparam is against reparam with the same "
        "KL mode (else analytic). Quality columns from "
        + ", ".join(sorted(set(table["device"])))
        + f" runs; {MISSING} = not measured."
    )
    lines.append("")
    for device in sorted(set(table["device"]) | {d for d in devices if d in envs}):
        lines.append(_env_line(envs.get(device, {}), device) + "  ")
    return lines


# --------------------------------------------------------------------------------------- plots


def _theme() -> dict[str, object]:
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


def _palette(names: Iterable[str], name: str = "tab10") -> dict[str, tuple[float, float, float]]:
    """A fixed colour per name: the palette assigned in sorted-name order."""
    import seaborn as sns

    names = sorted(set(names))
    colours = sns.color_palette(name if len(names) <= 10 else "tab20", len(names))
    return dict(zip(names, colours, strict=True))


class _Look:
    """Colour per estimator, marker per KL mode, and series labels: the estimator's name, or
    'estimator K=k' (its colour lighter for smaller K) where one estimator ran with several K."""

    def __init__(self, runs: pd.DataFrame) -> None:
        self.colour = _palette(runs["estimator"])
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


def _figure(nrows: int, ncols: int, width: float, row_height: float):
    """A constrained-layout Figure on the Agg canvas (no pyplot state) and a 2-D axes array."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, row_height * nrows + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=DPI, metadata={"Software": None})
    return path


def _where(frame: pd.DataFrame, **equal: object) -> pd.DataFrame:
    """Rows of `frame` whose columns equal the given values."""
    mask = np.ones(len(frame), dtype=bool)
    for column, value in equal.items():
        mask &= (frame[column] == value).to_numpy()
    return frame[mask]


def _series_of(frame: pd.DataFrame) -> list[tuple[str, int]]:
    """The sorted (estimator, K) pairs present in `frame`: one colour and label each."""
    return sorted({(e, int(k)) for e, k in zip(frame["estimator"], frame["k"], strict=True)})


def _group_title(key: tuple[str, str]) -> str:
    return f"{key[0]} / {key[1]}"


def _primary_runs(runs: pd.DataFrame, status: pd.DataFrame) -> pd.DataFrame:
    """Rows of non-running configurations on each table row's primary device."""
    keep = status[status["status"] != "running"].reset_index()
    primary = keep.groupby(ROW)["device"].agg(_primary_device).rename("primary")
    keep = keep.join(primary, on=ROW)
    keep = keep[keep["device"] == keep["primary"]]
    index = pd.MultiIndex.from_frame(keep[CONFIG])
    return runs[runs.set_index(CONFIG).index.isin(index)]


def _seed_curves(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per (row key, step): mean, min and max over seeds of `metric`, plus mean train_seconds."""
    values = frame[frame["metric"] == metric].dropna(subset=["value"])
    stats = values.groupby(ROW + ["step"], sort=True)["value"].agg(["mean", "min", "max"])
    seconds = frame[frame["metric"] == "train_seconds"].groupby(ROW + ["step"])["value"].mean()
    return stats.join(seconds.rename("seconds")).reset_index()


def _series_legend(fig, look: _Look, series: Sequence[tuple[str, int]], extra=()) -> None:
    """One figure legend: a colour per (estimator, K) series, then any `extra` handles."""
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], color=look.series_colour(e, k), lw=2.5, label=look.label(e, k))
        for e, k in series
    ]
    _figure_legend(fig, handles + list(extra))


def _figure_legend(fig, handles: Sequence) -> None:
    """The figure's one legend, in rows below the panels."""
    rows = math.ceil(len(handles) / 5)
    fig.legend(handles=handles, loc="outside lower center", ncol=math.ceil(len(handles) / rows))


def _symlog_x(ax, values: np.ndarray) -> None:
    """Log-like x axis that keeps 0: linear below the smallest positive value's decade."""
    if not values.size:
        return
    positive = values[values > 0]
    threshold = 10.0 ** math.floor(math.log10(positive.min())) if positive.size else 1.0
    ax.set_xscale("symlog", linthresh=threshold, linscale=0.4)
    ax.set_xlim(0, max(float(values.max()), threshold) * 1.15)


def _thousands(x: float, _position: object = None) -> str:
    """Axis labels for rates: 800, 2.5k, 150k, 1.2M."""
    for scale, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:g}{suffix}"
    return f"{x:g}"


def _log_limits(set_limits, values: pd.Series, below: float, above: float) -> tuple[float, float]:
    """Set log-axis limits around `values` with margins (fractions of the span in decades)."""
    low, high = math.log10(values.min()), math.log10(values.max())
    span = max(high - low, 0.3)
    limits = (low - below * span, high + above * span)
    set_limits(10.0 ** limits[0], 10.0 ** limits[1])
    return limits


def _tick_label(x: float, _position: object = None) -> str:
    """Short tick labels: 0.05, 300, 2e-3, 1.5e6."""
    if x == 0 or 1e-2 <= abs(x) < 1e4:
        return f"{x:g}"
    mantissa, exponent = f"{x:.1e}".split("e")
    return f"{float(mantissa):g}e{int(exponent)}"


def _log_ticks(axis, low: float, high: float) -> None:
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
    axis.set_major_formatter(FuncFormatter(_tick_label))
    axis.set_minor_locator(NullLocator())
    axis.set_minor_formatter(NullFormatter())


def _plot_grad_var(runs: pd.DataFrame, look: _Look, path: Path) -> Path | None:
    """Encoder gradient variance vs step; facets: (dataset, model) × KL; band: seed range."""
    from matplotlib.lines import Line2D

    curves = _seed_curves(runs, "grad_var_encoder")
    if curves.empty:
        return None
    groups = sorted(curves.groupby(GROUP).groups)
    kls = sorted(set(curves["kl"]))
    fig, axes = _figure(len(groups), len(kls), WIDTH, 3.4)
    series = _series_of(curves)
    last = runs[runs["metric"] == DIVERGED]
    for i, group in enumerate(groups):
        for j, kl in enumerate(kls):
            ax = axes[i, j]
            panel = _where(curves, dataset=group[0], model=group[1], kl=kl)
            for (estimator, k), c in panel.groupby(["estimator", "k"], sort=True):
                colour = look.series_colour(estimator, k)
                ax.plot(c["step"], c["mean"], color=colour, lw=1.8)
                ax.fill_between(c["step"], c["min"], c["max"], color=colour, alpha=0.2, lw=0)
            stopped = _where(last, dataset=group[0], model=group[1], kl=kl)
            for r in stopped.itertuples():
                c = _where(panel, estimator=r.estimator, k=r.k)
                c = c[c["step"] <= r.step]
                if not c.empty:
                    colour = look.series_colour(r.estimator, r.k)
                    ax.plot(c["step"].iloc[-1], c["mean"].iloc[-1], "x", color=colour, ms=9, mew=2)
            ax.set_yscale("log")
            _symlog_x(ax, curves["step"].to_numpy())
            ax.set_title(f"{_group_title(group)} — KL {kl}")
            ax.set_xlabel("training step (symlog)")
            ax.set_ylabel("enc. gradient variance (nats²)" if j == 0 else "")
    diverged = Line2D([], [], color="0.3", ls="", marker="x", ms=8, mew=2, label="diverged")
    _series_legend(fig, look, series, extra=[diverged] if not last.empty else [])
    fig.suptitle("Encoder gradient variance during training (mean over seeds; band: min–max)")
    return _save(fig, path)


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


def _plot_elbo(runs: pd.DataFrame, finals: pd.DataFrame, look: _Look, path: Path) -> Path | None:
    """Test ELBO vs step and vs training seconds; facet rows: (dataset, model) × KL."""
    curves = _seed_curves(runs, "elbo_test")
    if curves.empty:
        return None
    rows = sorted(curves.groupby(GROUP + ["kl"]).groups)
    fig, axes = _figure(len(rows), 2, WIDTH, 3.0)
    series = _series_of(curves)
    final_means = pd.Series(dtype=float)
    if "elbo_test" in finals:
        final_means = finals["elbo_test"].groupby(ROW).mean().dropna()
    below: dict[str, float] = {}
    for i, (dataset, model, kl) in enumerate(rows):
        panel = _where(curves, dataset=dataset, model=model, kl=kl)
        in_group = _where(curves, dataset=dataset, model=model)
        group_finals = final_means[
            (final_means.index.get_level_values("dataset") == dataset)
            & (final_means.index.get_level_values("model") == model)
        ]
        floor = _elbo_floor(group_finals.to_numpy())
        for (_, _, estimator, _, k), value in group_finals[group_finals < floor].items():
            label = look.label(estimator, k)
            below[label] = max(value, below.get(label, -math.inf))
        top, lowest = float(in_group["mean"].max()), float(in_group["mean"].min())
        pad = 0.04 * (top - max(lowest, floor) if top > max(lowest, floor) else 1.0)
        for j, x in enumerate(("step", "seconds")):
            ax = axes[i, j]
            for (estimator, k), c in panel.groupby(["estimator", "k"], sort=True):
                c = c.dropna(subset=[x])
                colour = look.series_colour(estimator, k)
                ax.plot(c[x], c["mean"], color=colour, lw=1.8)
                ax.fill_between(c[x], c["min"], c["max"], color=colour, alpha=0.2, lw=0)
            _symlog_x(ax, in_group[x].dropna().to_numpy())
            ax.set_ylim(max(lowest - pad, floor), top + pad)
            ax.set_title(f"{dataset} / {model} — KL {kl}")
            ax.set_xlabel(
                "training step (symlog)" if x == "step" else "training wall-clock (s, symlog)"
            )
            ax.set_ylabel("test ELBO (nats)" if j == 0 else "")
    _series_legend(fig, look, series)
    title = "Test ELBO (mean over seeds; band: min–max); y axis zoomed on the best estimators"
    if below:
        names = sorted(below, key=lambda name: -below[name])
        shown = ", ".join(f"{name} ({below[name]:.0f})" for name in names[:4])
        title += f"\nfinal ELBO below the frame: {shown}{', …' if len(names) > 4 else ''}"
    fig.suptitle(title)
    return _save(fig, path)


def _pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points no other point beats on both cost (x) and variance (y), by increasing cost."""
    frontier, best = [], math.inf
    for x, y in sorted(points):
        if y < best:
            frontier.append((x, y))
            best = y
    return frontier


def _plot_variance_cost(finals: pd.DataFrame, look: _Look, path: Path) -> Path | None:
    """Final encoder variance vs seconds per gradient, log–log; facets (dataset, model) × device."""
    from matplotlib.lines import Line2D

    needed = {"grad_var_encoder", "grad_seconds"}
    if finals.empty or not needed <= set(finals.columns):
        return None
    points = finals.groupby(ROW + ["device"])[sorted(needed)].mean().dropna().reset_index()
    points = points[(points["grad_var_encoder"] > 0) & (points["grad_seconds"] > 0)]
    if points.empty:
        return None
    groups = sorted(points.groupby(GROUP).groups)
    devices = sorted(set(points["device"]))
    fig, axes = _figure(len(groups), len(devices), WIDTH, 4.2)
    for i, group in enumerate(groups):
        for j, device in enumerate(devices):
            ax = axes[i, j]
            panel = _where(points, dataset=group[0], model=group[1], device=device)
            for r in panel.itertuples():
                colour = look.series_colour(r.estimator, r.k)
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
            costs = zip(panel["grad_seconds"], panel["grad_var_encoder"], strict=True)
            frontier = _pareto(list(costs))
            if len(frontier) > 1:
                fx, fy = zip(*frontier, strict=True)
                ax.plot(fx, fy, color="0.4", ls=":", lw=1.2, zorder=2, drawstyle="steps-post")
            ax.set_xscale("log")
            ax.set_yscale("log")
            x_span = _log_limits(ax.set_xlim, panel["grad_seconds"], 0.1, 0.35)
            y_span = _log_limits(ax.set_ylim, panel["grad_var_encoder"], 0.08, 0.08)
            _log_ticks(ax.xaxis, panel["grad_seconds"].min(), panel["grad_seconds"].max())
            _log_ticks(ax.yaxis, panel["grad_var_encoder"].min(), panel["grad_var_encoder"].max())
            # One label per series, right of its rightmost point, nudged up off other labels.
            anchors = []
            for (estimator, k), s in panel.groupby(["estimator", "k"], sort=True):
                r = s.loc[s["grad_seconds"].idxmax()]
                x, y = r["grad_seconds"], r["grad_var_encoder"]
                fx = (math.log10(x) - x_span[0]) / (x_span[1] - x_span[0])
                fy = (math.log10(y) - y_span[0]) / (y_span[1] - y_span[0])
                anchors.append((fy, fx, x, y, look.label(estimator, k), estimator))
            placed: list[tuple[float, float]] = []
            for fy, fx, x, y, label, estimator in sorted(anchors):
                ty = fy
                while any(abs(fx - px) < 0.3 and abs(ty - py) < 0.055 for px, py in placed):
                    ty += 0.01
                placed.append((fx, ty))
                ax.annotate(
                    label,
                    (x, y),
                    xytext=(fx + 0.025, ty),
                    textcoords="axes fraction",
                    va="center",
                    fontsize=8.5,
                    color=np.array(look.colour[estimator]) * 0.75,
                    arrowprops={"arrowstyle": "-", "color": "0.6", "lw": 0.6, "shrinkB": 4}
                    if ty - fy > 0.02
                    else None,
                )
            ax.set_title(f"{_group_title(group)} — {device}")
            ax.set_xlabel("time per gradient estimate (s)")
            ax.set_ylabel("final enc. gradient variance (nats²)" if j == 0 else "")
    handles = [
        Line2D([], [], color="0.3", ls="", marker=look.marker[kl], label=f"KL {kl}")
        for kl in sorted(set(points["kl"]))
    ]
    handles.append(Line2D([], [], color="0.4", ls=":", label="efficient frontier"))
    _figure_legend(fig, handles)
    fig.suptitle("Variance against cost: lower left is better (mean over seeds)")
    return _save(fig, path)


def _plot_throughput(finals: pd.DataFrame, look: _Look, path: Path) -> Path | None:
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
    series = _series_of(stats)
    hatches = {kl: ["", "///", "..", "xx"][i % 4] for i, kl in enumerate(kls)}
    height = 0.8 / len(kls)
    fig, axes = _figure(len(groups), len(devices), WIDTH, 0.24 * len(series) * len(kls) + 1.2)
    for i, group in enumerate(groups):
        for j, device in enumerate(devices):
            ax = axes[i, j]
            panel = _where(stats, dataset=group[0], model=group[1], device=device)
            for y, (estimator, k) in enumerate(series):
                for m, kl in enumerate(kls):
                    r = _where(panel, estimator=estimator, k=k, kl=kl)
                    if r.empty:
                        continue
                    r = r.iloc[0]
                    pos = y - 0.4 + height * (m + 0.5)
                    ax.barh(
                        pos,
                        r["mean"],
                        height=height * 0.9,
                        color=look.series_colour(estimator, k),
                        hatch=hatches[kl],
                        edgecolor="white",
                    )
                    ax.plot([r["min"], r["max"]], [pos, pos], color="0.2", lw=1.2)
            ax.set_yticks(range(len(series)), [look.label(e, k) for e, k in series])
            ax.invert_yaxis()
            ax.set_xlim(left=0)
            ax.set_title(f"{_group_title(group)} — {device}")
            ax.set_xlabel("throughput (training examples/s)")
            ax.xaxis.set_major_locator(MaxNLocator(nbins=5))
            ax.xaxis.set_major_formatter(FuncFormatter(_thousands))
            ax.grid(axis="y", visible=False)
    if len(kls) > 1:
        handles = [
            Patch(facecolor="0.6", hatch=hatches[kl], edgecolor="white", label=f"KL {kl}")
            for kl in kls
        ]
        _figure_legend(fig, handles)
    note = "" if "cuda" in devices else " — cpu only (no GPU runs)"
    fig.suptitle(f"Training throughput (bar: mean over seeds; line: min–max){note}")
    return _save(fig, path)


def _plot_kl_modes(finals: pd.DataFrame, look: _Look, path: Path) -> Path | None:
    """Analytic vs Monte Carlo KL for estimators run with both: final ELBO and enc. variance."""
    from matplotlib.lines import Line2D

    needed = [m for m in ("elbo_test", "grad_var_encoder") if m in finals]
    if finals.empty or not needed:
        return None
    means = finals[needed].groupby(ROW).mean().reset_index()
    modes = means.groupby(GROUP + ["estimator", "k"])["kl"].nunique()
    paired = modes[modes > 1].reset_index()[GROUP + ["estimator", "k"]]
    if paired.empty:
        return None
    means = means.merge(paired, on=GROUP + ["estimator", "k"])
    groups = sorted(means.groupby(GROUP).groups)
    kls = sorted(set(means["kl"]))
    n_series = means.drop_duplicates(GROUP + ["estimator", "k"]).groupby(GROUP).size().max()
    fig, axes = _figure(len(groups), len(needed), WIDTH, 0.45 * n_series + 1.4)
    labels = {
        "elbo_test": "final test ELBO (nats)",
        "grad_var_encoder": "final enc. gradient variance (nats², log)",
    }
    for i, group in enumerate(groups):
        panel = _where(means, dataset=group[0], model=group[1])
        series = _series_of(panel)
        for j, metric in enumerate(needed):
            ax = axes[i, j]
            for y, (estimator, k) in enumerate(series):
                s = _where(panel, estimator=estimator, k=k)
                s = s.dropna(subset=[metric]).sort_values("kl")
                colour = look.series_colour(estimator, k)
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
                if len(s) == 2:
                    a, b = s[metric].to_numpy()
                    text = f"Δ {b - a:+.2f}" if metric == "elbo_test" else f"×{_sig(b / a)}"
                    ax.annotate(
                        text,
                        (max(a, b), y),
                        xytext=(8, 0),
                        textcoords="offset points",
                        va="center",
                        fontsize=8.5,
                    )
            if metric == "grad_var_encoder":
                ax.set_xscale("log")
            ax.margins(x=0.2)
            ax.set_yticks(range(len(series)), [look.label(e, k) for e, k in series])
            ax.set_ylim(len(series) - 0.5, -0.5)
            ax.set_title(_group_title(group))
            ax.set_xlabel(labels[metric])
    handles = [
        Line2D([], [], color="0.3", ls="", marker=look.marker[kl], ms=8, label=f"KL {kl}")
        for kl in kls
    ]
    _figure_legend(fig, handles)
    first, last = kls[0], kls[-1]
    fig.suptitle(
        f"KL term: analytic vs Monte Carlo (mean over seeds)\n"
        f"Δ = {last} − {first} (nats), × = {last} ÷ {first}"
    )
    return _save(fig, path)


TOY_K_GRIDS = {
    "square": (np.linspace(-3.0, 3.0, 60), (-2.5, -1.0, 0.5, 2.0), "linear"),
    "exp": (np.geomspace(0.05, 10.0, 60), (0.1, 0.5, 2.0, 8.0), "log"),
    "cos": (np.geomspace(0.1, 10.0, 60), (0.2, 0.7, 2.0, 7.0), "log"),
}
TOY_SYMBOLS = {"mu": "μ", "sigma": "σ"}
TOY_TITLES = {"square": "f(x) = (x − k)²", "exp": "f(x) = exp(−k x²)", "cos": "f(x) = cos(k x)"}


def _plot_toy(path: Path, draws: int | None = None) -> Path:
    """Mohamed et al. (2020) Figs. 2–3: variance of each toy estimator vs k, μ = σ = 1.

    Lines: exact variances by quadrature (`exact_moments`); markers: sample variances of `draws`
    single-draw estimates (`run_toy`, seed TOY_SEED).
    """
    from matplotlib.lines import Line2D

    from bench import toy

    draws = TOY_DRAWS if draws is None else draws
    mu = sigma = 1.0
    colours = _palette(toy.TOY_ESTIMATORS, "colorblind")
    fig, axes = _figure(len(toy.PARAMS), len(toy.COSTS), WIDTH, 3.0)
    for j, cost in enumerate(toy.COSTS):
        grid, marks, scale = TOY_K_GRIDS.get(cost, TOY_K_GRIDS["cos"])
        empirical = {k: toy.run_toy(cost, float(k), mu, sigma, draws, TOY_SEED) for k in marks}
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
                ax.set_title(TOY_TITLES.get(cost, cost))
            if i == len(toy.PARAMS) - 1:
                ax.set_xlabel("cost parameter k")
            if j == 0:
                ax.set_ylabel(f"variance of ∂F/∂{TOY_SYMBOLS.get(param, param)} estimate")
    handles = [Line2D([], [], color=colours[e], lw=2, label=e) for e in toy.TOY_ESTIMATORS]
    handles += [
        Line2D([], [], color="0.3", lw=1.8, label="exact (quadrature)"),
        Line2D([], [], color="0.3", ls="", marker="o", label=f"empirical ({draws:,} draws)"),
    ]
    _figure_legend(fig, handles)
    fig.suptitle("Toy problem (Mohamed et al. 2020, Figs. 2–3): x ~ N(μ=1, σ=1)")
    return _save(fig, path)


# -------------------------------------------------------------------------------------- report

PLOT_CAPTIONS = {
    "grad_var_encoder": "Encoder gradient variance vs training step, per KL mode.",
    "elbo_test": "Test ELBO vs training step and vs training wall-clock time.",
    "variance_cost": "Final encoder gradient variance vs seconds per gradient: the efficient "
    "frontier.",
    "throughput": "Training throughput per estimator and device.",
    "kl_modes": "Analytic vs Monte Carlo KL for the same estimators.",
    "toy_variance": "Toy problem: estimator variance vs k for three costs, exact and empirical.",
}
SKIP_REASONS = {
    "grad_var_encoder": "no grad_var_encoder measurements",
    "elbo_test": "no elbo_test measurements",
    "variance_cost": "no finished run with grad_var_encoder and grad_seconds",
    "throughput": "no finished run with a throughput measurement",
    "kl_modes": "no estimator was run with more than one KL mode",
}


def write_report(out_dir: Path, toy: bool = True) -> list[Path]:
    """Write DIR/summary.md and DIR/plots/*.png from DIR/runs.csv; return the paths written.

    A plot whose data is absent is skipped (and a stale file of that name removed), and
    summary.md says why. With toy=False the toy plot is left as it is on disk.
    """
    from matplotlib import rc_context

    out_dir = Path(out_dir)
    runs = load_runs(out_dir)
    if runs.empty:
        raise NoRunsError(f"{out_dir / 'runs.csv'} holds no measurements")
    envs = {}
    for env_path in (out_dir / "env.json", out_dir / "gpu" / "env.json"):
        env = _load_env(env_path)
        if env:
            envs.setdefault(str(env.get("device", "cpu")), env)

    status = _status(runs)
    finals = _finals(runs, status)
    table = summary_table(runs)
    primary = _primary_runs(runs, status)
    look = _Look(runs)
    plots = out_dir / "plots"
    plots.mkdir(parents=True, exist_ok=True)

    drawn: dict[str, Path | None] = {}
    with rc_context(_theme()):
        drawn["grad_var_encoder"] = _plot_grad_var(primary, look, plots / "grad_var_encoder.png")
        primary_finals = finals[finals.index.isin(primary.set_index(CONFIG).index)]
        drawn["elbo_test"] = _plot_elbo(primary, primary_finals, look, plots / "elbo_test.png")
        drawn["variance_cost"] = _plot_variance_cost(finals, look, plots / "variance_cost.png")
        drawn["throughput"] = _plot_throughput(finals, look, plots / "throughput.png")
        drawn["kl_modes"] = _plot_kl_modes(primary_finals, look, plots / "kl_modes.png")
        if toy:
            drawn["toy_variance"] = _plot_toy(plots / "toy_variance.png")
    for name, written in drawn.items():
        stale = plots / f"{name}.png"
        if written is None and stale.exists():
            stale.unlink()

    lines = ["# vae-bench results", ""]
    lines.append(
        "Generated by `python -m bench report` from runs.csv"
        + (" and gpu/runs.csv" if (out_dir / "gpu" / "runs.csv").is_file() else "")
        + f": {int((status['status'] != 'running').sum())} configurations "
        + f"({int((status['status'] == 'diverged').sum())} diverged)."
    )
    running = int((status["status"] == "running").sum())
    if running:
        lines[-1] += (
            f" {running} configuration(s) without run_complete are still running: left out."
        )
    lines.append("")
    for key, group in table.groupby(GROUP, sort=True):
        lines += [f"## {_group_title(key)}", ""]
        lines += _format_group(group, envs)
        lines.append("")
    lines += ["## Plots", ""]
    for name in PLOT_NAMES:
        file = plots / f"{name}.png"
        if name == "toy_variance" and not toy:
            if file.exists():
                lines.append(f"- `plots/{name}.png`: {PLOT_CAPTIONS[name]} (not redrawn: --no-toy)")
                lines.append(f"  ![{name}](plots/{name}.png)")
            else:
                lines.append(f"- `plots/{name}.png`: skipped (--no-toy).")
            continue
        if drawn.get(name) is None:
            lines.append(f"- `plots/{name}.png`: skipped: {SKIP_REASONS[name]}.")
            continue
        lines.append(f"- `plots/{name}.png`: {PLOT_CAPTIONS[name]}")
        lines.append(f"  ![{name}](plots/{name}.png)")
    if "cuda" not in set(runs["device"]):
        lines.append("")
        lines.append("No GPU runs (no gpu/runs.csv): throughput is measured on cpu only.")
    summary = out_dir / "summary.md"
    summary.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    return [summary] + [p for p in drawn.values() if p is not None]


# ----------------------------------------------------------------------------------------- CLI


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `python -m bench report`."""
    parser.add_argument("--out", default="results", type=Path, help="results directory")
    parser.add_argument("--no-toy", action="store_true", help="skip the toy-problem plot")


def main_report(args: argparse.Namespace) -> int:
    """Regenerate summary.md and plots; 0 on success, 2 (one line on stderr) without runs."""
    out = Path(args.out)
    try:
        written = write_report(out, toy=not getattr(args, "no_toy", False))
    except NoRunsError:
        print(NO_RUNS.format(out=out), file=sys.stderr)
        return 2
    except ValueError as error:
        print(f"error: malformed runs.csv: {error}", file=sys.stderr)
        return 2
    print(f"wrote {written[0]} and {len(written) - 1} plots in {out / 'plots'}")
    return 0
