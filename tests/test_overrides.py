"""The grid without editing code: run's overrides, estimator options, TOML suites, and the
protocol as part of a configuration's identity (bench.grid, bench.results)."""

from __future__ import annotations

import csv
import dataclasses
import warnings
from pathlib import Path

import pytest
import torch

from bench.__main__ import main
from bench.grid import GridError, Overrides, apply_overrides, load_suite_file, parse_seeds
from bench.results import COLUMNS, KEY, LEGACY_COLUMNS, METRIC, RunsFile, load_runs, read_rows
from bench.suites import MODELS, RunConfig, get_suite
from vae_core.estimators import REGISTRY, EstimatorError, make_estimator
from vae_core.models import ModelConfig, build_model

NOTES: list[str] = []
TINY = """
name = "tiny"
models = ["mlp500"]
estimators = ["reparam"]
kl = ["analytic"]
steps = 4
[measurement]
n_checkpoints = 2
elbo_checkpoints = 1
grad_draws = 4
grad_batch = 10
eval_examples = 20
nll_samples = 2
nll_examples = 10
timed_steps = 1
shared_adapt_steps = 1
"""


def overridden(name: str = "default", **fields) -> tuple[RunConfig, ...]:
    return apply_overrides(get_suite(name), Overrides(**fields), NOTES.append).runs


def test_no_overrides_leave_every_suite_as_it_was():
    for name in ("quick", "default", "discrete", "beta"):
        assert overridden(name) == get_suite(name).runs


def test_default_protocol_is_empty_and_changes_are_named_in_field_order():
    assert RunConfig().protocol == ""
    changed = RunConfig(steps=500, learning_rate=3e-4, options=(("tau", 1.0),))
    assert changed.protocol == "steps=500;learning_rate=0.0003;tau=1"
    assert changed.key != RunConfig().key


@pytest.mark.parametrize(
    ("fields", "check"),
    [
        ({"models": ("iwae1",)}, lambda r: r.model == "iwae1"),
        ({"kl": ("mc",)}, lambda r: r.kl == "mc"),
        ({"beta": (0.5, 2.0)}, lambda r: r.beta in (0.5, 2.0)),
        ({"seeds": (3, 7)}, lambda r: r.seed in (3, 7)),
        ({"dataset": "digits"}, lambda r: r.dataset == "digits"),
        ({"settings": {"steps": 50}}, lambda r: r.steps == 50 and r.protocol == "steps=50"),
        ({"settings": {"batch_size": 20}}, lambda r: r.batch_size == 20),
        ({"settings": {"learning_rate": 3e-4}}, lambda r: r.learning_rate == 3e-4),
    ],
)
def test_each_override_sets_its_field_in_every_run(fields, check):
    runs = overridden(**fields)
    assert runs and all(check(r) for r in runs)
    assert not all(check(r) for r in get_suite("default").runs)


def test_axes_multiply_the_grid():
    base = get_suite("default").runs
    assert len(overridden(beta=(0.5, 2.0), seeds=(0, 1, 2, 3))) == len(base) // 3 * 8


def test_models_pair_each_estimator_with_its_latent_type():
    runs = overridden("quick", models=("iwae1", "nonlinear200"))
    assert {(REGISTRY[r.estimator].latent, r.model) for r in runs} == {
        ("gaussian", "iwae1"),
        ("bernoulli", "nonlinear200"),
    }


def test_k_drops_refusing_estimators_with_a_note_unless_named():
    NOTES.clear()
    runs = overridden(k=(1,))
    assert {r.k for r in runs} == {1} and "score_loo" not in {r.estimator for r in runs}
    assert any("score_loo" in note for note in NOTES)
    with pytest.raises(GridError, match="score_loo"):
        overridden(estimators=("score_loo", "reparam"), k=(1,))


