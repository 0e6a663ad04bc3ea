"""summary.md: the summary table (`table.summary_table`) as markdown, a section per (dataset,
model): the best row, a headline table that fits a screen (quality with its interval and the
tie with the best, relative encoder variance, cost), two details tables (the comparison with the
best, SNR and time to a target; rate, distortion, variances and bias), the notes that say what
every cell is, and the environment that produced the runs. Every figure is also in summary.csv.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd

from bench.report.data import GROUP, format_beta
from bench.report.shared_view import POSITIONS
from bench.report.stats import FAMILY_ALPHA, RELEVANT_GAP, near_floor
from bench.report.style import MISSING, group_title, sci, sig

# A markdown table: header, rows of cells, and which columns align right.
Table = tuple[list[str], list[list[str]], list[bool]]


def summary_markdown(table: pd.DataFrame, envs: dict[str, dict[str, object]]) -> list[str]:
    """Markdown lines of `summary_table`: a section per (dataset, model), each ending blank."""
    lines = []
    for key, group in table.groupby(GROUP, sort=True):
        lines += [f"## {group_title(key)}", ""]
        lines += _section(group, envs)
        lines.append("")
    return lines


def _section(table: pd.DataFrame, envs: dict[str, dict[str, object]]) -> list[str]:
    """Markdown lines for one (dataset, model): the best row, the headline table and its notes,
    the two details tables and their notes, the environment."""
    protocols = table["protocol"] if "protocol" in table else pd.Series([""])
    vary = Vary(table["k"].nunique() > 1, table["beta"].nunique() > 1, protocols.nunique() > 1)
    devices = [c.removeprefix("throughput_") for c in table.columns if c.startswith("throughput_")]
    by_nll = table["ranked_by"].iloc[0] == "nll_test"
    lines = []
    best = table.iloc[0]
    metric = "nll_test_mean" if by_nll else "elbo_test_mean"
    if best["finished"] > 0 and np.isfinite(best[metric]):
        where = [f"KL {best['kl']}"]
        where += [f"K={best['k']}"] if vary.k else []
        where += [f"β={format_beta(best['beta'])}"] if vary.beta else []
        where += [f"protocol {best['protocol'] or 'default'}"] if vary.protocol else []
        lines.append(
            f"Best final test {'NLL' if by_nll else 'ELBO'}: **{best['estimator']}** "
            f"({', '.join(where)}), {best[metric]:.1f} nats.\n"
        )
    lines += [_markdown(*_headline_table(table, vary, by_nll)), ""]
    lines += [_headline_notes(table, by_nll, vary.beta), ""]
    lines += ["Against the best, and per second:", ""]
    lines += [_markdown(*_comparison_table(table, vary, devices)), ""]
    lines += [_comparison_notes(table, by_nll), ""]
    lines += ["Bound and gradients:", ""]
    lines += [_markdown(*_gradient_table(table, vary)), ""]
    lines += [_gradient_notes(table, vary.beta), ""]
    if np.isfinite(table["shared_var_encoder_rel_last"]).any():
        lines += ["At shared parameters:", ""]
        lines += [_markdown(*_shared_table(table, vary)), ""]
        lines += [_shared_notes(table), ""]
    for device in sorted(set(table["device"]) | {d for d in devices if d in envs}):
        lines.append(_env_line(envs.get(device, {}), device) + "  ")
    return lines


def estimator_cell(r) -> str:
    """The estimator's name, marked "(biased)" where it is biased at the row's K
    (estimators.csv)."""
    return f"{r.estimator} (biased)" if r.biased else r.estimator


class Vary(NamedTuple):
    """Which key columns vary within a section, hence get a column of their own."""

    k: bool
    beta: bool
    protocol: bool

    def keys(self) -> list[str]:
        """The key columns' headers."""
        optional = [("K", self.k), ("β", self.beta), ("protocol", self.protocol)]
        return ["estimator", "KL"] + [name for name, varies in optional if varies]


