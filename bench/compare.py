"""Two results directories side by side; reads the directories only (no torch, no vae_core).

Both commands pair configurations by identity (data set, model, estimator, KL, K, β, device)
and take each metric at its final step over the finished seeds (`finals_by_seed`).

`python -m bench compare A B` (`compare_sets`): per metric of METRICS, A, B, the effect B ÷ A
(variances, SNRs, times, throughput) or B − A (NLL, ELBO, rate, distortion, bias²) with its 95%
interval (`effect_interval`), and a verdict: `better` or `worse` when the interval excludes no
change (direction per metric), `changed` for a metric without a direction, `no detectable
difference`, or `untested` (one seed and no standard error). A configuration that ran on no
device in common is paired across devices (cpu vs cuda). Each interval is a 95% one: over many
rows a few `better`/`worse` verdicts are expected by chance alone; `--fail-if` rules gate on
chosen metrics. Timings are labelled, and flagged when env.json names different machines.

`--fail-if` rule grammar: METRIC:EFFECT OP THRESHOLD, no spaces, where EFFECT is the metric's
own (`ratio` or `diff`), OP is `>` or `<`, THRESHOLD a number: `grad_var_encoder:ratio>1.10`
fails when some configuration's whole 95% interval of B ÷ A lies above 1.10,
`nll_test:diff>0.5` when B − A is above 0.5 nats beyond its interval, `elbo_test:diff<-1` when
it is below −1. Exit 1 when a rule is crossed, 0 otherwise, 2 for bad arguments.

`python -m bench agree --out DIR --reference REF` (`compare`), run by `make bench`:
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

import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from bench.report.data import ROW, final_values, load_envs, primary_device, run_status
from bench.report.stats import LEVEL, Z, log_ratio_interval, pooled_se, t_interval
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
        return label(self.configuration)


def finals_by_seed(out_dir: Path) -> pd.DataFrame:
    """Final values of the finished runs in DIR: index CONFIGURATION + seed, a column a metric."""
    runs = load_runs(out_dir)
    finals = final_values(runs, run_status(runs)).reset_index()
    return finals.set_index([*CONFIGURATION, "seed"]).sort_index()


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


# ---------------------------------------------------------------------------------------------
# `python -m bench compare A B`: every shared metric with its effect, interval and verdict.


@dataclass(frozen=True)
class Metric:
    """How a metric is compared: `ratio` (B ÷ A) or `diff` (B − A); `better` is "lower",
    "higher" or None (no direction: a detectable change is called `changed`); `se` names the
    column of its per-seed standard error from the R draws (gradient statistics), if any;
    `once` marks a metric that the cost pass times once per configuration and copies to every
    seed (or that carries such a time as a factor): its seeds are not repeats, so it gets no
    interval, only its effect (`untested`)."""

    effect: str
    better: str | None
    se: str | None = None
    timing: bool = False
    once: bool = False


METRICS: dict[str, Metric] = {
    "nll_test": Metric("diff", "lower"),
    "elbo_test": Metric("diff", "higher"),
    "elbo_train": Metric("diff", "higher"),
    "rate_test": Metric("diff", None),
    "distortion_test": Metric("diff", "lower"),
    "snr_encoder": Metric("ratio", "higher"),
    "snr_decoder": Metric("ratio", "higher"),
    "train_seconds": Metric("ratio", "lower", timing=True),
    "grad_seconds": Metric("ratio", "lower", timing=True, once=True),
    "throughput": Metric("ratio", "higher", timing=True, once=True),
    **{
        f"{name}_{part}": metric
        for part in ("encoder", "decoder")
        for name, metric in (
            ("grad_var", Metric("ratio", "lower", f"grad_var_se_{part}")),
            ("grad_bias", Metric("diff", "lower", f"grad_bias_se_{part}")),
            ("grad_mse", Metric("ratio", "lower")),
            ("work_var", Metric("ratio", "lower", timing=True, once=True)),
        )
    },
}
NULL = {"ratio": 1.0, "diff": 0.0}  # the effect of no change
VERDICT_ORDER = ("worse", "changed", "untested", "no detectable difference", "better")


@dataclass(frozen=True)
class Row:
    """One metric of one configuration pair: A's and B's values (means over the seeds used),
    the effect B ÷ A or B − A with its 95% interval [low, high], how the interval was obtained
    (`method`) and the verdict."""

    label: str
    metric: str
    a: float
    b: float
    effect: float
    low: float
    high: float
    method: str
    verdict: str
    seeds: int  # shared seeds when paired, else A's + B's

    @property
    def badness(self) -> float:
        """How far the effect lies on the worse side of no change (log scale for ratios)."""
        spec = METRICS[self.metric]
        shift = np.log(self.effect) if spec.effect == "ratio" else self.effect
        shift = float(shift) if np.isfinite(shift) else 0.0
        return -shift if spec.better == "higher" else abs(shift) if spec.better is None else shift


@dataclass(frozen=True)
class Comparison:
    """Everything `compare` prints: rows sorted worst first, configurations in one set only,
    and each side's machine per device (env.json), for labelling timings."""

    rows: list[Row]
    only_a: list[str]
    only_b: list[str]
    machines_a: dict[str, str]
    machines_b: dict[str, str]
    cross_machine: bool


