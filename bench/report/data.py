"""A results directory, loaded and aggregated once: runs.csv (+ gpu/runs.csv), the estimators'
facts (estimators.csv), env.json, the toy figure's data (toy.csv), each configuration's status
and final metrics, and which runs stand for each table row.

A configuration is (dataset, model, estimator, kl, k, beta, device, seed, protocol). It is
*finished* with a `run_complete` row, *diverged* with a `diverged` row (its later metrics are
absent), and *running* otherwise. "Final" means the last step at which a finished configuration
has the metric. A table row pools the seeds of (dataset, model, estimator, kl, k, beta,
protocol) on its primary device (cpu when it ran there).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bench.results import COMPLETE, DIVERGED, KEY_COLUMNS, load_facts, load_runs

CONFIG: list[str] = list(KEY_COLUMNS)
# A table row: seeds pooled.
ROW: list[str] = ["dataset", "model", "estimator", "kl", "k", "beta", "protocol"]
GROUP: list[str] = ["dataset", "model"]  # one table / one facet row per (dataset, model)


@dataclass(frozen=True)
class Results:
    """Everything the report reads, computed once (`load`)."""

    runs: pd.DataFrame  # every row, typed (bench.results.load_runs)
    facts: pd.DataFrame  # estimators.csv, indexed by (estimator, k)
    envs: dict[str, dict[str, object]]  # env.json records by device
    toy: pd.DataFrame | None  # toy.csv, None when absent
    status: pd.DataFrame  # run_status
    finals: pd.DataFrame  # final_values of finished configurations
    primary: pd.DataFrame  # the rows of non-running configurations on their primary device
    primary_finals: pd.DataFrame  # finals of those configurations

    @classmethod
    def load(cls, out_dir: Path) -> Results:
        """The results in DIR (bench.results.load_runs, load_facts; env.json; toy.csv)."""
        toy_path = out_dir / "toy.csv"
        toy = pd.read_csv(toy_path) if toy_path.is_file() else None
        return cls.of(load_runs(out_dir), load_facts(out_dir), load_envs(out_dir), toy)

    @classmethod
    def of(
        cls,
        runs: pd.DataFrame,
        facts: pd.DataFrame,
        envs: dict[str, dict[str, object]] | None = None,
        toy: pd.DataFrame | None = None,
    ) -> Results:
        """Results from loaded frames, the aggregates computed here once."""
        status = run_status(runs)
        finals = final_values(runs, status)
        primary = primary_runs(runs, status)
        primary_finals = finals[finals.index.isin(primary.set_index(CONFIG).index)]
        return cls(runs, facts, envs or {}, toy, status, finals, primary, primary_finals)

    def protocols_as_series(self) -> Results:
        """For the plots, which draw a series per (estimator, K, β): in each (dataset, model)
        section where the protocol varies, the estimator renamed `estimator [settings]` (the
        settings in which the section's protocols differ, `protocol_labels`), with its facts, so
        that each protocol is a series of its own and its label says which; the results
        themselves where no section varies."""
        varies = self.runs.groupby(GROUP)["protocol"].transform("nunique") > 1
        if not varies.any():
            return self
        runs = self.runs.copy()
        for _, section in runs[varies].groupby(GROUP):
            labels = protocol_labels(section["protocol"].unique())
            tags = section["protocol"].map(labels)
            runs.loc[section.index, "estimator"] = section["estimator"] + " [" + tags + "]"
        names = runs.loc[varies, ["estimator", "k"]].drop_duplicates()
        original = self.runs.loc[names.index, "estimator"]
        added = self.facts.loc[list(zip(original, names["k"], strict=True))]
        added.index = pd.MultiIndex.from_frame(names, names=self.facts.index.names)
        facts = pd.concat([self.facts, added]).sort_index()
        return Results.of(runs, facts, self.envs, self.toy)

    def fact(self, estimator: str, k: int, name: str) -> object:
        """One fact (a column of estimators.csv) of `estimator` at K = k; ValueError naming the
        pair when estimators.csv lacks it."""
        try:
            return self.facts.loc[(estimator, int(k)), name]
        except KeyError:
            raise ValueError(f"estimators.csv has no row for {estimator} at K = {k}") from None

    def any_fact(self, estimator: str, name: str) -> object:
        """A fact that does not depend on K (objective, latent, references)."""
        return self.facts.loc[estimator, name].iloc[0]


def parse_protocol(text: str) -> dict[str, str]:
    """A protocol key (`name=value;...`, bench.suites.RunConfig.protocol) as a dict; the values
    hold no `;` (tuples are written `(a,b)`)."""
    pairs = (part.partition("=") for part in text.split(";") if part)
    return {name: value for name, _, value in pairs}


def protocol_labels(protocols: Iterable[str]) -> dict[str, str]:
    """A short label per protocol key of one section: only the settings in which they differ,
    `name=value` (`name=default` where a protocol leaves it at RunConfig's default), or
    'default' for a protocol that sets none of them. The whole keys are in summary.md."""
    parsed = {text: parse_protocol(text) for text in protocols}
    names = list(dict.fromkeys(name for settings in parsed.values() for name in settings))
    differing = [
        name for name in names if len({settings.get(name) for settings in parsed.values()}) > 1
    ]
    labels = {}
    for text, settings in parsed.items():
        if not any(name in settings for name in differing):
            labels[text] = "default"
        else:
            labels[text] = ";".join(f"{n}={settings.get(n, 'default')}" for n in differing)
    return labels


def format_beta(beta: float) -> str:
    """β compactly: 1, 0.5, 4, 0.25."""
    return f"{float(beta):g}"


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
    configs["diverged_step"] = diverged.reindex(configs.index)
    finished = configs.index.isin(complete.index)
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
