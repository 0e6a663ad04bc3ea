"""The results directory's files, written and read here only: runs.csv (long-format rows,
appended one whole configuration at a time, and resuming from it), estimators.csv and
placements.csv. The harness writes them; the report reads them as typed frames (`load_runs`,
`load_facts`) without importing torch or the estimator code.

One row per measurement: `dataset, model, estimator, kl, k, beta, device, seed, protocol, step,
metric, value` (`beta` is the KL weight of a β-VAE run; `protocol` every other setting that
changes the run's numbers and differs from the default, '' for the default protocol:
`RunConfig.protocol`). Files written before the protocol column (LEGACY_COLUMNS) are read with
protocol '', and a resume rewrites them with it.
The driver is the only writer: each append is one write of a configuration's rows, flushed and
fsynced, its completion marker last. A configuration is trained when it has a `run_complete` row,
costed when it has a `cost_complete` row (the exclusive cost pass, bench.cost) and measured at
shared parameters when it has a `shared_complete` row (the shared-parameter pass, bench.shared:
metrics named `shared_*`). On resume the rows of untrained configurations (a kill mid-write), the
cost rows of uncosted ones and the shared rows of those without `shared_complete` are dropped, so
those configurations (or passes) run again.

DIR/states/ holds the model parameters of each reference trajectory at its shared checkpoints
(one torch file per configuration, `save_states`), and DIR/states/auxiliary/ the auxiliary state
(learned baselines, control variates) of each seed-0 run that has one at its shared checkpoints;
the shared pass reads both. They are regenerable (training on CPU is deterministic) and too large
for git: not committed.

estimators.csv, beside it, holds the facts of each (estimator, K) that ran, as the estimator
declares them, so that a results directory can be read without the estimator code: its
`objective` (elbo or iwae), `latent` type, whether it is `biased` (1/0), its `bias_reference` (the
unbiased estimator its bias is measured against, '' if none), its `variance_reference` (the
estimator its variance is compared with) and `evaluations` of the learning signal per example
per step, and its `source`: '' for a built-in estimator, 'PATH sha256:HASH' for a plugin's
(bench.plugins).

placements.csv says where each configuration trained, was timed and was measured at shared
parameters: its key columns, `phase` (train, cost or shared), `backend`, `host`, `process`,
`threads` and `gpus` (GPU ids, empty on CPU). A configuration that ran again after a kill has
several lines per phase; the last counts.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import pandas as pd

    from bench.suites import RunConfig

log = logging.getLogger(__name__)

COLUMNS = (
    "dataset",
    "model",
    "estimator",
    "kl",
    "k",
    "beta",
    "device",
    "seed",
    "protocol",
    "step",
    "metric",
    "value",
)
KEY_COLUMNS = COLUMNS[:9]
PROTOCOL = COLUMNS.index("protocol")
LEGACY_COLUMNS = tuple(c for c in COLUMNS if c != "protocol")  # runs.csv before `protocol`
KEY = len(KEY_COLUMNS)
STEP, METRIC, VALUE = (COLUMNS.index(c) for c in ("step", "metric", "value"))
INTEGER_COLUMNS = ("k", "seed", "step")
FLOAT_COLUMNS = ("beta",)
COMPLETE = "run_complete"
DIVERGED = "diverged"
COST_COMPLETE = "cost_complete"
# Written by the cost pass at the final step (bench.cost), COST_COMPLETE last.
COST_METRICS = frozenset(
    {
        "throughput",
        "grad_seconds",
        "work_var_encoder",
        "work_var_decoder",
        "cost_threads",
        COST_COMPLETE,
    }
)

SHARED_COMPLETE = "shared_complete"
SHARED_PREFIX = "shared_"  # every metric of the shared-parameter pass (bench.shared)
StateKind = Literal["model", "auxiliary"]  # what DIR/states/ keeps of a run (`save_states`)

FACT_COLUMNS = (
    "estimator",
    "k",
    "objective",
    "latent",
    "biased",
    "bias_reference",
    "variance_reference",
    "evaluations",
    "source",
)
# estimators.csv before plugins had no `source`: read as '' (a built-in estimator).
OPTIONAL_FACT_COLUMNS = {"source": ""}
PLACEMENT_COLUMNS = (*KEY_COLUMNS, "phase", "backend", "host", "process", "threads", "gpus")

RowKey = tuple[str, ...]
Measurements = list[tuple[int, dict[str, float]]]  # (step, {metric: value}) in the order taken


def row_key(config: RunConfig, device: str) -> RowKey:
    """The configuration's identity as it appears (as strings) in the key columns."""
    d, m, e, kl, k, beta, seed, protocol = config.key
    return (d, m, e, kl, str(k), f"{beta:g}", device, str(seed), protocol)