def _key_cells(r, vary: Vary, bold: bool) -> list[str]:
    """estimator (in bold for the section's first row), KL, and K, β and the protocol
    (bench.suites.RunConfig.protocol, 'default' when empty) where they vary."""
    name = estimator_cell(r)
    cells = [name.replace(r.estimator, f"**{r.estimator}**", 1) if bold else name, r.kl]
    cells += [str(r.k)] if vary.k else []
    cells += [format_beta(r.beta)] if vary.beta else []
    return cells + ([r.protocol or "default"] if vary.protocol else [])


def _table(
    table: pd.DataFrame,
    vary: Vary,
    header: list[str],
    cells: Callable[[object], list[str]],
    bold: bool,
) -> Table:
    """(header, rows, right-alignment) of a section table: the key cells, then `cells(r)` for a
    row with finished seeds, or the divergence and dashes for a row without."""
    keys = vary.keys()
    rows = []
    for i, r in enumerate(table.itertuples()):
        row = _key_cells(r, vary, bold and i == 0)
        if r.finished == 0:
            row += [r.divergence] + [MISSING] * (len(header) - 1)
        else:
            row += cells(r)
        rows.append(row)
    return keys + header, rows, [False, False] + [True] * (len(keys) + len(header) - 2)


def _headline_table(table: pd.DataFrame, vary: Vary, by_nll: bool) -> Table:
    """Quality with 95% intervals (the ranked one marked against the best), the encoder variance
    relative to the section's reference with its interval, and cost: seconds per gradient and
    evaluations of f."""
    nll_k = sorted({int(k) for k in table["nll_samples"].dropna()})
    header = [
        "test NLL (nats" + (f", k={nll_k[0]})" if len(nll_k) == 1 else ")"),
        "test ELBO (nats)",
        f"enc. var ÷ {_reference_name(table)}",
        "s per gradient",
        "f evals",
    ]
    first = table.index[0]

    def cells(r) -> list[str]:
        nll = _mean_ci(r.nll_test_mean, r.nll_test_ci)
        if len(nll_k) > 1 and np.isfinite(r.nll_samples):
            nll += f" (k={int(r.nll_samples)})"
        elbo = _mean_ci(r.elbo_test_mean, r.elbo_test_ci)
        if r.diverged:
            elbo += f" ({r.finished} of {r.seeds} seeds; {r.divergence})"
        mark = _tie_mark(r, r.Index == first)
        if by_nll:
            nll += mark
        else:
            elbo += mark
        ratio = sig(r.grad_var_encoder_rel)
        return [
            nll,
            elbo,
            _with_interval(ratio, r.grad_var_encoder_rel_low, r.grad_var_encoder_rel_high),
            sci(r.grad_seconds),
            f"{int(r.evaluations)}",
        ]

    return _table(table, vary, header, cells, bold=True)


def _verdict(r) -> str:
    """The comparison of a row (not the first) with its section's best: 'worse' (told apart at
    family-wise 5%), '≈best' (not told apart, by a test that tells a RELEVANT_GAP apart with 80%
    power), 'too few seeds' (not told apart, by a test without that power), 'no test' (n < 2)."""
    if r.best_n < 2 or not np.isfinite(r.best_p):
        return "no test"
    if r.best_p <= FAMILY_ALPHA:
        return "worse"
    return "≈best" if r.best_gap <= RELEVANT_GAP else "too few seeds"


def _tie_mark(r, first: bool) -> str:
    """' · best' for the section's first row, ' · ≈best' for a row tested with the power to tell
    it apart but not told apart, ' · too few seeds' for one not told apart by a test without
    that power; '' else (told apart, or no test)."""
    if first:
        return " · best"
    verdict = _verdict(r)
    return f" · {verdict}" if verdict in ("≈best", "too few seeds") else ""


