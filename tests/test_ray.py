"""The Ray backend gives the local rows, on a local Ray instance and on a cluster started with
`ray start --head` (joined with --address auto); a GPU request no node can meet exits 2 at once,
losing nothing; a node or the head lost mid-suite. Every Ray process a test starts is ended by
process group id (some Ray agents ignore SIGTERM, so SIGKILL), and listens on the loopback
address only (Ray's single-machine switch, bench.ray_backend.SINGLE_MACHINE: without it Ray
replaces `--node-ip-address 127.0.0.1` by the machine's address and listens on every interface)."""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from bench.execution import CLUSTER_LOST_EXIT
from bench.ray_backend import HEAD_GRACE_S, SINGLE_MACHINE
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


@pytest.fixture(scope="module", autouse=True)
def loopback_only() -> Iterator[None]:
    """Every Ray process the module's tests start (they inherit the environment) keeps to the
    loopback address."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(SINGLE_MACHINE, "0")
        yield


def session_processes(session: int) -> list[int]:
    """The ids of the processes in `session` (field 6 of /proc/PID/stat)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        if int(fields[3]) == session:
            found.append(int(stat.parent.name))
    return found


def listening_addresses(session: int) -> set[str]:
    """The local IP addresses of the TCP sockets listening in `session`'s processes, from
    /proc/net/tcp and tcp6 (state 0A) matched to the processes' socket inodes."""
    inodes = set()
    for pid in session_processes(session):
        try:
            links = [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()]
        except OSError:
            continue
        inodes |= {link[8:-1] for link in links if link.startswith("socket:[")}
    addresses = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:
                addresses.add(hex_address(fields[1].split(":")[0]))
    return addresses


def hex_address(word: str) -> str:
    """/proc/net/tcp's hex local address (little-endian 32-bit words) as text, an IPv4-mapped
    IPv6 address as its IPv4 address."""
    raw = b"".join(bytes.fromhex(word[i : i + 8])[::-1] for i in range(0, len(word), 8))
    address = ipaddress.ip_address(raw)
    return str(getattr(address, "ipv4_mapped", None) or address)


LOOPBACK = {"127.0.0.1", "::1"}


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


def test_a_head_node_listens_on_the_loopback_address_only(head_node):
    addresses = listening_addresses(head_node)
    assert addresses and addresses <= LOOPBACK, addresses