class ResultsExistError(FileExistsError):
    pass


class NoRunsError(FileNotFoundError):
    """DIR/runs.csv is absent or holds no measurements."""


@dataclass(frozen=True)
class Placement:
    """Where a task ran: backend, host name, process id, torch threads, GPU ids ('' on CPU)."""

    backend: str
    host: str
    process: int
    threads: int
    gpus: str


@dataclass(frozen=True)
class Progress:
    """What runs.csv already holds: keys of trained, diverged, costed and shared-measured
    configurations."""

    trained: frozenset[RowKey]
    diverged: frozenset[RowKey]
    costed: frozenset[RowKey]
    shared: frozenset[RowKey]

    @classmethod
    def of(cls, rows: Sequence[tuple[str, ...]]) -> Progress:
        return cls(
            keys_with(rows, COMPLETE),
            keys_with(rows, DIVERGED),
            keys_with(rows, COST_COMPLETE),
            keys_with(rows, SHARED_COMPLETE),
        )

    def needs_cost(self, key: RowKey) -> bool:
        """Trained without diverging, and not yet through the cost pass."""
        return key in self.trained and key not in self.diverged and key not in self.costed

    def needs_shared(self, key: RowKey) -> bool:
        """Trained (diverged or not: the shared pass uses the reference's parameters, not the
        run's own), and not yet through the shared-parameter pass."""
        return key in self.trained and key not in self.shared

    def keeps(self, row: tuple[str, ...]) -> bool:
        """Whether a resumed runs.csv keeps `row`: its configuration trained, and a cost or
        shared row only with that pass's completion marker."""
        key, metric = row[:KEY], row[METRIC]
        if key not in self.trained:
            return False
        if metric in COST_METRICS:
            return key in self.costed
        return not metric.startswith(SHARED_PREFIX) or key in self.shared