def test_options_set_only_their_estimator_and_defaults_are_no_protocol():
    runs = overridden("discrete", options={"gumbel": {"tau": 1.0}})
    assert {r.options for r in runs if r.estimator == "gumbel"} == {(("tau", 1.0),)}
    assert all(r.protocol == "" for r in runs if r.estimator != "gumbel")
    same = overridden("discrete", options={"gumbel": {"tau": 0.5}})  # the default
    assert same == get_suite("discrete").runs


def test_seeds_syntax():
    assert parse_seeds("0-4") == (0, 1, 2, 3, 4)
    assert parse_seeds("0,3") == (0, 3)
    assert parse_seeds("5") == (0, 1, 2, 3, 4)
    for bad in ("0", "-1", "2-1", "a", "1,1"):
        with pytest.raises(GridError):
            parse_seeds(bad)


def test_gumbel_option_changes_the_surrogate_on_the_same_noise():
    torch.manual_seed(0)
    model = build_model(dataclasses.replace(MODELS["linear200"], input_dim=784))
    x = (torch.rand(8, 784) < 0.5).float()
    noise = torch.rand(1, 8, 200, generator=torch.Generator().manual_seed(1))
    values = {}
    for tau in (0.5, 1.0):
        estimator = make_estimator("gumbel", model, options={"tau": tau})
        assert estimator.tau == tau
        values[tau] = estimator(x, noise).surrogate.item()
    default = make_estimator("gumbel", model)(x, noise).surrogate.item()
    assert values[0.5] == default and values[1.0] != values[0.5]


@pytest.mark.parametrize("options", [{"temperature": 1.0}, {"tau": 0.0}, {"tau": float("nan")}])
def test_bad_options_are_refused_naming_the_valid_ones(options):
    model = build_model(ModelConfig(input_dim=4, hidden=(), latent_dim=2, latent="bernoulli"))
    with pytest.raises(EstimatorError, match="tau" if "temperature" in options else "> 0"):
        make_estimator("gumbel", model, options=options)


def test_every_temperature_estimator_declares_tau():
    names = {n for n, cls in REGISTRY.items() if "tau" in cls.options}
    expected = {"gumbel", "st_gumbel", "reinmax", "cat_gumbel", "cat_st_gumbel", "cat_reinmax"}
    assert names == expected | {"cat_gumbel_rao"}


