"""Shared by the execution tests: a small suite command and its rows run serially."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from bench.__main__ import main
from bench.results import METRIC, read_rows

# Time-based metrics: all that may differ between two runs of the same command.
TIMING_METRICS = {
    "train_seconds",
    "throughput",
    "grad_seconds",
    "work_var_encoder",
    "work_var_decoder",
}
ROOT = Path(__file__).parent.parent
# Three configurations of 200 steps: with two workers the third starts when one has finished.
RUN = ["run", "--suite", "quick", "--device", "cpu", "--estimators", "reparam,stl"]


DOCS_ESTIMATORS = ROOT / "docs" / "estimators.md"


def docs_estimator_example() -> str:
    """The code of docs/estimators.md's "Adding an estimator": the file a user writes."""
    section = DOCS_ESTIMATORS.read_text().split("## Adding an estimator", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def untimed(path: Path) -> list[tuple[str, ...]]:
    """runs.csv's rows but the timings, sorted: what must not depend on where runs ran."""
    return sorted(r for r in read_rows(path) if r[METRIC] not in TIMING_METRICS)


@pytest.fixture
def one_thread():
    """One torch thread for the test: for tiny models it is faster, and steadier on a shared
    machine (use with `pytest.mark.usefixtures("one_thread")`)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def uninterrupted(tmp_path_factory) -> Path:
    """RUN serially in this process, one configuration after another."""
    out = tmp_path_factory.mktemp("serial")
    assert main([*RUN, "--out", str(out), "--workers", "1"]) == 0
    return out
