"""The summary table (one row per dataset, model, estimator, KL mode, K and β, seeds pooled) and
its markdown, one section per (dataset, model).

Quality and variance figures of a row come from its cpu runs (the device of a row that ran
elsewhere only); throughput has a column per device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from bench.report.runs import (
    CONFIG,
    GROUP,
    ROW,
    bias_reference_of,
    final_values,
    format_beta,
    is_multisample,
    primary_device,
    run_status,
)

DEVICES: tuple[str, ...] = ("cpu", "cuda")  # always given a throughput column ("—" if absent)
# Relative variances in a (dataset, model) section are against the first of these it has.
REFERENCES: tuple[str, ...] = ("reparam", "disarm")
# Estimators biased only for K > 1, and how their table rows say so; an estimator naming a
# `bias_reference` (runs.bias_reference_of) is marked "(biased)" at any K.
BIASED = {"iwae_stl": "biased for K > 1"}
MISSING = "—"
SEED_MEANS = (
    "nll_samples",
    "grad_var_encoder",
    "grad_var_decoder",
    "snr_encoder",
    "grad_seconds",
    "work_var_encoder",
    "grad_draws",
    "grad_bias_encoder",
    "grad_mse_encoder",
    "grad_bias_decoder",
    "grad_mse_decoder",
)
# Standard errors of per-seed estimates: pooled as the standard error of their mean.
SEED_STANDARD_ERRORS = ("grad_bias_se_encoder", "grad_bias_se_decoder")


def summary_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset, model, estimator, kl, k, beta): seed statistics of final metrics.

    Columns: the row key; `device` (whose runs give the quality figures); `seeds`, `finished`,
    `diverged` (counts) and `divergence` (e.g. "diverged at step 300"); `elbo_test_mean/std`,
    `rate_test_mean`, `distortion_test_mean`, `nll_test_mean/std`, `nll_samples`; final
    `grad_var_encoder`, `grad_var_decoder`, `snr_encoder`, `grad_seconds`, `work_var_encoder`,
    `grad_draws`, `grad_bias_G`, `grad_mse_G` (means over finished seeds; the bias ones NaN for
    unbiased estimators) and `grad_bias_se_G` (the standard error of that mean);
    `variance_reference` (the section's reference estimator, see `variance_reference`) and
    `grad_var_encoder_rel`, `grad_var_decoder_rel` (÷ that reference, see `_relative`);
    `throughput_<device>` for cpu, cuda and any other device present; `ranked_by` ("nll_test" or
    "elbo_test"). Sorted within each (dataset, model) so the first row is the estimator to use:
    rows without divergence first, then by final test NLL, lowest first, when every such row has
    one (NLL compares ELBO- and IWAE-trained models fairly), else by final test ELBO, highest
    first.
    """
    status = run_status(runs)
    finals = final_values(runs, status)
    devices = list(DEVICES) + sorted(set(runs["device"]) - set(DEVICES))
    records = []
    for key, configs in status[status["status"] != "running"].groupby(ROW, sort=True):
        configs = configs.reset_index()
        device = primary_device(configs["device"])
        own = configs[configs["device"] == device]
        done = own[own["status"] == "finished"]
        final = _finals_of(finals, done)
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
            rate_test_mean=_mean(final, "rate_test"),
            distortion_test_mean=_mean(final, "distortion_test"),
            nll_test_mean=_mean(final, "nll_test"),
            nll_test_std=_std(final, "nll_test"),
        )
        for metric in SEED_MEANS:
            record[metric] = _mean(final, metric)
        for metric in SEED_STANDARD_ERRORS:
            record[metric] = pooled_se(final[metric]) if metric in final else np.nan
        for name in devices:
            on_device = configs[(configs["device"] == name) & (configs["status"] == "finished")]
            record[f"throughput_{name}"] = _mean(_finals_of(finals, on_device), "throughput")
        records.append(record)
    if not records:
        return pd.DataFrame(columns=ROW)
    table = pd.DataFrame.from_records(records)
    references = {key: variance_reference(g["estimator"]) for key, g in table.groupby(GROUP)}
    table["variance_reference"] = [
        references[key] for key in zip(table["dataset"], table["model"], strict=True)
    ]
    for part in ("encoder", "decoder"):
        table[f"grad_var_{part}_rel"] = _relative(table, f"grad_var_{part}")
    table["_healthy"] = table["diverged"] == 0
    by_nll = (
        table[table["_healthy"]]
        .groupby(GROUP)["nll_test_mean"]
        .agg(lambda nll: bool(np.isfinite(nll).all()))
        .rename("_by_nll")
    )
    table = table.join(by_nll, on=GROUP)
    by_nll = table["_by_nll"].fillna(False).astype(bool)
    table["ranked_by"] = np.where(by_nll, "nll_test", "elbo_test")
    table["_rank"] = np.where(by_nll, table["nll_test_mean"], -table["elbo_test_mean"])
    table = table.sort_values(
        GROUP + ["_healthy", "_rank", "estimator", "kl", "k", "beta"],
        ascending=[True, True, False, True, True, True, True, True],
        na_position="last",
        kind="mergesort",
    )
    return table.drop(columns=["_healthy", "_by_nll", "_rank"]).reset_index(drop=True)


