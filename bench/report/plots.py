"""The report's plots, one list: each with its file name, what it draws from the loaded results,
its caption in summary.md, and why it is skipped when its data is absent."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.report.data import Results
from bench.report.final_plots import (
    plot_bias_variance,
    plot_kl_modes,
    plot_throughput,
    plot_variance_cost,
)
from bench.report.shared_view import plot_shared_variance
from bench.report.style import Look
from bench.report.sweep_plots import plot_rate_distortion, plot_snr_vs_k, plot_variance_vs_k
from bench.report.toy_plot import plot_toy
from bench.report.training_plots import plot_elbo, plot_grad_var


@dataclass(frozen=True)
class Plot:
    name: str  # plots/<name>.png
    draw: Callable[[Results, Look, Path], Path | None]  # None: nothing to draw
    caption: str
    skip_reason: str


def bias_references(results: Results) -> dict[str, str | None]:
    """Each estimator's unbiased bias reference (estimators.csv), for the bias plot's titles."""
    return {e: results.any_fact(e, "bias_reference") for e in results.facts.index.unique(0)}


PLOTS: tuple[Plot, ...] = (
    Plot(
        "grad_var_encoder",
        lambda r, look, path: plot_grad_var(r.primary, look, path),
        "Encoder gradient variance vs training step, per KL mode (band: seed range; bars: 95% "
        "interval of the mean over seeds, from the standard errors of the draws).",
        "no grad_var_encoder measurements",
    ),
    Plot(
        "elbo_test",
        lambda r, look, path: plot_elbo(r.primary, r.primary_finals, look, path),
        "Test ELBO vs training step and vs training wall-clock time (the standard K = 1 ELBO, "
        "also for models trained on an IWAE bound).",
        "no elbo_test measurements",
    ),
    Plot(
        "variance_cost",
        lambda r, look, path: plot_variance_cost(r.finals, look, path),
        "Final encoder gradient variance (bars: 95% interval) vs seconds per gradient: the "
        "efficient frontier.",
        "no finished run with grad_var_encoder and grad_seconds",
    ),
    Plot(
        "throughput",
        lambda r, look, path: plot_throughput(r.finals, look, path),
        "Training throughput per estimator and device.",
        "no finished run with a throughput measurement",
    ),
    Plot(
        "kl_modes",
        lambda r, look, path: plot_kl_modes(r.primary_finals, look, path),
        "Analytic vs Monte Carlo KL for the same estimators (variance bars: 95% interval).",
        "no estimator was run with more than one KL mode",
    ),
    Plot(
        "snr_vs_k",
        lambda r, look, path: plot_snr_vs_k(r.primary, r.primary_finals, look, path),
        "Encoder and decoder gradient SNR vs the number of samples K, per multi-sample "
        "estimator, first at step 0, where every K of a seed has the same parameters and "
        "minibatch (Rainforth et al. (2018) predict, for IWAE at fixed parameters, encoder SNR "
        "falling as O(1/√K) and decoder SNR rising as O(√K)), then at the end of training, where "
        "each K has its own trained model. Hollow markers: the SNR cannot be told from the noise "
        "floor (grey band: floor ± 2 sd, the SNR of the same draws for a zero true gradient).",
        "no estimator was run with two or more values of K (with snr_encoder or snr_decoder "
        "measured)",
    ),
    Plot(
        "variance_vs_k",
        lambda r, look, path: plot_variance_vs_k(r.primary, r.primary_finals, look, path),
        "Encoder gradient variance vs the number of samples K, per estimator run at two or more "
        "K, at step 0 (every K of a seed has the same parameters and minibatch) and at the end of "
        "training: Monte Carlo beside randomised QMC at equal K, with the Monte Carlo rate 1/K of "
        "a fixed objective (the ELBO; the IWAE bound itself changes with K).",
        "no estimator was run with two or more values of K (with grad_var_encoder measured)",
    ),
    Plot(
        "rate_distortion",
        lambda r, look, path: plot_rate_distortion(r.primary_finals, look, path),
        "Final distortion vs rate per estimator, KL mode, K and β, with iso-ELBO lines (rate + "
        "distortion = −ELBO): where each estimator sits on the rate–distortion plane.",
        "no finished run with rate_test and distortion_test",
    ),
    Plot(
        "bias_variance",
        lambda r, look, path: plot_bias_variance(r.primary_finals, bias_references(r), look, path),
        "Final encoder gradient error per estimator, in the sections with a biased estimator: "
        "variance (solid) and bias² (hatched, ± 1 standard error) side by side, and their sum, "
        "the MSE (tick). Bias² is measured against draws of the unbiased reference estimator "
        "and debiased, so it is ≤ 0 where no bias is detectable; such values are drawn as 0 (no "
        "bar) on the log axis.",
        "no finished run has bias measurements (grad_bias_encoder, recorded for biased estimators)",
    ),
    Plot(
        "shared_variance",
        plot_shared_variance,
        "Encoder gradient variance ÷ the section's variance reference's (estimators.csv) at "
        "shared parameters: every estimator and the reference draw at the "
        "parameters of the reference's seed-0 run at a few of its steps, on the same minibatch, "
        "independently (bars: 95% interval of the ratio). Unlike the per-run ratios, which "
        "compare differently trained models, this is the comparison the theory makes.",
        "no shared-parameter measurements (shared_complete; written by `python -m bench run` "
        "after training, --resume adds them)",
    ),
    Plot(
        "toy_variance",
        lambda r, look, path: plot_toy(r.toy, path),
        "Toy problem: estimator variance vs k for three costs, exact and empirical.",
        "no toy.csv (written by `python -m bench toy --out DIR`, part of `make bench`)",
    ),
)
