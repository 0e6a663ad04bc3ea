"""The Ray backend gives the local rows, on a local Ray instance and on a cluster started with
`ray start --head` (joined with --address auto); a GPU request no node can meet exits 2 at once,
losing nothing. Every Ray process a test starts is ended by process group id (some Ray agents
ignore SIGTERM, so SIGKILL)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.results import KEY, PLACEMENT_COLUMNS, read_rows
from tests.conftest import ROOT, RUN, docs_estimator_example, untimed

RAY = Path(sys.executable).parent / "ray"
START_TIMEOUT = 120  # seconds for `ray start --head` to report the runtime started


def run_bench(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """`python -m bench *args` in its own session, which is killed afterwards by its id: a local
    Ray instance's processes are the driver's descendants in that session."""
    driver = in_own_session([sys.executable, "-m", "bench", *args], stderr=subprocess.PIPE)
    try:
        stdout, stderr = driver.communicate(timeout=timeout)
    finally:
        kill_session(driver.pid)
    return subprocess.CompletedProcess(driver.args, driver.returncode, stdout, stderr)


def in_own_session(command: list[str], stderr: int) -> subprocess.Popen[str]:
    """`command` started in a new session (so its process group id is its pid), text output."""
    return subprocess.Popen(
        command, cwd=ROOT, start_new_session=True, stdout=subprocess.PIPE, stderr=stderr, text=True
    )


def kill_session(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_node(*options: str) -> subprocess.Popen[str]:
    """`ray start --block *options` on the loopback address, in its own session, returned once
    its runtime has started (the caller kills its session)."""
    head_only = ["--include-dashboard=false"] if "--head" in options else []
    node = in_own_session(
        [str(RAY), "start", "--block", "--node-ip-address", "127.0.0.1", *options]
        + [*head_only, "--disable-usage-stats"],
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + START_TIMEOUT
    for line in node.stdout:
        if "Ray runtime started" in line:
            return node
        if time.monotonic() > deadline:
            break
    kill_session(node.pid)
    pytest.fail(f"ray start {' '.join(options)} did not start in time")


@pytest.fixture(scope="module")
def head_node() -> Iterator[int]:
    """A one-node cluster of 2 CPUs from `ray start --head --block`, in its own session; yields
    the session's id and kills it (head, GCS, raylet, agents, workers) afterwards."""
    head = start_node("--head", "--num-cpus", "2", "--port", str(free_port()))
    try:
        yield head.pid
    finally:
        kill_session(head.pid)
        head.wait()


def test_a_local_ray_instance_gives_the_local_rows(tmp_path, uninterrupted):
    out = tmp_path / "ray"
    done = run_bench(*RUN, "--out", str(out), "--backend", "ray", "--workers", "2")
    assert done.returncode == 0, done.stderr
    assert untimed(out / "runs.csv") == untimed(uninterrupted / "runs.csv")
    with (out / "placements.csv").open() as handle:
        header, *lines = [line.rstrip("\n").split(",") for line in handle]
    assert tuple(header) == PLACEMENT_COLUMNS
    phases = sorted(line[header.index("phase")] for line in lines)
    assert phases == ["cost"] * 3 + ["shared"] * 3 + ["train"] * 3
    assert {line[header.index("backend")] for line in lines} == {"ray"}
    assert {line[header.index("threads")] for line in lines} == {"1"}


def test_a_cluster_joined_with_address_auto_gives_the_local_rows(
    head_node, tmp_path, uninterrupted
):
    out = tmp_path / "cluster"
    done = run_bench(*RUN, "--out", str(out), "--backend", "ray", "--address", "auto")
    assert done.returncode == 0, done.stderr
    assert untimed(out / "runs.csv") == untimed(uninterrupted / "runs.csv")