def _finals_of(finals: pd.DataFrame, configs: pd.DataFrame) -> pd.DataFrame:
    """The rows of `finals` for the configurations listed in `configs`."""
    return finals.loc[finals.index.isin(pd.MultiIndex.from_frame(configs[CONFIG]))]


def _mean(frame: pd.DataFrame, column: str) -> float:
    return (
        float(frame[column].mean()) if column in frame and frame[column].notna().any() else np.nan
    )


def _std(frame: pd.DataFrame, column: str) -> float:
    values = frame[column].dropna() if column in frame else pd.Series(dtype=float)
    return float(values.std(ddof=1)) if len(values) > 1 else np.nan


def pooled_se(errors: pd.Series) -> float:
    """Standard error of the mean of independent estimates with standard errors `errors`:
    √(Σ se²) / n over the present ones; NaN without any."""
    errors = errors.dropna()
    return float(np.sqrt((errors**2).sum()) / len(errors)) if len(errors) else np.nan


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


def variance_reference(estimators: pd.Series) -> str | None:
    """The reference of relative variances in a section: the first of REFERENCES among
    `estimators` (reparam for Gaussian latents, disarm for binary ones), else None."""
    present = set(estimators)
    return next((name for name in REFERENCES if name in present), None)


def _relative(table: pd.DataFrame, column: str) -> pd.Series:
    """column ÷ the `variance_reference` row's in the same (dataset, model), at the reference's
    smallest K (reparam: K = 1) whatever the row's K: same KL mode, else analytic; same β, else
    β = 1. NaN where no such reference row has a finite positive value. A K-sample row's extra
    cost shows in `work_var_encoder`."""
    reference: dict[tuple, float] = {}
    rows = table[table["estimator"] == table["variance_reference"]]
    for r in rows.sort_values("k", kind="mergesort").itertuples():
        value = getattr(r, column)
        if np.isfinite(value) and value > 0:
            reference.setdefault((r.dataset, r.model, r.kl, r.beta), value)
    ratios = []
    for row in table.itertuples():
        base = next(
            (
                reference[key]
                for kl in dict.fromkeys([row.kl, "analytic"])
                for beta in dict.fromkeys([row.beta, 1.0])
                if (key := (row.dataset, row.model, kl, beta)) in reference
            ),
            np.nan,
        )
        ratios.append(getattr(row, column) / base)
    return pd.Series(ratios, index=table.index, dtype=float)


def estimator_cell(estimator: str, k: int) -> str:
    """The estimator's name, marked where it is known to be biased: "(biased)" for one with a
    bias reference (gumbel, st_gumbel), "(biased for K > 1)" for STL on IWAE at K > 1."""
    if estimator in BIASED:
        return f"{estimator} ({BIASED[estimator]})" if k > 1 else estimator
    return f"{estimator} (biased)" if bias_reference_of(estimator) else estimator


# ------------------------------------------------------------------------------------ markdown


def group_title(key: tuple[str, str]) -> str:
    """'dataset / model': the heading of a summary section and of a plot panel."""
    return f"{key[0]} / {key[1]}"


