"""Train one configuration, measure it at log-spaced checkpoints, append rows as they come.

Measurements (names as in runs.csv; definitions in vae_core.gradients and the README):
at every checkpoint `elbo_train`, `elbo_test` (= −(`distortion_test` + `rate_test`)),
`grad_var_*` with `grad_var_se_*`, `grad_sqnorm_*`, `snr_*` with `snr_floor_*` and
`snr_floor_sd_*`, `train_seconds` (and `grad_bias_*`, `grad_bias_se_*`, `grad_mse_*` for a biased
estimator); at evenly spaced steps in between, `elbo_test` and `train_seconds` alone; at the end
`nll_test` (with `nll_samples`), `throughput`, `grad_seconds`, `work_var_*`, `grad_draws` (and
`bias_draws`), `grad_batched`. Every measurement draws from its own generator seeded from
(run seed, step), so it neither perturbs training nor depends on what was measured before.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from bench.results import COMPLETE, DIVERGED, RunsFile
from bench.suites import MODELS, RunConfig
from bench.timing import Stopwatch, median_seconds
from vae_core.data import Dataset, binarize, iterate_minibatches
from vae_core.estimators import REGISTRY, Estimator, EstimatorOutput, make_estimator
from vae_core.gradients import gradient_statistics
from vae_core.models import build_model
from vae_core.objectives import distortion_and_rate, elbo_estimate, log_likelihood_estimate


def grad_method(device: torch.device) -> str:
    """How the R gradient draws are computed: batched (torch.func.vmap) on GPU; a plain loop on
    CPU, where vmap measured no faster (mlp500, R = 100: 0.5-1.6 s vmap vs 0.5-0.6 s loop) and
    holds R copies of the activations. tests/test_estimators.py pins the two as equal."""
    return "vmap" if device.type == "cuda" else "loop"


StepCallback = Callable[[int, float], None]


@dataclass(frozen=True)
class RunOutcome:
    steps_done: int
    diverged: bool
    final_elbo_test: float


def build_estimator(config: RunConfig, input_dim: int, device: torch.device) -> Estimator:
    """Model and estimator with parameters initialised from the run's seed (on CPU, then moved,
    so CPU and GPU runs start from the same parameters)."""
    torch.manual_seed(config.seed)
    model = build_model(dataclasses.replace(MODELS[config.model], input_dim=input_dim))
    estimator = make_estimator(config.estimator, model, config.kl, config.k, config.beta)
    return estimator.to(device)


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


def train_step(
    estimator: Estimator,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    generator: torch.Generator | None,
    check_finite: bool = False,
) -> EstimatorOutput | None:
    """One optimiser step ascending the surrogate: forward, backward, step, baseline update.

    With `check_finite`, a non-finite loss or gradient (divergence) skips the step and returns
    None; this costs one device synchronisation, so the timed throughput steps leave it off.
    """
    out = estimator(x, estimator.sample_noise(x.shape[0], generator))
    optimizer.zero_grad(set_to_none=True)
    (-out.surrogate).backward()
    if check_finite:
        grads = [p.grad for p in estimator.parameters() if p.grad is not None]
        values = [out.elbo.mean(), out.surrogate.detach(), torch.nn.utils.get_total_norm(grads)]
        if not torch.isfinite(torch.stack(values)).all():
            return None
    optimizer.step()
    estimator.update_state(out)
    return out


def batches(
    data: torch.Tensor, batch_size: int, generator: torch.Generator
) -> Iterator[torch.Tensor]:
    """Dynamically binarised minibatches, epoch after epoch."""
    while True:
        yield from iterate_minibatches(data, batch_size, generator)


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


def measure_cost(
    estimator: Estimator, data: Dataset, config: RunConfig, device: torch.device
) -> dict[str, float]:
    """Throughput of a whole optimiser step and seconds per gradient estimate, on a copy of the
    estimator (so the timed steps do not train the measured run)."""
    clone = copy.deepcopy(estimator)
    optimizer = torch.optim.Adam(clone.parameters(), lr=config.learning_rate)
    generator = measurement_generator(config, config.steps + 2, device)
    x = binarize(data.train[: config.batch_size], generator)

    def gradient() -> None:
        out = clone(x, clone.sample_noise(x.shape[0], generator))
        torch.autograd.grad(out.surrogate, [p for p in clone.parameters()], allow_unused=True)

    step_seconds = median_seconds(
        lambda: train_step(clone, optimizer, x, generator), device, config.timed_steps
    )
    grad_seconds = median_seconds(gradient, device, config.timed_steps)
    return {"throughput": config.batch_size / step_seconds, "grad_seconds": grad_seconds}


def run_configuration(
    config: RunConfig,
    data: Dataset,
    device: torch.device,
    runs: RunsFile,
    on_step: StepCallback | None = None,
) -> RunOutcome:
    """Train `config` on `data`, appending every measurement to `runs` as it is made."""
    estimator = build_estimator(config, data.dim, device)
    estimator.model.check_input(data.train[:1].to(device))
    optimizer = torch.optim.Adam(estimator.parameters(), lr=config.learning_rate)
    data = data.to(device)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    stream = batches(data.train, config.batch_size, generator)
    checkpoints = set(config.checkpoints())
    elbo_only = set(config.elbo_only_checkpoints())
    clock = Stopwatch(device)
    record = lambda step, values: runs.append(config, device.type, step, values)  # noqa: E731

    last = measure_checkpoint(estimator, data, config, device, 0)
    record(0, {**last, "train_seconds": 0.0})
    for step in range(1, config.steps + 1):
        with clock:
            out = train_step(estimator, optimizer, next(stream), generator, check_finite=True)
        if out is None:
            record(step, {DIVERGED: 1.0, COMPLETE: 1.0})
            return RunOutcome(step, True, last["elbo_test"])
        if on_step is not None:
            on_step(step, out.elbo.mean().item())
        if step in checkpoints:
            last = measure_checkpoint(estimator, data, config, device, step)
            record(step, {**last, "train_seconds": clock.seconds})
        elif step in elbo_only:
            elbo = test_elbo(estimator, data, config, device, step)
            record(step, {"elbo_test": elbo, "train_seconds": clock.seconds})

    cost = measure_cost(estimator, data, config, device)
    final = {
        "nll_test": negative_log_likelihood(estimator, data, config, device),
        "nll_samples": config.nll_samples,
        **cost,
        "work_var_encoder": last["grad_var_encoder"] * cost["grad_seconds"],
        "work_var_decoder": last["grad_var_decoder"] * cost["grad_seconds"],
        "grad_draws": config.grad_draws,
        **({"bias_draws": config.bias_draws} if estimator.bias_reference else {}),
        "grad_batched": float(grad_method(device) == "vmap"),
    }
    record(config.steps, {**final, COMPLETE: 1.0})
    return RunOutcome(config.steps, False, last["elbo_test"])