def test_an_unsatisfiable_gpu_request_exits_2_within_seconds_losing_nothing(
    head_node, tmp_path, uninterrupted
):
    out = tmp_path / "kept"
    out.mkdir()
    (out / "runs.csv").write_bytes((uninterrupted / "runs.csv").read_bytes())
    before = read_rows(out / "runs.csv")
    started = time.monotonic()
    on_any_device = [arg if arg != "cpu" else "auto" for arg in RUN]
    done = run_bench(
        *on_any_device,
        "--out",
        str(out),
        "--overwrite",
        "--backend",
        "ray",
        "--address",
        "auto",
        "--gpus-per-run",
        "0.5",
        timeout=120,
    )
    assert done.returncode == 2
    assert time.monotonic() - started < 60
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith("error: no node of the Ray cluster has 1 CPU + 0.5 GPU"), error
    assert read_rows(out / "runs.csv") == before  # --overwrite refused before truncating


def test_a_plugin_outside_the_project_travels_with_the_ray_tasks(tmp_path):
    """The plugin file is not in the working_dir Ray ships: its source goes with each task, and
    the rows are those of the same plugin run in the driver."""
    plugin = tmp_path / "score_half.py"
    plugin.write_text(docs_estimator_example())
    run = ["run", "--suite", "quick", "--device", "cpu", "--estimators", "score_half"]
    run += ["--plugin", str(plugin)]
    serial, on_ray = tmp_path / "serial", tmp_path / "ray"
    done = run_bench(*run, "--out", str(serial), "--workers", "1")
    assert done.returncode == 0, done.stderr
    done = run_bench(*run, "--out", str(on_ray), "--backend", "ray", "--workers", "2")
    assert done.returncode == 0, done.stderr
    rows = untimed(on_ray / "runs.csv")
    assert {r[2] for r in rows} == {"score_half"}
    assert rows == untimed(serial / "runs.csv")


def test_a_node_lost_mid_suite_leaves_the_suite_to_the_survivor(
    tmp_path, uninterrupted, monkeypatch
):
    """Two nodes of one CPU each; the worker node is killed (its whole process group) once the
    first configuration has finished, while the others run: its task is retried on the head
    node, the rows are the local rows, and placements.csv names the node each run finished on.
    Explicit addresses, not `auto`: the module's other cluster may still be up."""
    monkeypatch.setenv("RAY_AUTH_MODE", "token")  # the second node joins with the head's token
    port = str(free_port())
    head = start_node("--head", "--num-cpus", "1", "--port", port)
    worker = None
    try:
        worker = start_node("--address", f"127.0.0.1:{port}", "--num-cpus", "1")
        out = tmp_path / "survivor"
        driver = in_own_session(
            [sys.executable, "-m", "bench", *RUN, "--out", str(out), "--backend", "ray"]
            + ["--address", f"127.0.0.1:{port}"],
            stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + 600
            while not (out / "runs.csv").is_file() or not read_rows(out / "runs.csv"):
                assert driver.poll() is None, driver.stderr.read()
                assert time.monotonic() < deadline, "no configuration finished"
                time.sleep(0.5)
            finished_before = {row[:KEY] for row in read_rows(out / "runs.csv")}
            kill_session(worker.pid)
            worker.wait()
            _, stderr = driver.communicate(timeout=900)
        finally:
            kill_session(driver.pid)
        assert driver.returncode == 0, stderr
    finally:
        for node in (worker, head):
            if node is not None:
                kill_session(node.pid)
                node.wait()
    assert untimed(out / "runs.csv") == untimed(uninterrupted / "runs.csv")
    with (out / "placements.csv").open() as handle:
        header, *lines = [line.rstrip("\n").split(",") for line in handle]
    node = {phase: [] for phase in ("train", "cost", "shared")}
    for line in lines:
        node[line[header.index("phase")]].append((tuple(line[:KEY]), line[header.index("host")]))
    assert len(node["train"]) == 3  # a retried task is placed once, where it finished
    survivor = {host for _, host in node["cost"] + node["shared"]}
    assert len(survivor) == 1, survivor  # everything after training ran on the head
    after_the_kill = [host for key, host in node["train"] if key not in finished_before]
    assert after_the_kill and set(after_the_kill) == survivor
