"""The optimiser a run trains with, as a protocol sets it (``RunConfig.optimizer``).

One update rule for every parameter (Adam, or plain SGD), optionally a rule of its own for the
model's prior parameters (DisARM's code trains the prior logits by SGD beside Adam), and a
piecewise-constant learning-rate schedule: from step s on, every rate is its base rate × factor.
The default is ``torch.optim.Adam(estimator.parameters(), lr)`` with torch's defaults, its step
fused into one kernel where the device has one (`optimizer_kind`).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass

import torch

__all__ = [
    "ALGORITHMS",
    "OPTIMIZER_KINDS",
    "OptimizerConfig",
    "RunOptimizer",
    "build_optimizer",
    "burda_schedule",
    "make_optimizer",
    "optimizer_kind",
]

ALGORITHMS = ("adam", "sgd")
OPTIMIZER_KINDS = ("adam_fused", "adam_default")


@functools.cache
def optimizer_kind(device: torch.device) -> str:
    """How Adam steps, recorded with the results: `adam_fused` (one fused kernel for the whole
    parameter update) where torch has one for the device, else `adam_default` (torch's default:
    a multi-tensor update on CUDA, one tensor at a time on CPU). The same update to rounding:
    tests/test_harness.py pins the parameters after a few steps equal to ~1e-7 of the distance
    moved; measured 1.14-1.20x the examples/s of a bare mlp500 loop on CPU."""
    try:
        torch.optim.Adam([torch.zeros(1, device=device, requires_grad=True)], fused=True)
    except RuntimeError:
        return "adam_default"
    return "adam_fused"


@dataclass(frozen=True)
class OptimizerConfig:
    """Update rule(s) and schedule; the main learning rate is ``RunConfig.learning_rate``."""

    algorithm: str = "adam"
    betas: tuple[float, float] = (0.9, 0.999)  # Adam's moment decay rates (torch's defaults)
    eps: float = 1e-8  # Adam's ε (Burda et al. use 1e-4)
    prior: tuple[str, float] | None = None  # (algorithm, learning rate) for `prior*` parameters
    schedule: tuple[tuple[int, float], ...] = ()  # (first step, factor), steps increasing

    def __post_init__(self) -> None:
        algorithms = [self.algorithm, *([self.prior[0]] if self.prior else [])]
        unknown = sorted(set(algorithms) - set(ALGORITHMS))
        if unknown:
            raise ValueError(f"unknown optimiser(s) {unknown}; valid: {', '.join(ALGORITHMS)}")
        starts = [start for start, _ in self.schedule]
        if starts != sorted(set(starts)) or any(s < 0 for s in starts):
            raise ValueError(f"schedule steps must be distinct, >= 0 and increasing: {starts}")
        if any(not factor > 0 for _, factor in self.schedule):
            raise ValueError(f"schedule factors must be positive: {self.schedule}")

    def factor(self, step: int) -> float:
        """The learning-rate factor for the update made at 0-based ``step``."""
        current = 1.0
        for start, factor in self.schedule:
            if start > step:
                break
            current = factor
        return current


def burda_schedule(steps_per_epoch: int, stages: int = 8) -> tuple[tuple[int, float], ...]:
    """Burda et al. (2016, §5): 3^i epochs at 10^(-i/7) × the first rate, i = 0..7: 3,280 epochs."""
    schedule, start = [], 0
    for i in range(stages):
        schedule.append((start, 10 ** (-i / 7)))
        start += 3**i * steps_per_epoch
    return tuple(schedule)


class RunOptimizer:
    """The run's torch optimisers, zeroed and stepped together, the schedule set before a step."""

    def __init__(self, parts: list[torch.optim.Optimizer], config: OptimizerConfig) -> None:
        self.parts, self.config, self.steps_taken = parts, config, 0
        self.base_rates = [[group["lr"] for group in part.param_groups] for part in parts]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for part in self.parts:
            part.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        if self.config.schedule:
            factor = self.config.factor(self.steps_taken)
            for part, rates in zip(self.parts, self.base_rates, strict=True):
                for group, rate in zip(part.param_groups, rates, strict=True):
                    group["lr"] = rate * factor
        for part in self.parts:
            part.step()
        self.steps_taken += 1

    def state_dict(self) -> dict:
        return {"parts": [part.state_dict() for part in self.parts], "steps": self.steps_taken}

    def load_state_dict(self, state: dict) -> None:
        for part, saved in zip(self.parts, state["parts"], strict=True):
            part.load_state_dict(saved)
        self.steps_taken = int(state["steps"])


def build_optimizer(
    estimator: torch.nn.Module,
    learning_rate: float,
    config: OptimizerConfig,
    kind: str = "adam_default",
) -> RunOptimizer:
    """Optimisers over ``estimator``'s parameters (its model's and its own, e.g. baselines),
    Adam stepping as `kind` says (OPTIMIZER_KINDS)."""
    parameters = list(estimator.parameters())
    if config.prior is None:
        return RunOptimizer(
            [_rule(parameters, config.algorithm, learning_rate, config, kind)], config
        )
    model = estimator.get_submodule("model")
    prior = [p for name, p in model.named_parameters() if name.startswith("prior")]
    if not prior:
        raise ValueError(f"a prior optimiser was set but {type(model).__name__} learns no prior")
    prior_ids = {id(p) for p in prior}
    rest = [p for p in parameters if id(p) not in prior_ids]
    algorithm, prior_rate = config.prior
    parts = [
        _rule(rest, config.algorithm, learning_rate, config, kind),
        _rule(prior, algorithm, prior_rate, config, kind),
    ]
    return RunOptimizer(parts, config)


def make_optimizer(
    parameters: Iterable[torch.nn.Parameter], learning_rate: float, kind: str
) -> RunOptimizer:
    """The default protocol's optimiser (Adam, torch's settings) over bare parameters."""
    config = OptimizerConfig()
    return RunOptimizer([_rule(list(parameters), "adam", learning_rate, config, kind)], config)


def _rule(
    parameters: list[torch.nn.Parameter],
    algorithm: str,
    rate: float,
    config: OptimizerConfig,
    kind: str,
) -> torch.optim.Optimizer:
    if kind not in OPTIMIZER_KINDS:
        raise ValueError(f"unknown optimizer {kind!r}; valid: {', '.join(OPTIMIZER_KINDS)}")
    if algorithm == "sgd":
        return torch.optim.SGD(parameters, lr=rate)
    fused = True if kind == "adam_fused" else None
    return torch.optim.Adam(parameters, lr=rate, betas=config.betas, eps=config.eps, fused=fused)
