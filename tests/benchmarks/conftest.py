"""Shared pieces of the pytest-benchmark suite: devices, a synthetic mnist5k-sized batch,
synchronised timing, the context saved with every result, and single-threaded CPU torch.

`make bench-baseline` / `make bench-check` time these tests; `make test` runs each body once with
`--benchmark-disable`, as a smoke test. Every timed function synchronises on CUDA before
returning (the `synchronized` fixture), so the clock reads finished work.

On CPU the benchmarks time the work, not the neighbours. The reference machine has 2 cores shared
with other jobs, so
- torch runs on one intra-op thread: two threads plus any other busy process stall at every
  parallel region (a reparam training step measured 430 ms with two threads, 14 ms with one, at
  the same load);
- the clock is the process's CPU time (`time.process_time`), not wall time: as the load from
  other jobs came and went, wall-clock medians of unchanged code moved by up to 77% (the same
  step took 6 ms or 10 ms), CPU-time medians by at most 19% (13 re-runs, load 1 to 5). With one
  thread, CPU time is the wall time of an idle machine. CUDA benchmarks keep the wall clock
  (`time.perf_counter`), synchronised.
The thread count is saved in every benchmark's extra_info, the timer in the saved JSON.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import torch
from pytest_benchmark.session import PerformanceRegression

from bench.suites import RunConfig
from bench.timing import synchronize

BATCH_SIZE = RunConfig().batch_size  # 100, the harness's minibatch
INPUT_DIM = 784  # mnist5k: 28 x 28 pixels
CPU_THREADS = 1
BENCHMARK_DIR = Path(__file__).parent

T = TypeVar("T")

DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param(
        "cuda",
        id="cuda",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available"),
    ),
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Time the CPU benchmarks of this directory in process CPU time (see the module docstring),
    keeping each test's other benchmark settings (its group)."""
    for item in items:
        if not item.path.is_relative_to(BENCHMARK_DIR):
            continue
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("device", "cpu") != "cpu":
            continue
        marker = item.get_closest_marker("benchmark")
        settings = {**(marker.kwargs if marker else {}), "timer": time.process_time}
        item.add_marker(pytest.mark.benchmark(**settings), append=False)


@pytest.hookimpl(wrapper=True)
def pytest_terminal_summary() -> Iterator[None]:
    """pytest-benchmark reports a regression (after its comparison table and the list of failed
    checks) by raising from its terminal summary, which ends the run in a 70-line traceback; end
    it with one line and exit status 1 instead."""
    try:
        return (yield)
    except PerformanceRegression:
        pytest.exit("benchmark regression beyond --benchmark-compare-fail (listed above)", 1)


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> torch.device:
    return torch.device(request.param)


@pytest.fixture(autouse=True)
def single_cpu_thread() -> Iterator[None]:
    """One intra-op thread while a benchmark runs; torch's default is restored afterwards, so the
    rest of the test suite is unaffected."""
    threads = torch.get_num_threads()
    torch.set_num_threads(CPU_THREADS)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def benchmark_context(request: pytest.FixtureRequest, single_cpu_thread: None) -> None:
    """Batch size, device and CPU thread count into each result's extra_info (tests add theirs)."""
    if "benchmark" not in request.fixturenames:
        return
    benchmark = request.getfixturevalue("benchmark")
    device = request.getfixturevalue("device") if "device" in request.fixturenames else None
    benchmark.extra_info.update(
        {
            "batch_size": BATCH_SIZE,
            "device": "cpu" if device is None else device.type,
            "cpu_threads": torch.get_num_threads(),
        }
    )


@pytest.fixture
def binary_batch(device: torch.device) -> torch.Tensor:
    """(BATCH_SIZE, INPUT_DIM) binary pixels from a fixed generator, built before the clock
    starts. Pixel values do not change the cost of any benchmarked operation."""
    generator = torch.Generator().manual_seed(0)
    pixel_means = torch.rand(INPUT_DIM, generator=generator)
    x = torch.bernoulli(pixel_means.expand(BATCH_SIZE, INPUT_DIM), generator=generator)
    return x.to(device)


@pytest.fixture
def synchronized(device: torch.device) -> Callable[[Callable[[], T]], Callable[[], T]]:
    """Wraps a function so that each call ends with a CUDA synchronisation (no-op on CPU)."""

    def wrap(fn: Callable[[], T]) -> Callable[[], T]:
        def call() -> T:
            result = fn()
            synchronize(device)
            return result

        return call

    return wrap
