"""One whole optimiser step (forward, backward, Adam step, baseline update) per (estimator, KL
mode, K) of the registry, with batch 100 on mlp500 (Gaussian latents) or linear200 (binary
latents): the unit of the harness's `throughput`, with the harness's Adam (`optimizer_kind`).
Group optimizer-step times reparam's step with each Adam, the fused step's gain (measured, medians
of CPU time at one thread, 3 runs on the loaded 2-core machine: fused 5.6-6.3 ms, torch's default,
one tensor at a time on CPU, 9.2-9.6 ms)."""

from __future__ import annotations

import pytest
import torch

from bench.optimisers import make_optimizer, optimizer_kind
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
    kind = optimizer_kind(device)
    optimizer = make_optimizer(estimator.parameters(), config.learning_rate, kind)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    benchmark.extra_info.update(
        estimator=estimator_name, kl=kl, k=k, model=config.model, optimizer=kind
    )

    step = synchronized(lambda: train_step(estimator, optimizer, binary_batch, generator))
    out = benchmark.pedantic(step, rounds=ROUNDS, warmup_rounds=WARMUP_ROUNDS, iterations=1)

    assert out.elbo.shape == (binary_batch.shape[0],)
    assert torch.isfinite(out.elbo).all()
    assert torch.isfinite(out.surrogate)


@pytest.mark.benchmark(group="optimizer-step")
@pytest.mark.parametrize("kind", ["adam_default", "adam_fused"])
def test_optimizer_step(benchmark, device, binary_batch, synchronized, kind: str) -> None:
    """reparam's whole step on mlp500 with torch's default Adam and the fused one."""
    if kind == "adam_fused" and optimizer_kind(device) != kind:
        pytest.skip(f"torch has no fused Adam on {device.type}")
    config = RunConfig()
    estimator = build_estimator(config, binary_batch.shape[1], device)
    optimizer = make_optimizer(estimator.parameters(), config.learning_rate, kind)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    benchmark.extra_info.update(estimator=config.estimator, optimizer=kind)

    step = synchronized(lambda: train_step(estimator, optimizer, binary_batch, generator))
    out = benchmark.pedantic(step, rounds=ROUNDS, warmup_rounds=WARMUP_ROUNDS, iterations=1)

    assert torch.isfinite(out.surrogate)
