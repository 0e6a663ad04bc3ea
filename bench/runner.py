"""The task function: train one configuration, measure it at log-spaced checkpoints, return rows.

`run_configuration` writes nothing: it returns every measurement of the run in order
(`run_complete` last, or `diverged` and `run_complete`), so that it can run in the driver, in a
pool worker or remotely, and the driver (bench.execution) stays the only writer of runs.csv.
Measurements (names as in runs.csv; definitions in vae_core.gradients and the README):
at every checkpoint `elbo_train`, `elbo_test` (= −(`distortion_test` + `rate_test`)),
`grad_var_*` with `grad_var_se_*`, `grad_sqnorm_*`, `snr_*` with `snr_floor_*` and
`snr_floor_sd_*`, `train_seconds` (and `grad_bias_*`, `grad_bias_se_*`, `grad_mse_*` for a biased
estimator); at evenly spaced steps in between, `elbo_test` and `train_seconds` alone; at the end
`nll_test` (with `nll_samples`), `grad_draws` (and `bias_draws`), `grad_batched`, `fused_step`
(1 when Adam's step was fused, see `optimizer_kind`) and `threads` (torch threads the run trained
with). Timings of a step (`throughput`, `grad_seconds`,
`work_var_*`) come from the exclusive cost pass (bench.cost), not from here. Every measurement
draws from its own generator seeded from (run seed, step), so it neither perturbs training nor
depends on what was measured before.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise

import torch

from bench.optimisers import RunOptimizer, build_optimizer, optimizer_kind
from bench.plugins import source_of
from bench.results import COMPLETE, DIVERGED, Measurements
from bench.snapshots import Snapshots
from bench.suites import MODELS, RunConfig, is_reference_trajectory
from bench.timing import Stopwatch
from vae_core.data import Dataset, MinibatchStream
from vae_core.estimators import REGISTRY, Estimator, EstimatorOutput, make_estimator
from vae_core.evaluation import distortion_and_rate, elbo_estimate, log_likelihood_estimate
from vae_core.gradients import gradient_statistics
from vae_core.models import build_model


def grad_method(device: torch.device) -> str:
    """How the R gradient draws are computed: batched (torch.func.vmap) on GPU; a plain loop on
    CPU, where vmap measured no faster (mlp500, R = 100: 0.5-1.6 s vmap vs 0.5-0.6 s loop) and
    holds R copies of the activations. tests/test_estimators.py pins the two as equal."""
    return "vmap" if device.type == "cuda" else "loop"


# Steps between reads of the divergence monitor and progress reports (one host sync each).
CHECK_EVERY = 50

StepCallback = Callable[[int, float], None]  # (step, minibatch ELBO), every CHECK_EVERY steps


States = dict[int, dict[str, torch.Tensor]]  # step → a state_dict (CPU tensors)


@dataclass(frozen=True)
class RunResult:
    """A configuration's rows in the order measured and how the run ended; at its shared
    checkpoints, for a reference trajectory its model's parameters (`states`) and for a seed-0
    run of an estimator with auxiliary state that state (`auxiliary_states`), by step."""

    measurements: Measurements
    steps_done: int
    diverged: bool
    states: States = field(default_factory=dict)
    auxiliary_states: States = field(default_factory=dict)


def training_data(config: RunConfig, data: Dataset) -> Dataset:
    """`data` with the training images the run trains on: the first `train_examples`, or all."""
    if config.train_examples is None:
        return data
    return dataclasses.replace(data, train=data.train[: config.train_examples])


def training_mean(config: RunConfig, data: Dataset) -> torch.Tensor:
    """The per-pixel mean of the training images the run trains on (grey levels: the mean of
    their dynamic binarisations)."""
    return training_data(config, data).train.mean(0)


def build_estimator(
    config: RunConfig,
    input_dim: int,
    device: torch.device,
    train_mean: torch.Tensor | None = None,
) -> Estimator:
    """Model and estimator with parameters initialised from the run's seed (on CPU, then moved,
    so CPU and GPU runs start from the same parameters), then, where the protocol asks, set from
    `train_mean`, the per-pixel mean of the run's training images (`training_mean`): the
    decoder's output bias (`output_bias_from_data`) and the binary model's input centring
    (`centre_inputs`)."""
    torch.manual_seed(config.seed)
    model = build_model(dataclasses.replace(MODELS[config.model], input_dim=input_dim))
    if config.output_bias_from_data or config.centre_inputs:
        if train_mean is None:
            raise ValueError(f"{config.label()}: its protocol needs the training images' mean")
        if config.output_bias_from_data:
            model.initialise_output_bias(train_mean.cpu())
        if config.centre_inputs:
            model.centre_inputs(train_mean.cpu())
    estimator = make_estimator(
        config.estimator, model, config.kl, config.k, config.beta, dict(config.options)
    )
    return estimator.to(device)


def has_auxiliary_state(estimator: Estimator) -> bool:
    """Whether the estimator learns state of its own: parameters outside the model, or a
    running state advanced by `update_state`."""
    own = any(not name.startswith("model.") for name, _ in estimator.named_parameters())
    return own or type(estimator).update_state is not Estimator.update_state


def auxiliary_state(estimator: Estimator) -> dict[str, torch.Tensor]:
    """CPU copies of the estimator's state outside its model (learned baselines and control
    variates, running averages): its state_dict without `model.` entries."""
    state = estimator.state_dict()
    return {k: v.detach().cpu().clone() for k, v in state.items() if not k.startswith("model.")}


def load_auxiliary_state(estimator: Estimator, state: dict[str, torch.Tensor]) -> None:
    """Load `auxiliary_state`'s output into `estimator`, leaving its model alone; every
    auxiliary entry must be given."""
    missing, unexpected = estimator.load_state_dict(state, strict=False)
    left = [name for name in missing if not name.startswith("model.")]
    if left or unexpected:
        raise ValueError(f"auxiliary state mismatch: missing {left}, unexpected {unexpected}")


def bias_reference(estimator: Estimator) -> Estimator | None:
    """For a biased estimator, its unbiased reference for the same gradient on the same model
    (sharing parameters), with the same KL mode and β; None for an unbiased one. A K-sample
    bound's gradient ∇L_K depends on K, so the reference of an IWAE-bound estimator runs at the
    estimator's own K; an ELBO gradient does not, so there the reference runs at its smallest K.
    """
    if estimator.bias_reference is None:
        return None
    reference = REGISTRY[estimator.bias_reference]
    k = estimator.n_particles if estimator.objective == "iwae" else reference.min_particles
    return make_estimator(reference.name, estimator.model, estimator.kl, k, estimator.beta)


def estimator_facts(config: RunConfig) -> dict[str, object]:
    """The row of estimators.csv (bench.results.FACT_COLUMNS) for the configuration's estimator
    at its K, as the estimator class declares it."""
    cls = REGISTRY[config.estimator]
    return {
        "estimator": config.estimator,
        "k": config.k,
        "objective": cls.objective,
        "latent": cls.latent,
        "biased": int(cls.is_biased(config.k)),
        "bias_reference": cls.bias_reference or "",
        "variance_reference": cls.variance_reference(),
        "evaluations": cls.evaluations(config.k),
        "source": source_of(config.estimator),
    }


def train_step(
    estimator: Estimator,
    optimizer: torch.optim.Optimizer | RunOptimizer,
    x: torch.Tensor,
    generator: torch.Generator | None,
) -> EstimatorOutput:
    """One optimiser step ascending the surrogate: forward, backward, step, baseline update."""
    out = estimator(x, estimator.sample_noise(x.shape[0], generator))
    optimizer.zero_grad(set_to_none=True)
    (-out.surrogate).backward()
    optimizer.step()
    estimator.update_state(out)
    return out


class DivergenceMonitor:
    """The first step whose loss is non-finite, found without a host synchronisation per step.

    `record` copies each step's scalar loss into a buffer on the device (one tiny copy, no sync;
    the former per-step check of loss and gradient norm cost 5-8% of a CPU step); `check` reads
    the steps since the last check (one sync). The loop checks every CHECK_EVERY steps and before
    every measurement. A non-finite gradient under a finite loss makes Adam's update, hence the
    parameters and the next loss, non-finite, so the recorded step is exact for a non-finite loss
    and at most one step late for a non-finite gradient. The steps between the first bad one and
    its detection (fewer than CHECK_EVERY) are applied, as the device does not wait for the
    check; the run then ends as diverged, and nothing is ever measured on those parameters.
    """

    def __init__(self, steps: int, device: torch.device) -> None:
        self.losses = torch.zeros(steps + 1, device=device)
        self.checked = 0

    def record(self, step: int, loss: torch.Tensor) -> None:
        self.losses[step] = loss.detach()

    def check(self, step: int) -> int | None:
        """The first step in (last check, `step`] with a non-finite loss, else None."""
        bad = (~torch.isfinite(self.losses[self.checked + 1 : step + 1])).nonzero()
        first = self.checked + 1 + int(bad[0]) if len(bad) else None
        self.checked = step
        return first


def measurement_generator(config: RunConfig, step: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(1_000_003 * config.seed + step)


def measure_checkpoint(
    estimator: Estimator, data: Dataset, config: RunConfig, device: torch.device, step: int
) -> dict[str, float]:
    """ELBOs on fixed binarised train/test sets and gradient statistics on a fixed minibatch
    (with the bias against `bias_draws` reference draws for a biased estimator)."""
    generator = measurement_generator(config, step, device)
    model = estimator.model
    n = config.eval_examples
    elbo_train = elbo_estimate(model, data.train_eval_binary[:n], generator).mean().item()
    distortion, rate = distortion_and_rate(model, data.test_binary[:n], generator)
    values = {
        "elbo_train": elbo_train,
        "elbo_test": -(distortion + rate).mean().item(),
        "rate_test": rate.mean().item(),
        "distortion_test": distortion.mean().item(),
    }
    fixed_batch = data.train_eval_binary[: config.grad_batch]
    values.update(
        gradient_statistics(
            estimator,
            fixed_batch,
            config.grad_draws,
            generator,
            grad_method(device),
            reference=bias_reference(estimator),
            n_reference_draws=config.bias_draws,
        )
    )
    return values


def test_elbo(
    estimator: Estimator, data: Dataset, config: RunConfig, device: torch.device, step: int
) -> float:
    """elbo_test alone, on the same test examples as measure_checkpoint's."""
    generator = measurement_generator(config, step, device)
    x = data.test_binary[: config.eval_examples]
    return elbo_estimate(estimator.model, x, generator).mean().item()