class RunsFile:
    """DIR/runs.csv, written by one process: whole configurations, each in one fsynced write."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.placements = path.with_name("placements.csv")

    @staticmethod
    def check(
        out_dir: Path, resume: bool, overwrite: bool
    ) -> tuple[list[tuple[str, ...]], Progress]:
        """What DIR/runs.csv holds (rows to keep, progress), writing nothing. Without `resume` or
        `overwrite`, an existing non-empty runs.csv is an error: nothing is ever lost silently.
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
        progress = Progress.of(rows)
        return [r for r in rows if progress.keeps(r)], progress

    @classmethod
    def open(cls, out_dir: Path, kept: Sequence[tuple[str, ...]], fresh: bool) -> RunsFile:
        """Rewrite DIR/runs.csv with the rows `check` kept and return its writer; `fresh`
        (--overwrite) also starts placements.csv and estimators.csv again."""
        path = out_dir / "runs.csv"
        tmp = path.with_suffix(".csv.tmp")
        with tmp.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(COLUMNS)
            writer.writerows(kept)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        runs = cls(path)
        if fresh or not runs.placements.exists():
            runs.placements.write_text(",".join(PLACEMENT_COLUMNS) + "\n")
        else:
            runs.add_protocol_to_placements()
        if fresh:
            path.with_name("estimators.csv").unlink(missing_ok=True)
        return runs

    def add_protocol_to_placements(self) -> None:
        """Rewrite a placements.csv written before the protocol column with protocol ''."""
        with self.placements.open(newline="") as handle:
            lines = list(csv.reader(handle))
        if not lines or tuple(lines[0]) == PLACEMENT_COLUMNS:
            return
        tmp = self.placements.with_suffix(".csv.tmp")
        with tmp.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(PLACEMENT_COLUMNS)
            writer.writerows(with_protocol(line) for line in lines[1:] if line)
        os.replace(tmp, self.placements)

    def record_facts(self, facts: Iterable[dict[str, object]]) -> None:
        """Add rows of FACT_COLUMNS to estimators.csv (replacing those of the same estimator and
        K, and dropping malformed ones: a truncated file heals), sorted by estimator and K;
        written whole and atomically."""
        path = self.path.with_name("estimators.csv")
        rows: dict[tuple[str, str], list[str]] = {}
        if path.exists():
            with path.open(newline="") as handle:
                for row in csv.DictReader(handle):
                    row = {**OPTIONAL_FACT_COLUMNS, **row}
                    if all(valid(row.get(c) or "") for c, valid in FACT_VALUES.items()):
                        rows[row["estimator"], row["k"]] = [row[c] for c in FACT_COLUMNS]
        for fact in facts:
            rows[str(fact["estimator"]), str(fact["k"])] = [str(fact[c]) for c in FACT_COLUMNS]
        tmp = path.with_suffix(".csv.tmp")
        with tmp.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(FACT_COLUMNS)
            writer.writerows(rows[key] for key in sorted(rows, key=lambda e: (e[0], int(e[1]))))
        os.replace(tmp, path)

    def states_path(self, config: RunConfig, device: str, kind: StateKind = "model") -> Path:
        """DIR/states/<configuration>.pt: a reference trajectory's model parameters by step;
        DIR/states/auxiliary/<configuration>.pt: a run's auxiliary state by step."""
        folder = self.path.with_name("states")
        return state_file(folder / "auxiliary" if kind == "auxiliary" else folder, config, device)

    def save_states(
        self, config: RunConfig, device: str, states: dict[int, dict], kind: StateKind = "model"
    ) -> None:
        """{step: state_dict} of `config` to states_path, written whole (tmp, replace)."""
        import torch

        path = self.states_path(config, device, kind)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".pt.tmp")
        torch.save(states, tmp)
        os.replace(tmp, path)

    def save_kept_states(
        self, config: RunConfig, device: str, model: dict[int, dict], auxiliary: dict[int, dict]
    ) -> None:
        """The states a run kept (bench.runner.RunResult): each kind it has."""
        if model:
            self.save_states(config, device, model, "model")
        if auxiliary:
            self.save_states(config, device, auxiliary, "auxiliary")

    def has_states(self, config: RunConfig, device: str, kind: StateKind = "model") -> bool:
        return self.states_path(config, device, kind).is_file()

    def load_states(
        self, config: RunConfig, device: str, kind: StateKind = "model"
    ) -> dict[int, dict]:
        """The states `save_states` wrote for `config`."""
        import torch

        return torch.load(self.states_path(config, device, kind), map_location="cpu")

    def place(self, config: RunConfig, device: str, phase: str, placement: Placement) -> None:
        """One line of placements.csv: where `config` ran its `phase` (train, cost or shared)."""
        p = placement
        line = (*row_key(config, device), phase, p.backend, p.host, p.process, p.threads, p.gpus)
        buffer = io.StringIO()
        csv.writer(buffer).writerow(line)
        with self.placements.open("a", newline="") as handle:
            handle.write(buffer.getvalue())

    def append(self, config: RunConfig, device: str, measurements: Measurements) -> None:
        """All of one configuration's rows in one write, flushed and fsynced: a kill leaves the
        configuration whole or (but for a torn tail that resume drops) absent."""
        key = row_key(config, device)
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        for step, values in measurements:
            writer.writerows((*key, step, metric, repr(float(v))) for metric, v in values.items())
        with self.path.open("a", newline="") as handle:
            handle.write(buffer.getvalue())
            handle.flush()
            os.fsync(handle.fileno())


def state_file(folder: Path, config: RunConfig, device: str) -> Path:
    """folder/<configuration>.pt, named by the configuration's row key (the protocol as a digest;
    the default protocol keeps the names written before the protocol existed)."""
    *key, protocol = row_key(config, device)
    digest = "_" + hashlib.sha1(protocol.encode()).hexdigest()[:12] if protocol else ""
    return folder / ("_".join(key) + digest + ".pt")


