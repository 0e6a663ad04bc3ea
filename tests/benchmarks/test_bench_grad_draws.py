"""R = 100 gradient draws on one fixed minibatch (the harness's variance measurement, R as in
RunConfig.grad_draws), pathwise and score function, batched (vmap) and looped."""

from __future__ import annotations

import pytest
import torch

from bench.runner import build_estimator, grad_method
from bench.suites import RunConfig
from vae_core.gradients import METHODS, gradient_draws

# 0.7-1.1 s of CPU time a call (one thread).
ROUNDS = 5
WARMUP_ROUNDS = 1


@pytest.mark.benchmark(group="grad-draws")
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("estimator_name", ["reparam", "score"])
def test_gradient_draws(
    benchmark, device, binary_batch, synchronized, estimator_name: str, method: str
) -> None:
    config = RunConfig(estimator=estimator_name)
    estimator = build_estimator(config, binary_batch.shape[1], device)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    n_draws = config.grad_draws
    benchmark.extra_info.update(
        estimator=estimator_name,
        method=method,
        harness_method=grad_method(device),
        grad_draws=n_draws,
        model=config.model,
    )

    draw = synchronized(lambda: gradient_draws(estimator, binary_batch, n_draws, generator, method))
    draws = benchmark.pedantic(draw, rounds=ROUNDS, warmup_rounds=WARMUP_ROUNDS, iterations=1)

    assert set(draws) == {"encoder", "decoder"}
    n_params = sum(p.numel() for p in estimator.model.parameters())
    assert sum(d.shape[1] for d in draws.values()) == n_params
    for group_draws in draws.values():
        assert group_draws.shape[0] == n_draws
        assert torch.isfinite(group_draws).all()
