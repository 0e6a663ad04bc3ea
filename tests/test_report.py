"""Tests of the report (bench/report/): runs.csv → summary.md and plots, on synthetic runs
and on a committed output of the quick suite (tests/fixtures/quick)."""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

import pandas as pd
import pytest

from bench import report
from bench.report import (
    REQUIRED_COLUMNS,
    add_report_arguments,
    load_runs,
    main_report,
    summary_table,
    toy_plot,
    write_report,
)

STEPS = (0, 10, 100, 1000)
# Final test ELBO (nats) and encoder gradient variance (nats²) per estimator: stl best, score worst.
FINAL_ELBO = {"reparam": -97.0, "stl": -96.0, "score": -160.0}
ENCODER_VARIANCE = {"reparam": 50.0, "stl": 20.0, "score": 4.0e5}
GRAD_SECONDS = {"reparam": 2.0e-3, "stl": 2.5e-3, "score": 1.5e-3}
DIVERGED = ("score", "mc", 1, 100)  # estimator, kl, seed, step


def synthetic_rows(
    estimators: tuple[str, ...] = ("reparam", "stl", "score"),
    kls: tuple[str, ...] = ("analytic", "mc"),
    seeds: tuple[int, ...] = (0, 1),
    device: str = "cpu",
    diverged: tuple[str, str, int, int] | None = DIVERGED,
) -> list[tuple]:
    """Long-format rows as the harness appends them: checkpoints, finals, divergence, completion."""
    rows = []
    for estimator in estimators:
        for kl_index, kl in enumerate(kls):
            for seed in seeds:
                key = ("mnist5k", "mlp500", estimator, kl, 1, device, seed)
                slowdown = (1 + kl_index) * (0.2 if device == "cuda" else 1.0)
                final = FINAL_ELBO[estimator] - 0.4 * kl_index + 0.3 * seed
                stop = diverged[3] if diverged and diverged[:3] == (estimator, kl, seed) else None
                for step in STEPS:
                    if stop is not None and step > stop:
                        break
                    if step == stop:
                        rows.append((*key, step, "diverged", 1.0))
                        rows.append((*key, step, "run_complete", 1.0))
                        break
                    progress = math.log1p(step) / math.log1p(STEPS[-1])
                    elbo = -543.0 + (final + 543.0) * progress
                    variance = ENCODER_VARIANCE[estimator] * (1 + kl_index) * (2.0 - progress)
                    metrics = {
                        "elbo_train": elbo + 1.0,
                        "elbo_test": elbo,
                        "grad_var_encoder": variance * (1 + 0.1 * seed),
                        "grad_var_decoder": 900.0 * (2.0 - progress),
                        "grad_sqnorm_encoder": 10.0,
                        "grad_sqnorm_decoder": 300.0,
                        "snr_encoder": 0.5 / (1 + variance / 100),
                        "snr_decoder": 0.7,
                        "train_seconds": 2.0 * step * GRAD_SECONDS[estimator] * slowdown,
                    }
                    rows += [(*key, step, m, v) for m, v in metrics.items()]
                if stop is not None:
                    continue
                finals = {
                    "nll_test": -final - 4.0,
                    "nll_samples": 1000,
                    "throughput": (25_000.0 if device == "cpu" else 400_000.0) / (1 + kl_index),
                    "grad_seconds": GRAD_SECONDS[estimator],
                    "work_var_encoder": variance * GRAD_SECONDS[estimator],
                    "work_var_decoder": 900.0 * GRAD_SECONDS[estimator],
                    "grad_draws": 100,
                    "grad_batched": 1,
                    "run_complete": 1.0,
                }
                rows += [(*key, STEPS[-1], m, v) for m, v in finals.items()]
    return rows


def write_results(out: Path, rows: list[tuple] | None = None, gpu: bool = False) -> Path:
    """A results directory: runs.csv (+ gpu/runs.csv) and env.json (+ gpu/env.json)."""
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "runs.csv", synthetic_rows() if rows is None else rows)
    env = {"torch": "2.13.0", "device": "cpu", "device_name": "Test CPU", "threads": 2}
    (out / "env.json").write_text(json.dumps({**env, "git_commit": "abc1234", "time": "now"}))
    if gpu:
        (out / "gpu").mkdir()
        write_csv(out / "gpu" / "runs.csv", synthetic_rows(device="cuda", diverged=None))
        gpu_env = {**env, "device": "cuda", "device_name": "Test GPU"}
        (out / "gpu" / "env.json").write_text(json.dumps(gpu_env))
    return out