def _comparison_table(table: pd.DataFrame, vary: Vary, devices: list[str]) -> Table:
    """The paired test against the best, the encoder SNR against its floor, variance × time,
    seconds to the section's target ELBO, and throughput per device."""
    target = table["target_elbo"].iloc[0]
    header = [
        "vs best",
        "enc. SNR",
        "enc. var × time (nats²·s)",
        f"time to ELBO ≥ {target:.0f} (s)" if np.isfinite(target) else "time to target ELBO (s)",
        *[f"{d} examples/s" for d in devices],
    ]

    def cells(r) -> list[str]:
        floor = near_floor(r.snr_encoder, r.snr_floor_encoder, r.snr_floor_sd_encoder)
        return [
            _best_cell(r, r.Index == table.index[0]),
            sig(r.snr_encoder) + (" ≈floor" if floor else ""),
            sci(r.work_var_encoder),
            _time_cell(r),
            *[_count(getattr(r, f"throughput_{d}")) for d in devices],
        ]

    return _table(table, vary, header, cells, bold=False)


def _gradient_table(table: pd.DataFrame, vary: Vary) -> Table:
    """Rate and distortion, gradient variances with their 95% intervals, bias² and MSE
    (sections with a biased estimator)."""
    bias = has_bias(table)
    header = [
        "rate (nats)",
        "distortion (nats)",
        "enc. grad var (nats²)",
        *(["enc. bias² (nats²)", "enc. MSE (nats²)"] if bias else []),
        "dec. grad var (nats²)",
        f"dec. var ÷ {_reference_name(table)}",
    ]

    def cells(r) -> list[str]:
        return [
            _one_decimal(r.rate_test_mean),
            _one_decimal(r.distortion_test_mean),
            _with_interval(
                sci(r.grad_var_encoder), r.grad_var_encoder_low, r.grad_var_encoder_high, sci
            ),
            *([_bias_cell(r.grad_bias_encoder, r.grad_bias_se_encoder)] if bias else []),
            *([sci(r.grad_mse_encoder)] if bias else []),
            _with_interval(
                sci(r.grad_var_decoder), r.grad_var_decoder_low, r.grad_var_decoder_high, sci
            ),
            _with_interval(
                sig(r.grad_var_decoder_rel), r.grad_var_decoder_rel_low, r.grad_var_decoder_rel_high
            ),
        ]

    return _table(table, vary, header, cells, bold=False)


def _shared_table(table: pd.DataFrame, vary: Vary) -> Table:
    """Encoder variance ÷ the reference's at the reference trajectory's parameters, at its
    first, a middle and its last shared step, with 95% intervals; bias² ÷ the reference's
    variance at the last step in sections with a biased estimator. Every row the shared pass
    measured has a value where its seed-0 run finished training, diverged or not (the parameters
    are the reference's); a row it did not measure has dashes."""
    bias = has_bias(table)
    name = _reference_name(table)
    steps = [int(table[f"shared_step_{p}"].dropna().iloc[0]) for p in POSITIONS]
    header = [f"enc. var ÷ {name}, step {step}" for step in steps]
    header += [f"enc. bias² ÷ {name} var, step {steps[-1]}"] if bias else []
    keys = vary.keys()
    rows = []
    for r in table.itertuples():
        row = _key_cells(r, vary, bold=False)
        for position in POSITIONS:
            ratio = f"shared_var_encoder_rel_{position}"
            low, high = getattr(r, f"{ratio}_low"), getattr(r, f"{ratio}_high")
            row.append(_with_interval(sig(getattr(r, ratio)), low, high))
        if bias:
            ratio = "shared_bias_encoder_rel_last"
            value = getattr(r, ratio)
            measured = r.biased and np.isfinite(value)  # not measured: no shared rows
            cell = MISSING if not measured else sig(value) if value > 0 else f"{value:.2g} (none)"
            low, high = getattr(r, f"{ratio}_low"), getattr(r, f"{ratio}_high")
            row.append(_with_interval(cell, low, high) if measured and value > 0 else cell)
        rows.append(row)
    return keys + header, rows, [False, False] + [True] * (len(keys) + len(header) - 2)