def effect_interval(
    spec: Metric, a: pd.DataFrame, b: pd.DataFrame, metric: str
) -> tuple[float, float, float, str]:
    """(effect, low, high, method) for `metric` from per-seed frames a, b (index: seed; the seeds
    `seeds_used` keeps).

    - The same seeds on both sides, equal to rounding at each (`identical`): no change, an
      interval of width 0. Runs are deterministic given the seed, so two runs of one commit on
      one machine land here whatever their number of seeds.

    - A gradient statistic with standard errors: seed means and their pooled standard errors
      (`stats.pooled_se`, as the summary table pools seeds); a ratio by
      `stats.log_ratio_interval`, a difference as Δ ± z √(se_A² + se_B²). The two sides are
      treated as independent; at a shared seed both draw from generators seeded
      alike, so any correlation is positive and the interval conservative. The standard error
      of a variance is that of one scalar over the R draws, so the correlation between gradient
      coordinates is already inside it.
    - Otherwise, with at least two shared seeds: the paired t interval (`stats.t_interval`) on
      the per-seed differences B − A, or on log B − log A for a ratio (exponentiated).
    - Otherwise, with two seeds or more on each side: Welch's interval for the difference of the
      means (of the logs for a ratio).
    - Else, or for a metric timed once per configuration (`Metric.once`), the interval is NaN
      (`untested`): copies of one timing over seeds would give it a width of 0.
    """
    shared = a.index.intersection(b.index)
    null = NULL[spec.effect]
    if len(shared) == len(a) == len(b) and identical(a[metric], b[metric]):
        return null, null, null, "identical at every seed"
    if has_se(spec, a, b) and a[spec.se].notna().all():
        mean_a, mean_b = a[metric].mean(), b[metric].mean()
        se_a, se_b = pooled_se(a[spec.se]), pooled_se(b[spec.se])
        if spec.effect == "ratio":
            ratio, low, high = log_ratio_interval(mean_b, se_b, mean_a, se_a)
            return float(ratio), float(low), float(high), "R draws' standard errors"
        half = Z * float(np.hypot(se_a, se_b))
        diff = mean_b - mean_a
        return diff, diff - half, diff + half, "R draws' standard errors"
    to_scale = np.log if spec.effect == "ratio" else (lambda x: x)
    back = np.exp if spec.effect == "ratio" else (lambda x: x)
    with np.errstate(divide="ignore", invalid="ignore"):
        x, y = to_scale(a[metric].to_numpy(float)), to_scale(b[metric].to_numpy(float))
        if spec.once:
            centre, half = float(np.mean(y) - np.mean(x)), np.nan
            method = "timed once per configuration: untested"
        elif len(shared) >= 2:
            d = to_scale(b.loc[shared, metric].to_numpy(float)) - to_scale(
                a.loc[shared, metric].to_numpy(float)
            )
            centre, half = t_interval(d)
            method = f"paired t over {len(shared)} seeds"
        elif min(len(x), len(y)) >= 2:
            centre, half = welch_interval(x, y)
            method = "Welch t over seeds"
        else:
            centre, half = float(np.mean(y) - np.mean(x)), np.nan
            method = "one seed: untested"
    return float(back(centre)), float(back(centre - half)), float(back(centre + half)), method


