"""Tests of the report (bench/report/): a results directory → summary.md, summary.csv and plots,
on synthetic runs and on a committed output of the quick suite (tests/fixtures/quick)."""

from __future__ import annotations

import ast
import csv
import itertools
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.__main__ import main
from bench.report import sweep_plots, write_report
from bench.report.data import CONFIG, Results, final_values, protocol_labels, run_status
from bench.report.markdown import _env_line, summary_markdown
from bench.report.plots import PLOTS
from bench.report.style import Look, palette, section_palette
from bench.report.table import summary_table
from bench.report.training_plots import _seed_curves, _variance_curves
from bench.results import LEGACY_COLUMNS, RunsFile, load_facts, load_runs
from bench.runner import estimator_facts
from bench.suites import RunConfig
from bench.toy import write_figure_data
from tests.conftest import ROOT
from vae_core.estimators import REGISTRY

STEPS = (0, 10, 100, 1000)
ELBO_STEPS = (3, 30, 300)  # extra checkpoints with only elbo_test and train_seconds
SNR_FLOOR = (0.08, 0.01)  # the noise floor of the SNR and its standard deviation, at R = 100
# Final test ELBO (nats) and encoder gradient variance (nats²) per estimator: stl best, score worst.
FINAL_ELBO = {"reparam": -97.0, "stl": -96.0, "score": -160.0, "iwae": -98.5, "iwae_stl": -99.0}
ENCODER_VARIANCE = {"reparam": 50.0, "stl": 20.0, "score": 4.0e5, "iwae": 60.0, "iwae_stl": 30.0}
GRAD_SECONDS = {
    "reparam": 2.0e-3,
    "stl": 2.5e-3,
    "score": 1.5e-3,
    "iwae": 2.2e-3,
    "iwae_stl": 2.4e-3,
}
# Binary-latent estimators (model linear200): disarm is the variance and bias reference; gumbel
# has little variance but a large bias², st_gumbel a debiased bias² below 0 (none detectable).
FINAL_ELBO |= {"reinforce": -130.0, "disarm": -110.0, "gumbel": -112.0, "st_gumbel": -111.0}
ENCODER_VARIANCE |= {"reinforce": 5.0e5, "disarm": 2.0e3, "gumbel": 40.0, "st_gumbel": 300.0}
GRAD_SECONDS |= {"reinforce": 1.7e-3, "disarm": 3.0e-3, "gumbel": 2.0e-3, "st_gumbel": 2.0e-3}
ENCODER_BIAS = {"gumbel": (4.0e3, 200.0), "st_gumbel": (-5.0, 10.0)}  # (bias², its se)
DIVERGED = ("score", "mc", 1, 100)  # estimator, kl, seed, step
BASE_ESTIMATORS = ("reparam", "stl", "score")
GRAD_VARIANCES = ("grad_var_encoder", "grad_var_decoder")
RUN_COLUMNS = LEGACY_COLUMNS  # the synthetic runs.csv is in the format before `protocol`
PLOT_NAMES = [plot.name for plot in PLOTS]
# `python -m bench report --out DIR` in a process where importing torch or vae_core fails.
HIDDEN_REPORT = """
import sys

class Hide:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "vae_core"):
            raise ImportError(f"{name} is hidden")

sys.meta_path.insert(0, Hide())
from bench.__main__ import main
sys.exit(main(["report", "--out", sys.argv[1]]))
"""


def synthetic_rows(
    estimators: tuple[str, ...] = BASE_ESTIMATORS,
    kls: tuple[str, ...] = ("analytic", "mc"),
    seeds: tuple[int, ...] = (0, 1),
    device: str = "cpu",
    diverged: tuple[str, str, int, int] | None = DIVERGED,
    ks: tuple[int, ...] = (1,),
    betas: tuple[float, ...] = (1.0,),
    rate: bool = True,
    errors: bool = True,
) -> list[tuple]:
    """Long-format rows (RUN_COLUMNS) as the harness appends them: checkpoints (ELBO_STEPS with
    only elbo_test and train_seconds), finals, divergence, completion. K lowers the (K = 1) test
    ELBO by log K but the NLL by 2 log K, as an IWAE bound does; β ≠ 1 costs 3|log β| nats of
    ELBO and moves rate ∝ 1/√β. Seeds shift ELBO and NLL by 0.3 nats each, ± an amount of the
    estimator's own (zero mean over seeds 0 and 1), so that paired differences vary by seed.
    With `errors`, the metrics the harness added later: grad_var_se_G (10% of the encoder
    variance, 5% of the decoder's) and the SNR's noise floor snr_floor_G, snr_floor_sd_G."""
    rows = []
    for estimator, (kl_index, kl), seed, k, beta in itertools.product(
        estimators, enumerate(kls), seeds, ks, betas
    ):
        key = ("mnist5k", "mlp500", estimator, kl, k, beta, device, seed)
        slowdown = (1 + kl_index) * (0.2 if device == "cuda" else 1.0)
        jitter = 0.1 * (sum(map(ord, estimator)) % 5) * (-1) ** seed
        base = FINAL_ELBO[estimator] - 0.4 * kl_index + 0.3 * seed + jitter
        final = base - math.log(k) - 3.0 * abs(math.log(beta))
        stop = diverged[3] if diverged and diverged[:3] == (estimator, kl, seed) else None
        for step in sorted(STEPS + ELBO_STEPS):
            if stop is not None and step > stop:
                break
            if step == stop:
                rows.append((*key, step, "diverged", 1.0))
                rows.append((*key, step, "run_complete", 1.0))
                break
            progress = math.log1p(step) / math.log1p(STEPS[-1])
            elbo = -543.0 + (final + 543.0) * progress
            seconds = 2.0 * step * GRAD_SECONDS[estimator] * slowdown
            if step in ELBO_STEPS:
                rows += [(*key, step, "elbo_test", elbo), (*key, step, "train_seconds", seconds)]
                continue
            variance = ENCODER_VARIANCE[estimator] * (1 + kl_index) * (2.0 - progress)
            metrics = {
                "elbo_train": elbo + 1.0,
                "elbo_test": elbo,
                "grad_var_encoder": variance * (1 + 0.1 * seed),
                "grad_var_decoder": 900.0 * (2.0 - progress),
                "grad_sqnorm_encoder": 10.0,
                "grad_sqnorm_decoder": 300.0,
                "snr_encoder": 0.5 / (1 + variance / 100) / math.sqrt(k) * (1 + 0.1 * seed),
                "snr_decoder": 0.7 * math.sqrt(k) * (1 + 0.1 * seed),
                "train_seconds": seconds,
            }
            if errors:
                metrics["grad_var_se_encoder"] = 0.1 * metrics["grad_var_encoder"]
                metrics["grad_var_se_decoder"] = 0.05 * metrics["grad_var_decoder"]
                for part in ("encoder", "decoder"):
                    metrics[f"snr_floor_{part}"], metrics[f"snr_floor_sd_{part}"] = SNR_FLOOR
            if rate:
                metrics["rate_test"] = 0.5 + 25.0 / math.sqrt(beta) * progress
                metrics["distortion_test"] = -elbo - metrics["rate_test"]
            rows += [(*key, step, m, v) for m, v in metrics.items()]
        if stop is not None:
            continue
        finals = {
            "nll_test": -base - 4.0 - 2.0 * math.log(k) + 1.5 * abs(math.log(beta)),
            "nll_samples": 1000,
            "throughput": (25_000.0 if device == "cpu" else 400_000.0) / (1 + kl_index) / k,
            "grad_seconds": GRAD_SECONDS[estimator],
            "work_var_encoder": variance * GRAD_SECONDS[estimator],
            "work_var_decoder": 900.0 * GRAD_SECONDS[estimator],
            "grad_draws": 100,
            "grad_batched": 1,
            "run_complete": 1.0,
        }
        rows += [(*key, STEPS[-1], m, v) for m, v in finals.items()]
    return rows