def _shared_notes(table: pd.DataFrame) -> str:
    """What the shared-parameter ratios are, and their interval."""
    name = _reference_name(table)
    bias = (
        " Bias² ÷ var: the debiased squared bias (as in the table above) ÷ the reference's "
        "variance at the same state; ≤ 0 (none) where no bias is detectable."
    )
    return (
        f"Each row's seed-0 estimator and {name} (at its smallest K, in the row's KL mode, else "
        f"analytic) draw R gradients each, independently, at the parameters of {name}'s own "
        "seed-0 run (same KL mode and β, else analytic, else β = 1) at the steps shown, on the "
        "same fixed minibatch; an estimator's auxiliary state (baselines, control variates) "
        "starts from its own seed-0 run's at the same step (shared_aux_from_run = 1; from its "
        "initialisation in results without that metric) and is adapted at those frozen "
        "parameters first. So unlike enc. var ÷ in the "
        "headline table, both sides of a ratio share parameters, as in the theory's "
        "comparisons; the reference's own row is the ratio of two independent estimates of the "
        "same variance. [95% interval] by the delta method on the log ratio of the two "
        "independent estimates, r · exp(∓1.96 · s), s² = (se₁/v₁)² + (se₂/v₂)², each se from "
        "its draws." + (bias if has_bias(table) else "")
    )


def _headline_notes(table: pd.DataFrame, by_nll: bool, vary_beta: bool) -> str:
    """The paragraph under the headline table: what the cells are and how rows are sorted."""
    seeds = "/".join(str(s) for s in sorted(set(table["seeds"])))
    order = (
        "test NLL, lowest first (the fair yardstick across ELBO- and IWAE-trained models)"
        if by_nll
        else "test ELBO, highest first (test NLL is missing for some rows)"
    )
    notes = [
        f"Test NLL and ELBO: mean ± half-width of the 95% Student-t interval (n − 1 degrees of "
        f"freedom) over the n = {seeds} finished seed(s), {MISSING} with one seed, at the final "
        f"training step; rows sorted by {order}, configurations that diverged last. "
        "· best: the first row; · ≈best: the comparison below does not tell the row from it "
        f"and could have told a {RELEVANT_GAP:.0f}-nat gap; · too few seeds: it could not have.",
        _variance_note(table),
        "S per gradient: seconds for one gradient estimate on a minibatch of 100, timed alone "
        "after training (the cost pass); f evals: evaluations of the learning signal per example "
        "per step (K; antithetic pairs count both).",
    ]
    betas = sorted(set(table["beta"]))
    if not vary_beta and betas != [1.0]:
        notes.append(f"Every row has β = {format_beta(betas[0])} (the weight of the KL term).")
    multi = sorted(set(table.loc[table["objective"] != "elbo", "estimator"]))
    if multi:
        notes.append(
            f"For the IWAE-bound estimators ({', '.join(multi)}) the test ELBO is the standard "
            "(K = 1) ELBO of the trained model, below the bound L_K they maximise: compare them "
            "with the others by test NLL."
        )
    notes.append(
        "Quality columns from "
        + ", ".join(sorted(set(table["device"])))
        + f" runs; {MISSING} = not measured."
    )
    return " ".join(notes)


def _comparison_notes(table: pd.DataFrame, by_nll: bool) -> str:
    """The paragraph under the comparison table."""
    return " ".join([_comparison_note(table, by_nll), _snr_note(table), _target_note(table)])