def write_csv(path: Path, rows: list[tuple], columns: tuple[str, ...] = REQUIRED_COLUMNS) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows(rows)


def report_args(out: Path, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_report_arguments(parser)
    return parser.parse_args(["--out", str(out), *extra])


@pytest.fixture(scope="module")
def reported(tmp_path_factory) -> tuple[Path, list[Path]]:
    """One report of the synthetic runs, toy plot included (with few draws, to stay fast)."""
    out = write_results(tmp_path_factory.mktemp("results"))
    with pytest.MonkeyPatch.context() as patch:
        cheap_toy(patch)
        written = write_report(out, toy=True)
    return out, written


def cheap_toy(patch: pytest.MonkeyPatch) -> None:
    """Fewer draws and a coarser k grid for the toy plot: same code, a fraction of the time."""
    patch.setattr(toy_plot, "TOY_DRAWS", 2_000)
    grids = {
        cost: (grid[::5], marks, scale)
        for cost, (grid, marks, scale) in toy_plot.TOY_K_GRIDS.items()
    }
    patch.setattr(toy_plot, "TOY_K_GRIDS", grids)


def table_rows(summary: str) -> list[list[str]]:
    """Cells of every data row of the markdown tables in summary.md."""
    rows = [line.strip("|").split(" | ") for line in summary.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in row] for row in rows if not row[0].strip().startswith(":")]


def test_summary_names_every_estimator_with_no_empty_or_nan_cell(reported):
    out, _ = reported
    summary = (out / "summary.md").read_text()
    rows = table_rows(summary)[1:]  # without the header
    assert {row[0].strip("*") for row in rows} == set(FINAL_ELBO)
    assert len(rows) == len(FINAL_ELBO) * 2  # estimator × KL mode
    assert all(cell for row in rows for cell in row)
    assert "nan" not in summary.lower()


def test_summary_marks_the_diverged_configuration(reported):
    out, _ = reported
    summary = (out / "summary.md").read_text()
    assert "seed 1 diverged at step 100" in summary


def test_best_final_elbo_is_the_first_row(reported):
    out, _ = reported
    table = summary_table(load_runs(out))
    assert (table.iloc[0]["estimator"], table.iloc[0]["kl"]) == ("stl", "analytic")
    assert table.iloc[0]["elbo_test_mean"] == pytest.approx(-96.0 + 0.15)
    # Rows with a diverged seed come after every healthy row.
    healthy = table["diverged"] == 0
    assert healthy.iloc[: healthy.sum()].all()
    summary = (out / "summary.md").read_text()
    first_row = next(line for line in summary.splitlines() if line.startswith("| **"))
    assert first_row.startswith("| **stl** | analytic |")


def test_variance_relative_to_reparam_with_the_same_kl(reported):
    out, _ = reported
    table = summary_table(load_runs(out)).set_index(["estimator", "kl"])
    for kl in ("analytic", "mc"):
        reparam = table.loc[("reparam", kl), "grad_var_encoder"]
        assert table.loc[("reparam", kl), "grad_var_encoder_rel"] == pytest.approx(1.0)
        expected = table.loc[("stl", kl), "grad_var_encoder"] / reparam
        assert table.loc[("stl", kl), "grad_var_encoder_rel"] == pytest.approx(expected)


def test_all_six_plots_written_and_non_empty(reported):
    out, written = reported
    for name in report.PLOT_NAMES:
        path = out / "plots" / f"{name}.png"
        assert path in written
        assert path.read_bytes().startswith(b"\x89PNG") and path.stat().st_size > 10_000


def test_report_is_byte_identical_when_rerun(reported, monkeypatch):
    out, written = reported
    before = {path: path.read_bytes() for path in written}
    cheap_toy(monkeypatch)
    again = write_report(out, toy=True)
    assert again == written
    assert all(path.read_bytes() == before[path] for path in again)


def test_gpu_runs_add_a_throughput_column(tmp_path):
    out = write_results(tmp_path, gpu=True)
    write_report(out, toy=False)
    summary = (out / "summary.md").read_text()
    assert "throughput cuda (examples/s)" in summary
    assert "400,000" in summary and "Test GPU" in summary
    assert "nan" not in summary.lower()
    table = summary_table(load_runs(out))
    assert set(table["device"]) == {"cpu"}  # quality figures from cpu, throughput per device
    assert table["throughput_cuda"].notna().sum() == len(table)


