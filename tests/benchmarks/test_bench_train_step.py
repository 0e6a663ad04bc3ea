"""One whole optimiser step (forward, backward, Adam step, baseline update) per (estimator, KL
mode, K) of the registry, with batch 100 on mlp500 (Gaussian latents) or linear200 (binary
latents): the unit of the harness's `throughput`."""

from __future__ import annotations

import pytest
import torch

from bench.runner import build_estimator, train_step
from bench.suites import RunConfig, estimator_grid

# 6-9 ms of CPU time a step (one thread); 60 rounds keep the median within a few per cent.
ROUNDS = 60
WARMUP_ROUNDS = 5

MODEL_BY_LATENT = {"gaussian": "mlp500", "bernoulli": "linear200"}
GRID = [
    pytest.param(model, name, kl, k, id=f"{name}-{kl}-K{k}")
    for latent, model in MODEL_BY_LATENT.items()
    for name, kl, k in estimator_grid(latent=latent)
]


@pytest.mark.benchmark(group="train-step")
@pytest.mark.parametrize(("model", "estimator_name", "kl", "k"), GRID)
def test_train_step(
    benchmark, device, binary_batch, synchronized, model: str, estimator_name: str, kl: str, k: int
) -> None:
    config = RunConfig(model=model, estimator=estimator_name, kl=kl, k=k)
    estimator = build_estimator(config, binary_batch.shape[1], device)
    optimizer = torch.optim.Adam(estimator.parameters(), lr=config.learning_rate)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    benchmark.extra_info.update(estimator=estimator_name, kl=kl, k=k, model=config.model)

    step = synchronized(lambda: train_step(estimator, optimizer, binary_batch, generator))
    out = benchmark.pedantic(step, rounds=ROUNDS, warmup_rounds=WARMUP_ROUNDS, iterations=1)

    assert out.elbo.shape == (binary_batch.shape[0],)
    assert torch.isfinite(out.elbo).all()
    assert torch.isfinite(out.surrogate)
