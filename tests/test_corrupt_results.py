"""Corrupted results never crash the readers, and never reach a table silently (property-based,
hypothesis): whatever a truncation, a bad cell, a repeated or foreign row or a newer schema does
to a valid results directory, `report`'s tables, `compare` and `--resume`'s reading either
succeed on data that are still valid or stop with a ValueError naming the file (one line, exit
status 2, on the command line)."""

from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.__main__ import main
from bench.compare import compare_sets
from bench.report.data import Results
from bench.report.markdown import summary_markdown
from bench.report.table import summary_table
from bench.results import COLUMNS, FACT_COLUMNS, NoRunsError, RunsFile
from tests.conftest import RUN

RUN_ARGS = RUN[1:] + ["--workers", "1"]
FILES = ("runs.csv", "estimators.csv", "placements.csv", "env.json")
BAD_CELLS = ("abc", "", "1e400", "-", "0x10", "  ", "nan", "inf", "1,5")


# Columns whose every cell must be valid, with the BAD_CELLS that make one invalid.
NOT_NUMBERS = ("abc", "", "-", "0x10", "  ", "1,5")
CHECKED_FACTS = ("k", "objective", "latent", "biased", "evaluations")
MUST_BE_VALID = {
    "runs.csv": {COLUMNS.index("value"): NOT_NUMBERS},
    "estimators.csv": {FACT_COLUMNS.index(c): BAD_CELLS for c in CHECKED_FACTS},
}


def corrupt(directory: Path, data: st.DataObject) -> tuple[str, bool]:
    """Apply one random corruption to one file of `directory`; return what was done, and whether
    it is garbage that no reader may take in (a reader must raise ValueError)."""
    name = data.draw(st.sampled_from(FILES), label="file")
    path = directory / name
    text = path.read_text()
    lines = text.splitlines(keepends=True)
    kind = data.draw(
        st.sampled_from(("truncate", "cell", "repeat", "foreign", "schema", "garbage")),
        label="kind",
    )
    garbage = False
    if kind == "truncate":
        text = text[: data.draw(st.integers(0, len(text)), label="at")]
    elif kind == "cell" and len(lines) > 1:
        at = data.draw(st.integers(1, len(lines) - 1), label="line")
        cells = lines[at].rstrip("\n").split(",")
        column = data.draw(st.integers(0, len(cells) - 1), label="column")
        cells[column] = data.draw(st.sampled_from(BAD_CELLS), label="cell")
        lines[at] = ",".join(cells) + "\n"
        text = "".join(lines)
        torn_tail = name == "runs.csv" and at == len(lines) - 1
        garbage = cells[column] in MUST_BE_VALID.get(name, {}).get(column, ()) and not torn_tail
    elif kind == "repeat" and len(lines) > 1:
        at = data.draw(st.integers(1, len(lines) - 1), label="line")
        text = "".join(lines + [lines[at]])
    elif kind == "foreign" and name == "runs.csv":
        cells = lines[-1].rstrip("\n").split(",")
        cells[-2] = "a_metric_from_the_future"
        text = "".join(lines) + ",".join(cells) + "\n"
    elif kind == "schema":
        text = lines[0].rstrip("\n") + ",schema_2_column\n" + "".join(lines[1:])
        garbage = name in MUST_BE_VALID
    elif kind == "garbage":
        junk = data.draw(st.text(min_size=1, max_size=40), label="junk")
        at = data.draw(st.integers(0, len(lines)), label="line")
        text = "".join(lines[:at] + [junk + "\n"] + lines[at:])
    path.write_text(text)
    return f"{kind} {name}", garbage


