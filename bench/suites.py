"""Named grids of run configurations: data set × model × estimator × KL mode × K × seed."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from vae_core.estimators import REGISTRY
from vae_core.models import ModelConfig

# Model shapes by name; input_dim is filled in from the data set.
MODELS: dict[str, ModelConfig] = {
    # Kingma & Welling (2014), MNIST: one hidden layer of 500 tanh units each side, 20 latents.
    "mlp500": ModelConfig(hidden=(500,), latent_dim=20, activation="tanh"),
    # Burda et al. (2016), one stochastic layer: 784-200-200-50, tanh.
    "iwae1": ModelConfig(hidden=(200, 200), latent_dim=50, activation="tanh"),
}


@dataclass(frozen=True)
class RunConfig:
    """One training run and the measurements taken during it."""

    dataset: str = "mnist5k"
    model: str = "mlp500"
    estimator: str = "reparam"
    kl: str = "analytic"
    k: int = 1  # particles (latent samples) per example
    seed: int = 0
    steps: int = 2000
    batch_size: int = 100
    learning_rate: float = 1e-3
    n_checkpoints: int = 8  # log-spaced, plus step 0
    grad_draws: int = 100  # R gradient draws per variance measurement
    grad_batch: int = 100  # M, the fixed minibatch of the variance measurement
    eval_examples: int = 1000  # test/train examples for elbo_test, elbo_train
    nll_samples: int = 1000  # importance samples for nll_test
    nll_examples: int = 1000  # test examples for nll_test
    timed_steps: int = 20  # timed optimiser steps for throughput (median)

    @property
    def key(self) -> tuple[str, str, str, str, int, int]:
        """Identifies the configuration in runs.csv (with the device)."""
        return (self.dataset, self.model, self.estimator, self.kl, self.k, self.seed)

    def label(self) -> str:
        return f"{self.estimator}/{self.kl}/K={self.k}/seed={self.seed}"

    def checkpoints(self) -> list[int]:
        """0 and `n_checkpoints` log-spaced steps ending at `steps`."""
        spaced = {
            round(math.exp(math.log(self.steps) * i / (self.n_checkpoints - 1)))
            for i in range(self.n_checkpoints)
        }
        return sorted({0, *spaced})


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    runs: tuple[RunConfig, ...]
    expected_cpu_minutes: float  # measured on the 2-core reference machine (see README)


def estimator_grid() -> list[tuple[str, str, int]]:
    """Every registered (estimator, KL mode) with its smallest K."""
    return [(name, kl, cls.min_particles) for name, cls in REGISTRY.items() for kl in cls.kl_modes]


def grid(
    datasets: tuple[str, ...], models: tuple[str, ...], seeds: tuple[int, ...], **options: object
) -> tuple[RunConfig, ...]:
    return tuple(
        RunConfig(dataset=d, model=m, estimator=e, kl=kl, k=k, seed=s, **options)
        for d in datasets
        for m in models
        for e, kl, k in estimator_grid()
        for s in seeds
    )


def make_suites() -> dict[str, Suite]:
    """Built on demand so that estimators registered later join every suite."""
    return {
        "quick": Suite(
            "quick",
            "every estimator and KL mode on mnist5k, 1 seed, 200 steps (smoke test)",
            grid(
                ("mnist5k",),
                ("mlp500",),
                (0,),
                steps=200,
                n_checkpoints=4,
                grad_draws=20,
                eval_examples=500,
                nll_samples=50,
                nll_examples=200,
                timed_steps=5,
            ),
            expected_cpu_minutes=1.5,
        ),
        "default": Suite(
            "default",
            "every estimator and KL mode on mnist5k, 3 seeds, 3000 steps (75 epochs)",
            # nll_test on 500 of the 1,000 test digits keeps it to ~5 s of a ~30 s run.
            grid(("mnist5k",), ("mlp500",), (0, 1, 2), steps=3000, nll_examples=500),
            expected_cpu_minutes=20.0,
        ),
        "full": Suite(
            "full",
            "GPU-sized: full MNIST when present (else mnist5k), K&W and IWAE models, 5 seeds",
            grid(
                ("mnist",),
                ("mlp500", "iwae1"),
                (0, 1, 2, 3, 4),
                steps=100_000,
                nll_samples=5000,
                nll_examples=10_000,
            ),
            expected_cpu_minutes=float("nan"),
        ),
    }


def get_suite(name: str) -> Suite:
    suites = make_suites()
    if name not in suites:
        raise ValueError(f"unknown suite {name!r}; valid: {', '.join(suites)}")
    return suites[name]


def with_dataset(suite: Suite, dataset: str) -> Suite:
    """The same grid on another data set (e.g. `full` falls back to mnist5k without IDX files)."""
    runs = tuple(dataclasses.replace(run, dataset=dataset) for run in suite.runs)
    return dataclasses.replace(suite, runs=runs)
