"""The harness end to end: the quick suite's file contract, resume, divergence, bad arguments,
parallel runs equal to serial ones."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from bench.__main__ import main
from bench.grid import Overrides, apply_overrides, parse_seeds
from bench.optimisers import make_optimizer, optimizer_kind
from bench.results import COLUMNS, FACT_COLUMNS, KEY, METRIC, STEP, VALUE, read_rows
from bench.runner import (
    bias_reference,
    build_estimator,
    run_configuration,
    train_step,
)
from bench.suites import RunConfig, get_suite
from tests.conftest import RUN, TIMING_METRICS
from vae_core.data import MinibatchStream, load_dataset
from vae_core.estimators import REGISTRY, EstimatorOutput
from vae_core.estimators.pathwise import Reparam

MODEL_OF = {"gaussian": "mlp500", "bernoulli": "linear200", "categorical": "reinmax4x8"}

CHECKPOINT_METRICS = {
    "elbo_train",
    "elbo_test",
    "rate_test",
    "distortion_test",
    "train_seconds",
    *(
        f"{m}_{g}"
        for m in ("grad_var", "grad_var_se", "grad_sqnorm", "snr", "snr_floor", "snr_floor_sd")
        for g in ("encoder", "decoder")
    ),
}
ELBO_ONLY_METRICS = {"elbo_test", "train_seconds"}
BIAS_METRICS = {
    f"{m}_{g}" for m in ("grad_bias", "grad_bias_se", "grad_mse") for g in ("encoder", "decoder")
}
FINAL_METRICS = {
    "nll_test",
    "nll_samples",
    "throughput",
    "grad_seconds",
    "work_var_encoder",
    "work_var_decoder",
    "grad_draws",
    "grad_batched",
    "fused_step",
    "threads",
    "run_complete",
    "cost_threads",
    "cost_complete",
}


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("quick")
    args = ["run", "--suite", "quick", "--device", "cpu", "--out", str(out), "--workers", "2"]
    assert main(args) == 0
    return out


def rows_by_config(path: Path) -> dict[tuple[str, ...], list[tuple[str, ...]]]:
    configs: dict[tuple[str, ...], list[tuple[str, ...]]] = {}
    for row in read_rows(path):
        configs.setdefault(row[:KEY], []).append(row)
    return configs


def test_quick_suite_writes_every_metric_for_every_configuration(quick_results):
    with (quick_results / "runs.csv").open() as handle:
        assert tuple(next(csv.reader(handle))) == COLUMNS
    configs = rows_by_config(quick_results / "runs.csv")
    suite = get_suite("quick")
    assert {(r.estimator, r.kl, str(r.k)) for r in suite.runs} == {
        (key[2], key[3], key[4]) for key in configs
    }
    checkpoints = suite.runs[0].checkpoints()
    elbo_only = suite.runs[0].elbo_only_checkpoints()
    for key, rows in configs.items():
        by_step: dict[int, set[str]] = {}
        for row in rows:
            by_step.setdefault(int(row[STEP]), set()).add(row[METRIC])
            assert math.isfinite(float(row[VALUE])), row
        assert sorted(by_step) == sorted(checkpoints + elbo_only), key
        biased = REGISTRY[key[2]].bias_reference is not None
        for step in checkpoints:
            assert CHECKPOINT_METRICS <= by_step[step], (key, step)
            assert (BIAS_METRICS <= by_step[step]) == biased, (key, step)
        for step in elbo_only:
            assert by_step[step] == ELBO_ONLY_METRICS, (key, step)
        assert FINAL_METRICS <= by_step[checkpoints[-1]], key


def test_parallel_runs_equal_serial_ones(quick_results, uninterrupted):
    """The quick suite trained two at a time in worker processes (one thread each) gives the same
    rows, timings aside, as the same configurations (RUN's, tests/conftest.py) one after another
    in this process."""
    expected = rows_by_config(uninterrupted / "runs.csv")
    parallel = rows_by_config(quick_results / "runs.csv")
    assert len(expected) == 3
    for key, rows in expected.items():
        untimed = [r for r in rows if r[METRIC] not in TIMING_METRICS]
        assert [r for r in parallel[key] if r[METRIC] not in TIMING_METRICS] == untimed, key
        assert ("200", "threads", "1.0") in {(r[STEP], r[METRIC], r[VALUE]) for r in rows}


def test_quick_suite_records_the_environment(quick_results):
    record = json.loads((quick_results / "env.json").read_text())
    for field in (
        "torch",
        "numpy",
        "python",
        "device",
        "device_name",
        "cpu",
        "threads",
        "git_commit",
        "time",
        "command",
        "suite",
        "optimizer",
    ):
        assert field in record
    assert record["suite"] == "quick" and record["device"] == "cpu"
    assert record["optimizer"] == optimizer_kind(torch.device("cpu"))
    assert (record["threads"], record["workers"]) == (1, 2)  # per run, as placed
    assert "--suite quick" in record["command"]


def test_quick_suite_records_the_estimator_facts(quick_results):
    """estimators.csv: one row per (estimator, K) that ran, as the estimator classes declare
    them, so that the report needs no estimator code."""
    with (quick_results / "estimators.csv").open(newline="") as handle:
        facts = {(r["estimator"], int(r["k"])): r for r in csv.DictReader(handle)}
    assert set(facts) == {(c.estimator, c.k) for c in get_suite("quick").runs}
    assert set(next(iter(facts.values()))) == set(FACT_COLUMNS)
    expected = {  # (estimator, K): (objective, latent, biased, bias reference, variance reference)
        ("reparam", 1): ("elbo", "gaussian", "0", "", "reparam"),
        ("iwae_stl", 2): ("iwae", "gaussian", "1", "dreg", "reparam"),
        ("gumbel", 1): ("elbo", "bernoulli", "1", "disarm", "disarm"),
        ("disarm", 2): ("elbo", "bernoulli", "0", "", "disarm"),
    }
    columns = ("objective", "latent", "biased", "bias_reference", "variance_reference")
    for key, values in expected.items():
        assert tuple(facts[key][c] for c in columns) == values, key
        assert facts[key]["evaluations"] == str(key[1])


def test_pathwise_beats_plain_score_function_in_quick_suite(quick_results):
    """A sanity check on the science: at the end of the quick run the pathwise estimator has a
    far lower encoder variance than REINFORCE without a baseline."""
    final = {}
    for row in read_rows(quick_results / "runs.csv"):
        if row[METRIC] == "grad_var_encoder" and row[STEP] == "200":
            final[row[2], row[3]] = float(row[VALUE])
    assert final["reparam", "analytic"] * 100 < final["score", "analytic"]


def test_quick_suite_trains_both_latent_types(quick_results):
    models = {row[1]: row[2] for row in read_rows(quick_results / "runs.csv")}
    assert {"mlp500", "linear200"} <= set(models)
    for row in read_rows(quick_results / "runs.csv"):
        assert REGISTRY[row[2]].latent == ("bernoulli" if row[1] == "linear200" else "gaussian")


def test_resume_skips_finished_and_reruns_the_interrupted(tmp_path, capsys, uninterrupted):
    """From a copy of the serial run of RUN (tests/conftest.py), cut as a kill would cut it."""
    shutil.copytree(uninterrupted, tmp_path, dirs_exist_ok=True)
    args = [*RUN, "--out", str(tmp_path), "--workers", "1"]
    path = tmp_path / "runs.csv"
    rows = read_rows(path)
    configs = rows_by_config(path)
    (first, first_rows), (second, _), (third, third_rows) = configs.items()
    # Simulate a kill during the second configuration's write (half its rows and a torn last
    # line) and another during the cost pass (the third has trained but has no cost rows).
    kept = first_rows + [r for r in rows if r[:KEY] == second][:10]
    kept += [r for r in third_rows if not r[METRIC].startswith(("cost_", "throughput"))]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        writer.writerows(kept)
        handle.write("mnist5k,mlp500,stl")  # a torn last line
    capsys.readouterr()

    assert main([*args, "--resume"]) == 0
    err = capsys.readouterr().err
    assert "resuming: 2 finished configurations skipped" in err
    assert "trained 1 configurations" in err and "timed 2 alone" in err
    record = json.loads((tmp_path / "env.json").read_text())
    assert "--resume" in record["command"] and "--resume" not in record["history"][0]["command"]
    after = rows_by_config(path)
    assert after[first] == first_rows  # untouched
    for key in (second, third):
        assert sum(r[METRIC] == "run_complete" for r in after[key]) == 1
        assert sum(r[METRIC] == "cost_complete" for r in after[key]) == 1
    training = [r for r in after[third] if r[METRIC] not in TIMING_METRICS]
    assert training == [r for r in third_rows if r[METRIC] not in TIMING_METRICS]
    assert len(after) == 3


def test_existing_results_are_never_overwritten_silently(tmp_path, capsys):
    (tmp_path / "runs.csv").write_text(",".join(COLUMNS) + "\n" + "x," * (len(COLUMNS) - 1) + "1\n")
    assert main(["run", "--suite", "quick", "--device", "cpu", "--out", str(tmp_path)]) == 2
    assert "pass --resume" in capsys.readouterr().err


class NanAfterThreeSteps(Reparam):
    """A test double: a pathwise estimator whose loss turns NaN after three optimiser steps."""

    summary = "test double that diverges"
    kl_modes = ("analytic",)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.updates = 0

    def update_state(self, output: EstimatorOutput) -> None:
        self.updates += 1

    def forward(self, x, noise) -> EstimatorOutput:
        out = super().forward(x, noise)
        if self.updates >= 3:
            return EstimatorOutput(out.surrogate * float("nan"), out.elbo, out.learning_signal)
        return out


def test_divergence_is_recorded_and_the_suite_goes_on(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(REGISTRY, "nan_test", NanAfterThreeSteps)
    NanAfterThreeSteps.name = "nan_test"
    args = [
        "run",
        "--suite",
        "quick",
        "--device",
        "cpu",
        "--out",
        str(tmp_path),
        "--estimators",
        "nan_test,stl",
        "--workers",
        "1",  # the test double is registered in this process only
    ]
    assert main(args) == 0
    protocol = get_suite("quick").runs[0].protocol  # the quick suite's shorter protocol
    message = f"nan_test/analytic/K=1/seed=0/{protocol}: diverged at step 4"
    assert message in capsys.readouterr().err
    configs = rows_by_config(tmp_path / "runs.csv")
    diverged = next(rows for key, rows in configs.items() if key[2] == "nan_test")
    assert {r[METRIC] for r in diverged if r[METRIC] in ("diverged", "run_complete")} == {
        "diverged",
        "run_complete",
    }
    assert not any(r[METRIC].startswith("cost_") for r in diverged)  # nothing to time
    stl = next(rows for key, rows in configs.items() if key[2] == "stl")
    assert {"nll_test", "cost_complete"} <= {r[METRIC] for r in stl}


def test_runs_csv_with_other_columns_is_refused_naming_them(tmp_path, capsys):
    """A runs.csv from before the beta column (or any other format) is not guessed at: resuming
    into it exits 2 with the columns found and expected, and leaves it as it was."""
    old_columns = [c for c in COLUMNS if c != "beta"]
    with (tmp_path / "runs.csv").open("w", newline="") as handle:
        csv.writer(handle).writerow(old_columns)
        csv.writer(handle).writerow(["mnist5k", "mlp500", "reparam", "analytic", "1", "cpu", "0"])
    before = (tmp_path / "runs.csv").read_bytes()
    assert main(["run", "--suite", "quick", "--out", str(tmp_path), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "has columns" in err and "expected" in err and "'beta'" in err
    assert (tmp_path / "runs.csv").read_bytes() == before


def test_same_command_gives_the_same_numbers_on_cpu():
    config = RunConfig(
        steps=12,
        n_checkpoints=3,
        grad_draws=5,
        eval_examples=50,
        nll_samples=10,
        nll_examples=20,
        estimator="score_ma",
    )
    data = load_dataset("mnist5k")
    values = [
        [
            (step, {m: v for m, v in measured.items() if m not in TIMING_METRICS})
            for step, measured in run_configuration(config, data, torch.device("cpu")).measurements
        ]
        for _ in range(2)
    ]
    assert values[0] == values[1]


@pytest.mark.parametrize("estimator", ["reparam", "score_nvil"])
def test_fused_adam_takes_the_steps_of_default_adam(estimator):
    """The fused step is the same update to float32 rounding: after 10 training steps from the
    same start on the same minibatches and noise, the two parameter vectors differ by less than
    1e-6 of the distance the steps moved them (measured: 1.6e-7 reparam, 3.8e-7 score_nvil,
    rounding at eps = 1.2e-7 amplified over the steps). A different learning rate, β or ε, or a
    missing bias correction, moves them apart by a sizeable fraction of that distance."""
    if optimizer_kind(torch.device("cpu")) != "adam_fused":
        pytest.skip("this torch has no fused Adam on CPU")
    config = RunConfig(estimator=estimator, kl="mc")
    data = load_dataset("mnist5k")
    parameters = {}
    for kind in ("adam_default", "adam_fused"):
        trained = build_estimator(config, data.dim, torch.device("cpu"))
        optimizer = make_optimizer(trained.parameters(), config.learning_rate, kind)
        generator = torch.Generator().manual_seed(0)
        stream = MinibatchStream(data.train, config.batch_size, generator)
        for _ in range(10):
            train_step(trained, optimizer, next(stream), generator)
        parameters[kind] = torch.nn.utils.parameters_to_vector(trained.parameters()).detach()
    start = build_estimator(config, data.dim, torch.device("cpu"))
    moved = parameters["adam_default"] - torch.nn.utils.parameters_to_vector(start.parameters())
    difference = parameters["adam_fused"] - parameters["adam_default"]
    assert difference.norm() <= 1e-6 * moved.norm()


def test_unknown_optimizer_is_refused():
    with pytest.raises(ValueError, match="unknown optimizer 'sgd'; valid: adam_fused"):
        make_optimizer([torch.zeros(1, requires_grad=True)], 1e-3, "sgd")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--suite", "huge"], "unknown suite 'huge'; valid: quick, default, full"),
        (["--device", "tpu"], "unknown device 'tpu'; valid: auto, cpu, cuda"),
        (["--estimators", "reparam,nope"], "unknown estimator 'nope'"),
        *(
            (["--workers", bad], f"--workers {bad!r} is invalid; valid: a positive integer or auto")
            for bad in ("0", "-2", "1.5", "all")
        ),
        *(
            (
                ["--cpus-per-run", bad],
                f"--cpus-per-run {bad!r} is invalid; valid: a positive integer",
            )
            for bad in ("0", "-1", "auto")
        ),
        *(
            (["--seeds", bad], f"--seeds {bad!r} is invalid; valid: A-B (e.g. 0-4)")
            for bad in ("0", "two", "3-1", "1,1")
        ),
        *(
            (["--snapshot-every", bad], f"--snapshot-every {bad!r} is invalid; valid: seconds >= 0")
            for bad in ("-1", "soon", "inf", "nan")
        ),
    ],
)
def test_bad_arguments_get_one_line_and_status_2(tmp_path, capsys, extra, message):
    assert main(["run", "--out", str(tmp_path), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "runs.csv").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_without_gpu_is_refused(tmp_path, capsys):
    assert main(["run", "--device", "cuda", "--out", str(tmp_path)]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err


def test_unwritable_output_is_refused(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["run", "--suite", "quick", "--out", str(blocker / "sub")]) == 2
    assert "cannot create output directory" in capsys.readouterr().err


def test_report_reads_the_quick_suite_output(quick_results, capsys):
    """The report on what the harness just wrote: every estimator in summary.md, no NaN cell."""
    assert main(["report", "--out", str(quick_results)]) == 0
    summary = (quick_results / "summary.md").read_text()
    for name in {run.estimator for run in get_suite("quick").runs}:
        assert f"| {name}" in summary or f"| **{name}" in summary, name
    assert "nan" not in summary.lower()
    assert (quick_results / "plots" / "snr_vs_k.png").exists() is False  # quick has one K each
    assert (quick_results / "plots" / "rate_distortion.png").stat().st_size > 0


def test_list_names_every_estimator_with_its_latent_type_and_every_model_and_suite(capsys):
    assert main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for name, cls in REGISTRY.items():
        line = next(line for line in lines if line.split()[:1] == [name])
        assert f"{cls.latent} latents" in line
    assert any("even" in line for line in lines if line.split()[:1] == ["disarm"])
    models = ("mlp500", "iwae1", "linear200", "nonlinear200", "jang20x10", "reinmax4x8")
    for name in (*models, "reinmax12x16", "quick", "default", "discrete", "categorical"):
        assert any(line.split()[:1] == [name] for line in lines), name


@pytest.mark.parametrize(
    ("name", "k", "reference", "reference_k"),
    [
        ("iwae_stl", 5, "dreg", 5),  # ∇L_K depends on K: the reference runs at the estimator's K
        ("iwae_stl", 1, "dreg", 1),
        ("gumbel", 1, "disarm", 2),  # ∇ELBO does not: the reference's smallest K
        ("cat_reinmax", 1, "cat_unordered_set", 2),
    ],
)
def test_bias_reference_estimates_the_same_gradient(name, k, reference, reference_k):
    cls = REGISTRY[name]
    config = RunConfig(estimator=name, kl=cls.kl_modes[-1], k=k, model=MODEL_OF[cls.latent])
    estimator = build_estimator(config, 784, torch.device("cpu"))
    built = bias_reference(estimator)
    assert (built.name, built.n_particles, built.kl) == (reference, reference_k, estimator.kl)
    assert built.model is estimator.model


def test_seeds_sets_every_configurations_seeds():
    """--seeds N: seeds 0..N−1 of each configuration of the suite, nothing else changed."""
    suite = get_suite("discrete")
    more = apply_overrides(suite, Overrides(seeds=parse_seeds("7")), print)
    configurations = {dataclasses.replace(run, seed=0) for run in suite.runs}
    assert {dataclasses.replace(run, seed=0) for run in more.runs} == configurations
    assert len(more.runs) == 7 * len(configurations)
    assert {run.seed for run in more.runs} == set(range(7))
    assert len(apply_overrides(suite, Overrides(seeds=(0,)), print).runs) == len(configurations)