def bad_cell(directory: Path, data: st.DataObject) -> tuple[str, bool]:
    """One cell of a column whose every cell must be valid replaced by a BAD_CELL; whether the
    result is garbage (a runs.csv's last line is a torn tail, dropped by rule)."""
    name = data.draw(st.sampled_from(sorted(MUST_BE_VALID)), label="file")
    path = directory / name
    lines = path.read_text().splitlines(keepends=True)
    at = data.draw(st.integers(1, len(lines) - 1), label="line")
    column = data.draw(st.sampled_from(sorted(MUST_BE_VALID[name])), label="column")
    cells = lines[at].rstrip("\n").split(",")
    cells[column] = data.draw(st.sampled_from(BAD_CELLS), label="cell")
    lines[at] = ",".join(cells) + "\n"
    path.write_text("".join(lines))
    torn_tail = name == "runs.csv" and at == len(lines) - 1
    garbage = cells[column] in MUST_BE_VALID[name][column] and not torn_tail
    return f"{cells[column]!r} in column {column} of {name} line {at + 1}", garbage


def tables_or_value_error(directory: Path) -> bool:
    """report's tables (not its plots, which draw the same frames) from `directory`, with no
    infinite number in them; True when reading stopped with a ValueError instead."""
    try:
        results = Results.load(directory)
        table = summary_table(results)
        summary_markdown(table, results.envs)
    except (ValueError, NoRunsError):
        return True
    numbers = table.select_dtypes("number").to_numpy().ravel()
    assert not any(math.isinf(x) for x in numbers)
    return False


@pytest.fixture(scope="module")
def valid(uninterrupted, tmp_path_factory) -> Path:
    """A valid results directory: the shared quick run (reparam, stl), with its report."""
    copy = tmp_path_factory.mktemp("valid") / "results"
    shutil.copytree(uninterrupted, copy, ignore=shutil.ignore_patterns("states", "plots"))
    return copy


SETTINGS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.mark.parametrize("corruption", [corrupt, bad_cell], ids=["any", "bad_cell"])
@SETTINGS
@given(data=st.data())
def test_a_corrupted_directory_gives_valid_tables_or_one_value_error(
    corruption, valid, tmp_path, data
):
    directory = Path(tempfile.mkdtemp(dir=tmp_path)) / "results"  # one per example
    shutil.copytree(valid, directory)
    done, garbage = corruption(directory, data)
    try:
        refused = tables_or_value_error(directory)
        assert refused or not garbage, "garbage reached the tables"
        compare_or_value_error(valid, directory)
        resume_or_value_error(directory)
    except AssertionError as error:
        raise AssertionError(f"after {done}: {error}") from error


def compare_or_value_error(valid: Path, directory: Path) -> None:
    try:
        compare_sets(valid, directory)
    except (ValueError, NoRunsError):
        pass


def resume_or_value_error(directory: Path) -> None:
    """What `run --resume` reads before training: runs.csv's rows and progress."""
    try:
        RunsFile.check(directory, resume=True, overwrite=False)
    except ValueError:
        pass


def text_in_the_first_value(text: str) -> str:
    header, first, *rest = text.splitlines(keepends=True)
    return "".join([header, first.rsplit(",", 1)[0] + ",abc\n", *rest])


def a_newer_schema(text: str) -> str:
    header, *rest = text.splitlines(keepends=True)
    return "".join([header.rstrip("\n") + ",schema_2_column\n", *rest])


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (text_in_the_first_value, "runs.csv line 2: value 'abc' is not a number"),
        (a_newer_schema, "has columns"),
    ],
)
def test_report_stops_with_one_line_on_a_bad_runs_csv(valid, tmp_path, capsys, edit, message):
    directory = tmp_path / "bad"
    shutil.copytree(valid, directory)
    runs = directory / "runs.csv"
    runs.write_text(edit(runs.read_text()))
    assert main(["report", "--out", str(directory)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and message in error[0], error


def test_resume_heals_a_truncated_estimators_csv(valid, tmp_path):
    directory = tmp_path / "torn"
    shutil.copytree(valid, directory)
    facts = directory / "estimators.csv"
    facts.write_text(facts.read_text()[:-9])
    with pytest.raises(ValueError, match="estimators.csv line 3: evaluations"):
        Results.load(directory)
    assert main(["run", *RUN_ARGS, "--out", str(directory), "--resume"]) == 0
    assert len(Results.load(directory).facts) == 2