def read_rows(path: Path) -> list[tuple[str, ...]]:
    """Data rows of a runs.csv (header checked), as tuples of strings; a torn last line (a
    killed run) is dropped."""
    with path.open(newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            return []
        if tuple(header) == LEGACY_COLUMNS:
            return [with_protocol(row) for row in reader if len(row) == len(LEGACY_COLUMNS)]
        if tuple(header) != COLUMNS:
            raise ValueError(f"{path} has columns {header}; expected {list(COLUMNS)}")
        return [tuple(row) for row in reader if len(row) == len(COLUMNS)]


def with_protocol(row: Sequence[str]) -> tuple[str, ...]:
    """A row of a file written before the protocol column, with protocol '' in its place."""
    return (*row[:PROTOCOL], "", *row[PROTOCOL:])


def keys_with(rows: Iterable[tuple[str, ...]], metric: str) -> frozenset[RowKey]:
    """Keys of the configurations that have a `metric` row."""
    return frozenset(r[:KEY] for r in rows if r[METRIC] == metric)


def final_values(
    rows: Iterable[tuple[str, ...]], keys: Iterable[RowKey]
) -> dict[RowKey, dict[str, float]]:
    """Per configuration of `keys`, each metric's value at its last step."""
    wanted = set(keys)
    latest: dict[RowKey, dict[str, tuple[int, float]]] = {key: {} for key in wanted}
    for r in rows:
        if r[:KEY] in wanted:
            step, seen = int(r[STEP]), latest[r[:KEY]].get(r[METRIC])
            if seen is None or step >= seen[0]:
                latest[r[:KEY]][r[METRIC]] = (step, float(r[VALUE]))
    return {key: {m: v for m, (_, v) in values.items()} for key, values in latest.items()}


def load_runs(out_dir: Path) -> pd.DataFrame:
    """DIR/runs.csv and DIR/gpu/runs.csv (if present) as one typed frame, COLUMNS in order.

    Raises NoRunsError when DIR/runs.csv is absent or holds no rows, and ValueError naming the
    file and what is wrong for other columns than COLUMNS or a non-numeric key. Rows cut short
    (a line torn by a kill) are dropped; a non-finite `value` is kept as NaN (absent). When a
    measurement repeats (a re-run), the row written last wins. `k`, `seed`, `step` are integers,
    `beta` and `value` floats; sorted by configuration, step and metric.
    """
    import numpy as np
    import pandas as pd

    out_dir = Path(out_dir)
    path = out_dir / "runs.csv"
    if not path.is_file():
        raise NoRunsError(f"no runs.csv in {out_dir}")
    paths = [path] + [p for p in [out_dir / "gpu" / "runs.csv"] if p.is_file()]
    frames = []
    for one in paths:
        try:
            frame = pd.read_csv(one, dtype=str, keep_default_na=False, na_values=[""])
        except pd.errors.EmptyDataError:
            continue
        except pd.errors.ParserError as error:
            first_line = str(error).strip().splitlines()[0]
            raise ValueError(f"{one} is not a readable CSV: {first_line}") from error
        if tuple(frame.columns) == LEGACY_COLUMNS:
            frame.insert(PROTOCOL, "protocol", "")
        if tuple(frame.columns) != COLUMNS:
            raise ValueError(f"{one} has columns {list(frame.columns)}; expected {list(COLUMNS)}")
        frame["protocol"] = frame["protocol"].fillna("")  # '' is read as absent
        frames.append(check_values(frame, one))
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)
    keys = [*KEY_COLUMNS, "step", "metric"]
    cut = frame[keys].isna().any(axis=1)
    if cut.any():
        log.warning("dropping %d incomplete row(s) of %s", int(cut.sum()), path)
        frame = frame[~cut].copy()
    if frame.empty:
        raise NoRunsError(f"{path} holds no measurements")
    for column in INTEGER_COLUMNS + FLOAT_COLUMNS:
        numbers = pd.to_numeric(frame[column], errors="coerce")
        bad = ~np.isfinite(numbers)
        if column in INTEGER_COLUMNS:
            bad |= numbers != numbers.round()
        if bad.any():
            kind = "integers" if column in INTEGER_COLUMNS else "numbers"
            example = frame.loc[bad, column].iloc[0]
            raise ValueError(f"{path}: column {column} must hold {kind}, found {example!r}")
        frame[column] = numbers.astype("int64" if column in INTEGER_COLUMNS else "float64")
    value = frame["value"].astype(float)  # every text a number (check_values)
    frame["value"] = value.where(np.isfinite(value))
    repeated = frame.duplicated(subset=keys, keep="last")
    if repeated.any():
        log.warning(
            "%s: %d measurement(s) appear more than once (a configuration written twice);"
            " the last written of each is kept, never both",
            path,
            int(repeated.sum()),
        )
        frame = frame[~repeated]
    return frame.sort_values(keys, kind="mergesort").reset_index(drop=True)