def test_toml_suite_builds_its_grid(tmp_path):
    path = tmp_path / "sweep.toml"
    path.write_text(
        'models = ["linear200"]\nestimators = ["gumbel", "disarm"]\nseeds = [0, 1]\n'
        "steps = 500\nlr = 0.0003\n[options.gumbel]\ntau = 1.0\n"
    )
    suite = load_suite_file(path, NOTES.append)
    assert suite.name == "sweep"
    assert {(r.estimator, r.kl, r.k) for r in suite.runs} == {
        ("gumbel", "analytic", 1),
        ("disarm", "analytic", 2),
        ("disarm", "mc", 2),
    }
    assert {r.seed for r in suite.runs} == {0, 1} and len(suite.runs) == 6
    gumbel = {r.protocol for r in suite.runs if r.estimator == "gumbel"}
    assert gumbel == {"steps=500;learning_rate=0.0003;tau=1"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('models = ["mlp500"]\nestimators = ["reparam"]\nepochs = 3\n', "unknown key 'epochs'"),
        ('models = ["mlp500"]\n', "missing key 'estimators'"),
        ('models = ["mlp500"]\nestimators = ["reparam"]\nk = [0]\n', "K must be"),
        ('models = ["mlp500"]\nestimators = ["reparam"]\nsteps = -1\n', "steps must be"),
        ('models = ["mlp9"]\nestimators = ["reparam"]\n', "unknown model 'mlp9'"),
        ('models = ["mlp500"]\nestimators = ["reparam"]\n[options.reparam]\ntau=1\n', "no option"),
        ('models = ["mlp500"]\nestimators = ["reparam"]\n[measurement]\nx = 1\n', "measurement"),
        ('models = "mlp500"\nestimators = ["reparam"]\n', "list of strings"),
        ("models = [\n", "cannot read"),
    ],
)
def test_bad_toml_suites_are_refused_in_one_line(tmp_path, capsys, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    out = tmp_path / "out"
    assert main(["run", "--suite", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("error: ")
    assert not out.exists()


@pytest.mark.parametrize(
    "extra",
    [
        ["--models", "nope"],
        ["--dataset", "nope"],
        ["--estimators", "score_loo", "--k", "1"],
        ["--steps", "0"],
        ["--steps", "-5"],
        ["--batch-size", "x"],
        ["--lr", "0"],
        ["--option", "gumbel.nope=1"],
        ["--option", "gumbel.tau"],
        ["--option", "reparam.tau=1"],
        ["--seeds", "2-1"],
        ["--kl", "exact"],
    ],
)
def test_bad_values_exit_2_with_one_line_and_nothing_written(tmp_path, capsys, extra):
    out = tmp_path / "out"
    assert main(["run", "--device", "cpu", "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert not out.exists()


def test_two_protocols_in_one_runs_csv_stay_apart_and_old_files_resume(tmp_path, capsys):
    """A tiny run end to end; then the same grid at another step count resumed into the same
    directory trains again (a new protocol), and a file in the old format resumes."""
    suite = tmp_path / "tiny.toml"
    suite.write_text(TINY)
    out = tmp_path / "out"
    run = ["run", "--suite", str(suite), "--device", "cpu", "--workers", "1", "--out", str(out)]
    assert main(run) == 0
    first = read_rows(out / "runs.csv")
    protocols = {r[COLUMNS.index("protocol")] for r in first}
    assert len(protocols) == 1 and protocols.pop().startswith("steps=4;n_checkpoints=2")
    assert main([*run, "--resume"]) == 0  # same protocol: nothing to train
    assert "trained 0 configurations" in capsys.readouterr().err
    assert main([*run, "--resume", "--steps", "6"]) == 0
    rows = read_rows(out / "runs.csv")
    finished = {r[:KEY] for r in rows if r[METRIC] == "run_complete"}
    assert len(finished) == 2 and rows[: len(first)] == first
    assert {int(r[COLUMNS.index("step")]) for r in rows} >= {4, 6}
    with warnings.catch_warnings(record=True) as caught:  # the protocol shown where it varies
        warnings.simplefilter("always")
        assert main(["report", "--out", str(out)]) == 0
    # plot labels name only the differing setting: whole keys squeezed the panels to nothing
    assert not [w for w in caught if "constrained_layout not applied" in str(w.message)]
    summary = (out / "summary.md").read_text()
    assert "| protocol |" in summary and "steps=6;n_checkpoints=2" in summary
    assert "steps=4;n_checkpoints=2" in summary

    # The old format: the same rows without the protocol column (as if the default protocol).
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    for name in ("estimators.csv", "env.json"):
        (legacy / name).write_bytes((out / name).read_bytes())
    old_rows = [r[: KEY - 1] + r[KEY:] for r in first]
    with (legacy / "runs.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows([LEGACY_COLUMNS, *old_rows])
    assert set(load_runs(legacy)["protocol"]) == {""}
    assert all(r[KEY - 1] == "" for r in read_rows(legacy / "runs.csv"))
    kept, progress = RunsFile.check(legacy, resume=True, overwrite=False)
    assert len(progress.trained) == 1 and len(kept) == len(old_rows)
    run_legacy = [*run[:-1], str(legacy), "--resume"]
    assert main(run_legacy) == 0  # its rows are protocol '': the tiny protocol trains anew
    with (legacy / "runs.csv").open() as handle:
        assert next(csv.reader(handle)) == list(COLUMNS)
    assert len({r[:KEY] for r in read_rows(legacy / "runs.csv")}) == 2


def test_toml_path_is_what_suite_takes(tmp_path: Path):
    """A suite name that is no file stays a name; a .toml that is no file is refused."""
    with pytest.raises(GridError, match="cannot read"):
        load_suite_file(tmp_path / "none.toml", NOTES.append)
