"""Reading a results directory: runs.csv (+ gpu/runs.csv) and env.json, and each configuration's
status and final metrics.

A configuration is (dataset, model, estimator, kl, k, beta, device, seed); `beta`, the weight of
the KL term (β-VAE), is optional in runs.csv (files written before it existed mean β = 1). It is
*finished* with a
`run_complete` row, *diverged* with a `diverged` row (its later metrics are absent), and
*running* otherwise. "Final" means the last step at which a finished configuration has the metric.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
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
# Optional columns and the value a file without them stands for.
OPTIONAL_COLUMNS: dict[str, str] = {"beta": "1"}
CONFIG: list[str] = ["dataset", "model", "estimator", "kl", "k", "beta", "device", "seed"]
ROW: list[str] = ["dataset", "model", "estimator", "kl", "k", "beta"]  # a table row: seeds pooled
GROUP: list[str] = ["dataset", "model"]  # one table / one facet row per (dataset, model)
INTEGER_COLUMNS = ("k", "seed", "step")
FLOAT_COLUMNS = ("beta",)
DIVERGED = "diverged"
COMPLETE = "run_complete"


# Estimators of the IWAE bound L_K (K samples), for names vae_core's registry does not know.
KNOWN_MULTISAMPLE = frozenset({"iwae", "dreg", "iwae_stl", "vimco"})
# Biased estimators and their unbiased reference, for names vae_core's registry does not know.
KNOWN_BIAS_REFERENCES = {"gumbel": "disarm", "st_gumbel": "disarm"}


def _registry() -> dict[str, type]:
    """vae_core's estimator registry, or {} where vae_core is absent (the report needs only
    runs.csv)."""
    try:
        from vae_core.estimators import REGISTRY
    except ImportError:
        return {}
    return REGISTRY


def is_multisample(estimator: str) -> bool:
    """Whether `estimator` trains on the IWAE bound L_K (`objective == "iwae"` in the registry);
    a name the registry lacks (an older run) is looked up in KNOWN_MULTISAMPLE."""
    registry = _registry()
    if estimator in registry:
        return getattr(registry[estimator], "objective", "elbo") == "iwae"
    return estimator in KNOWN_MULTISAMPLE


def bias_reference_of(estimator: str) -> str | None:
    """The unbiased estimator a biased `estimator`'s bias is measured against (its registry
    `bias_reference`; KNOWN_BIAS_REFERENCES for a name the registry lacks); None if unbiased."""
    registry = _registry()
    if estimator in registry:
        return getattr(registry[estimator], "bias_reference", None)
    return KNOWN_BIAS_REFERENCES.get(estimator)


class NoRunsError(FileNotFoundError):
    """DIR/runs.csv is absent or holds no measurements."""


def format_beta(beta: float) -> str:
    """β compactly: 1, 0.5, 4, 0.25."""
    return f"{float(beta):g}"


def _read_one(path: Path) -> pd.DataFrame:
    """One runs.csv as strings, columns validated and optional ones filled with their default
    (in CONFIG order); a zero-byte file gives an empty frame."""
    columns = CONFIG + ["step", "metric", "value"]
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except pd.errors.EmptyDataError:
        return pd.DataFrame(columns=columns)
    except pd.errors.ParserError as error:
        first_line = str(error).strip().splitlines()[0]
        raise ValueError(f"{path} is not a readable CSV: {first_line}") from error
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{path} lacks column(s) {', '.join(missing)}; expected {', '.join(REQUIRED_COLUMNS)}"
        )
    for column, default in OPTIONAL_COLUMNS.items():
        if column not in frame.columns:
            frame[column] = default
    return frame[columns]


def load_runs(out_dir: Path) -> pd.DataFrame:
    """DIR/runs.csv and DIR/gpu/runs.csv (if present), concatenated, typed and de-duplicated.

    Raises NoRunsError (a FileNotFoundError) when DIR/runs.csv is absent, and ValueError naming
    the missing columns (or the bad values) of a malformed file. Rows with empty key fields (a
    line cut short while the harness was writing) are dropped; a non-finite `value` is kept as
    NaN and treated as absent. When a measurement repeats (a re-run), the row written last wins.
    A file without a `beta` column gets β = 1; `beta` is a float column, `k`, `seed` and `step`
    integer ones.
    """
    out_dir = Path(out_dir)
    path = out_dir / "runs.csv"
    if not path.is_file():
        raise NoRunsError(f"no runs.csv in {out_dir}")
    paths = [path] + [p for p in [out_dir / "gpu" / "runs.csv"] if p.is_file()]
    frame = pd.concat([_read_one(p) for p in paths], ignore_index=True)
    frame = frame[frame["metric"] != "metric"]  # a header repeated by a later append

    keys = CONFIG + ["step", "metric"]
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
    for column in FLOAT_COLUMNS:
        numbers = pd.to_numeric(frame[column], errors="coerce")
        bad = ~np.isfinite(numbers)
        if bad.any():
            example = frame.loc[bad, column].iloc[0]
            raise ValueError(f"{path}: column {column} must hold numbers, found {example!r}")
        frame[column] = numbers.astype("float64")
    value = pd.to_numeric(frame["value"], errors="coerce")
    frame["value"] = value.where(np.isfinite(value))

    frame = frame.drop_duplicates(subset=CONFIG + ["step", "metric"], keep="last")
    frame = frame.sort_values(CONFIG + ["step", "metric"], kind="mergesort")
    return frame.reset_index(drop=True)


def load_envs(out_dir: Path) -> dict[str, dict[str, object]]:
    """env.json and gpu/env.json by their `device` (default cpu); the first file wins a tie.

    An absent or unreadable file is left out: the report does not depend on it.
    """
    envs: dict[str, dict[str, object]] = {}
    for path in (out_dir / "env.json", out_dir / "gpu" / "env.json"):
        try:
            env = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(env, dict) and env:
            envs.setdefault(str(env.get("device", "cpu")), env)
    return envs


def run_status(runs: pd.DataFrame) -> pd.DataFrame:
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


def final_values(runs: pd.DataFrame, status: pd.DataFrame) -> pd.DataFrame:
    """Per finished configuration (index CONFIG), each metric's value at its last present step."""
    finished = status.index[status["status"] == "finished"]
    present = runs[runs["value"].notna()].set_index(CONFIG)
    present = present[present.index.isin(finished)].reset_index()
    if present.empty:
        return pd.DataFrame(index=pd.MultiIndex.from_tuples([], names=CONFIG))
    last = present.loc[present.groupby(CONFIG + ["metric"])["step"].idxmax()]
    return last.set_index(CONFIG + ["metric"])["value"].unstack("metric").sort_index()


def primary_device(devices: Iterable[str]) -> str:
    """The device whose runs stand for a table row: cpu when present, else the first by name."""
    devices = sorted(set(devices))
    return "cpu" if "cpu" in devices else devices[0]


def primary_runs(runs: pd.DataFrame, status: pd.DataFrame) -> pd.DataFrame:
    """Rows of non-running configurations on each table row's primary device."""
    keep = status[status["status"] != "running"].reset_index()
    primary = keep.groupby(ROW)["device"].agg(primary_device).rename("primary")
    keep = keep.join(primary, on=ROW)
    keep = keep[keep["device"] == keep["primary"]]
    return runs[runs.set_index(CONFIG).index.isin(pd.MultiIndex.from_frame(keep[CONFIG]))]