def sci(x: float) -> str:
    """3 significant figures in scientific notation: 1.23e4, 4.56e-3."""
    if not np.isfinite(x):
        return MISSING
    if x == 0:
        return "0"
    mantissa, exponent = f"{x:.2e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def sig(x: float, digits: int = 3) -> str:
    """`digits` significant figures: positional from 0.01 to 10^digits, scientific outside."""
    if not np.isfinite(x):
        return MISSING
    if x == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(float(f"{x:.{digits - 1}e}"))))
    if not -2 <= magnitude < digits:
        return sci(x)
    return f"{x:.{max(0, digits - 1 - magnitude)}f}"


def _count(x: float) -> str:
    """A rate to 3 significant figures with thousands separators: 12,300."""
    if not np.isfinite(x):
        return MISSING
    if abs(x) < 1000:
        return sig(x)
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
    """The machine, and the command(s) that wrote the runs: with a `history` (suites added with
    --resume), every command, oldest first, with its threads and commit, since sections can come
    from different commands."""
    parts = []
    name = env.get("device_name") or env.get("cpu")
    if name:
        parts.append(str(name))
    if env.get("torch"):
        parts.append(f"torch {env['torch']}")
    history = env.get("history")
    if isinstance(history, list) and history:
        commands = [_command_text(entry) for entry in [*history, env] if isinstance(entry, dict)]
        parts.append("runs written by, oldest first: " + ", ".join(commands))
    else:
        if env.get("threads"):
            parts.append(_threads_text(env["threads"]))
        if env.get("git_commit"):
            parts.append(f"commit {_commit_text(env['git_commit'])}")
        if env.get("suite"):
            parts.append(f"suite {env['suite']}")
    return f"Environment ({device}): " + ("; ".join(parts) if parts else "no env.json")


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


def summary_markdown(table: pd.DataFrame, envs: dict[str, dict[str, object]]) -> list[str]:
    """Markdown lines of `summary_table`: a section per (dataset, model), each ending blank."""
    lines = []
    for key, group in table.groupby(GROUP, sort=True):
        lines += [f"## {group_title(key)}", ""]
        lines += _group_markdown(group, envs)
        lines.append("")
    return lines


def _group_markdown(table: pd.DataFrame, envs: dict[str, dict[str, object]]) -> list[str]:
    """Markdown lines for one (dataset, model): headline, table, notes, environment."""
    vary_k = table["k"].nunique() > 1
    vary_beta = table["beta"].nunique() > 1
    devices = [c.removeprefix("throughput_") for c in table.columns if c.startswith("throughput_")]
    nll_k = sorted({int(k) for k in table["nll_samples"].dropna()})
    nll_header = "test NLL (nats" + (f", k={nll_k[0]})" if len(nll_k) == 1 else ")")
    reference = _reference_name(table)
    bias = has_bias(table)
    header = ["estimator", "KL"] + (["K"] if vary_k else []) + (["β"] if vary_beta else [])
    header += [
        "test ELBO (nats)",
        "rate (nats)",
        "distortion (nats)",
        nll_header,
        "enc. grad var (nats²)",
        f"enc. var ÷ {reference}",
        *(["enc. bias² (nats²)", "enc. MSE (nats²)"] if bias else []),
        "dec. grad var (nats²)",
        f"dec. var ÷ {reference}",
        "enc. SNR",
        *[f"throughput {d} (examples/s)" for d in devices],
        "time per gradient (s)",
        "enc. var × time (nats²·s)",
    ]
    rows = []
    for r in table.itertuples():
        name = estimator_cell(r.estimator, r.k)
        row = [name.replace(r.estimator, f"**{r.estimator}**", 1) if not rows else name, r.kl]
        row += [str(r.k)] if vary_k else []
        row += [format_beta(r.beta)] if vary_beta else []
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
            _one_decimal(r.rate_test_mean),
            _one_decimal(r.distortion_test_mean),
            nll,
            sci(r.grad_var_encoder),
            sig(r.grad_var_encoder_rel),
            *([_bias_cell(r.grad_bias_encoder, r.grad_bias_se_encoder)] if bias else []),
            *([sci(r.grad_mse_encoder)] if bias else []),
            sci(r.grad_var_decoder),
            sig(r.grad_var_decoder_rel),
            sig(r.snr_encoder),
            *[_count(getattr(r, f"throughput_{d}")) for d in devices],
            sci(r.grad_seconds),
            sci(r.work_var_encoder),
        ]
        rows.append(row)
    right = [False, False] + [True] * (len(header) - 2)

    by_nll = table["ranked_by"].iloc[0] == "nll_test"
    lines = []
    best = table.iloc[0]
    metric = "nll_test_mean" if by_nll else "elbo_test_mean"
    if best["finished"] > 0 and np.isfinite(best[metric]):
        where = [f"KL {best['kl']}"]
        where += [f"K={best['k']}"] if vary_k else []
        where += [f"β={format_beta(best['beta'])}"] if vary_beta else []
        lines.append(
            f"Best final test {'NLL' if by_nll else 'ELBO'}: **{best['estimator']}** "
            f"({', '.join(where)}), {best[metric]:.1f} nats.\n"
        )
    lines.append(_markdown(header, rows, right))
    lines.append("")
    lines.append(_notes(table, by_nll, vary_beta))
    lines.append("")
    for device in sorted(set(table["device"]) | {d for d in devices if d in envs}):
        lines.append(_env_line(envs.get(device, {}), device) + "  ")
    return lines


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


