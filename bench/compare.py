"""Does a results directory agree with a reference one? Reads the two directories only.

Configurations are paired by identity (data set, model, estimator, KL, K, β, device; seeds
pooled) and judged metric by metric at their final step, on the finished runs of both:
- `identical`: every seed both ran gives the same value to rounding (relative 1e-6). Two runs of
  one commit on one machine are identical: every measurement draws from generators seeded by
  (seed, step).
- otherwise, with at least two seeds on each side, `agree` or `differ`: whether the difference of
  the seed means lies within its 95% interval (Welch's t over seeds, Bonferroni-corrected over
  every pair so judged: a family-wise 5% chance that a run of the same code on another machine
  is called different anywhere); `untested` with fewer seeds.
- timings (`TIMING_METRICS`) belong to a machine: listed, not judged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from bench.report.data import ROW, final_values, run_status
from bench.results import COMPLETE, COST_COMPLETE, load_runs

TIMING_METRICS = frozenset(
    {"train_seconds", "throughput", "grad_seconds", "work_var_encoder", "work_var_decoder"}
)
MARKERS = frozenset({COMPLETE, COST_COMPLETE})
ROUNDING = 1e-6  # relative difference that counts as equal
FAMILY_LEVEL = 0.05
CONFIGURATION = [*ROW, "device"]


@dataclass(frozen=True)
class Verdict:
    """One metric of one configuration: `identical`, `agree`, `differ` or `untested`."""

    configuration: tuple[object, ...]  # CONFIGURATION's values
    metric: str
    verdict: str
    ours: np.ndarray  # per-seed values
    reference: np.ndarray

    def label(self) -> str:
        dataset, model, estimator, kl, k, beta, device = self.configuration
        beta_text = f"/beta={beta:g}" if beta != 1 else ""
        return f"{dataset}/{model} {estimator}/{kl}/K={k}{beta_text} ({device})"


def finals_by_seed(out_dir: Path) -> pd.DataFrame:
    """Final values of the finished runs in DIR: index CONFIGURATION + seed, a column a metric."""
    runs = load_runs(out_dir)
    return final_values(runs, run_status(runs))


def identical(ours: pd.Series, reference: pd.Series) -> bool:
    """Equal to rounding at every seed both ran (and at least one such seed)."""
    shared = ours.index.intersection(reference.index)
    if shared.empty:
        return False
    a, b = ours[shared].to_numpy(), reference[shared].to_numpy()
    return bool(np.all(np.abs(a - b) <= ROUNDING * np.maximum(np.abs(a), np.abs(b))))


def welch_p_value(ours: np.ndarray, reference: np.ndarray) -> float:
    """Two-sided p-value of Welch's t-test of equal means (1 when neither side varies and the
    means are equal; 0 when neither varies and they are not)."""
    var = ours.var(ddof=1) / len(ours) + reference.var(ddof=1) / len(reference)
    difference = ours.mean() - reference.mean()
    if var == 0:
        return float(difference == 0)
    return float(stats.ttest_ind(ours, reference, equal_var=False).pvalue)


def compare(ours_dir: Path, reference_dir: Path) -> tuple[list[Verdict], list[str]]:
    """The verdict of every (configuration, metric) shared by both directories, timings aside,
    and the timing metrics they share (not judged)."""
    ours, reference = finals_by_seed(ours_dir), finals_by_seed(reference_dir)
    metrics = sorted((set(ours.columns) & set(reference.columns)) - MARKERS)
    timings = [m for m in metrics if m in TIMING_METRICS]
    judged = [m for m in metrics if m not in TIMING_METRICS]
    configurations = ours.groupby(CONFIGURATION).groups.keys()
    shared = sorted(set(configurations) & set(reference.groupby(CONFIGURATION).groups.keys()))
    pending: list[tuple[tuple[object, ...], str, pd.Series, pd.Series]] = []
    verdicts: list[Verdict] = []
    for configuration in shared:
        for metric in judged:
            a = ours.loc[configuration, metric].dropna()
            b = reference.loc[configuration, metric].dropna()
            if a.empty or b.empty:
                continue
            if identical(a, b):
                verdicts.append(Verdict(configuration, metric, "identical", a.values, b.values))
            elif min(len(a), len(b)) < 2:
                verdicts.append(Verdict(configuration, metric, "untested", a.values, b.values))
            else:
                pending.append((configuration, metric, a, b))
    level = FAMILY_LEVEL / max(1, len(pending))  # Bonferroni
    for configuration, metric, a, b in pending:
        p = welch_p_value(a.to_numpy(), b.to_numpy())
        verdict = "agree" if p > level else "differ"
        verdicts.append(Verdict(configuration, metric, verdict, a.values, b.values))
    return verdicts, timings


def summary_lines(verdicts: list[Verdict], timings: list[str], reference: Path) -> list[str]:
    """What a person reads: those that differ or were not tested, by name, then the verdict."""
    if not verdicts:
        return [f"no finished configuration and metric in common with the reference {reference}"]
    lines = []
    for kind in ("differ", "untested"):
        for v in (v for v in verdicts if v.verdict == kind):
            lines.append(
                f"{kind}: {v.label()} {v.metric}: mean {v.ours.mean():.6g} over "
                f"{len(v.ours)} seed(s), reference {v.reference.mean():.6g} over "
                f"{len(v.reference)}"
            )
    configurations = len({v.configuration for v in verdicts})
    counts = {kind: sum(v.verdict == kind for v in verdicts) for kind in ("identical", "agree")}
    if timings:
        lines.append(f"timings, machine-dependent and not judged: {', '.join(timings)}")
    tally = (
        f"{configurations} configurations, {len(verdicts)} final metrics: "
        f"{counts['identical']} identical to rounding, {counts['agree']} within their intervals"
    )
    differ = [v for v in verdicts if v.verdict == "differ"]
    if differ:
        lines.append(
            f"{len(differ)} of your numbers do not agree with the reference {reference} "
            f"(listed above; {tally})"
        )
    else:
        lines.append(
            f"your numbers agree with the reference {reference} within their intervals ({tally})"
        )
    return lines