def seeds_used(spec: Metric, a: pd.DataFrame, b: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The seeds a comparison uses: those both sides ran when they can be paired (two or more, or
    one for a gradient statistic with standard errors), else every seed of each side. A's and
    B's printed means are over these seeds too, so that they agree with the effect."""
    shared = a.index.intersection(b.index)
    if len(shared) >= 2 or (len(shared) and has_se(spec, a, b)):
        return a.loc[shared], b.loc[shared]
    return a, b


def has_se(spec: Metric, a: pd.DataFrame, b: pd.DataFrame) -> bool:
    """Whether both sides carry the metric's standard-error column from the R draws."""
    return bool(spec.se) and spec.se in a and spec.se in b


def welch_interval(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Mean difference ȳ − x̄ and the half-width of its 95% Welch interval:
    t_{0.975, ν} √(s_x²/n_x + s_y²/n_y), ν by Welch–Satterthwaite (0 when neither side varies)."""
    vx, vy = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    diff = float(y.mean() - x.mean())
    if vx + vy == 0:
        return diff, 0.0
    dof = (vx + vy) ** 2 / (vx**2 / (len(x) - 1) + vy**2 / (len(y) - 1))
    return diff, float(stats.t.ppf(0.5 + LEVEL / 2, dof) * np.sqrt(vx + vy))


def verdict_of(spec: Metric, low: float, high: float) -> str:
    """`better` or `worse` when the 95% interval excludes no change (`changed` for a metric
    without a direction), `no detectable difference` when it holds it, `untested` when NaN."""
    null = NULL[spec.effect]
    if not (np.isfinite(low) and np.isfinite(high)):
        return "untested"
    if low <= null <= high:
        return "no detectable difference"
    if spec.better is None:
        return "changed"
    up = low > null
    return "worse" if up == (spec.better == "lower") else "better"


def machine(env: dict[str, object]) -> str:
    """A machine in words, from an env.json record: device name, device, threads."""
    name = env.get("device_name") or env.get("cpu") or "unknown"
    return f"{name} ({env.get('device', 'cpu')}, {env.get('threads', '?')} threads)"


def pairs(a: pd.DataFrame, b: pd.DataFrame) -> tuple[list[tuple[tuple, tuple]], list, list]:
    """Configurations of A and B paired by identity (ROW): on each device both ran, else A's
    primary device with B's (a cpu set against a gpu one); the rest listed as in one set only."""
    keys_a = set(a.index.droplevel("seed").unique()) if len(a) else set()
    keys_b = set(b.index.droplevel("seed").unique()) if len(b) else set()
    matched, rows_a, rows_b = [], {}, {}
    for key in keys_a:
        rows_a.setdefault(key[:-1], set()).add(key[-1])
    for key in keys_b:
        rows_b.setdefault(key[:-1], set()).add(key[-1])
    for row in sorted(set(rows_a) & set(rows_b)):
        common = rows_a[row] & rows_b[row]
        if common:
            matched += [((*row, d), (*row, d)) for d in sorted(common)]
        else:
            da, db = primary_device(rows_a[row]), primary_device(rows_b[row])
            matched.append(((*row, da), (*row, db)))
    used_a = {pair[0] for pair in matched}
    used_b = {pair[1] for pair in matched}
    return matched, sorted(keys_a - used_a), sorted(keys_b - used_b)


def label(configuration: tuple, other_device: str | None = None) -> str:
    """dataset/model estimator/kl/K=k[/beta=β][/protocol] (device[ vs other device])."""
    dataset, model, estimator, kl, k, beta, protocol, device = configuration
    beta_text = f"/beta={beta:g}" if beta != 1 else ""
    protocol_text = f"/{protocol}" if protocol else ""
    devices = device if other_device in (None, device) else f"{device} vs {other_device}"
    return f"{dataset}/{model} {estimator}/{kl}/K={k}{beta_text}{protocol_text} ({devices})"


def compare_sets(dir_a: Path, dir_b: Path, metrics: list[str] | None = None) -> Comparison:
    """Every metric of METRICS (or of `metrics`) that a configuration pair has on both sides,
    at its final step over finished seeds: effect, interval and verdict, worst first."""
    a, b = finals_by_seed(Path(dir_a)), finals_by_seed(Path(dir_b))
    matched, only_a, only_b = pairs(a, b)
    names = [m for m in (metrics or METRICS) if m in a.columns and m in b.columns]
    rows = []
    for key_a, key_b in matched:
        side_a, side_b = a.loc[key_a], b.loc[key_b]
        for metric in names:
            spec = METRICS[metric]
            columns = [metric] + ([spec.se] if spec.se in side_a and spec.se in side_b else [])
            x, y = seeds_used(
                spec,
                side_a[columns].dropna(subset=[metric]),
                side_b[columns].dropna(subset=[metric]),
            )
            if x.empty or y.empty:
                continue
            effect, low, high, method = effect_interval(spec, x, y, metric)
            shared = len(x.index.intersection(y.index))
            rows.append(
                Row(
                    label(key_a, key_b[-1]),
                    metric,
                    float(x[metric].mean()),
                    float(y[metric].mean()),
                    effect,
                    low,
                    high,
                    method,
                    verdict_of(spec, low, high),
                    shared if shared else len(x) + len(y),
                )
            )
    rows.sort(key=lambda r: (VERDICT_ORDER.index(r.verdict), -r.badness, r.label, r.metric))
    envs_a, envs_b = load_envs(Path(dir_a)), load_envs(Path(dir_b))
    machines_a = {device: machine(env) for device, env in envs_a.items()}
    machines_b = {device: machine(env) for device, env in envs_b.items()}
    devices = {(ka[-1], kb[-1]) for ka, kb in matched}
    cross = any(machines_a.get(da) != machines_b.get(db) for da, db in devices)
    return Comparison(
        rows, list(map(label, only_a)), list(map(label, only_b)), machines_a, machines_b, cross
    )


RULE = re.compile(
    r"^(?P<metric>\w+):(?P<effect>ratio|diff)(?P<op>[<>])(?P<threshold>[-+]?[0-9.]+(?:e[-+]?\d+)?)$"
)


@dataclass(frozen=True)
class Rule:
    """`METRIC:EFFECT OP THRESHOLD`, e.g. grad_var_encoder:ratio>1.10 (see `parse_rule`)."""

    text: str
    metric: str
    effect: str
    op: str
    threshold: float

    def crossed(self, row: Row) -> bool:
        """Whether the whole 95% interval of the row lies beyond the threshold."""
        if row.metric != self.metric:
            return False
        return row.low > self.threshold if self.op == ">" else row.high < self.threshold


def parse_rule(text: str) -> Rule:
    """A --fail-if rule: METRIC:ratio>X, METRIC:ratio<X, METRIC:diff>X or METRIC:diff<X, no
    spaces; the effect must be the metric's (METRICS). ValueError saying what is wrong."""
    match = RULE.match(text.strip())
    if not match:
        raise ValueError(f"malformed rule {text!r}: expected METRIC:ratio>X or METRIC:diff<X")
    metric, effect = match["metric"], match["effect"]
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r} in rule {text!r}")
    if METRICS[metric].effect != effect:
        raise ValueError(f"rule {text!r}: {metric} is compared by {METRICS[metric].effect}")
    return Rule(text, metric, effect, match["op"], float(match["threshold"]))


def _effect_text(row: Row) -> tuple[str, str]:
    """The effect and its interval as printed: ×1.50 [1.31, 1.72] or +0.500 [0.21, 0.79]."""
    if METRICS[row.metric].effect == "ratio":
        return f"×{row.effect:.3g}", f"[{row.low:.3g}, {row.high:.3g}]"
    return f"{row.effect:+.3g}", f"[{row.low:+.3g}, {row.high:+.3g}]"


HEADER = ("verdict", "configuration", "metric", "A", "B", "B vs A", "95% interval", "interval")


def _cells(comparison: Comparison) -> list[tuple[str, ...]]:
    cells = []
    for row in comparison.rows:
        timing = METRICS[row.metric].timing
        note = " (timing, across machines)" if timing and comparison.cross_machine else ""
        note = note or (" (timing)" if timing else "")
        effect, interval = _effect_text(row)
        cells.append(
            (
                row.verdict,
                row.label,
                row.metric + note,
                f"{row.a:.6g}",
                f"{row.b:.6g}",
                effect,
                interval,
                row.method,
            )
        )
    return cells


def _notes(comparison: Comparison) -> list[str]:
    """Machines behind the timings and the configurations in one set only."""
    lines = []
    for side, machines in (("A", comparison.machines_a), ("B", comparison.machines_b)):
        named = "; ".join(f"{d}: {m}" for d, m in sorted(machines.items())) or "no env.json"
        lines.append(f"{side} ran on {named}")
    if comparison.cross_machine:
        lines.append("timings compare different machines: they measure the machines too")
    for side, only in (("A", comparison.only_a), ("B", comparison.only_b)):
        lines += [f"only in {side}: {configuration}" for configuration in only]
    return lines


def terminal_text(comparison: Comparison) -> str:
    """Aligned columns, worst first, then the notes."""
    rows = [HEADER, *_cells(comparison)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join([*lines, "", *_notes(comparison)])


def markdown_text(comparison: Comparison) -> str:
    """A markdown table, worst first, then the notes as a list."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(cells) + " |" for cells in _cells(comparison)]
    return "\n".join([*lines, "", *(f"- {note}" for note in _notes(comparison))]) + "\n"


def csv_frame(comparison: Comparison) -> pd.DataFrame:
    """One line per row, unrounded, plus one per configuration in one set only (verdict
    `only in A` / `only in B`)."""
    frame = pd.DataFrame(
        [asdict(row) for row in comparison.rows], columns=list(Row.__annotations__)
    )
    frame["timing"] = [METRICS[m].timing for m in frame["metric"]]
    only = [
        (f"only in {side}", c)
        for side, cs in (("A", comparison.only_a), ("B", comparison.only_b))
        for c in cs
    ]
    extra = pd.DataFrame({"label": [c for _, c in only], "verdict": [v for v, _ in only]})
    return pd.concat([frame, extra], ignore_index=True) if only else frame
