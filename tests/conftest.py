"""Shared by the execution tests: a small suite command and its rows run serially."""

from __future__ import annotations

import os
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


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist, each of the N worker processes takes 1/N of the cores for torch's
    intra-op threads (torch's default is every core in each process: N × cores threads fight
    over the cores). Processes the tests start set their own (`--cpus-per-run`)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        torch.set_num_threads(max(1, torch.get_num_threads() // workers))


# The slowest test files (single-core seconds on the 2-core AMD EPYC, measured with
# --durations=0), handed out first: pytest-xdist gives files to workers in collection order
# (`--no-loadscope-reorder`), so a slow file started last would leave the other worker idle.
SLOWEST_FIRST = (
    "test_harness.py",  # 310: the quick suite on two workers
    "test_ray.py",  # about 300: Ray clusters started and lost
    "test_gradient_statistics.py",  # 199: standard errors checked by repetition
    "test_report.py",  # 87
    "test_shared.py",  # 77
    "test_check.py",  # 63
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """SLOWEST_FIRST's files first, then the rest in their collected order."""
    rank = {name: position for position, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


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