def is_number(text: object) -> bool:
    """Whether a CSV cell reads as a float ('nan' and 'inf' do; '' and 'abc' do not)."""
    try:
        float(text) if isinstance(text, str) else float("x")
    except ValueError:
        return False
    return True


def check_values(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    """The frame, its `value`s all numbers: a last line whose value is not one is a line torn by
    a kill, dropped with a warning; any other is a ValueError naming its line."""
    numeric = frame["value"].map(is_number)
    if len(frame) and not numeric.iloc[-1]:
        log.warning("dropping the torn last line of %s", path)
        frame, numeric = frame.iloc[:-1], numeric.iloc[:-1]
    if not numeric.all():
        first = int(numeric.to_numpy().argmin())
        text = frame["value"].iloc[first]
        shown = text if isinstance(text, str) else ""
        raise ValueError(f"{path} line {first + 2}: value {shown!r} is not a number")
    return frame


# What each fact may hold (estimators.csv is written by bench.runner.estimator_facts).
FACT_VALUES: dict[str, Callable[[str], bool]] = {
    "estimator": lambda v: v != "",
    "k": lambda v: v.isdigit() and int(v) >= 1,
    "objective": lambda v: v in ("elbo", "iwae"),
    "latent": lambda v: v in ("gaussian", "bernoulli", "categorical"),  # vae_core.models
    "biased": lambda v: v in ("0", "1"),
    "variance_reference": lambda v: v != "",
    "evaluations": lambda v: v.isdigit() and int(v) >= 1,
}


def check_facts(frame: pd.DataFrame, path: Path) -> None:
    """ValueError naming the line and column of the first fact that is missing or malformed
    (a truncated or edited estimators.csv)."""
    for line, row in enumerate(frame.itertuples(index=False), start=2):
        for column, valid in FACT_VALUES.items():
            value = getattr(row, column)
            if not valid(value):
                raise ValueError(
                    f"{path} line {line}: {column} {value!r} is not valid (a truncated or"
                    " edited file? `python -m bench run --resume` on the same suite rewrites it)"
                )


def load_facts(out_dir: Path) -> pd.DataFrame:
    """DIR/estimators.csv (and DIR/gpu/estimators.csv), one row per (estimator, k), FACT_COLUMNS
    typed (`k`, `evaluations` integers, `biased` bool, '' references as None); ValueError when
    absent, naming the command that writes it."""
    import pandas as pd

    paths = (out_dir / "estimators.csv", out_dir / "gpu" / "estimators.csv")
    present = [p for p in paths if p.is_file()]
    if not present:
        raise ValueError(
            f"no estimators.csv in {out_dir}: it is written by `python -m bench run` (with "
            "--resume on finished results it trains nothing and writes it)"
        )
    frames = []
    for path in present:
        try:
            one = pd.read_csv(path, dtype=str, keep_default_na=False)
        except (pd.errors.EmptyDataError, pd.errors.ParserError) as error:
            reason = str(error).strip().splitlines()[0]
            raise ValueError(f"{path} is not a readable CSV: {reason}") from None
        one = one.assign(**{c: v for c, v in OPTIONAL_FACT_COLUMNS.items() if c not in one})
        if tuple(one.columns) != FACT_COLUMNS:
            raise ValueError(
                f"{path} has columns {list(one.columns)}; expected {list(FACT_COLUMNS)}"
            )
        check_facts(one, path)
        frames.append(one)
    frame = pd.concat(frames, ignore_index=True)
    frame = frame.drop_duplicates(subset=["estimator", "k"], keep="first")
    frame["k"] = frame["k"].astype("int64")
    frame["evaluations"] = frame["evaluations"].astype("int64")
    frame["biased"] = frame["biased"] == "1"
    for column in ("bias_reference", "variance_reference"):
        frame[column] = frame[column].where(frame[column] != "", None)
    return frame.set_index(["estimator", "k"]).sort_index()
