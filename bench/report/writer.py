"""write_report: DIR/runs.csv → DIR/summary.md and DIR/plots/*.png."""

from __future__ import annotations

from pathlib import Path

from bench.report import toy_plot
from bench.report.final_plots import (
    plot_bias_variance,
    plot_kl_modes,
    plot_throughput,
    plot_variance_cost,
)
from bench.report.plots import Look, theme
from bench.report.runs import (
    CONFIG,
    NoRunsError,
    final_values,
    load_envs,
    load_runs,
    primary_runs,
    run_status,
)
from bench.report.sweep_plots import plot_rate_distortion, plot_snr_vs_k
from bench.report.tables import summary_markdown, summary_table
from bench.report.training_plots import plot_elbo, plot_grad_var

PLOT_CAPTIONS = {
    "grad_var_encoder": "Encoder gradient variance vs training step, per KL mode (band: seed "
    "range; bars: 95% interval of the mean over seeds, from the standard errors of the draws).",
    "elbo_test": "Test ELBO vs training step and vs training wall-clock time (the standard "
    "K = 1 ELBO, also for models trained on an IWAE bound).",
    "variance_cost": "Final encoder gradient variance (bars: 95% interval) vs seconds per "
    "gradient: the efficient frontier.",
    "throughput": "Training throughput per estimator and device.",
    "kl_modes": "Analytic vs Monte Carlo KL for the same estimators (variance bars: 95% interval).",
    "snr_vs_k": "Encoder and decoder gradient SNR vs the number of samples K, per multi-sample "
    "estimator, first at step 0, where every K of a seed has the same parameters and minibatch "
    "(Rainforth et al. (2018) predict, for IWAE at fixed parameters, encoder SNR falling as "
    "O(1/√K) and decoder SNR rising as O(√K)), then at the end of training, where each K has its "
    "own trained model. Hollow markers: the SNR cannot be told from the noise floor (grey band: "
    "floor ± 2 sd, the SNR of the same draws for a zero true gradient).",
    "rate_distortion": "Final distortion vs rate per estimator, KL mode, K and β, with iso-ELBO "
    "lines (rate + distortion = −ELBO): where each estimator sits on the rate–distortion plane.",
    "bias_variance": "Final encoder gradient error per estimator, in the sections with a biased "
    "estimator: variance (solid) and bias² (hatched, ± 1 standard error) side by side, and their "
    "sum, the MSE (tick). Bias² is measured against draws of the unbiased reference estimator "
    "and debiased, so it is ≤ 0 where no bias is detectable; such values are drawn as 0 (no bar) "
    "on the log axis.",
    "toy_variance": "Toy problem: estimator variance vs k for three costs, exact and empirical.",
}
PLOT_NAMES: tuple[str, ...] = tuple(PLOT_CAPTIONS)  # in the order summary.md lists them
SKIP_REASONS = {
    "grad_var_encoder": "no grad_var_encoder measurements",
    "elbo_test": "no elbo_test measurements",
    "variance_cost": "no finished run with grad_var_encoder and grad_seconds",
    "throughput": "no finished run with a throughput measurement",
    "kl_modes": "no estimator was run with more than one KL mode",
    "snr_vs_k": "no estimator was run with two or more values of K (with snr_encoder or "
    "snr_decoder measured)",
    "rate_distortion": "no finished run with rate_test and distortion_test (runs.csv predates "
    "them)",
    "bias_variance": "no finished run has bias measurements (grad_bias_encoder, recorded for "
    "biased estimators such as gumbel and st_gumbel)",
}


def write_report(out_dir: Path, toy: bool = True) -> list[Path]:
    """Write DIR/summary.md and DIR/plots/*.png from DIR/runs.csv; return the paths written.

    A plot whose data is absent is skipped (and a stale file of that name removed), and
    summary.md says why. With toy=False the toy plot is left as it is on disk.
    """
    from matplotlib import rc_context

    out_dir = Path(out_dir)
    runs = load_runs(out_dir)
    if runs.empty:
        raise NoRunsError(f"{out_dir / 'runs.csv'} holds no measurements")
    status = run_status(runs)
    finals = final_values(runs, status)
    primary = primary_runs(runs, status)
    primary_finals = finals[finals.index.isin(primary.set_index(CONFIG).index)]
    look = Look(runs)
    plots = out_dir / "plots"
    plots.mkdir(parents=True, exist_ok=True)

    drawn: dict[str, Path | None] = {}
    with rc_context(theme()):
        drawn["grad_var_encoder"] = plot_grad_var(primary, look, plots / "grad_var_encoder.png")
        drawn["elbo_test"] = plot_elbo(primary, primary_finals, look, plots / "elbo_test.png")
        drawn["variance_cost"] = plot_variance_cost(finals, look, plots / "variance_cost.png")
        drawn["throughput"] = plot_throughput(finals, look, plots / "throughput.png")
        drawn["kl_modes"] = plot_kl_modes(primary_finals, look, plots / "kl_modes.png")
        drawn["snr_vs_k"] = plot_snr_vs_k(primary, primary_finals, look, plots / "snr_vs_k.png")
        drawn["rate_distortion"] = plot_rate_distortion(
            primary_finals, look, plots / "rate_distortion.png"
        )
        drawn["bias_variance"] = plot_bias_variance(
            primary_finals, look, plots / "bias_variance.png"
        )
        if toy:
            drawn["toy_variance"] = toy_plot.plot_toy(plots / "toy_variance.png")
    for name, written in drawn.items():
        stale = plots / f"{name}.png"
        if written is None and stale.exists():
            stale.unlink()

    reported = int((status["status"] != "running").sum())
    diverged = int((status["status"] == "diverged").sum())
    running = int((status["status"] == "running").sum())
    gpu = " and gpu/runs.csv" if (out_dir / "gpu" / "runs.csv").is_file() else ""
    headline = (
        f"Generated by `python -m bench report` from runs.csv{gpu}: "
        f"{reported} configurations ({diverged} diverged)."
    )
    if running:
        headline += f" {running} configuration(s) without run_complete are still running: left out."
    lines = ["# vae-bench results", "", headline, ""]
    lines += summary_markdown(summary_table(runs), load_envs(out_dir))
    lines += ["## Plots", ""]
    for name in PLOT_NAMES:
        file = plots / f"{name}.png"
        if name == "toy_variance" and not toy:
            if file.exists():
                lines.append(f"- `plots/{name}.png`: {PLOT_CAPTIONS[name]} (not redrawn: --no-toy)")
                lines.append(f"  ![{name}](plots/{name}.png)")
            else:
                lines.append(f"- `plots/{name}.png`: skipped (--no-toy).")
        elif drawn.get(name) is None:
            lines.append(f"- `plots/{name}.png`: skipped: {SKIP_REASONS[name]}.")
        else:
            lines.append(f"- `plots/{name}.png`: {PLOT_CAPTIONS[name]}")
            lines.append(f"  ![{name}](plots/{name}.png)")
    if "cuda" not in set(runs["device"]):
        lines.append("")
        lines.append("No GPU runs (no gpu/runs.csv): throughput is measured on cpu only.")
    summary = out_dir / "summary.md"
    summary.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    return [summary] + [p for p in drawn.values() if p is not None]