def _gradient_notes(table: pd.DataFrame, vary_beta: bool) -> str:
    """The paragraph under the gradient table."""
    notes = []
    if np.isfinite(table["rate_test_mean"]).any():
        notes.append(
            "Rate = KL(q(z|x) ‖ p(z)) and distortion = −E_q log p(x|z) on the test set (mean over "
            "seeds); test ELBO = −(rate + distortion)"
            + (", with β = 1 whatever the training β." if vary_beta else ".")
        )
    draws = sorted({int(x) for x in table["grad_draws"].dropna()})
    draw_text = f" from R = {'/'.join(str(d) for d in draws)} draws" if draws else ""
    text = (
        "Gradient variance: trace of the covariance of the minibatch-mean ELBO gradient"
        f"{draw_text}, mean over seeds"
    )
    if np.isfinite(table["grad_var_encoder_low"]).any():
        text += (
            "; [95% interval] v · exp(∓1.96 · se/v) on the log scale, se = √(Σ se²)/n from the "
            "standard errors the draws give. Dec. var ÷ reference as enc. var above."
        )
    else:
        text += "; no interval: runs.csv lacks grad_var_se."
    notes.append(text)
    if has_bias(table):
        notes.append(_bias_note(table))
    return " ".join(notes)


def _count(x: float) -> str:
    """A rate to 3 significant figures with thousands separators: 12,300."""
    if not np.isfinite(x):
        return MISSING
    if abs(x) < 1000:
        return sig(x)
    return f"{round(x, 2 - math.floor(math.log10(abs(x)))):,.0f}"


def _mean_ci(mean: float, half_width: float) -> str:
    """'mean ± h', h the half-width of the 95% t-interval; 'mean ± —' with one seed."""
    if not np.isfinite(mean):
        return MISSING
    if not np.isfinite(half_width):
        return f"{mean:.1f} ± {MISSING}"
    return (
        f"{mean:.1f} ± {half_width:.1f}" if half_width >= 0.05 else f"{mean:.1f} ± {half_width:.2g}"
    )


def _with_interval(value: str, low: float, high: float, form: Callable[[float], str] = sig) -> str:
    """'value [low, high]' (the 95% interval), or the value alone without an interval."""
    if value == MISSING or not (np.isfinite(low) and np.isfinite(high)):
        return value
    return f"{value} [{form(low)}, {form(high)}]"


def _markdown(header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool]) -> str:
    """A GitHub-flavoured markdown table; `right` aligns numeric columns to the right."""
    rule = ["---:" if r else ":---" for r in right]
    lines = [header, rule, *rows]
    return "\n".join(
        "| " + " | ".join(c.replace("|", "\\|") for c in line) + " |" for line in lines
    )


def _env_line(env: dict[str, object], device: str) -> str:
    """The machine, and the command(s) that wrote the runs: with a `history` (suites added with
    --resume), every command, oldest first, with its threads and commit, since sections can come
    from different commands; a command repeated in a row (a suite resumed) once, with its count."""
    parts = []
    name = env.get("device_name") or env.get("cpu")
    if name:
        parts.append(str(name))
    if env.get("torch"):
        parts.append(f"torch {env['torch']}")
    history = env.get("history")
    if isinstance(history, list) and history:
        commands = [_command_text(entry) for entry in [*history, env] if isinstance(entry, dict)]
        runs = [(text, len(list(repeats))) for text, repeats in itertools.groupby(commands)]
        parts.append(
            "runs written by, oldest first: "
            + ", ".join(text if n == 1 else f"{text} ×{n}" for text, n in runs)
        )
    else:
        if env.get("threads"):
            parts.append(_threads_text(env["threads"]))
        if env.get("git_commit"):
            parts.append(f"commit {_commit_text(env['git_commit'])}")
        if env.get("suite"):
            parts.append(f"suite {env['suite']}")
    plugins = _plugins_text(env)
    if plugins:
        parts.append(plugins)
    return f"Environment ({device}): " + ("; ".join(parts) if parts else "no env.json")


def _plugins_text(env: dict[str, object]) -> str:
    """'plugin estimators: score_half from /path/score_half.py (sha256 5d3aba9b1a17)', over the
    env.json record and its history (bench.plugins)."""
    records = [*(env.get("history") or []), env]
    seen: dict[str, str] = {}
    for record in records:
        for plugin in record.get("plugins", []) if isinstance(record, dict) else []:
            names = ", ".join(plugin.get("estimators", []))
            sha = str(plugin.get("sha256", ""))[:12]
            seen.setdefault(f"{names} from {plugin.get('path')} (sha256 {sha})", "")
    return "plugin estimators: " + "; ".join(seen) if seen else ""


