"""Execution: a killed parallel driver resumes to the uninterrupted rows, the cost pass runs alone
after all training, runs are pinned to their threads, and the divergence monitor's bookkeeping."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import bench.execution
from bench.__main__ import main
from bench.execution import pin_threads, resolve_workers
from bench.results import KEY, METRIC, read_rows
from bench.runner import DivergenceMonitor
from bench.timing import interleaved_medians
from tests.conftest import ROOT, RUN, untimed


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory) -> tuple[Path, list[int], list[str]]:
    """A `--workers 2` driver killed (its whole process group: driver and workers) with SIGKILL
    once its first configuration is written, then resumed in this process, where the cost pass
    is spied on. Returns the directory, the child processes alive at each cost measurement, and
    the metrics written before the kill."""
    out = tmp_path_factory.mktemp("killed")
    driver = subprocess.Popen(
        [sys.executable, "-m", "bench", *RUN, "--out", str(out), "--workers", "2"],
        cwd=ROOT,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    runs = out / "runs.csv"
    deadline = time.monotonic() + 300
    while not (runs.exists() and "run_complete" in runs.read_text()):
        assert driver.poll() is None and time.monotonic() < deadline, "driver ended early"
        time.sleep(0.05)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    before = [r[METRIC] for r in read_rows(runs)]

    children_at_cost: list[int] = []
    measure_costs = bench.execution.measure_costs

    def spy(*args, **kwargs):
        children_at_cost.append(len(multiprocessing.active_children()))
        return measure_costs(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(bench.execution, "measure_costs", spy)
        assert main([*RUN, "--out", str(out), "--workers", "2", "--resume"]) == 0
    return out, children_at_cost, before


def test_a_kill_leaves_whole_configurations_and_resume_completes_them(
    killed_and_resumed, uninterrupted
):
    out, _, before = killed_and_resumed
    assert 1 <= before.count("run_complete") < 3  # killed mid-suite
    assert before[-1] == "run_complete"  # whole configurations only
    assert untimed(out / "runs.csv") == untimed(uninterrupted / "runs.csv")
    metrics = [r[METRIC] for r in read_rows(out / "runs.csv")]
    assert metrics.count("run_complete") == metrics.count("cost_complete") == 3


def test_the_cost_pass_runs_alone_after_all_training(killed_and_resumed, uninterrupted):
    out, children_at_cost, _ = killed_and_resumed
    assert children_at_cost == [0]  # one pass, with the worker pool already gone
    for path in (out / "runs.csv", uninterrupted / "runs.csv"):
        metrics = [r[METRIC] for r in read_rows(path)]
        last_trained = max(i for i, m in enumerate(metrics) if m == "run_complete")
        first_costed = min(i for i, m in enumerate(metrics) if m == "cost_complete")
        assert last_trained < first_costed
        configs: dict[tuple[str, ...], list[str]] = {}
        for row in read_rows(path):
            configs.setdefault(row[:KEY], []).append(row[METRIC])
        for key, names in configs.items():
            assert names[-1] == "cost_complete" and "cost_threads" in names, key


def test_the_cost_pass_interleaves_its_timing_rounds():
    calls: list[str] = []
    seconds = interleaved_medians(
        {name: (lambda name=name: calls.append(name)) for name in "ab"},
        torch.device("cpu"),
        repeats=4,
        rounds=2,
        warmup=1,
    )
    assert set(seconds) == {"a", "b"}
    assert "".join(calls) == "ab" + "aaabbb" * 2  # warm-up, then per round: 1 untimed + 2 timed


@pytest.mark.parametrize(("cpus", "expected"), [(1, os.cpu_count()), (os.cpu_count() + 1, 1)])
def test_auto_workers_fill_the_cores(cpus, expected):
    assert resolve_workers("auto", cpus, torch.device("cpu")) == expected
    assert resolve_workers("auto", cpus, torch.device("cuda")) == 1
    assert resolve_workers("3", cpus, torch.device("cpu")) == 3


def test_pinning_sets_the_torch_threads():
    previous = torch.get_num_threads()
    try:
        pin_threads(1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(previous)


def test_divergence_monitor_finds_the_first_non_finite_step_of_each_window():
    monitor = DivergenceMonitor(steps=10, device=torch.device("cpu"))
    for step in range(1, 5):
        monitor.record(step, torch.tensor(1.0))
    assert monitor.check(4) is None
    for step, loss in zip(range(5, 9), (2.0, float("inf"), float("nan"), 3.0), strict=True):
        monitor.record(step, torch.tensor(loss))
    assert monitor.check(8) == 6