def extended_rows() -> list[tuple]:
    """The synthetic runs plus multi-sample estimators at K = 1, 5 (kl mc) and reparam (analytic)
    at β = 0.5 and 4: every setting the newer harness varies. iwae at K = 5 has the best NLL."""
    return (
        synthetic_rows()
        + synthetic_rows(("iwae", "iwae_stl"), kls=("mc",), ks=(1, 5), diverged=None)
        + synthetic_rows(("reparam",), kls=("analytic",), betas=(0.5, 4.0), diverged=None)
    )


def binary_rows(bias: bool = True) -> list[tuple]:
    """Runs on the binary-latent model linear200: reinforce (K = 1) and disarm (K = 2) with both
    KL modes, gumbel and st_gumbel (analytic KL) with, if `bias`, grad_bias_*, grad_bias_se_*
    and grad_mse_* at every checkpoint (ENCODER_BIAS for the encoder)."""
    rows = (
        synthetic_rows(("reinforce",), diverged=None)
        + synthetic_rows(("disarm",), ks=(2,), diverged=None)
        + synthetic_rows(("gumbel", "st_gumbel"), kls=("analytic",), diverged=None)
    )
    rows = [(r[0], "linear200", *r[2:]) for r in rows]
    extra = []
    for row in rows:
        estimator, metric, variance = row[2], row[9], row[10]
        if not bias or estimator not in ENCODER_BIAS or metric not in GRAD_VARIANCES:
            continue
        part = metric.removeprefix("grad_var_")
        value, se = ENCODER_BIAS[estimator] if part == "encoder" else (1.0, 0.5)
        for name, v in (("grad_bias", value), ("grad_bias_se", se), ("grad_mse", variance + value)):
            extra.append((*row[:9], f"{name}_{part}", v))
    return rows + extra


def write_results(out: Path, rows: list[tuple] | None = None, gpu: bool = False) -> Path:
    """A results directory: runs.csv (+ gpu/runs.csv), env.json (+ gpu/env.json) and the facts
    of the estimators that ran (estimators.csv), as `python -m bench run` writes them."""
    out.mkdir(parents=True, exist_ok=True)
    rows = synthetic_rows() if rows is None else rows
    write_csv(out / "runs.csv", rows)
    write_facts(out, rows)
    env = {"torch": "2.13.0", "device": "cpu", "device_name": "Test CPU", "threads": 2}
    (out / "env.json").write_text(json.dumps({**env, "git_commit": "abc1234", "time": "now"}))
    if gpu:
        (out / "gpu").mkdir()
        write_csv(out / "gpu" / "runs.csv", synthetic_rows(device="cuda", diverged=None))
        gpu_env = {**env, "device": "cuda", "device_name": "Test GPU"}
        (out / "gpu" / "env.json").write_text(json.dumps(gpu_env))
    return out


def write_facts(out: Path, rows: list[tuple]) -> None:
    """estimators.csv for the (estimator, K) of `rows`, from the estimator classes."""
    pairs = sorted({(row[2], int(row[4])) for row in rows})
    runs = RunsFile(out / "runs.csv")
    runs.record_facts(estimator_facts(RunConfig(estimator=e, k=k)) for e, k in pairs)


def write_csv(path: Path, rows: list[tuple], drop: tuple[str, ...] = ()) -> None:
    """rows (RUN_COLUMNS) as a runs.csv, without the columns named in `drop`."""
    columns = [c for c in RUN_COLUMNS if c not in drop]
    keep = [RUN_COLUMNS.index(c) for c in columns]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows([row[i] for i in keep] for row in rows)


