"""Shared by the execution tests: a small suite command and its rows run serially; and the one
xdist group of the tests that start worker processes or a Ray cluster."""

from __future__ import annotations

from pathlib import Path

import pytest

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


# pytest-xdist groups (`make test` runs `--dist loadgroup`): the tests of a group run one after
# another on one worker. Session and module fixtures, and functools caches, are built once per
# worker, so the tests sharing one are grouped and it is built once; and the tests that start
# worker processes or a Ray cluster (or share their runs) form one group, so that their pools
# do not fight the other tests over the cores.
PROCESS_GROUP = "processes"
PROCESS_MODULES = {"test_execution.py", "test_ray.py"}
PROCESS_FIXTURES = {"quick_results", "uninterrupted", "killed_and_resumed", "head_node"}
# Module fixtures of a costly set-up (reports written, repeated measurements): grouped by module.
SHARED_FIXTURES = {"reported", "extended", "binary", "repeated_measurements"}
# Modules whose tests share functools-cached results (trained control variates, toy draws).
CACHED_MODULES = {"test_control_variates.py", "test_toy.py"}


def xdist_group(item: pytest.Item) -> str | None:
    """The group of a test (see above), None for one that shares nothing costly."""
    fixtures = set(getattr(item, "fixturenames", ()))
    if item.path.name in PROCESS_MODULES or fixtures & PROCESS_FIXTURES:
        return PROCESS_GROUP
    if fixtures & SHARED_FIXTURES or item.path.name in CACHED_MODULES:
        return item.path.stem
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        group = xdist_group(item)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))


def untimed(path: Path) -> list[tuple[str, ...]]:
    """runs.csv's rows but the timings, sorted: what must not depend on where runs ran."""
    return sorted(r for r in read_rows(path) if r[METRIC] not in TIMING_METRICS)


@pytest.fixture(scope="session")
def uninterrupted(tmp_path_factory) -> Path:
    """RUN serially in this process, one configuration after another."""
    out = tmp_path_factory.mktemp("serial")
    assert main([*RUN, "--out", str(out), "--workers", "1"]) == 0
    return out
