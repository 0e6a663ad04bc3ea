"""What a growing results directory costs its single writer and its reader: `--resume`'s start-up
(reading runs.csv and its progress, `RunsFile.check`) and the report's tables (`Results.load` and
`summary_table`, without the plots, whose cost does not grow with the rows), on the committed
runs.csv repeated `copies` times under new seeds. Both should grow linearly with the file:
bench-check compares each size with its own baseline, and the README gives the measured slope up to
100 MB (the `full` suite's size)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bench.report.data import Results
from bench.report.table import summary_table
from bench.results import COLUMNS, RunsFile, read_rows

REFERENCE = Path(__file__).resolve().parents[2] / "results"
ROUNDS = 3


def repeated_results(directory: Path, copies: int) -> Path:
    """The committed results with runs.csv repeated `copies` times, seed + 100 × copy."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("estimators.csv", "env.json"):
        shutil.copy(REFERENCE / name, directory / name)
    rows = read_rows(REFERENCE / "runs.csv")
    seed = COLUMNS.index("seed")
    grown = [
        (*row[:seed], str(int(row[seed]) + 100 * copy), *row[seed + 1 :])
        for copy in range(copies)
        for row in rows
    ]
    RunsFile.open(directory, grown, fresh=False)  # the writer's own CSV (quotes a key's commas)
    return directory


@pytest.fixture(scope="module", params=[1, 8], ids=["x1", "x8"])
def results_dir(request, tmp_path_factory) -> Path:
    return repeated_results(tmp_path_factory.mktemp("grown"), request.param)


@pytest.mark.benchmark(group="results_io")
def test_resume_start_up(benchmark, results_dir: Path) -> None:
    benchmark.extra_info["megabytes"] = (results_dir / "runs.csv").stat().st_size / 1e6
    kept, progress = benchmark.pedantic(
        RunsFile.check, args=(results_dir, True, False), rounds=ROUNDS, iterations=1
    )
    assert kept and progress.trained


@pytest.mark.benchmark(group="results_io")
def test_report_tables(benchmark, results_dir: Path) -> None:
    benchmark.extra_info["megabytes"] = (results_dir / "runs.csv").stat().st_size / 1e6

    def tables():
        return summary_table(Results.load(results_dir))

    table = benchmark.pedantic(tables, rounds=ROUNDS, iterations=1)
    assert len(table)
