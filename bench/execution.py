"""Where configurations train: inline in the driver or in a local process pool; one writer.

The task (bench.runner.run_configuration) returns a configuration's rows and writes nothing. A
backend runs tasks and yields each (configuration, result, placement) as it finishes; `train`
appends each result to runs.csv in one write, so the driver is the only writer and a kill leaves
whole configurations. Every run is pinned to `threads` torch threads, so that the runs' threads
add up to the cores they were given (oversubscription slows every run down). A backend also runs
the exclusive cost pass (bench.cost) and the shared-parameter pass (bench.shared), where its runs
trained. The Ray backend (bench.ray_backend) is one more class with the same three methods.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import torch

from bench import plugins
from bench.cost import Costs, measure_costs
from bench.results import Measurements, Placement, RunsFile
from bench.runner import RunResult, StepCallback, run_configuration
from bench.shared import SharedJob, measure_each
from bench.snapshots import Snapshots
from bench.suites import RunConfig
from vae_core.data import Dataset, load_dataset

# The exit status when the cluster under a suite is lost (a Ray head gone, a task lost beyond its
# retries): the configurations written before it are kept, and --resume finishes the rest.
CLUSTER_LOST_EXIT = 4


class ClusterLost(RuntimeError):
    """The cluster lost a configuration beyond its retries; the message names it and what to do."""


def placement_here(backend: str, device: torch.device) -> Placement:
    """Where the calling process runs: host, process id, torch threads and, on CUDA, the GPU ids
    (CUDA_VISIBLE_DEVICES when set, as Ray sets it for a task's GPUs, else the device index)."""
    gpu_ids = ""
    if device.type == "cuda":
        gpu_ids = os.environ.get("CUDA_VISIBLE_DEVICES") or str(torch.cuda.current_device())
    return Placement(backend, socket.gethostname(), os.getpid(), torch.get_num_threads(), gpu_ids)


@dataclass(frozen=True)
class Finished:
    """A configuration, its result and where it ran."""

    config: RunConfig
    result: RunResult
    placement: Placement


def positive_int(text: str, flag: str, extra: str = "") -> int:
    """`text` as an integer ≥ 1, else ValueError naming `flag` and what is valid."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{flag} {text!r} is invalid; valid: a positive integer{extra}")
    return value


def resolve_workers(text: str, cpus_per_run: int, device: torch.device) -> int:
    """--workers: a positive integer, or 'auto' = the cores over --cpus-per-run on CPU (at least
    1), and 1 on CUDA (one GPU; several processes would share it)."""
    if text != "auto":
        return positive_int(text, "--workers", " or auto")
    if device.type == "cuda":
        return 1
    return max(1, (os.cpu_count() or 1) // cpus_per_run)


def pin_threads(threads: int) -> None:
    """torch's intra-op threads, and inter-op threads where torch still allows setting them
    (only before a process's first inter-op work: a reused worker keeps its own)."""
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:
        pass


@contextmanager
def pinned_threads(threads: int) -> Iterator[None]:
    """The driver's torch threads pinned for a block, restored after it."""
    previous = torch.get_num_threads()
    pin_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def pinned_task(
    config: RunConfig,
    data: Dataset,
    device: torch.device,
    threads: int,
    on_step: StepCallback | None = None,
    snapshots: Snapshots | None = None,
) -> RunResult:
    """The task as every backend runs it: threads pinned again first, since a reused worker (or
    the driver) keeps whatever the previous task left."""
    pin_threads(threads)
    return run_configuration(config, data, device, on_step, snapshots)


class Backend(Protocol):
    def run(self, configs: Sequence[RunConfig]) -> Iterator[Finished]:
        """Run every configuration; yield each with its result as it finishes."""
        ...

    def measure_costs(self, configs: Sequence[RunConfig]) -> tuple[Costs, Placement]:
        """bench.cost.measure_costs of `configs` in one process with nothing else of the suite
        running, after all training; and where it ran."""
        ...

    def measure_shared(
        self, jobs: Sequence[SharedJob]
    ) -> Iterator[tuple[RunConfig, Measurements, Placement]]:
        """bench.shared.measure_shared of each job (configuration, reference states, its own
        auxiliary states) after all training; yield each one's rows, and where it ran, as it
        finishes."""
        ...


class DriverCosts:
    """The cost and shared-parameter passes in the driver process, pinned to the runs' threads
    (local backends)."""

    backend = "local"
    data: Dataset
    device: torch.device
    threads: int

    def measure_costs(self, configs: Sequence[RunConfig]) -> tuple[Costs, Placement]:
        with pinned_threads(self.threads):
            costs = measure_costs(configs, self.data, self.device)
            return costs, placement_here(self.backend, self.device)

    def measure_shared(
        self, jobs: Sequence[SharedJob]
    ) -> Iterator[tuple[RunConfig, Measurements, Placement]]:
        with pinned_threads(self.threads):
            for config, rows in measure_each(jobs, self.data, self.device):
                yield config, rows, placement_here(self.backend, self.device)


class InlineBackend(DriverCosts):
    """One configuration after another in the driver process (--workers 1), with a progress
    callback per configuration, saving `snapshots` (bench.snapshots)."""

    def __init__(
        self,
        data: Dataset,
        device: torch.device,
        threads: int,
        snapshots: Snapshots,
        progress: Callable[[RunConfig], StepCallback] | None = None,
    ) -> None:
        self.data, self.device, self.threads, self.progress = data, device, threads, progress
        self.snapshots = snapshots

    def run(self, configs: Sequence[RunConfig]) -> Iterator[Finished]:
        for config in configs:
            on_step = self.progress(config) if self.progress else None
            result = pinned_task(
                config, self.data, self.device, self.threads, on_step, self.snapshots
            )
            yield Finished(config, result, placement_here(self.backend, self.device))


# A pool worker's state, set once by its initializer: the data set is loaded once per worker.
_WORKER: dict[str, object] = {}


def _init_worker(
    dataset: str,
    data_dir: str | None,
    device: str,
    threads: int,
    loaded: tuple[plugins.Plugin, ...],
    snapshots: Snapshots,
) -> None:
    pin_threads(threads)
    plugins.install(loaded)
    _WORKER.update(
        data=load_dataset(dataset, data_dir=data_dir),
        device=torch.device(device),
        threads=threads,
        snapshots=snapshots,
    )


def _worker_task(config: RunConfig) -> tuple[RunResult, Placement]:
    device = _WORKER["device"]
    result = pinned_task(
        config, _WORKER["data"], device, _WORKER["threads"], snapshots=_WORKER["snapshots"]
    )
    return result, placement_here(PoolBackend.backend, device)


class PoolBackend(DriverCosts):
    """`workers` spawned processes (spawn: safe with CUDA and threads), each loading the data
    set `dataset` once and the driver's plugins (bench.plugins); configurations finish in any
    order. The driver holds the data set too, for the cost pass."""

    def __init__(
        self,
        data: Dataset,
        data_dir: str | None,
        device: torch.device,
        workers: int,
        threads: int,
        snapshots: Snapshots,
    ) -> None:
        self.data, self.device, self.threads, self.workers = data, device, threads, workers
        self.initargs = (data.name, data_dir, device.type, threads, plugins.loaded(), snapshots)

    def run(self, configs: Sequence[RunConfig]) -> Iterator[Finished]:
        if not configs:
            return
        with ProcessPoolExecutor(
            max_workers=min(self.workers, len(configs)),
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=self.initargs,
        ) as pool:
            futures = {pool.submit(_worker_task, config): config for config in configs}
            try:
                for future in as_completed(futures):
                    yield Finished(futures[future], *future.result())
            finally:
                pool.shutdown(cancel_futures=True)


def train(
    configs: Sequence[RunConfig], backend: Backend, runs: RunsFile, device: torch.device
) -> Iterator[Finished]:
    """Run `configs` on `backend`, recording where each ran and appending its rows in one write
    (run_complete last) before yielding it; the states a run kept (a reference trajectory's, a
    seed-0 run's auxiliary state) are saved first, so that a configuration with rows has them."""
    for finished in backend.run(configs):
        result = finished.result
        runs.save_kept_states(finished.config, device.type, result.states, result.auxiliary_states)
        runs.place(finished.config, device.type, "train", finished.placement)
        runs.append(finished.config, device.type, finished.result.measurements)
        Snapshots(runs.path.parent, device.type).discard(finished.config)
        yield finished