def negative_log_likelihood(
    estimator: Estimator, data: Dataset, config: RunConfig, device: torch.device, batch: int = 100
) -> float:
    """−mean log p(x) over the first `nll_examples` test digits, k = `nll_samples`."""
    generator = measurement_generator(config, config.steps + 1, device)
    x = data.test_binary[: config.nll_examples]
    log_px = [
        log_likelihood_estimate(estimator.model, x[i : i + batch], config.nll_samples, generator)
        for i in range(0, len(x), batch)
    ]
    return -torch.cat(log_px).mean().item()


def run_configuration(
    config: RunConfig,
    data: Dataset,
    device: torch.device,
    on_step: StepCallback | None = None,
    snapshots: Snapshots | None = None,
) -> RunResult:
    """Train `config` on `data` and return every measurement, in order; writes nothing but,
    given `snapshots`, the run's snapshots (bench.snapshots), from the last of which it starts.

    Training runs in segments between the steps where something is read (checkpoints, ELBO-only
    steps, every CHECK_EVERY steps); `train_seconds` sums the segments' synchronised wall time.
    """
    estimator = build_estimator(config, data.dim, device, training_mean(config, data))
    estimator.model.check_input(data.train[:1].to(device))
    optimizer = build_optimizer(
        estimator, config.learning_rate, config.optimizer, optimizer_kind(device)
    )
    data = training_data(config, data).to(device)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    stream = MinibatchStream(data.train, config.batch_size, generator)
    checkpoints = set(config.checkpoints())
    elbo_only = set(config.elbo_only_checkpoints())
    stops = sorted({*checkpoints, *elbo_only, *range(0, config.steps, CHECK_EVERY), config.steps})
    monitor = DivergenceMonitor(config.steps, device)
    clock = Stopwatch(device)
    threads = {"threads": torch.get_num_threads()}
    shared = set(config.shared_checkpoints())
    keeps_model = is_reference_trajectory(config)
    keeps_auxiliary = config.seed == 0 and has_auxiliary_state(estimator)
    states: States = {}
    auxiliary_states: States = {}

    def keep_state(step: int) -> None:
        if step in shared and keeps_model:
            states[step] = {
                k: v.detach().cpu().clone() for k, v in estimator.model.state_dict().items()
            }
        if step in shared and keeps_auxiliary:
            auxiliary_states[step] = auxiliary_state(estimator)

    def snapshot(step: int) -> dict:
        return {
            "step": step,
            "estimator": estimator.state_dict(),
            "optimizer": optimizer.state_dict(),
            "generator": generator.get_state(),
            "stream": stream.position(),
            "rows": rows,
            "train_seconds": clock.seconds,
            "states": states,
            "auxiliary_states": auxiliary_states,
        }

    saved = snapshots.load(config) if snapshots is not None else None
    if saved is None:
        keep_state(0)
        first = measure_checkpoint(estimator, data, config, device, 0)
        rows: Measurements = [(0, {**first, "train_seconds": 0.0})]
    else:
        estimator.load_state_dict(saved["estimator"])
        optimizer.load_state_dict(saved["optimizer"])
        generator.set_state(saved["generator"])
        stream.restore(saved["stream"])
        rows, clock.seconds = saved["rows"], saved["train_seconds"]
        states, auxiliary_states = saved["states"], saved["auxiliary_states"]
        monitor.checked = saved["step"]
        stops = [stop for stop in stops if stop >= saved["step"]]
    timer = snapshots.timer() if snapshots is not None else None
    for previous, stop in pairwise(stops):
        with clock:
            for step in range(previous + 1, stop + 1):
                out = train_step(estimator, optimizer, next(stream), generator)
                monitor.record(step, out.surrogate)
        bad = monitor.check(stop)
        if bad is not None:
            rows.append((bad, {DIVERGED: 1.0, **threads, COMPLETE: 1.0}))
            return RunResult(
                rows, bad, diverged=True, states=states, auxiliary_states=auxiliary_states
            )
        if on_step is not None and stop % CHECK_EVERY == 0:
            on_step(stop, out.elbo.mean().item())
        keep_state(stop)
        if stop in checkpoints:
            last = measure_checkpoint(estimator, data, config, device, stop)
            rows.append((stop, {**last, "train_seconds": clock.seconds}))
        elif stop in elbo_only:
            elbo = test_elbo(estimator, data, config, device, stop)
            rows.append((stop, {"elbo_test": elbo, "train_seconds": clock.seconds}))
        if timer is not None and timer.due() and stop < config.steps:
            snapshots.save(config, snapshot(stop))
            timer.reset()

    final = {
        "nll_test": negative_log_likelihood(estimator, data, config, device),
        "nll_samples": config.nll_samples,
        "grad_draws": config.grad_draws,
        **({"bias_draws": config.bias_draws} if estimator.bias_reference else {}),
        "grad_batched": float(grad_method(device) == "vmap"),
        "fused_step": float(optimizer_kind(device) == "adam_fused"),
        **threads,
    }
    rows.append((config.steps, {**final, COMPLETE: 1.0}))
    return RunResult(
        rows, config.steps, diverged=False, states=states, auxiliary_states=auxiliary_states
    )