def test_single_kl_mode_skips_kl_plot_and_says_so(tmp_path):
    out = write_results(tmp_path, synthetic_rows(kls=("analytic",), seeds=(0,), diverged=None))
    stale = out / "plots" / "kl_modes.png"
    stale.parent.mkdir()
    stale.write_bytes(b"old")
    written = write_report(out, toy=False)
    summary = (out / "summary.md").read_text()
    assert "`plots/kl_modes.png`: skipped" in summary
    assert "`plots/toy_variance.png`: skipped (--no-toy)" in summary
    assert not stale.exists() and stale not in written
    assert "throughput cpu" in summary and "nan" not in summary.lower()


def test_fully_diverged_row_is_last_and_marked(tmp_path):
    rows = synthetic_rows(seeds=(0,), diverged=("stl", "mc", 0, 10))
    out = write_results(tmp_path, rows)
    table = summary_table(load_runs(out))
    assert (table.iloc[-1]["estimator"], table.iloc[-1]["kl"]) == ("stl", "mc")
    write_report(out, toy=False)
    summary = (out / "summary.md").read_text()
    assert "| stl | mc | diverged at step 10 |" in summary


def test_missing_runs_csv_returns_2_with_a_clear_message(tmp_path, capsys):
    assert main_report(report_args(tmp_path)) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"no runs.csv in {tmp_path}: run `make bench` or `python -m bench run ...` first"


def test_empty_runs_csv_returns_2(tmp_path, capsys):
    (tmp_path / "runs.csv").write_text("")
    assert main_report(report_args(tmp_path)) == 2
    assert capsys.readouterr().err.startswith("no runs.csv in")
    write_csv(tmp_path / "runs.csv", [])
    assert main_report(report_args(tmp_path)) == 2


def test_missing_column_raises_naming_it(tmp_path, capsys):
    columns = tuple(c for c in REQUIRED_COLUMNS if c != "kl")
    write_csv(tmp_path / "runs.csv", [r[:3] + r[4:] for r in synthetic_rows()], columns)
    with pytest.raises(ValueError, match=r"lacks column\(s\) kl;"):
        load_runs(tmp_path)
    assert main_report(report_args(tmp_path)) == 2
    err = capsys.readouterr().err
    assert "kl" in err and len(err.strip().splitlines()) == 1


def test_main_report_succeeds(tmp_path, capsys):
    write_results(tmp_path)
    assert main_report(report_args(tmp_path, "--no-toy")) == 0
    assert (tmp_path / "summary.md").exists()
    assert "wrote" in capsys.readouterr().out


def test_repeated_measurement_keeps_the_last_and_a_cut_line_is_dropped(tmp_path):
    rows = synthetic_rows()
    repeat = next(r for r in rows if r[8] == "nll_test")
    out = write_results(tmp_path, rows + [(*repeat[:9], 123.0)])
    with (out / "runs.csv").open("a") as handle:
        handle.write("mnist5k,mlp500,stl,analytic,1,cpu")  # the harness was killed mid-line
    runs = load_runs(out)
    assert len(runs) == len(rows)
    key = pd.Series(repeat[:9], index=list(REQUIRED_COLUMNS[:9]))
    same = runs[(runs[key.index] == key).all(axis=1)]
    assert same["value"].tolist() == [123.0]


def test_no_toy_keeps_an_existing_toy_plot_linked(tmp_path):
    out = write_results(tmp_path)
    toy_plot = out / "plots" / "toy_variance.png"
    toy_plot.parent.mkdir()
    toy_plot.write_bytes(b"drawn before")
    written = write_report(out, toy=False)
    assert toy_plot not in written and toy_plot.read_bytes() == b"drawn before"
    summary = (out / "summary.md").read_text()
    assert "(not redrawn: --no-toy)" in summary
    assert "![toy_variance](plots/toy_variance.png)" in summary


def test_report_on_the_quick_suite_output(tmp_path):
    """The harness's own output (`python -m bench run --suite quick --device cpu`, committed in
    tests/fixtures/quick): every estimator in the table, no empty or NaN cell."""
    fixture = Path(__file__).parent / "fixtures" / "quick"
    for name in ("runs.csv", "env.json"):
        (tmp_path / name).write_bytes((fixture / name).read_bytes())
    written = write_report(tmp_path, toy=False)
    assert len(written) == 1 + 5  # summary.md and every plot but the toy one
    summary = (tmp_path / "summary.md").read_text()
    rows = table_rows(summary)[1:]
    estimators = set(load_runs(tmp_path)["estimator"])
    assert {row[0].strip("*") for row in rows} == estimators
    assert all(cell for row in rows for cell in row)
    assert "nan" not in summary.lower()