def _variance_note(table: pd.DataFrame, draw_text: str) -> str:
    """What the gradient variance and its ratio to the section's reference are."""
    text = (
        f"Gradient variance: trace of the covariance of the minibatch-mean ELBO gradient{draw_text}"
    )
    reference = table["variance_reference"].dropna()
    if reference.empty:
        names = " or ".join(REFERENCES)
        return f"{text}; no reference estimator ({names}) in this section for the ratios."
    name = str(reference.iloc[0])
    k = int(table.loc[table["estimator"] == name, "k"].min())
    others = (
        "for K-sample rows too (their extra cost shows in enc. var × time)"
        if k == 1
        else "whatever the row's K (differences in cost show in enc. var × time)"
    )
    return (
        f"{text}; ÷ {name} is against {name} with the same KL mode (else analytic) and β (else 1) "
        f"at K = {k}, {others}."
    )


def _bias_note(table: pd.DataFrame) -> str:
    """What the bias² and MSE columns are, naming the unbiased reference they are measured by."""
    biased = table.loc[np.isfinite(table["grad_bias_encoder"]), "estimator"]
    names = sorted({name for e in biased if (name := bias_reference_of(e))})
    against = f"the unbiased {'/'.join(names)}" if names else "an unbiased reference estimator"
    return (
        "Enc. bias² = ‖E ĝ − ∇L‖² of a biased estimator's encoder gradient, estimated against R' "
        f"draws of {against} (same KL mode and β, same parameters) and debiased (the noise of "
        "both means subtracted), so it can be slightly negative where no bias is detectable; ± "
        "its standard error (of the mean over seeds). Enc. MSE = variance + bias², the mean "
        f"squared error of one gradient draw; {MISSING} for unbiased estimators."
    )


def _notes(table: pd.DataFrame, by_nll: bool, vary_beta: bool) -> str:
    """The paragraph under a table: what the cells are, how rows are sorted and compared."""
    seeds = "/".join(str(s) for s in sorted(set(table["seeds"])))
    draws = sorted({int(x) for x in table["grad_draws"].dropna()})
    draw_text = f" from R = {'/'.join(str(d) for d in draws)} draws" if draws else ""
    order = (
        "test NLL, lowest first (the fair yardstick across ELBO- and IWAE-trained models)"
        if by_nll
        else "test ELBO, highest first (test NLL is missing for some rows)"
    )
    notes = [
        f"Mean ± std over {seeds} seed(s), at the final training step; rows sorted by {order}, "
        "configurations that diverged last."
    ]
    if np.isfinite(table["rate_test_mean"]).any():
        notes.append(
            "Rate = KL(q(z|x) ‖ p(z)) and distortion = −E_q log p(x|z) on the test set (mean over "
            "seeds); test ELBO = −(rate + distortion)"
            + (", with β = 1 whatever the training β." if vary_beta else ".")
        )
    notes.append(_variance_note(table, draw_text))
    if has_bias(table):
        notes.append(_bias_note(table))
    betas = sorted(set(table["beta"]))
    if not vary_beta and betas != [1.0]:
        notes.append(f"Every row has β = {format_beta(betas[0])} (the weight of the KL term).")
    multi = sorted({e for e in table["estimator"] if is_multisample(e)})
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
