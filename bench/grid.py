"""A suite's grid changed without editing code: overrides from the command line (`Overrides`,
`apply_overrides`) and suites read from a TOML file (`load_suite_file`). docs/cli.md states the
semantics; every bad value is a GridError (one line) before anything is written.

Grid axes replace the suite's values, configuration by configuration: `models` pairs each
estimator only with the models of its latent type, `kl` and `k` set every configuration's KL
mode and K. A combination an estimator refuses (`check_options`) is dropped with a note; an
estimator named explicitly (--estimators, or a TOML suite's `estimators`) that is left with no
configuration is an error, as is a grid left empty.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.suites import MODELS, PAPER_PROTOCOLS, RunConfig, Suite
from vae_core.data import DATASETS
from vae_core.estimators import KL_MODES, REGISTRY, EstimatorError, check_options
from vae_core.estimators.base import resolve_options

# RunConfig's measurement settings, settable in a TOML suite's [measurement] table, with their
# smallest valid values (the SNR floor's sd needs 4 draws, log spacing 2 checkpoints).
MEASUREMENT_MINIMUM = {
    "n_checkpoints": 2,
    "elbo_checkpoints": 1,
    "grad_draws": 4,
    "grad_batch": 1,
    "eval_examples": 1,
    "nll_samples": 1,
    "nll_examples": 1,
    "timed_steps": 1,
    "bias_draws": 4,
    "shared_adapt_steps": 1,
}
SUITE_KEYS = (
    "name",
    "description",
    "protocol",
    "dataset",
    "models",
    "estimators",
    "kl",
    "k",
    "beta",
    "seeds",
    "steps",
    "batch_size",
    "lr",
    "measurement",
    "options",
)

Note = Callable[[str], None]  # where a dropped combination is reported (stderr in the CLI)


class GridError(ValueError):
    """A bad override or suite file: one line saying what is wrong and what is valid."""


@dataclass(frozen=True)
class Overrides:
    """What replaces the suite's grid and protocol; None leaves the suite's own."""

    estimators: tuple[str, ...] | None = None  # keep only these (each must keep a run)
    dataset: str | None = None
    models: tuple[str, ...] | None = None
    kl: tuple[str, ...] | None = None
    k: tuple[int, ...] | None = None
    beta: tuple[float, ...] | None = None
    seeds: tuple[int, ...] | None = None
    settings: dict[str, object] = field(default_factory=dict)  # RunConfig field → value
    options: dict[str, dict[str, float]] = field(default_factory=dict)  # estimator → options


def parse_seeds(text: str) -> tuple[int, ...]:
    """--seeds: `A-B` (A to B inclusive), `A,B,...`, or a bare N meaning 0..N−1."""
    try:
        if "-" in text:
            first, last = (int(part) for part in text.split("-"))
            seeds = tuple(range(first, last + 1))
        elif "," in text:
            seeds = tuple(int(part) for part in text.split(",") if part.strip())
        else:
            seeds = tuple(range(int(text)))
    except ValueError:
        seeds = ()
    if not seeds or min(seeds) < 0 or len(set(seeds)) < len(seeds):
        raise GridError(
            f"--seeds {text!r} is invalid; valid: A-B (e.g. 0-4), a list (e.g. 0,3) or a count N"
            " >= 1 (seeds 0..N-1)"
        )
    return seeds


def parse_list(text: str, flag: str, kind: Callable[[str], object]) -> tuple:
    """A comma-separated --flag value, each item read by `kind`."""
    try:
        items = tuple(kind(item.strip()) for item in text.split(","))
    except ValueError:
        items = ()
    if not items:
        raise GridError(f"{flag} {text!r} is invalid; valid: a comma-separated list")
    return items


def parse_option(text: str) -> tuple[str, str, float]:
    """--option ESTIMATOR.NAME=VALUE."""
    target, _, value = text.partition("=")
    estimator, _, name = target.partition(".")
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not (estimator and name and math.isfinite(number)):
        raise GridError(f"--option {text!r} is invalid; valid: ESTIMATOR.NAME=NUMBER")
    return estimator, name, number


def check_values(overrides: Overrides) -> None:
    """Every value of `overrides` known and in range, else a GridError."""
    o = overrides
    unknown = [e for e in (o.estimators or ()) + tuple(o.options) if e not in REGISTRY]
    if unknown:
        raise GridError(f"unknown estimator {unknown[0]!r}; valid: {', '.join(REGISTRY)}")
    for name, valid in ((o.dataset, DATASETS), *((m, MODELS) for m in o.models or ())):
        if name is not None and name not in valid:
            kind = "data set" if valid is DATASETS else "model"
            raise GridError(f"unknown {kind} {name!r}; valid: {', '.join(valid)}")
    for kl in o.kl or ():
        if kl not in KL_MODES:
            raise GridError(f"unknown KL mode {kl!r}; valid: {', '.join(KL_MODES)}")
    if any(not (isinstance(k, int) and k >= 1) for k in o.k or ()):
        raise GridError(f"K must be integers >= 1, got {list(o.k)}")
    if any(not (math.isfinite(b) and b >= 0) for b in o.beta or ()):
        raise GridError(f"beta must be finite numbers >= 0, got {list(o.beta)}")
    for name, value in o.settings.items():
        if name == "learning_rate":
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise GridError(f"the learning rate must be a number > 0, got {value!r}")
            continue
        least = MEASUREMENT_MINIMUM.get(name, 1)  # steps, batch_size: >= 1
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise GridError(f"{name} must be an integer >= {least}, got {value!r}")
    for estimator, options in o.options.items():
        try:
            resolve_options(REGISTRY[estimator], options)
        except EstimatorError as error:
            raise GridError(str(error)) from None


def apply_overrides(suite: Suite, overrides: Overrides, note: Note) -> Suite:
    """The suite with `overrides` applied (module docstring); GridError for bad values."""
    check_values(overrides)
    o = overrides
    runs = list(suite.runs)
    if o.estimators is not None:
        missing = [e for e in o.estimators if e not in {r.estimator for r in runs}]
        if missing:
            raise GridError(f"estimator {missing[0]!r} is not in suite {suite.name!r}")
        runs = [r for r in runs if r.estimator in o.estimators]
    axes = [("dataset", (o.dataset,) if o.dataset else None), ("kl", o.kl), ("k", o.k)]
    axes += [("beta", o.beta), ("seed", o.seeds)]
    if o.models is not None:
        latent = {r.estimator: REGISTRY[r.estimator].latent for r in runs}
        runs = [
            dataclasses.replace(r, model=m)
            for r in runs
            for m in o.models
            if MODELS[m].latent == latent[r.estimator]
        ]
    for name, values in axes:
        if values is not None:
            runs = [dataclasses.replace(r, **{name: v}) for r in runs for v in values]
    runs = [dataclasses.replace(r, **o.settings, options=options_of(r, o)) for r in runs]
    named = set(o.estimators or ())
    absent = sorted(set(o.options) - {r.estimator for r in runs})
    if absent:
        note(f"note: --option for {', '.join(absent)}, which the grid does not run")
    return dataclasses.replace(suite, runs=valid_runs(runs, named, note))


def options_of(run: RunConfig, overrides: Overrides) -> tuple[tuple[str, float], ...]:
    """The run's options with those of `overrides` for its estimator, defaults left out (a value
    equal to the default changes no number, so it changes no protocol)."""
    defaults = REGISTRY[run.estimator].options
    merged = {**dict(run.options), **overrides.options.get(run.estimator, {})}
    return tuple(sorted((n, float(v)) for n, v in merged.items() if v != defaults[n]))


def valid_runs(runs: list[RunConfig], named: set[str], note: Note) -> tuple[RunConfig, ...]:
    """`runs` without repeats and without the combinations their estimator refuses (a note
    each); GridError when an estimator of `named` or the whole grid is left with none."""
    kept: dict[RunConfig, None] = {}
    refused: dict[str, str] = {}
    for run in dict.fromkeys(runs):
        try:
            check_options(REGISTRY[run.estimator], run.kl, run.k, run.beta)
        except EstimatorError as error:
            refused.setdefault(f"{run.estimator}/{run.kl}/K={run.k}", str(error))
            continue
        if run.centre_inputs and MODELS[run.model].latent != "bernoulli":
            refused.setdefault(
                f"{run.estimator}/{run.kl}/K={run.k}",
                f"the protocol centres the inputs (x − mean, 2b − 1), defined for binary latents"
                f" only, and {run.model} has {MODELS[run.model].latent} latents",
            )
            continue
        kept[run] = None
    left = {r.estimator for r in kept}
    for estimator in sorted(named - left):
        reasons = [why for combination, why in refused.items() if combination.startswith(estimator)]
        why = reasons[0] if reasons else "no model of its latent type"
        raise GridError(f"estimator {estimator!r} has no valid configuration: {why}")
    for combination in refused:
        note(f"note: {combination} dropped: {refused[combination]}")
    if not kept:
        raise GridError("the grid is empty: no configuration is left after the overrides")
    return tuple(kept)


def load_suite_file(path: Path, note: Note) -> Suite:
    """A suite from a TOML file (schema: docs/cli.md); GridError naming the file and the first
    unknown key or bad value. Needs Python >= 3.11 (its stdlib tomllib)."""
    try:
        import tomllib
    except ImportError:
        raise GridError("a TOML suite needs Python >= 3.11 (tomllib)") from None
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise GridError(f"cannot read suite file {path}: {error}") from None
    try:
        return suite_of(table, path.stem, note)
    except GridError as error:
        raise GridError(f"{path}: {error}") from None


def suite_of(table: dict, default_name: str, note: Note) -> Suite:
    """The suite a parsed TOML file describes: every estimator of `estimators` on every model
    of its latent type, at each KL mode of `kl` (default: those it supports) and K of `k`
    (default: its smallest), each β and seed; with `protocol`, a paper protocol's settings
    (PAPER_PROTOCOLS: data set, optimiser, batch, steps, test bound) before the file's own."""
    unknown = sorted(set(table) - set(SUITE_KEYS))
    if unknown:
        raise GridError(f"unknown key {unknown[0]!r}; valid: {', '.join(SUITE_KEYS)}")
    for key in ("models", "estimators"):
        if key not in table:
            raise GridError(f"missing key {key!r} (a list)")
    measurement = table.get("measurement", {})
    if not isinstance(measurement, dict) or set(measurement) - set(MEASUREMENT_MINIMUM):
        raise GridError(f"[measurement] may set only {', '.join(MEASUREMENT_MINIMUM)}")
    options = table.get("options", {})
    if not isinstance(options, dict) or not all(isinstance(v, dict) for v in options.values()):
        raise GridError("[options] holds one table per estimator, e.g. [options.gumbel]")
    settings = {"steps": table.get("steps"), "batch_size": table.get("batch_size")}
    settings |= {"learning_rate": table.get("lr"), **measurement}
    overrides = Overrides(
        estimators=strings(table, "estimators"),
        dataset=table.get("dataset"),
        models=strings(table, "models"),
        kl=strings(table, "kl") if "kl" in table else None,
        k=numbers(table, "k", int) if "k" in table else None,
        beta=numbers(table, "beta", float) if "beta" in table else None,
        seeds=numbers(table, "seeds", int) if "seeds" in table else (0,),
        settings={name: value for name, value in settings.items() if value is not None},
        options=options,
    )
    if overrides.dataset is not None and not isinstance(overrides.dataset, str):
        raise GridError(f"dataset must be a string, got {overrides.dataset!r}")
    if any(s < 0 for s in overrides.seeds):
        raise GridError(f"seeds must be integers >= 0, got {list(overrides.seeds)}")
    check_values(overrides)
    paper = table.get("protocol")
    if paper is not None and paper not in PAPER_PROTOCOLS:
        raise GridError(f"unknown protocol {paper!r}; valid: {', '.join(PAPER_PROTOCOLS)}")
    base = PAPER_PROTOCOLS[paper] if paper else RunConfig()
    starts = [
        dataclasses.replace(base, estimator=e, kl=kl, k=REGISTRY[e].min_particles)
        for e in overrides.estimators
        for kl in REGISTRY[e].kl_modes
    ]
    name = table.get("name", default_name)
    description = table.get("description", f"from a suite file ({name})")
    base = Suite(str(name), str(description), tuple(starts), float("nan"))
    return apply_overrides(base, overrides, note)  # every estimator of the file is named


def strings(table: dict, key: str) -> tuple[str, ...]:
    values = table[key]
    if not (isinstance(values, list) and values and all(isinstance(v, str) for v in values)):
        raise GridError(f"{key} must be a non-empty list of strings, got {values!r}")
    return tuple(values)


def numbers(table: dict, key: str, kind: type) -> tuple:
    values = table[key]
    ok = kind is float and all(isinstance(v, (int, float)) for v in values or [None])
    ok |= kind is int and all(type(v) is int for v in values or [None])
    if not (isinstance(values, list) and values and ok):
        raise GridError(f"{key} must be a non-empty list of {kind.__name__}s, got {values!r}")
    return tuple(kind(v) for v in values)
