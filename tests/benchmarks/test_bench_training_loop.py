"""The cost of divergence detection: CHECK_EVERY optimiser steps of reparam on mlp500 (batch
100), as a bare loop and as the harness runs them (each step's loss recorded on the device by the
DivergenceMonitor, one check at the end). The target: the checked loop within 2% of the bare one
(compare the two medians of group training-loop)."""

from __future__ import annotations

import pytest
import torch

from bench.optimisers import make_optimizer, optimizer_kind
from bench.runner import (
    CHECK_EVERY,
    DivergenceMonitor,
    build_estimator,
    train_step,
)
from bench.suites import RunConfig

ROUNDS = 15  # ~0.3-0.5 s of CPU time a round (50 steps)
WARMUP_ROUNDS = 2


@pytest.mark.benchmark(group="training-loop")
@pytest.mark.parametrize("checked", [False, True], ids=["bare", "checked"])
def test_training_loop(benchmark, device, binary_batch, synchronized, checked: bool) -> None:
    config = RunConfig()
    estimator = build_estimator(config, binary_batch.shape[1], device)
    optimizer = make_optimizer(estimator.parameters(), config.learning_rate, optimizer_kind(device))
    generator = torch.Generator(device=device).manual_seed(config.seed)
    monitor = DivergenceMonitor(CHECK_EVERY, device)
    benchmark.extra_info.update(checked=checked, steps=CHECK_EVERY)

    def steps() -> int | None:
        for step in range(1, CHECK_EVERY + 1):
            out = train_step(estimator, optimizer, binary_batch, generator)
            if checked:
                monitor.record(step, out.surrogate)
        if checked:
            monitor.checked = 0
            return monitor.check(CHECK_EVERY)
        return None

    first_bad = benchmark.pedantic(
        synchronized(steps), rounds=ROUNDS, warmup_rounds=WARMUP_ROUNDS, iterations=1
    )
    assert first_bad is None  # reparam on this batch never diverges
