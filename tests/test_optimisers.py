"""Tests for bench.optimisers: the protocol's optimiser (rules, prior rule, schedule)."""

from __future__ import annotations

import math

import pytest
import torch

from bench.optimisers import OptimizerConfig, build_optimizer, burda_schedule
from bench.runner import build_estimator, train_step
from bench.suites import RunConfig, make_suites
from vae_core.data import load_dataset

DATA = load_dataset("synthetic")


def _estimator(model: str, estimator: str, k: int = 1):
    config = RunConfig(dataset="synthetic", model=model, estimator=estimator, k=k)
    return build_estimator(config, DATA.dim, torch.device("cpu"))


def _train(estimator, optimizer, steps: int) -> None:
    generator = torch.Generator().manual_seed(11)
    for step in range(steps):
        train_step(estimator, optimizer, DATA.train[step * 20 : (step + 1) * 20].round(), generator)


def test_default_is_exactly_torch_adam() -> None:
    ours, theirs = _estimator("mlp500", "reparam"), _estimator("mlp500", "reparam")
    _train(ours, build_optimizer(ours, 1e-3, OptimizerConfig()), 5)
    _train(theirs, torch.optim.Adam(theirs.parameters(), lr=1e-3), 5)
    for (name, a), b in zip(ours.state_dict().items(), theirs.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_every_suite_but_the_paper_protocols_trains_with_the_default() -> None:
    """The paper protocols set their authors' optimisers (tests/test_papers.py)."""
    for suite in make_suites().values():
        if {run.paper for run in suite.runs} == {""}:
            assert {run.optimizer for run in suite.runs} == {OptimizerConfig()}, suite.name
        else:
            assert all(run.optimizer != OptimizerConfig() for run in suite.runs), suite.name


def test_prior_rule_steps_the_prior_by_sgd_and_the_rest_by_adam() -> None:
    estimator = _estimator("linear200", "disarm", k=2)
    config = OptimizerConfig(prior=("sgd", 1e-2))
    optimizer = build_optimizer(estimator, 1e-4, config)
    before = {name: p.detach().clone() for name, p in estimator.named_parameters()}
    _train(estimator, optimizer, 1)
    prior = estimator.model.prior_logits
    # SGD: θ ← θ − lr·g, with g the gradient of −surrogate still held after the step.
    torch.testing.assert_close(prior.detach(), before["model.prior_logits"] - 1e-2 * prior.grad)
    # Adam's first step moves every coordinate with a gradient by lr·g/(|g| + ε) ≈ ±lr.
    for name, p in estimator.named_parameters():
        if name != "model.prior_logits" and p.grad is not None:
            moved = (p.detach() - before[name]).abs()[p.grad.abs() > 1e-3]
            torch.testing.assert_close(moved, torch.full_like(moved, 1e-4), rtol=1e-3, atol=0)


def test_prior_rule_without_a_learned_prior_is_refused() -> None:
    with pytest.raises(ValueError, match="learns no prior"):
        build_optimizer(_estimator("mlp500", "reparam"), 1e-3, OptimizerConfig(prior=("sgd", 0.1)))


def test_schedule_sets_each_steps_rate() -> None:
    estimator = _estimator("linear200", "disarm", k=2)
    config = OptimizerConfig(algorithm="sgd", prior=("sgd", 1.0), schedule=((0, 1.0), (2, 0.5)))
    optimizer = build_optimizer(estimator, 0.1, config)
    rates = []
    for _ in range(4):
        _train(estimator, optimizer, 1)
        rates.append([group["lr"] for part in optimizer.parts for group in part.param_groups])
    assert rates == [[0.1, 1.0], [0.1, 1.0], [0.05, 0.5], [0.05, 0.5]]
    assert [config.factor(s) for s in (0, 1, 2, 10**6)] == [1.0, 1.0, 0.5, 0.5]
    assert OptimizerConfig(schedule=((5, 0.1),)).factor(4) == 1.0  # base rate before the first


def test_burda_schedule() -> None:
    schedule = burda_schedule(steps_per_epoch=3000)
    starts = [start for start, _ in schedule]
    assert starts[0] == 0 and len(schedule) == 8
    epochs = [b - a for a, b in zip(starts, [*starts[1:], 3280 * 3000], strict=True)]
    assert epochs == [3**i * 3000 for i in range(8)]  # 3,280 epochs in all
    assert all(math.isclose(f, 10 ** (-i / 7)) for i, (_, f) in enumerate(schedule))
    OptimizerConfig(eps=1e-4, schedule=schedule)  # a valid protocol


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"algorithm": "rmsprop"}, "unknown optimiser"),
        ({"prior": ("adagrad", 0.1)}, "unknown optimiser"),
        ({"schedule": ((5, 1.0), (2, 0.5))}, "increasing"),
        ({"schedule": ((0, 1.0), (0, 0.5))}, "distinct"),
        ({"schedule": ((0, 0.0),)}, "positive"),
    ],
)
def test_invalid_optimiser_is_refused(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        OptimizerConfig(**options)