def test_a_local_ray_instance_listens_on_the_loopback_address_only(monkeypatch):
    """bench.ray_backend.connect's local instance, in a driver of its own session, without the
    module's setting: connect makes it."""
    monkeypatch.delenv(SINGLE_MACHINE)
    script = "from bench.ray_backend import connect; connect(None, 1); print('up', flush=True)"
    driver = in_own_session(
        [sys.executable, "-c", f"{script}; import time; time.sleep(600)"], stderr=subprocess.STDOUT
    )
    try:
        for line in driver.stdout:
            if line.strip() == "up":
                break
        else:
            pytest.fail("the local instance did not start")
        addresses = listening_addresses(driver.pid)
    finally:
        kill_session(driver.pid)
        driver.wait()
    assert addresses and addresses <= LOOPBACK, addresses


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
    """Two nodes of one CPU each (tests/two_ray_nodes.py); the worker node's processes are ended
    while it trains a configuration: its task is retried on the head node, the rows are the local
    rows, and placements.csv names the node each run finished on (with no retries the run ends
    with ClusterLost's one line instead). An explicit address, not `auto`: the module's other
    cluster may still be up."""
    monkeypatch.setenv("RAY_AUTH_MODE", "token")  # the driver joins with the cluster's token
    nodes = subprocess.Popen(
        [sys.executable, "-m", "tests.two_ray_nodes"],
        cwd=ROOT,
        start_new_session=True,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        words = nodes.stdout.readline().split()
        assert words and words[0] == "address", words
        out = tmp_path / "survivor"
        driver = in_own_session(
            [sys.executable, "-m", "bench", *RUN, "--out", str(out), "--backend", "ray"]
            + ["--address", words[1]],
            stderr=subprocess.PIPE,
        )
        try:
            nodes.stdin.write("kill-worker\n")  # as soon as the worker node trains a configuration
            nodes.stdin.flush()
            assert nodes.stdout.readline().strip() == "killed"
            runs = out / "runs.csv"
            finished_before = {row[:KEY] for row in read_rows(runs)} if runs.is_file() else set()
            _, stderr = driver.communicate(timeout=900)
        finally:
            kill_session(driver.pid)
        assert driver.returncode == 0, stderr
    finally:
        kill_session(nodes.pid)
        nodes.wait()
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


def test_a_head_lost_mid_suite_ends_the_driver_with_one_line_and_resume_finishes(
    tmp_path, uninterrupted, monkeypatch
):
    """The head (its whole process group: GCS, raylet, workers) is killed once the first
    configuration has finished: the driver exits CLUSTER_LOST_EXIT within the watch's grace with
    one line naming the head and --resume, no traceback, the finished rows intact; --resume on a
    new cluster trains the rest, and the rows are the local rows."""
    monkeypatch.setenv("RAY_AUTH_MODE", "token")  # the driver joins with the head's token
    out = tmp_path / "headless"
    first_port = str(free_port())
    head = start_node("--head", "--num-cpus", "2", "--port", first_port)
    try:
        driver = in_own_session(
            [sys.executable, "-m", "bench", *RUN, "--out", str(out), "--backend", "ray"]
            + ["--address", f"127.0.0.1:{first_port}"],
            stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + 600
            while not (out / "runs.csv").is_file() or not read_rows(out / "runs.csv"):
                assert driver.poll() is None, driver.stderr.read()
                assert time.monotonic() < deadline, "no configuration finished"
                time.sleep(0.5)
            kill_session(head.pid)
            head.wait()
            killed = time.monotonic()
            _, stderr = driver.communicate(timeout=120)
            waited = time.monotonic() - killed
        finally:
            kill_session(driver.pid)
    finally:
        kill_session(head.pid)
    assert driver.returncode == CLUSTER_LOST_EXIT, stderr
    assert waited < HEAD_GRACE_S + 30, waited  # before Ray's own 60 s
    assert "Traceback" not in stderr, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and f"127.0.0.1:{first_port}" in last, last
    assert "--resume" in last, last
    finished = read_rows(out / "runs.csv")
    assert finished and len(untimed(out / "runs.csv")) < len(untimed(uninterrupted / "runs.csv"))

    second_port = str(free_port())
    head = start_node("--head", "--num-cpus", "2", "--port", second_port)
    try:
        resumed = run_bench(
            *RUN,
            "--out",
            str(out),
            "--backend",
            "ray",
            "--address",
            f"127.0.0.1:{second_port}",
            "--resume",
        )
    finally:
        kill_session(head.pid)
        head.wait()
    assert resumed.returncode == 0, resumed.stderr
    assert untimed(out / "runs.csv") == untimed(uninterrupted / "runs.csv")


def test_a_connection_reset_by_ray_is_the_cluster_lost(monkeypatch):
    """Killing the head can make Ray's core worker raise IOError ("Connection reset by peer": its
    raylet is gone) in the driver's next Ray call, before the head watch's grace has passed: that
    is ClusterLost naming the head and --resume (exit CLUSTER_LOST_EXIT), not a file system fault
    (exit 3); the task's own exception still passes through unchanged."""
    ray = pytest.importorskip("ray")
    from types import SimpleNamespace

    from bench.execution import ClusterLost
    from bench.ray_backend import RayBackend, cluster_calls
    from bench.suites import get_suite

    def reset(*args, **kwargs):
        raise ConnectionResetError(104, "Connection reset by peer")

    head = "127.0.0.1:6379"
    context = SimpleNamespace(gcs_address=head)
    monkeypatch.setattr(ray, "get_runtime_context", lambda: context)
    monkeypatch.setattr(
        ray, "remote", lambda **options: lambda f: SimpleNamespace(remote=lambda *a: object())
    )
    monkeypatch.setattr(ray, "wait", reset)
    monkeypatch.setattr(ray, "cancel", reset)  # the lost cluster cannot cancel either
    backend = RayBackend(
        SimpleNamespace(name="mnist5k"), None, torch.device("cpu"), 1, 0.0, 2, {"CPU": 2.0}
    )
    with pytest.raises(ClusterLost) as lost:
        next(backend.run(get_suite("quick").runs))
    assert head in str(lost.value) and "--resume" in str(lost.value), lost.value
    assert "Connection reset by peer" in str(lost.value), lost.value

    own = ray.exceptions.RayTaskError("f", "Traceback ...", ValueError("the task's own"))
    with pytest.raises(ray.exceptions.RayTaskError), cluster_calls("a run", head):
        raise own
