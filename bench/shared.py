"""The shared-parameter pass: every estimator's gradient variance at the same parameters.

Each run's own checkpoints compare differently trained models (only step 0 shares parameters),
whereas the theory the README cites (Roeder et al. 2017, Rainforth et al. 2018, Dong et al. 2020)
compares estimators at the same parameters. So after training (before the cost pass), for every
seed-0 configuration, the model is set to the parameters of the section's reference trajectory
(the seed-0 run of the variance reference, reparam or disarm, in the same KL mode and β, else
analytic KL, else β = 1; bench.suites.is_reference_trajectory) at each of its shared
checkpoints (RunConfig.shared_checkpoints), and on the fixed minibatch of the run's checkpoints
(`grad_batch` examples of train_eval_binary) it draws

    R gradients of the estimator   → shared_grad_var_G, shared_grad_var_se_G (vae_core.gradients),
                                     and shared_grad_bias_G, shared_grad_bias_se_G against
                                     `bias_draws` draws of its bias reference when biased;
    R gradients of the reference   → shared_ref_grad_var_G, shared_ref_grad_var_se_G,

R = grad_draws, the reference at its smallest K in the row's KL mode (analytic when it lacks it)
and β. The two sets use consecutive noise from one generator, so they are independent given the
parameters and the minibatch, which both share: the ratio shared_grad_var_G /
shared_ref_grad_var_G estimates the ratio of the two estimators' variances at the same state,
and its delta-method interval (bench.report.stats.log_ratio_interval) may add the two log
variances' squared standard errors. Each configuration draws its own reference, so its ratio
needs no other row; the reference's own row is then the ratio of two independent estimates of
the same variance (1 in expectation).

Auxiliary state (running baselines, baseline networks, learned control variates) is trained
along with the model, so starting it from its initialisation at a trained state understates
what the estimator achieves (a control variate at 0 is plain RLOO). Each seed-0 run of such an
estimator therefore keeps its auxiliary state at its own shared checkpoints (the same steps as
the reference's, since they depend only on `steps` and `n_checkpoints`; `auxiliary_start` takes
the latest kept step not after the reference's step otherwise), and the pass starts from the
run's state at that step. That state was trained at the run's own parameters, which differ
from the reference's, so it is then adapted for `shared_adapt_steps` training steps at the
frozen model parameters (only the auxiliary parameters step, with a fresh Adam at the run's
learning rate; buffers advance by `update_state`) before the draws.

Rows go at the checkpoint step (with `shared_aux_step`, the run's step whose auxiliary state
started the adaptation, for an estimator with auxiliary state), `shared_draws` (and
`shared_adapt_steps` and `shared_aux_from_run` = 1, the start being the run's own state, for an
estimator with auxiliary state) and `shared_complete` last at the final step; `--resume` runs
the pass again for a configuration without `shared_complete`.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

import torch

from bench.results import (
    SHARED_COMPLETE,
    SHARED_PREFIX,
    Measurements,
    Progress,
    RunsFile,
    read_rows,
    row_key,
)
from bench.runner import (
    States,
    bias_reference,
    build_estimator,
    grad_method,
    has_auxiliary_state,
    load_auxiliary_state,
    training_data,
)
from bench.suites import MODELS, RunConfig
from vae_core.data import Dataset, MinibatchStream
from vae_core.estimators import REGISTRY, Estimator, adapt_auxiliary_state, make_estimator
from vae_core.gradients import gradient_statistics
from vae_core.models import build_model

if TYPE_CHECKING:
    from bench.execution import Backend

# (configuration, its reference trajectory's model states, its own auxiliary states or {})
SharedJob = tuple[RunConfig, States, States]
REFERENCE = "ref_"  # the reference's draws at the same state: shared_ref_grad_var_G


def trajectory_candidates(config: RunConfig) -> list[RunConfig]:
    """The reference trajectories whose parameters `config` is measured at, in order of
    preference: the seed-0 variance reference at its smallest K with the same KL mode and β,
    then analytic KL, then β = 1."""
    reference = REGISTRY[REGISTRY[config.estimator].variance_reference()]
    base = dataclasses.replace(
        config, estimator=reference.name, k=reference.min_particles, seed=0, options=()
    )
    options = [
        dataclasses.replace(base, kl=kl, beta=beta)
        for beta in dict.fromkeys([config.beta, 1.0])
        for kl in dict.fromkeys([config.kl, "analytic"])
    ]
    return [option for option in options if option.kl in reference.kl_modes]


def learns_auxiliary_state(config: RunConfig) -> bool:
    """Whether `config`'s estimator has auxiliary state (`has_auxiliary_state` of one built on
    its model's default input size: the state's presence does not depend on it)."""
    model = build_model(MODELS[config.model])
    estimator = make_estimator(
        config.estimator, model, config.kl, config.k, config.beta, dict(config.options)
    )
    return has_auxiliary_state(estimator)


def auxiliary_start(auxiliary: States, step: int) -> int:
    """The latest step of the run's kept auxiliary states not after `step`."""
    return max(kept for kept in auxiliary if kept <= step)


def adapt_auxiliary(
    estimator: Estimator, data: Dataset, config: RunConfig, generator: torch.Generator
) -> None:
    """`shared_adapt_steps` training steps of the estimator's auxiliary state on training
    minibatches (`adapt_auxiliary_state`, the run's learning rate) at the frozen model
    parameters."""
    stream = MinibatchStream(data.train, config.batch_size, generator)
    minibatches = (next(stream) for _ in range(config.shared_adapt_steps))
    adapt_auxiliary_state(estimator, minibatches, config.learning_rate, generator)


