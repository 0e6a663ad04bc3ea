"""The Gaussian toy problem (`python -m bench toy`): all four estimators, 100,000 draws each, at
the CLI's defaults k = 2, μ = σ = 1, for each cost. numpy on CPU only, so no GPU variant.

The warm-up call fills the cache of exact moments (quadrature), so the timing is the Monte Carlo
part that every run repeats."""

from __future__ import annotations

import math

import pytest

from bench.toy import COSTS, PARAMS, TOY_ESTIMATORS, run_toy

DRAWS = 100_000
# 9-23 ms of CPU time a call.
ROUNDS = 30
WARMUP_ROUNDS = 2


@pytest.mark.benchmark(group="toy")
@pytest.mark.parametrize("cost", COSTS)
def test_run_toy(benchmark, cost: str) -> None:
    benchmark.extra_info.update(cost=cost, draws=DRAWS, estimators=list(TOY_ESTIMATORS))

    results = benchmark.pedantic(
        run_toy,
        args=(cost, 2.0, 1.0, 1.0, DRAWS, 0),
        rounds=ROUNDS,
        warmup_rounds=WARMUP_ROUNDS,
        iterations=1,
    )

    assert len(results) == len(TOY_ESTIMATORS) * len(PARAMS)
    for result in results:
        assert math.isfinite(result.mean)
        assert math.isfinite(result.variance) and result.variance >= 0
