"""The exclusive cost pass: throughput and seconds per gradient, timed after all training.

Runs sharing a machine distort each other's timings, so no step is timed during training. After
a command's training, one process with nothing else of the suite running (the driver, or one Ray
task on a node of the cluster) measures one estimator per configuration that differs in cost:
seeds share it, and since cost does not depend on parameter values each estimator is built fresh
from its configuration. Timing rounds are interleaved across the configurations
(bench.timing.interleaved_medians), so machine noise hits them alike. Each configuration's rows
go at its final step, `cost_complete` last.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import torch

from bench.optimisers import build_optimizer, optimizer_kind
from bench.results import (
    COST_COMPLETE,
    Measurements,
    Progress,
    RunsFile,
    final_values,
    read_rows,
    row_key,
)
from bench.runner import build_estimator, measurement_generator, train_step, training_mean
from bench.suites import RunConfig
from bench.timing import interleaved_medians
from vae_core.data import Dataset, binarize

if TYPE_CHECKING:
    from bench.execution import Backend

Costs = dict[RunConfig, tuple[float, float]]  # cost group -> (s per step, s per gradient)


def cost_group(config: RunConfig) -> RunConfig:
    """The configuration with what cannot change its cost (the seed) fixed."""
    return dataclasses.replace(config, seed=0)


def timed_calls(
    config: RunConfig, data: Dataset, device: torch.device
) -> tuple[Callable[[], object], Callable[[], object]]:
    """A whole optimiser step, and one gradient estimate, on a fresh estimator of `config`."""
    estimator = build_estimator(config, data.dim, device, training_mean(config, data))
    optimizer = build_optimizer(
        estimator, config.learning_rate, config.optimizer, optimizer_kind(device)
    )
    generator = measurement_generator(config, config.steps + 2, device)
    x = binarize(data.train[: config.batch_size].to(device), generator)
    parameters = list(estimator.parameters())

    def gradient() -> None:
        out = estimator(x, estimator.sample_noise(x.shape[0], generator))
        torch.autograd.grad(out.surrogate, parameters, allow_unused=True)

    return (lambda: train_step(estimator, optimizer, x, generator)), gradient


def measure_costs(configs: Iterable[RunConfig], data: Dataset, device: torch.device) -> Costs:
    """(seconds per optimiser step, seconds per gradient) of each configuration's cost group."""
    groups: dict[RunConfig, RunConfig] = {}
    for config in configs:
        groups.setdefault(cost_group(config), config)
    if not groups:
        return {}
    calls: dict[tuple[RunConfig, str], Callable[[], object]] = {}
    for group, config in groups.items():
        calls[group, "step"], calls[group, "gradient"] = timed_calls(config, data, device)
    repeats = max(config.timed_steps for config in groups.values())
    seconds = interleaved_medians(calls, device, repeats)
    return {group: (seconds[group, "step"], seconds[group, "gradient"]) for group in groups}


def cost_measurements(
    config: RunConfig,
    step_seconds: float,
    grad_seconds: float,
    final: Mapping[str, float],
    threads: int,
) -> Measurements:
    """The cost rows of one configuration, given its final training metrics (`final`)."""
    values = {
        "throughput": config.batch_size / step_seconds,
        "grad_seconds": grad_seconds,
        "work_var_encoder": final["grad_var_encoder"] * grad_seconds,
        "work_var_decoder": final["grad_var_decoder"] * grad_seconds,
        "cost_threads": float(threads),
        COST_COMPLETE: 1.0,
    }
    return [(config.steps, values)]


def cost_pass(
    configs: Iterable[RunConfig], backend: Backend, device: torch.device, runs: RunsFile
) -> Sequence[RunConfig]:
    """Time every configuration of `configs` that runs.csv shows trained, not diverged and not
    yet costed (on --resume, also those of earlier commands) in one exclusive pass on `backend`,
    and append each one's cost rows in one write (with where they were timed); returns those
    configurations."""
    rows = read_rows(runs.path)
    progress = Progress.of(rows)
    pending = [c for c in configs if progress.needs_cost(row_key(c, device.type))]
    if not pending:
        return pending
    costs, placement = backend.measure_costs(pending)
    finals = final_values(rows, (row_key(c, device.type) for c in pending))
    for config in pending:
        step_seconds, grad_seconds = costs[cost_group(config)]
        final = finals[row_key(config, device.type)]
        measurements = cost_measurements(
            config, step_seconds, grad_seconds, final, placement.threads
        )
        runs.place(config, device.type, "cost", placement)
        runs.append(config, device.type, measurements)
    return pending