def _threads_text(threads: object) -> str:
    return f"{threads} thread{'' if threads == 1 else 's'}"


def _commit_text(commit: object) -> str:
    """A git commit to 12 characters, keeping a '-dirty' suffix: 037e26b-dirty."""
    sha, _, suffix = str(commit).partition("-")
    return f"{sha[:12]}{'-' + suffix if suffix else ''}"


def _command_text(entry: dict[str, object]) -> str:
    """'suite default (2 threads, commit 7aabe55-dirty)' for one env.json record."""
    details = [_threads_text(entry["threads"])] if entry.get("threads") else []
    details += [f"commit {_commit_text(entry['git_commit'])}"] if entry.get("git_commit") else []
    return f"suite {entry.get('suite', '?')}" + (f" ({', '.join(details)})" if details else "")


def _best_cell(r, first: bool) -> str:
    """'best' for the section's first row; else `_verdict` with p and the seeds n in common with
    the best, and for a row not told apart the gap its test detects with 80% power."""
    if first:
        return "best"
    verdict = _verdict(r)
    if verdict == "no test":
        return f"no test (n = {r.best_n})"
    p = "p < 0.001" if r.best_p < 0.001 else f"p = {r.best_p:.2g}"
    detects = sig(r.best_gap) if r.best_gap < 1e4 else "> 10⁴"
    gap = f", detects {detects}" if verdict != "worse" else ""
    return f"{verdict} ({p}, n = {r.best_n}{gap})"


def _time_cell(r) -> str:
    """Mean seconds to the section's target ELBO over the seeds that reached it, with 'k of n
    seeds' when not all did; 'not reached' when none did; — without a target."""
    if not np.isfinite(r.target_elbo):
        return MISSING
    if r.target_reached == 0:
        return "not reached"
    seconds = sig(r.target_seconds)
    return (
        seconds
        if r.target_reached == r.seeds
        else f"{seconds} ({r.target_reached} of {r.seeds} seeds)"
    )


def _one_decimal(x: float) -> str:
    return f"{x:.1f}" if np.isfinite(x) else MISSING


def _bias_cell(bias: float, se: float) -> str:
    """'bias² ± standard error' in scientific notation; — for an unbiased row."""
    if not np.isfinite(bias):
        return MISSING
    return f"{sci(bias)} ± {sci(se)}" if np.isfinite(se) else sci(bias)


def has_bias(table: pd.DataFrame) -> bool:
    """Whether any row of `table` has a finite encoder bias measurement."""
    return "grad_bias_encoder" in table and bool(np.isfinite(table["grad_bias_encoder"]).any())


def _reference_name(table: pd.DataFrame) -> str:
    """The section's variance reference, or "reference" (the columns stay empty) without one."""
    names = table["variance_reference"].dropna()
    return str(names.iloc[0]) if len(names) else "reference"


def _variance_note(table: pd.DataFrame) -> str:
    """What the ratio of encoder variances to the section's reference is, and its interval."""
    reference = table["variance_reference"].dropna()
    if reference.empty:
        return "No variance reference estimator ran in this section: no variance ratios."
    name = str(reference.iloc[0])
    k = int(table.loc[table["estimator"] == name, "k"].min())
    others = (
        "for K-sample rows too (their extra cost shows in enc. var × time)"
        if k == 1
        else "whatever the row's K (differences in cost show in enc. var × time)"
    )
    text = (
        f"Enc. var ÷ {name}: the final encoder gradient variance (below) ÷ {name}'s with the "
        f"same KL mode (else analytic) and β (else 1) at K = {k}, {others}, each at the end "
        "of its own training: a ratio between differently trained models"
    )
    if not np.isfinite(table["grad_var_encoder_rel_low"]).any():
        return f"{text}; no interval: runs.csv predates grad_var_se (the variances' errors)."
    return (
        f"{text}; [95% interval] by the delta method on the log ratio, r · exp(∓1.96 · s) with "
        "s² = (se₁/v₁)² + (se₂/v₂)², each se that of a mean over seeds, √(Σ se²)/n, from the "
        "standard errors the draws give (the two rows' measurements taken as independent)."
    )