def table_of(out: Path, runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """The summary table of the results in `out` (with `runs` in place of its runs.csv)."""
    runs = load_runs(out) if runs is None else runs
    return summary_table(Results.of(runs, load_facts(out)))


@pytest.fixture(scope="module")
def reported(tmp_path_factory) -> tuple[Path, list[Path]]:
    """One report of the synthetic runs, with the toy figure's data (few draws, a coarse k grid:
    the same code, a fraction of the time)."""
    out = write_results(tmp_path_factory.mktemp("results"))
    write_figure_data(out, draws=2_000, grid_points=12)
    return out, write_report(out)


@pytest.fixture(scope="module")
def extended(tmp_path_factory) -> tuple[Path, list[Path]]:
    """One report (no toy.csv) of `extended_rows`."""
    out = write_results(tmp_path_factory.mktemp("extended"), extended_rows())
    return out, write_report(out)


@pytest.fixture(scope="module")
def binary(tmp_path_factory) -> tuple[Path, list[Path]]:
    """One report (no toy.csv) of the base runs plus `binary_rows`, bias metrics included."""
    out = write_results(tmp_path_factory.mktemp("binary"), synthetic_rows() + binary_rows())
    return out, write_report(out)


HEADLINE, COMPARISON, GRADIENTS = range(3)  # the three tables of every section, in order


def table_rows(summary: str, which: int = HEADLINE) -> list[list[str]]:
    """Cells of every row (headers included) of the `which` tables of every section of
    summary.md: HEADLINE, COMPARISON or GRADIENTS."""
    blocks = [[]]
    for line in summary.splitlines():
        if line.startswith("|"):
            blocks[-1].append(line)
        elif blocks[-1]:
            blocks.append([])
    lines = [line for block in blocks[which::3] for line in block]
    rows = [line.strip("|").split(" | ") for line in lines]
    return [[cell.strip() for cell in row] for row in rows if not row[0].strip().startswith(":")]


def section(summary: str, title: str) -> str:
    """The text of the `## title` section of summary.md."""
    return summary.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_summary_names_every_estimator_with_no_empty_or_nan_cell(reported):
    out, _ = reported
    summary = (out / "summary.md").read_text()
    rows = table_rows(summary)[1:]  # without the header
    assert {row[0].strip("*") for row in rows} == set(BASE_ESTIMATORS)
    assert len(rows) == len(BASE_ESTIMATORS) * 2  # estimator × KL mode
    assert all(cell for row in rows for cell in row)
    assert "nan" not in summary.lower()
    assert "plots/snr_vs_k.png`: skipped" in summary  # K fixed per estimator


def test_summary_marks_the_diverged_configuration(reported):
    out, _ = reported
    summary = (out / "summary.md").read_text()
    assert "seed 1 diverged at step 100" in summary


def test_best_final_elbo_is_the_first_row(reported):
    out, _ = reported
    table = table_of(out)
    assert (table.iloc[0]["estimator"], table.iloc[0]["kl"]) == ("stl", "analytic")
    assert table.iloc[0]["elbo_test_mean"] == pytest.approx(-96.0 + 0.15)
    # Rows with a diverged seed come after every healthy row.
    healthy = table["diverged"] == 0
    assert healthy.iloc[: healthy.sum()].all()
    summary = (out / "summary.md").read_text()
    first_row = next(line for line in summary.splitlines() if line.startswith("| **"))
    assert first_row.startswith("| **stl** | analytic |")
    assert first_row.count(" · best") == 1  # on the ranked metric


def test_variance_relative_to_reparam_with_the_same_kl(reported):
    out, _ = reported
    table = table_of(out).set_index(["estimator", "kl"])
    for kl in ("analytic", "mc"):
        reparam = table.loc[("reparam", kl), "grad_var_encoder"]
        assert table.loc[("reparam", kl), "grad_var_encoder_rel"] == pytest.approx(1.0)
        expected = table.loc[("stl", kl), "grad_var_encoder"] / reparam
        assert table.loc[("stl", kl), "grad_var_encoder_rel"] == pytest.approx(expected)


@pytest.mark.parametrize(
    ("results", "without"),
    [
        ("reported", ("snr_vs_k", "variance_vs_k", "bias_variance", "shared_variance")),
        ("extended", ("toy_variance", "bias_variance", "shared_variance")),
        ("binary", ("snr_vs_k", "variance_vs_k", "toy_variance", "shared_variance")),
    ],
)
def test_every_plot_with_data_is_written_and_non_empty(results, without, request):
    """The base and binary runs have one K per estimator (no plot against K); only the binary
    ones measure a bias; only the base results have the toy figure's data; none has shared-
    parameter rows (tests/test_report_shared.py draws that plot)."""
    out, written = request.getfixturevalue(results)
    assert written[:2] == [out / "summary.md", out / "summary.csv"]
    for name in PLOT_NAMES:
        path = out / "plots" / f"{name}.png"
        if name in without:
            assert path not in written and not path.exists()
            continue
        assert path in written
        assert path.read_bytes().startswith(b"\x89PNG") and path.stat().st_size > 10_000


def test_report_is_byte_identical_when_rerun(reported):
    out, written = reported
    before = {path: path.read_bytes() for path in written}
    again = write_report(out)
    assert again == written
    assert all(path.read_bytes() == before[path] for path in again)


def test_gpu_runs_add_a_throughput_column(tmp_path):
    out = write_results(tmp_path, gpu=True)
    table = table_of(out)
    summary = "\n".join(summary_markdown(table, Results.load(out).envs))
    assert "cuda examples/s" in table_rows(summary, COMPARISON)[0]
    assert "400,000" in summary and "Test GPU" in summary
    assert "nan" not in summary.lower()
    assert set(table["device"]) == {"cpu"}  # quality figures from cpu, throughput per device
    assert table["throughput_cuda"].notna().sum() == len(table)


def test_single_kl_mode_skips_kl_plot_and_says_so(tmp_path):
    out = write_results(tmp_path, synthetic_rows(kls=("analytic",), seeds=(0,), diverged=None))
    stale = out / "plots" / "kl_modes.png"
    stale.parent.mkdir()
    stale.write_bytes(b"old")
    written = write_report(out)
    summary = (out / "summary.md").read_text()
    assert "`plots/kl_modes.png`: skipped" in summary
    assert "`plots/toy_variance.png`: skipped: no toy.csv (written by `python -m bench toy" in (
        summary
    )
    assert not stale.exists() and stale not in written
    assert "cpu examples/s" in summary and "nan" not in summary.lower()


def test_fully_diverged_row_is_last_and_marked(tmp_path):
    rows = synthetic_rows(seeds=(0,), diverged=("stl", "mc", 0, 10))
    out = write_results(tmp_path, rows)
    table = table_of(out)
    assert (table.iloc[-1]["estimator"], table.iloc[-1]["kl"]) == ("stl", "mc")
    summary = "\n".join(summary_markdown(table, {}))
    assert "| stl | mc | diverged at step 10 |" in summary


def test_missing_runs_csv_returns_2_with_a_clear_message(tmp_path, capsys):
    assert main(["report", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"no runs.csv in {tmp_path}: run `make bench` or `python -m bench run ...` first"


def test_empty_runs_csv_returns_2(tmp_path, capsys):
    (tmp_path / "runs.csv").write_text("")
    assert main(["report", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("no runs.csv in")
    write_csv(tmp_path / "runs.csv", [])
    assert main(["report", "--out", str(tmp_path)]) == 2


def test_missing_column_raises_naming_it(tmp_path, capsys):
    write_csv(tmp_path / "runs.csv", synthetic_rows(), drop=("kl",))
    with pytest.raises(ValueError, match=r"has columns \[.*\]; expected \[.*'kl'"):
        load_runs(tmp_path)
    assert main(["report", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "kl" in err and len(err.strip().splitlines()) == 1


def test_missing_facts_return_2_naming_the_command_that_writes_them(tmp_path, capsys):
    write_results(tmp_path)
    (tmp_path / "estimators.csv").unlink()
    assert main(["report", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no estimators.csv in" in err and "python -m bench run" in err


def test_main_report_succeeds(tmp_path, capsys):
    write_results(tmp_path)
    assert main(["report", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "summary.md").exists() and (tmp_path / "summary.csv").exists()
    assert "wrote" in capsys.readouterr().out


def test_repeated_measurement_keeps_the_last_and_a_cut_line_is_dropped(tmp_path):
    rows = synthetic_rows()
    repeat = next(r for r in rows if r[9] == "nll_test")
    out = write_results(tmp_path, rows + [(*repeat[:10], 123.0)])
    with (out / "runs.csv").open("a") as handle:
        handle.write("mnist5k,mlp500,stl,analytic,1,cpu")  # the harness was killed mid-line
    runs = load_runs(out)
    assert len(runs) == len(rows)
    key = pd.Series(repeat[:10], index=list(RUN_COLUMNS[:10]))
    same = runs[(runs[key.index] == key).all(axis=1)]
    assert same["value"].tolist() == [123.0]


def test_beta_column_appears_only_when_beta_varies(reported, extended):
    base_header = table_rows((reported[0] / "summary.md").read_text())[0]
    header = table_rows((extended[0] / "summary.md").read_text())[0]
    assert "β" not in base_header
    assert header[:4] == ["estimator", "KL", "K", "β"]
    cells = {tuple(row[:4]) for row in table_rows((extended[0] / "summary.md").read_text())}
    assert {("reparam", "analytic", "1", b) for b in ("0.5", "1", "4")} <= cells


def test_malformed_beta_raises_naming_the_column(tmp_path):
    rows = [(*r[:5], "high", *r[6:]) if i == 3 else r for i, r in enumerate(synthetic_rows())]
    write_csv(tmp_path / "runs.csv", rows)
    with pytest.raises(ValueError, match="column beta must hold numbers, found 'high'"):
        load_runs(tmp_path)


def test_rate_and_distortion_follow_the_test_elbo(extended):
    out, _ = extended
    table = table_of(out)
    healthy = table[table["finished"] > 0]
    assert healthy["rate_test_mean"].notna().all()
    total = healthy["rate_test_mean"] + healthy["distortion_test_mean"]
    assert total.tolist() == pytest.approx((-healthy["elbo_test_mean"]).tolist())
    rows = table_rows((out / "summary.md").read_text(), GRADIENTS)
    header = rows[0]
    rate = header.index("rate (nats)")
    assert header[rate + 1] == "distortion (nats)"
    reparam_beta4 = next(r for r in rows if r[:4] == ["reparam", "analytic", "1", "4"])
    assert float(reparam_beta4[rate]) == pytest.approx(0.5 + 25.0 / 2, abs=0.05)


def test_rows_sorted_by_nll_when_every_healthy_row_has_it(extended):
    out, _ = extended
    runs = load_runs(out)
    table = table_of(out)
    assert set(table["ranked_by"]) == {"nll_test"}
    first = table.iloc[0]
    assert (first["estimator"], first["k"]) == ("iwae", 5)  # best NLL, though not best ELBO
    assert first["elbo_test_mean"] < table["elbo_test_mean"].max()
    healthy = table[table["diverged"] == 0]["nll_test_mean"]
    assert healthy.is_monotonic_increasing
    summary = (out / "summary.md").read_text()
    assert "Best final test NLL: **iwae** (KL mc, K=5, β=1), " in summary
    assert "rows sorted by test NLL, lowest first" in summary
    # One healthy row without an NLL: back to the test ELBO, highest first.
    no_nll = (runs["estimator"] == "stl") & (runs["kl"] == "mc") & (runs["metric"] == "nll_test")
    table = table_of(out, runs[~no_nll])
    assert set(table["ranked_by"]) == {"elbo_test"}
    assert (table.iloc[0]["estimator"], table.iloc[0]["kl"]) == ("stl", "analytic")


def test_multisample_rows_compare_variance_with_reparam_mc_at_k_1(extended):
    out, _ = extended
    table = table_of(out).set_index(["estimator", "kl", "k", "beta"])
    reparam = table.loc[("reparam", "mc", 1, 1.0), "grad_var_encoder"]
    for k in (1, 5):
        row = table.loc[("iwae", "mc", k, 1.0)]
        assert row["grad_var_encoder_rel"] == pytest.approx(row["grad_var_encoder"] / reparam)
    assert table.loc[("reparam", "analytic", 1, 4.0), "grad_var_encoder_rel"] == pytest.approx(1)
    summary = (out / "summary.md").read_text()
    assert "and β (else 1) at K = 1, for K-sample rows too" in summary


def test_iwae_stl_is_marked_biased_for_k_above_1(extended):
    rows = table_rows((extended[0] / "summary.md").read_text())
    marked = {(row[0].replace("*", ""), *row[1:3]) for row in rows if "iwae_stl" in row[0]}
    assert marked == {("iwae_stl", "mc", "1"), ("iwae_stl (biased)", "mc", "5")}


def test_multisample_note_says_nll_is_the_fair_comparison(reported, extended):
    note = "the test ELBO is the standard (K = 1) ELBO of the trained model"
    assert note in (extended[0] / "summary.md").read_text()
    assert note not in (reported[0] / "summary.md").read_text()


def test_series_labels_show_k_and_beta_only_where_they_vary(extended):
    look = Look(load_runs(extended[0]))
    assert look.label("stl", 1, 1.0) == "stl"
    assert look.label("iwae", 5, 1.0) == "iwae K=5"
    assert look.label("reparam", 1, 4.0) == "reparam β=4"
    assert look.label("reparam", 1, None) == "reparam"
    assert look.series_colour("reparam", 1, 0.5) != look.series_colour("reparam", 1, 4.0)


def test_sweep_plots_skipped_with_reasons_without_their_data(reported, tmp_path):
    summary = (reported[0] / "summary.md").read_text()
    assert "`plots/snr_vs_k.png`: skipped: no estimator was run with two or more values of K" in (
        summary
    )
    assert "![rate_distortion](plots/rate_distortion.png)" in summary
    out = write_results(tmp_path, synthetic_rows(seeds=(0,), diverged=None, rate=False))
    write_report(out)
    summary = (out / "summary.md").read_text()
    assert "`plots/rate_distortion.png`: skipped: no finished run with rate_test" in summary
    assert not (out / "plots" / "rate_distortion.png").exists()
    rows = table_rows(summary, GRADIENTS)
    rate = rows[0].index("rate (nats)")
    assert {row[rate] for row in rows[1:]} == {"—"}


def test_sweep_plots_are_linked_when_drawn(extended):
    summary = (extended[0] / "summary.md").read_text()
    assert "Rainforth et al. (2018) predict" in summary
    assert "![snr_vs_k](plots/snr_vs_k.png)" in summary
    assert "![variance_vs_k](plots/variance_vs_k.png)" in summary
    assert "![rate_distortion](plots/rate_distortion.png)" in summary


@pytest.mark.parametrize("results", ["extended", "binary"])
def test_extended_report_is_byte_identical_when_rerun(results, request):
    out, written = request.getfixturevalue(results)
    before = {path: path.read_bytes() for path in written}
    assert write_report(out) == written
    assert all(path.read_bytes() == before[path] for path in written)


def test_binary_section_compares_variance_with_disarm_and_shows_bias(binary):
    out, _ = binary
    summary = (out / "summary.md").read_text()
    assert "enc. var ÷ disarm" in table_rows(section(summary, "mnist5k / linear200"))[0]
    rows = table_rows(section(summary, "mnist5k / linear200"), GRADIENTS)
    header, cells = rows[0], {(r[0].replace("*", ""), r[1]): r for r in rows[1:]}
    assert "dec. var ÷ disarm" in header
    bias, mse = header.index("enc. bias² (nats²)"), header.index("enc. MSE (nats²)")
    assert cells[("gumbel (biased)", "analytic")][bias] == "4.00e3 ± 1.41e2"  # se 200/√2 seeds
    assert cells[("st_gumbel (biased)", "analytic")][bias].startswith("-5.00e0 ± ")
    assert cells[("reinforce", "mc")][bias] == cells[("disarm", "mc")][mse] == "—"
    assert "R' draws of the unbiased disarm" in summary
    assert "can be slightly negative where no bias is detectable" in summary
    assert "÷ disarm's with the same KL mode (else analytic)" in summary
    assert "and β (else 1) at K = 2, whatever the row's K" in summary
    table = table_of(out).set_index(["model", "estimator", "kl"])
    disarm = table.loc[("linear200", "disarm", "analytic"), "grad_var_encoder"]
    gumbel = table.loc[("linear200", "gumbel", "analytic")]
    assert gumbel["grad_var_encoder_rel"] == pytest.approx(gumbel["grad_var_encoder"] / disarm)
    assert gumbel["grad_mse_encoder"] == pytest.approx(gumbel["grad_var_encoder"] + 4.0e3)
    gaussian = table_rows(section(summary, "mnist5k / mlp500"))[0]
    gaussian_details = table_rows(section(summary, "mnist5k / mlp500"), GRADIENTS)[0]
    assert "enc. var ÷ reparam" in gaussian and "enc. bias² (nats²)" not in gaussian_details
    assert "![bias_variance](plots/bias_variance.png)" in summary
    assert "nan" not in summary.lower()


def test_without_bias_measurements_the_bias_plot_is_skipped(tmp_path, reported):
    out = write_results(tmp_path, binary_rows(bias=False))
    written = write_report(out)
    summary = (out / "summary.md").read_text()
    reason = "`plots/bias_variance.png`: skipped: no finished run has bias measurements"
    assert reason in summary and reason in (reported[0] / "summary.md").read_text()
    assert out / "plots" / "bias_variance.png" not in written
    assert not (out / "plots" / "bias_variance.png").exists()
    header = table_rows(summary)[0] + table_rows(summary, GRADIENTS)[0]
    assert "enc. var ÷ disarm" in header and "enc. bias² (nats²)" not in header
    assert "| gumbel (biased) | analytic |" in summary


def test_a_section_without_reparam_or_disarm_has_empty_ratios_and_says_why(tmp_path):
    rows = [row for row in binary_rows(bias=False) if row[2] != "disarm"]
    write_report(write_results(tmp_path, rows))
    summary = (tmp_path / "summary.md").read_text()
    rows = table_rows(summary)
    ratio = rows[0].index("enc. var ÷ reference")
    assert {row[ratio] for row in rows[1:]} == {"—"}
    assert "No variance reference estimator ran in this section" in summary
    assert "the median final mean test ELBO of the section's rows (no reference" in summary


def test_colours_are_distinct_within_each_section_and_reused_across_sections():
    gaussian = [f"g{i}" for i in range(10)]  # the largest section keeps tab10 by sorted name
    frame = pd.DataFrame(
        [("mnist5k", "mlp500", name) for name in gaussian]
        + [("mnist5k", "linear200", name) for name in ("b0", "b1", "g0")],
        columns=["dataset", "model", "estimator"],
    )
    colours = section_palette(frame)
    assert {name: colours[name] for name in gaussian} == palette(gaussian)
    assert len({colours[name] for name in ("b0", "b1", "g0")}) == 3
    assert colours["b0"] == colours["g1"]  # never in one section: the colour is reused


def test_report_on_the_quick_suite_output(tmp_path):
    """The harness's own output (`python -m bench run --suite quick --device cpu`, committed in
    tests/fixtures/quick): every estimator in the table, no empty or NaN cell."""
    fixture = Path(__file__).parent / "fixtures" / "quick"
    for path in fixture.iterdir():
        (tmp_path / path.name).write_bytes(path.read_bytes())
    written = write_report(tmp_path)
    assert len(written) == 2 + 7  # summary.md, summary.csv, all plots but the two vs-K and the toy
    summary = (tmp_path / "summary.md").read_text()
    rows = [row for row in table_rows(summary) if row[0] != "estimator"]  # two sections
    estimators = set(load_runs(tmp_path)["estimator"])
    assert {row[0].replace("*", "").removesuffix(" (biased)") for row in rows} == estimators
    assert all(cell for row in rows for cell in row)
    assert "nan" not in summary.lower()
    assert "plots/snr_vs_k.png`: skipped" in summary  # K fixed per estimator
    # One seed each: no interval of the mean and no paired test.
    header = table_rows(summary)[0]
    for name in ("test ELBO", "test NLL"):
        index = next(i for i, cell in enumerate(header) if cell.startswith(name))
        assert {row[index].split(" ± ")[1].split(" · ")[0] for row in rows} == {"—"}
    comparison = table_rows(summary, COMPARISON)
    verdicts = {row[comparison[0].index("vs best")] for row in comparison}
    assert verdicts == {"vs best", "best", "no test (n = 1)"}
    assert "No row has 2 or more seeds in common with the best" in summary


def set_value(rows: list[tuple], value: float, **match: object) -> list[tuple]:
    """`rows` with `value` in those whose RUN_COLUMNS named in `match` hold the given values."""
    where = {RUN_COLUMNS.index(column): wanted for column, wanted in match.items()}
    return [
        (*row[:-1], value) if all(row[i] == wanted for i, wanted in where.items()) else row
        for row in rows
    ]


def markdown_of(tmp_path: Path, rows: list[tuple]) -> tuple[pd.DataFrame, str]:
    """The summary table of `rows` and its markdown, without drawing plots."""
    write_results(tmp_path, rows)
    table = table_of(tmp_path)
    return table, "\n".join(summary_markdown(table, {}))


def column(summary: str, name: str, which: int = HEADLINE) -> dict[tuple[str, str], str]:
    """The cells of column `name` of the `which` tables by (estimator, KL)."""
    rows = table_rows(summary, which)
    return {(r[0].strip("*"), r[1]): r[rows[0].index(name)] for r in rows[1:]}


def test_snr_is_marked_exactly_when_below_the_floor_plus_2_sd(tmp_path):
    """Floor 0.08 and sd 0.01 per seed: the mean of two seeds has sd 0.01/√2, so an SNR mean
    below 0.08 + 2 · 0.00707 = 0.09414 cannot be told from the floor, one above it can."""
    rows = synthetic_rows(("reparam", "stl"), kls=("analytic",), diverged=None)
    for estimator, seeds in (("reparam", (0.0940, 0.0942)), ("stl", (0.0941, 0.0943))):
        for seed, snr in enumerate(seeds):
            rows = set_value(
                rows, snr, estimator=estimator, seed=seed, step=STEPS[-1], metric="snr_encoder"
            )
    _, summary = markdown_of(tmp_path, rows)
    assert column(summary, "enc. SNR", COMPARISON) == {
        ("reparam", "analytic"): "0.0941 ≈floor",
        ("stl", "analytic"): "0.0942",
    }
    assert "≈floor: below floor + 2 sd" in summary and "(0.0800 here, ≈ √(2/(πR)))" in summary
    _, summary = markdown_of(tmp_path, [r for r in rows if "snr_floor" not in r[9]])
    assert "≈floor" not in summary and "predates its noise floor" in summary


def test_snr_vs_k_plot_draws_the_step_0_measurement_first(tmp_path, monkeypatch):
    """Step-0 SNRs differ from the final ones (the variance halves during training) and one is
    set at the floor: the first row of panels shows step 0, that point hollow; the second row
    the final values, all filled."""
    rows = synthetic_rows(("iwae",), kls=("mc",), ks=(1, 5), diverged=None)
    rows = set_value(rows, 0.05, k=5, step=0, metric="snr_encoder")
    write_csv(tmp_path / "runs.csv", rows)
    runs = load_runs(tmp_path)
    finals = final_values(runs, run_status(runs))
    figures = []
    monkeypatch.setattr(sweep_plots, "save", lambda fig, path: figures.append(fig) or path)
    assert sweep_plots.plot_snr_vs_k(runs, finals, Look(runs), tmp_path / "snr.png")
    axes = figures[0].axes
    assert ["step 0" in ax.get_title() for ax in axes] == [True, True, False, False]
    assert all("end of training" in ax.get_title() for ax in axes[2:])
    start = runs[(runs["step"] == 0) & (runs["metric"] == "snr_encoder")]
    expected = {
        "step 0": start.groupby("k")["value"].mean(),
        "final": finals["snr_encoder"].groupby("k").mean(),
    }
    assert expected["step 0"][5] == pytest.approx(0.05)
    assert expected["step 0"][1] != pytest.approx(expected["final"][1])
    for ax, phase in ((axes[0], "step 0"), (axes[2], "final")):
        points = {}
        for collection in ax.collections:
            if type(collection).__name__ == "PathCollection":
                hollow = tuple(collection.get_facecolor()[0][:3]) == (1.0, 1.0, 1.0)
                for k, snr in collection.get_offsets():
                    points[int(k)] = (snr, hollow)
        assert points == {
            k: (pytest.approx(expected[phase][k]), phase == "step 0" and k == 5) for k in (1, 5)
        }


def test_time_to_target_interpolates_each_seed_and_counts_those_that_reach_it(tmp_path):
    """Target: reparam's final mean test ELBO − 5, rounded. Each seed's curve (ELBO-only
    checkpoints included: the synthetic curves rise monotonically, so np.interp inverts them)
    gives the seconds at the target; stl mc seed 1 is held at −150 nats and never gets there."""
    rows = synthetic_rows(("reparam", "stl", "score"), diverged=None)
    for step in (300, 1000):
        rows = set_value(
            rows, -150.0, estimator="stl", kl="mc", seed=1, step=step, metric="elbo_test"
        )
    table, summary = markdown_of(tmp_path, rows)
    runs = load_runs(tmp_path)
    reparam = table[(table["estimator"] == "reparam") & (table["kl"] == "analytic")].iloc[0]
    target = round(reparam["elbo_test_mean"] - 5.0)
    assert set(table["target_elbo"]) == {target}
    assert f"time to ELBO ≥ {target} (s)" in table_rows(summary, COMPARISON)[0]
    assert "reparam (KL analytic, K = 1, β = 1)'s final mean test ELBO − 5, rounded" in summary

    def seconds(estimator: str, kl: str, seed: int, steps: tuple[int, ...] = ()) -> float:
        run = runs[(runs["estimator"] == estimator) & (runs["kl"] == kl) & (runs["seed"] == seed)]
        curve = run.pivot_table("value", "step", "metric")[["elbo_test", "train_seconds"]]
        curve = curve.dropna().loc[list(steps or curve.index)]
        return float(np.interp(target, curve["elbo_test"], curve["train_seconds"]))

    rows = {(r.estimator, r.kl): r for r in table.itertuples()}
    both = [seconds("reparam", "mc", seed) for seed in (0, 1)]
    assert rows[("reparam", "mc")].target_seconds == pytest.approx(np.mean(both))
    coarse = [seconds("reparam", "mc", seed, STEPS) for seed in (0, 1)]
    assert rows[("reparam", "mc")].target_seconds != pytest.approx(np.mean(coarse))
    assert rows[("stl", "mc")].target_reached == 1
    assert rows[("stl", "mc")].target_seconds == pytest.approx(seconds("stl", "mc", 0))
    cells = column(summary, f"time to ELBO ≥ {target} (s)", COMPARISON)
    assert cells[("stl", "mc")].endswith(" (1 of 2 seeds)")
    assert cells[("score", "analytic")] == cells[("score", "mc")] == "not reached"


def test_comparison_with_the_best_is_paired_by_seed_and_says_when_seeds_are_too_few(
    tmp_path, reported
):
    """Three seeds: score is 63 nats of NLL behind reparam on every seed, with a spread of its
    own: told apart ("worse"). Base runs, two seeds: a row not told apart by a test that could not
    have told a 10-nat gap says "too few seeds", never ≈best; one finished seed: no test."""
    rows = synthetic_rows(("reparam", "score"), kls=("analytic",), seeds=(0, 1, 2), diverged=None)
    table, summary = markdown_of(tmp_path, rows)
    assert table["best_n"].tolist() == [3, 3] and table["best_p"].iloc[1] < 0.05
    cells = column(summary, "vs best", COMPARISON)
    assert cells[("reparam", "analytic")] == "best"
    assert (
        cells[("score", "analytic")].startswith("worse (p")
        and "n = 3)" in cells[("score", "analytic")]
    )
    summary = (reported[0] / "summary.md").read_text()
    assert column(summary, "vs best", COMPARISON)[("score", "mc")] == "no test (n = 1)"
    assert "Multiple comparisons with the best (Hsu 1984)" in summary

    def verdict(gaps: list[float]) -> str:
        """stl's verdict against reparam when stl's NLL of seed s is reparam's + gaps[s]."""
        seeds = tuple(range(len(gaps)))
        rows = synthetic_rows(("reparam", "stl"), kls=("analytic",), seeds=seeds, diverged=None)
        best = {row[7]: row[-1] for row in rows if row[2] == "reparam" and row[-2] == "nll_test"}
        for i, row in enumerate(rows):
            if row[2] == "stl" and row[-2] == "nll_test":
                rows[i] = (*row[:-1], best[row[7]] + gaps[row[7]])
        table, summary = markdown_of(tmp_path / f"gaps-{len(gaps)}", rows)
        return column(summary, "vs best", COMPARISON)[("stl", "analytic")]

    # Two seeds whose gaps to the best disagree by 20 nats: nothing can be told.
    assert verdict([-1.0, 19.0]).startswith("too few seeds (p")
    # Six seeds within ±0.3 nats of the best: the test could tell 10 nats, and does not.
    assert verdict([0.3, -0.1, 0.2, 0.1, -0.2, 0.0]).startswith("≈best (p")
    # The same row 10 nats behind with that spread: told apart.
    assert verdict([10.3, 9.9, 10.2, 10.1, 9.8, 10.0]).startswith("worse (p")


def test_variance_ratio_and_variance_carry_their_95_percent_intervals(reported):
    """stl ÷ reparam (analytic): 21 / 52.5 = 0.4, each mean of two seeds with se 10% of each
    value, so s = √2 · √(2.0² + 2.2²)/2/21 = 0.1001 and the interval 0.4 · e^(∓1.96 s)."""
    summary = (reported[0] / "summary.md").read_text()
    cells = column(summary, "enc. var ÷ reparam")
    assert cells[("stl", "analytic")] == "0.400 [0.329, 0.487]"
    assert cells[("reparam", "analytic")] == "1.00"  # the reference itself: exactly 1
    details = table_rows(summary, GRADIENTS)
    variance = {(r[0], r[1]): r[details[0].index("enc. grad var (nats²)")] for r in details[1:]}
    assert variance[("stl", "analytic")] == "2.10e1 [1.83e1, 2.41e1]"  # 21 · e^(∓1.96 · 0.0708)
    assert "delta method on the log ratio" in summary and "v · exp(∓1.96 · se/v)" in summary


def test_elbo_only_checkpoints_leave_gradient_finals_and_curves_alone(reported):
    """The ELBO_STEPS checkpoints carry only elbo_test and train_seconds: final gradient
    statistics come from the last full checkpoint, variance curves have only full checkpoints,
    and the ELBO curves have every checkpoint."""
    runs = load_runs(reported[0])
    finals = final_values(runs, run_status(runs))["grad_var_encoder"].dropna()
    last = runs[(runs["step"] == STEPS[-1]) & (runs["metric"] == "grad_var_encoder")]
    assert finals.tolist() == last.set_index(CONFIG).loc[finals.index, "value"].tolist()
    assert set(_variance_curves(runs, "grad_var_encoder")["step"]) == set(STEPS)
    assert set(_seed_curves(runs, "elbo_test")["step"]) == set(STEPS + ELBO_STEPS)
    table = table_of(reported[0])
    assert table["snr_encoder"].notna().all() and table["grad_var_encoder_rel"].notna().all()


def test_environment_line_lists_every_command_when_suites_share_a_directory():
    """Sections can come from different commands (--resume adds suites); each is named with its
    threads and commit, oldest first, rather than only the latest."""
    older = {"suite": "default", "threads": 2, "git_commit": "1111111111111111-dirty"}
    latest = {"device_name": "CPU X", "suite": "discrete", "threads": 1, "git_commit": "2222222"}
    line = _env_line({**latest, "history": [older]}, "cpu")
    assert line == (
        "Environment (cpu): CPU X; runs written by, oldest first: "
        "suite default (2 threads, commit 111111111111-dirty), "
        "suite discrete (1 thread, commit 2222222)"
    )
    assert _env_line(latest, "cpu") == (
        "Environment (cpu): CPU X; 1 thread; commit 2222222; suite discrete"
    )
    resumed = {**latest, "history": [older, latest, latest, older]}
    assert _env_line(resumed, "cpu").endswith(
        "suite default (2 threads, commit 111111111111-dirty), "
        "suite discrete (1 thread, commit 2222222) ×2, "
        "suite default (2 threads, commit 111111111111-dirty), "
        "suite discrete (1 thread, commit 2222222)"
    )


def test_protocol_labels_name_only_the_settings_that_differ():
    plain, six, four = "", "steps=6;n_checkpoints=2", "steps=4;n_checkpoints=2;tau=1"
    assert protocol_labels([plain, six, four]) == {
        plain: "default",
        six: "steps=6;n_checkpoints=2;tau=default",
        four: "steps=4;n_checkpoints=2;tau=1",
    }
    assert protocol_labels([six, "steps=8;n_checkpoints=2"]) == {
        six: "steps=6",
        "steps=8;n_checkpoints=2": "steps=8",
    }


def test_a_legend_of_many_sections_fits_the_figure():
    """Five sections of long labels (as in the shared-parameter plot of the committed results,
    which cut its outer columns) make the legend's font smaller until it is no wider than the
    figure; a legend that fits keeps the theme's font."""
    from matplotlib import rc_context
    from matplotlib.lines import Line2D

    from bench.report.style import figure, section_legend, theme

    def legend_of(sections: int, label: str):
        with rc_context(theme()):
            fig, _ = figure(sections, 1, 1.0)
            section_legend(
                fig,
                {
                    ("mnist5k", f"model{i}"): [
                        Line2D([], [], label=f"{label}{k}") for k in range(6)
                    ]
                    for i in range(sections)
                },
            )
            fig.canvas.draw()
            return fig, fig.legends[0]

    fig, legend = legend_of(5, "cat_reinforce_loo β=0.25 K=")
    box = legend.get_window_extent()
    assert 0 <= box.x0 and box.x1 <= fig.bbox.width
    _, short = legend_of(2, "e")
    assert legend.get_texts()[-1].get_fontsize() < short.get_texts()[-1].get_fontsize()


def test_each_gradient_variance_row_spans_its_own_sections_steps(monkeypatch):
    """A 3,000-step suite beside a 10⁶-step protocol: each (dataset, model) row of the encoder
    variance plot ends its x axis near its own last step, not the longest run's."""
    from bench.report import training_plots

    rows = [
        (dataset, "linear200", "disarm", "mc", 2, 1.0, "cpu", seed, "", step, metric, value)
        for dataset, last in (("mnist", 1_000_000), ("mnist5k", 3_000))
        for seed in (0, 1)
        for step in (0, last // 10, last)
        for metric, value in (("grad_var_encoder", 100.0 + seed), ("grad_var_se_encoder", 1.0))
    ]
    runs = pd.DataFrame(rows, columns=CONFIG + ["step", "metric", "value"])
    figures = []
    monkeypatch.setattr(training_plots, "save", lambda fig, path: figures.append(fig) or path)
    training_plots.plot_grad_var(runs, Look(runs), Path("unused.png"))
    (fig,) = figures
    rights = {ax.get_title(): ax.get_xlim()[1] for ax in fig.axes if ax.get_title()}
    assert rights == pytest.approx(  # symlog_x leaves 15% room past the last step
        {"mnist / linear200 — KL mc": 1.15e6, "mnist5k / linear200 — KL mc": 3450.0}
    )


def test_a_legend_of_more_sections_than_columns_gives_each_its_own_column():
    """Six sections (the committed results' five models on mnist5k and the disarm_paper protocol's
    linear model on full MNIST) in a legend of at most LEGEND_COLUMNS = 5 columns: each section
    still starts a column of its own, under its title in bold, and the legend fits the figure,
    measured with the bold titles that make it wider. (The search for the fewest rows once never
    ended here, and the saved legend was cut at both sides.)"""
    from matplotlib import rc_context
    from matplotlib.lines import Line2D

    from bench.report.style import LEGEND_COLUMNS, figure, section_legend, theme

    lengths = [3, 14, 9, 9, 5, 5]
    assert len(lengths) > LEGEND_COLUMNS
    with rc_context(theme()):
        fig, _ = figure(len(lengths), 1, 1.0)
        section_legend(
            fig,
            {
                ("mnist5k" if i else "mnist", f"nonlinear_model{i}"): [
                    Line2D([], [], label=f"e{i}.{k}") for k in range(n)
                ]
                for i, n in enumerate(lengths)
            },
        )
        fig.canvas.draw()
        legend = fig.legends[0]
    texts = legend.get_texts()
    rows = max(lengths) + 1  # the longest section under its title
    assert len(texts) == rows * len(lengths)
    titles = texts[::rows]
    assert [t.get_text() for t in titles] == [
        f"{'mnist5k' if i else 'mnist'} / nonlinear_model{i}" for i in range(len(lengths))
    ]
    assert all(t.get_fontweight() == "bold" for t in titles)
    box = legend.get_window_extent()
    assert 0 <= box.x0 and box.x1 <= fig.bbox.width


@pytest.mark.parametrize("results", ["reported", "extended", "binary"])
def test_summary_csv_holds_every_figure_of_the_summary_table(results, request):
    """summary.csv is the table behind summary.md, every column, as written by pandas."""
    out, _ = request.getfixturevalue(results)
    stored = pd.read_csv(out / "summary.csv", keep_default_na=False, na_values=[""])
    table = table_of(out)
    assert list(stored.columns) == list(table.columns)
    for name in table.columns:
        if pd.api.types.is_numeric_dtype(table[name]) and table[name].dtype != bool:
            expected = table[name].astype(float).to_numpy()
            assert np.allclose(stored[name].astype(float), expected, rtol=1e-12, equal_nan=True)


@pytest.mark.parametrize("results", ["reported", "extended", "binary"])
def test_every_table_fits_a_screen(results, request):
    """At most 9 columns in a headline table (estimator, KL, K, β, NLL, ELBO, variance ratio,
    seconds per gradient, evaluations) and 10 in a details table."""
    summary = (request.getfixturevalue(results)[0] / "summary.md").read_text()
    for which, most in ((HEADLINE, 9), (COMPARISON, 10), (GRADIENTS, 10)):
        widths = {len(row) for row in table_rows(summary, which)}
        assert widths and max(widths) <= most, (which, widths)


def test_the_report_needs_neither_torch_nor_the_estimator_code(reported, tmp_path):
    """`python -m bench report` on a results directory alone, in a process where importing
    torch or vae_core fails: the same files as in this process."""
    out = tmp_path / "copy"
    out.mkdir()
    for name in ("runs.csv", "estimators.csv", "env.json", "toy.csv"):
        (out / name).write_bytes((reported[0] / name).read_bytes())
    done = subprocess.run(
        [sys.executable, "-c", HIDDEN_REPORT, str(out)], capture_output=True, text=True, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    for path in reported[1]:
        assert (out / path.relative_to(reported[0])).read_bytes() == path.read_bytes(), path.name


def test_make_plots_redraws_the_committed_results_from_them_alone(tmp_path):
    """The committed results/: the report on their inputs alone, with torch and vae_core
    hidden, writes exactly the committed summary.md and summary.csv, and every committed plot."""
    committed = ROOT / "results"
    for name in ("runs.csv", "estimators.csv", "env.json", "toy.csv"):
        (tmp_path / name).write_bytes((committed / name).read_bytes())
    done = subprocess.run(
        [sys.executable, "-c", HIDDEN_REPORT, str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    for name in ("summary.md", "summary.csv"):
        assert (tmp_path / name).read_text() == (committed / name).read_text(), name
    drawn = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert drawn == sorted(p.name for p in (committed / "plots").iterdir())


def test_no_estimator_name_is_written_into_the_report_code():
    """The report learns every estimator fact from estimators.csv: no string in its code (its
    docstrings aside) names an estimator."""
    names = set(REGISTRY)
    for path in sorted((ROOT / "bench" / "report").glob("*.py")):
        tree = ast.parse(path.read_text())
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef))
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if id(node) not in docstrings:
                    words = set(re.findall(r"[a-z_]+", node.value))
                    assert not words & names, (path.name, node.value)
