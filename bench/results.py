"""runs.csv: long-format rows appended as they are measured, and resuming from it.

One row per measurement: `dataset, model, estimator, kl, k, beta, device, seed, step, metric,
value` (the contract's columns of DESIGN.md plus `beta`, the KL weight).
A configuration is finished when it has a `run_complete` row; on resume the rows of unfinished
configurations (a run killed half way) are dropped and those configurations run again.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from bench.suites import RunConfig

COLUMNS = (
    "dataset",
    "model",
    "estimator",
    "kl",
    "k",
    "beta",
    "device",
    "seed",
    "step",
    "metric",
    "value",
)
KEY_COLUMNS = COLUMNS[:8]
METRIC = COLUMNS.index("metric")
WITHOUT_BETA = tuple(c for c in COLUMNS if c != "beta")  # the format before β-VAE runs
COMPLETE = "run_complete"
DIVERGED = "diverged"

RowKey = tuple[str, ...]


def row_key(config: RunConfig, device: str) -> RowKey:
    """The configuration's identity as it appears (as strings) in the key columns."""
    d, m, e, kl, k, beta, seed = config.key
    return (d, m, e, kl, str(k), f"{beta:g}", device, str(seed))


class ResultsExistError(FileExistsError):
    pass


class RunsFile:
    """Appends rows to DIR/runs.csv, flushing after every measurement."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def open(cls, out_dir: Path, resume: bool, overwrite: bool) -> tuple[RunsFile, set[RowKey]]:
        """Prepare DIR/runs.csv; returns the writer and the keys of finished configurations.

        Without `resume` or `overwrite`, an existing non-empty runs.csv is an error: nothing is
        ever lost silently.
        """
        path = out_dir / "runs.csv"
        rows = read_rows(path) if path.exists() else []
        if rows and not (resume or overwrite):
            raise ResultsExistError(
                f"{path} already holds {len(rows)} rows: pass --resume to skip finished "
                "configurations or --overwrite to start again"
            )
        if overwrite:
            rows = []
        finished = finished_keys(rows)
        kept = [r for r in rows if r[: len(KEY_COLUMNS)] in finished]
        tmp = path.with_suffix(".csv.tmp")
        with tmp.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(COLUMNS)
            writer.writerows(kept)
        os.replace(tmp, path)
        return cls(path), finished

    def append(
        self, config: RunConfig, device: str, step: int, values: Mapping[str, float]
    ) -> None:
        key = row_key(config, device)
        with self.path.open("a", newline="") as handle:
            writer = csv.writer(handle)
            for metric, value in values.items():
                writer.writerow((*key, step, metric, repr(float(value))))
            handle.flush()


def read_rows(path: Path) -> list[tuple[str, ...]]:
    """Data rows of a runs.csv (header checked), as tuples of strings. A file written before the
    `beta` column existed is read with beta = 1; a torn last line (a killed run) is dropped."""
    with path.open(newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            return []
        if tuple(header) == WITHOUT_BETA:
            at = COLUMNS.index("beta")
            rows = [(*r[:at], "1", *r[at:]) for r in reader if len(r) == len(WITHOUT_BETA)]
            return [tuple(r) for r in rows]
        if tuple(header) != COLUMNS:
            raise ValueError(f"{path} has columns {header}; expected {list(COLUMNS)}")
        return [tuple(row) for row in reader if len(row) == len(COLUMNS)]


def finished_keys(rows: Iterable[tuple[str, ...]]) -> set[RowKey]:
    return {tuple(r[: len(KEY_COLUMNS)]) for r in rows if r[METRIC] == COMPLETE}