def _comparison_note(table: pd.DataFrame, by_nll: bool) -> str:
    """How 'vs best' compares each row with the best, and when it says too few seeds."""
    metric = "NLL" if by_nll else "−ELBO"
    n = table["best_n"].iloc[1:][table["finished"].iloc[1:] > 0]
    text = (
        f"Vs best: is the row worse than the section's best? Multiple comparisons with the best "
        f"(Hsu 1984) on the per-seed final test {metric}, paired by seed, on the log scale: the "
        "row is told apart (worse) when a one-sided paired t-test finds it worse than some other "
        "row at 5% ÷ the number of rows it is compared with; the chance that the true best is "
        "ever told apart is then ≤ 5% (family-wise). p: that Bonferroni-adjusted p; n: seeds in "
        f"common with the first row. A row not told apart is ≈best only where its test detects "
        f"a gap of {RELEVANT_GAP:.0f} nats with 80% power (detects: the gap it detects so, "
        "with the seeds' sd at its 80% upper confidence bound); otherwise too few seeds: the "
        "test could not have told."
    )
    if len(n) and (n < 2).all():
        return f"{text} No row has 2 or more seeds in common with the best: nothing can be told."
    return text + (" n < 2: no test." if (n < 2).any() else "")


def _snr_note(table: pd.DataFrame) -> str:
    """What the encoder SNR is and the noise floor it is marked against."""
    text = (
        "Enc. SNR: mean over coordinates of |mean| / std of the encoder gradient draws (Rainforth "
        "et al. 2018), mean over seeds"
    )
    floors = table["snr_floor_encoder"].dropna()
    if floors.empty:
        return f"{text}; runs.csv predates its noise floor (snr_floor): no SNR is marked."
    low, high = sig(floors.min()), sig(floors.max())
    shown = low if low == high else f"{low}–{high}"
    return (
        f"{text}; ≈floor: below floor + 2 sd, so it cannot be told from the noise floor, the SNR "
        f"the same draws give when the true gradient is zero ({shown} here, ≈ √(2/(πR))); floor "
        "and sd of the mean over seeds, sd = √(Σ sd²)/n."
    )


def _target_note(table: pd.DataFrame) -> str:
    """What the equal-cost column measures and how its target is set."""
    target, basis = table["target_elbo"].iloc[0], table["target_basis"].iloc[0]
    if not np.isfinite(target):
        return "Time to target ELBO: no final test ELBO in this section to set a target."
    return (
        f"Time to ELBO ≥ {target:.0f}: seconds of optimiser steps (train_seconds) until the test "
        f"ELBO first reaches {target:.0f} nats = {basis} − 5, rounded; "
        "interpolated linearly between the checkpoints around the first crossing, per seed; mean "
        "over the seeds that reached it."
    )


def _bias_note(table: pd.DataFrame) -> str:
    """What the bias² and MSE columns are, naming the unbiased reference they are measured by."""
    biased = table[np.isfinite(table["grad_bias_encoder"])]
    names = sorted(set(biased["bias_reference"].dropna()))
    against = f"the unbiased {'/'.join(names)}" if names else "an unbiased reference estimator"
    return (
        "Enc. bias² = ‖E ĝ − ∇L‖² of a biased estimator's encoder gradient, estimated against R' "
        f"draws of {against} (same KL mode and β, same parameters) and debiased (the noise of "
        "both means subtracted), so it can be slightly negative where no bias is detectable; ± "
        "its standard error (of the mean over seeds). Enc. MSE = variance + bias², the mean "
        f"squared error of one gradient draw; {MISSING} for unbiased estimators."
    )
