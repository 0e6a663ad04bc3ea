"""The importance-sampled log-likelihood (`nll_test`) on one fixed batch of 100 examples with
k = 1000 samples: one of the batches that bench.runner.negative_log_likelihood evaluates."""

from __future__ import annotations

import pytest
import torch

from bench.runner import build_estimator
from bench.suites import RunConfig
from vae_core.evaluation import log_likelihood_estimate

# About 2.4 s of CPU time a call (one thread).
ROUNDS = 5
WARMUP_ROUNDS = 1


@pytest.mark.benchmark(group="nll")
def test_log_likelihood_estimate(benchmark, device, binary_batch, synchronized) -> None:
    config = RunConfig()
    model = build_estimator(config, binary_batch.shape[1], device).model
    generator = torch.Generator(device=device).manual_seed(config.seed)
    n_samples = config.nll_samples
    benchmark.extra_info.update(nll_samples=n_samples, model=config.model)

    estimate = synchronized(
        lambda: log_likelihood_estimate(model, binary_batch, n_samples, generator)
    )
    log_px = benchmark.pedantic(estimate, rounds=ROUNDS, warmup_rounds=WARMUP_ROUNDS, iterations=1)

    assert log_px.shape == (binary_batch.shape[0],)
    assert torch.isfinite(log_px).all()
    assert (log_px < 0).all()  # about -540 nats: 784 binary pixels, an untrained decoder