def shared_generator(config: RunConfig, step: int, device: torch.device) -> torch.Generator:
    """A generator of its own per (configuration, step), so that no two configurations' draws
    share noise."""
    seed = zlib.crc32(config.label().encode()) * 1_000_003 + step
    return torch.Generator(device=device).manual_seed(seed)


def measure_shared(
    config: RunConfig,
    states: States,
    data: Dataset,
    device: torch.device,
    auxiliary: States | None = None,
) -> Measurements:
    """The shared-parameter rows of `config` (module docstring) at each step of `states`,
    starting an estimator's auxiliary state from `auxiliary`, its own run's (required when it
    has one)."""
    data = training_data(config, data).to(device)
    train_mean = data.train.mean(0)
    x = data.train_eval_binary[: config.grad_batch]
    method = grad_method(device)
    rows: Measurements = []
    adapts = False
    for step in sorted(states):
        estimator = build_estimator(config, data.dim, device, train_mean)
        estimator.model.load_state_dict(states[step])
        generator = shared_generator(config, step, device)
        adapts = has_auxiliary_state(estimator)
        started = {}
        if adapts:
            if not auxiliary:
                raise ValueError(f"{config.label()}: its run's auxiliary states are needed")
            start = auxiliary_start(auxiliary, step)
            load_auxiliary_state(estimator, auxiliary[start])
            adapt_auxiliary(estimator, data, config, generator)
            started = {"aux_step": float(start)}
        values = gradient_statistics(
            estimator,
            x,
            config.grad_draws,
            generator,
            method,
            reference=bias_reference(estimator),
            n_reference_draws=config.bias_draws,
        )
        reference = variance_reference(estimator)
        reference_values = gradient_statistics(reference, x, config.grad_draws, generator, method)
        kept = {m: v for m, v in values.items() if m.startswith(("grad_var", "grad_bias"))}
        kept |= {REFERENCE + m: v for m, v in reference_values.items() if m.startswith("grad_var")}
        kept |= started
        rows.append((step, {SHARED_PREFIX + m: v for m, v in kept.items()}))
    final = {"shared_draws": float(config.grad_draws)}
    if adapts:
        final["shared_adapt_steps"] = float(config.shared_adapt_steps)
        final["shared_aux_from_run"] = 1.0
    rows.append((config.steps, {**final, SHARED_COMPLETE: 1.0}))
    return rows


def variance_reference(estimator: Estimator) -> Estimator:
    """The estimator's variance reference on the same model (sharing its parameters), at its
    smallest K, in the estimator's KL mode when it has it (else analytic), with its β."""
    cls = REGISTRY[type(estimator).variance_reference()]
    kl = estimator.kl if estimator.kl in cls.kl_modes else "analytic"
    return make_estimator(cls.name, estimator.model, kl, cls.min_particles, estimator.beta)


def pending_trajectories(
    configs: Iterable[RunConfig], progress: Progress, device: str
) -> dict[RunConfig, RunConfig]:
    """Each seed-0 configuration of `configs` that runs.csv shows trained and not yet through
    the shared pass, with its reference trajectory: the first of `trajectory_candidates` that
    runs.csv shows trained (configurations without one are left for a later --resume)."""
    pending = {}
    for config in configs:
        if config.seed != 0 or not progress.needs_shared(row_key(config, device)):
            continue
        trained = (
            t for t in trajectory_candidates(config) if row_key(t, device) in progress.trained
        )
        trajectory = next(trained, None)
        if trajectory is not None:
            pending[config] = trajectory
    return pending


def shared_pass(
    configs: Iterable[RunConfig], backend: Backend, device: torch.device, runs: RunsFile
) -> Sequence[RunConfig]:
    """Measure every pending configuration of `configs` (`pending_trajectories`) at its
    reference trajectory's parameters on `backend`, starting its auxiliary state (if any) from
    its own run's, appending each one's rows in one write (with where they were measured);
    returns those configurations. A run whose kept states are missing (results written before
    this pass existed, or DIR/states/ deleted), a trajectory's or an auxiliary one's, is trained
    again on `backend` to regenerate them (its rows are not written again: on CPU the same
    configuration trains to the same state)."""
    pending = pending_trajectories(configs, Progress.of(read_rows(runs.path)), device.type)
    trajectories = set(pending.values())
    learners = {config for config in pending if learns_auxiliary_state(config)}
    missing = [t for t in trajectories if not runs.has_states(t, device.type)]
    missing += [c for c in learners if not runs.has_states(c, device.type, "auxiliary")]
    for finished in backend.run(sorted(set(missing), key=RunConfig.label)):
        result = finished.result
        runs.save_kept_states(finished.config, device.type, result.states, result.auxiliary_states)
    states = {t: runs.load_states(t, device.type) for t in trajectories}
    auxiliary = {c: runs.load_states(c, device.type, "auxiliary") for c in learners}
    jobs = [(c, states[t], auxiliary.get(c, {})) for c, t in pending.items()]
    done = []
    for config, measurements, placement in backend.measure_shared(jobs):
        runs.place(config, device.type, "shared", placement)
        runs.append(config, device.type, measurements)
        done.append(config)
    return done


def measure_each(
    jobs: Sequence[SharedJob], data: Dataset, device: torch.device
) -> Iterator[tuple[RunConfig, Measurements]]:
    """measure_shared of each job, in order."""
    for config, states, auxiliary in jobs:
        yield config, measure_shared(config, states, data, device, auxiliary)
