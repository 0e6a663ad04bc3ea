"""The paper protocols: each suite's settings equal the cited ones (one assertion per setting,
transcribed here from the authors' code independently of bench/suites.py), the data files parse
with a source on every row, and a tiny run of each protocol reaches the report's table."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from bench.__main__ import main
from bench.grid import GridError, suite_of
from bench.report.papers import (
    format_steps,
    load_protocols,
    load_published,
    parse_protocol,
    series_keys,
    setting_differences,
    stopped_early,
)
from bench.runner import build_estimator, training_mean
from bench.suites import COMPARISON_SEEDS, PAPER_PROTOCOLS, get_suite
from vae_core.data import load_dataset
from vae_core.models import data_log_odds

CPU = torch.device("cpu")

DISARM = get_suite("disarm_paper").runs
IWAE = get_suite("iwae_paper").runs


def every(runs, field: str) -> set:
    return {getattr(run, field) for run in runs}


def test_disarm_paper_settings_are_the_launchers():
    """google-research disarm/binary/experiment_launcher_singlelayer.py and dataset.py."""
    assert every(DISARM, "dataset") == {"mnist"}  # get_dynamic_mnist_batch
    assert every(DISARM, "model") == {"linear200", "nonlinear200"}  # encoder_type
    assert every(DISARM, "steps") == {10**6}  # num_steps = int(1e6)
    assert every(DISARM, "batch_size") == {50}  # batch_size = 50
    assert every(DISARM, "train_examples") == {50_000}  # train[:50000]
    # disarm/README.md launches with --initialize_with_bias --demean_input (networks.py)
    assert every(DISARM, "output_bias_from_data") == {True}
    assert every(DISARM, "centre_inputs") == {True}
    assert every(DISARM, "learning_rate") == {1e-4}  # genmo_lr = infnet_lr = 1e-4 (Adam)
    assert {r.optimizer.algorithm for r in DISARM} == {"adam"}
    assert {r.optimizer.eps for r in DISARM} == {1e-7}  # Keras Adam's default epsilon
    assert {r.optimizer.betas for r in DISARM} == {(0.9, 0.999)}  # Keras Adam's defaults
    assert {r.optimizer.prior for r in DISARM} == {("sgd", 1e-2)}  # SGD(prior_lr = 1e-2)
    assert {r.optimizer.schedule for r in DISARM} == {()}  # a constant rate
    assert every(DISARM, "nll_samples") == {100}  # num_eval_samples = 100
    assert every(DISARM, "nll_examples") == {10_000}  # the whole test split
    assert every(DISARM, "seed") == set(range(5))  # "5 runs" (the paper's figures)
    assert {"disarm", "arm", "reinforce_loo", "relax"} <= every(DISARM, "estimator")
    assert "reinforce" not in every(DISARM, "estimator")


def test_iwae_paper_settings_are_the_codes():
    """yburda/iwae experiments.py, optimizers.py and datasets.py."""
    assert every(IWAE, "dataset") == {"mnist"}  # binarized_mnist (dynamic binarisation)
    assert every(IWAE, "model") == {"iwae1"}  # latent 50, hidden [200, 200] each side
    assert every(IWAE, "batch_size") == {20}  # minibatch_size = 20
    assert every(IWAE, "train_examples") == {59_600}  # n_validation = 400
    assert every(IWAE, "output_bias_from_data") == {True}  # random_iwae(bias=get_train_bias_np())
    assert every(IWAE, "centre_inputs") == {False}  # the encoder reads x itself
    assert every(IWAE, "steps") == {3280 * 59_600 // 20}  # Σ 3^(i-1) epochs, i = 1..8
    assert every(IWAE, "learning_rate") == {1e-3}  # Adam(learning_rate = 1e-3)
    assert {r.optimizer.betas for r in IWAE} == {(0.99, 0.999)}  # beta_1, beta_2
    assert {r.optimizer.eps for r in IWAE} == {1e-4}  # + 1e-4 under the root
    assert {r.optimizer.prior for r in IWAE} == {None}
    schedule = IWAE[0].optimizer.schedule
    epoch = 59_600 // 20
    starts = [sum(3**j for j in range(i)) * epoch for i in range(8)]
    factors = [1.0, 0.72, 0.52, 0.37, 0.27, 0.19, 0.14, 0.1]  # 1e-4·round(10^(1-i/7), 1) / 1e-3
    assert [start for start, _ in schedule] == starts
    assert [factor for _, factor in schedule] == factors
    assert every(IWAE, "nll_samples") == {5000}  # post_experiment: num_samples = 5000
    assert every(IWAE, "nll_examples") == {10_000}
    assert {(r.estimator, r.kl, r.k) for r in IWAE} == {
        (e, "mc", k) for e in ("reparam", "iwae") for k in (1, 5, 50)
    }
    assert every(IWAE, "seed") == set(range(COMPARISON_SEEDS))


def test_disarm_protocol_model_starts_from_its_training_images():
    """The run's model is centred on, and its output bias set from, the mean of the images it
    trains on (the first `train_examples`), not of the whole training set; without that mean
    the build is refused."""
    data = load_dataset("synthetic")
    config = dataclasses.replace(
        PAPER_PROTOCOLS["disarm_paper"],
        dataset="synthetic",
        train_examples=100,
        estimator="disarm",
        k=2,
    )
    model = build_estimator(config, data.dim, CPU, training_mean(config, data)).model
    mean = data.train[:100].mean(0)
    assert not torch.allclose(mean, data.train.mean(0))
    assert model.centred
    torch.testing.assert_close(model.input_mean, mean)
    torch.testing.assert_close(model.decoder[-1].bias.detach(), data_log_odds(mean))
    with pytest.raises(ValueError, match="needs the training images' mean"):
        build_estimator(config, data.dim, CPU)


def test_centred_protocol_refuses_a_gaussian_model():
    """A TOML suite on the DisARM protocol (inputs centred: binary latents only) that runs a
    Gaussian-latent estimator is refused, saying why."""
    table = {"protocol": "disarm_paper", "models": ["mlp500"], "estimators": ["reparam"]}
    with pytest.raises(GridError, match="binary latents only, and mlp500 has gaussian latents"):
        suite_of(table, "gaussian", print)


@pytest.mark.parametrize("paper", sorted(PAPER_PROTOCOLS))
def test_cited_settings_file_is_the_suites_protocol_key(paper):
    """bench/paper_protocols.csv, which the report compares runs with, says what the suite runs:
    the same settings, no more, no fewer."""
    cited = load_protocols()[paper]
    run = get_suite(paper).runs[0]
    assert {"dataset": run.dataset, **parse_protocol(run.protocol)} == cited.settings
    assert all(source.strip() for source in cited.sources.values())


def test_every_published_figure_has_a_source_and_a_protocol():
    published = load_published()
    assert len(published) > 0
    protocols = load_protocols()
    for row in published.itertuples():
        assert row.protocol in protocols
        assert row.source.strip() and row.setting.strip() and row.checked.strip()
        assert math.isfinite(row.value) and row.metric == "nll_test"
        runs = get_suite(row.protocol).runs
        assert (row.model, row.estimator, row.kl, row.k) in {
            (r.model, r.estimator, r.kl, r.k) for r in runs
        }, "a published figure the suite does not run"


def test_setting_differences_name_each_change_and_keep_steps_apart():
    cited = load_protocols()["disarm_paper"]
    protocol = get_suite("disarm_paper").runs[0].protocol
    assert setting_differences("mnist", protocol, cited) == []
    changed = protocol.replace("batch_size=50", "batch_size=100").replace(
        "steps=1000000", "steps=3"
    )
    assert setting_differences("mnist5k", changed, cited) == [
        "dataset mnist5k (cited mnist)",
        "batch_size 100 (cited 50)",
    ]
    no_prior = ";".join(p for p in protocol.split(";") if not p.startswith("optimizer.prior"))
    assert setting_differences("mnist", no_prior + ";grad_draws=4", cited) == [
        "optimizer.prior at its default (cited (sgd,0.01))",
        "grad_draws 4 (not set by the protocol)",
    ]
    assert (format_steps(10**6), format_steps(9_774_400)) == ("10⁶", "9,774,400")


def test_stopped_early_names_only_the_models_whose_runs_stopped_short():
    """The linear model's runs reached the protocol's 10⁶ steps and the nonlinear model's one seed
    stopped at 10⁵ (the other at 2·10⁵): the note names the nonlinear model at its fewest steps,
    not the linear one; with every run finished there is no note."""
    rows = pd.DataFrame(
        {
            "dataset": ["mnist"] * 4,
            "model": ["linear200", "linear200", "nonlinear200", "nonlinear200"],
            "steps_reached": [10**6, 10**6, 100_000, 200_000],
        }
    )
    note = stopped_early(rows, 10**6)
    assert note.startswith("**Stopped early**: mnist / nonlinear200 stopped at 100,000 of 10⁶")
    assert "mnist / linear200" not in note
    assert stopped_early(rows[rows["model"] == "linear200"], 10**6) == ""


TINY = """
protocol = "{paper}"
dataset = "mnist5k"
models = ["{model}"]
estimators = [{estimators}]
kl = ["mc"]
k = [{k}]
steps = 3
[measurement]
n_checkpoints = 2
elbo_checkpoints = 1
grad_draws = 4
grad_batch = 8
eval_examples = 16
nll_samples = 4
nll_examples = 16
timed_steps = 1
shared_adapt_steps = 1
"""


@pytest.mark.parametrize(
    ("paper", "model", "estimators", "k"),
    [("disarm_paper", "linear200", '"disarm"', 2), ("iwae_paper", "iwae1", '"iwae"', 5)],
)
def test_tiny_run_of_each_protocol_reaches_the_comparison(
    tmp_path: Path, paper, model, estimators, k
):
    suite = tmp_path / "tiny.toml"
    suite.write_text(TINY.format(paper=paper, model=model, estimators=estimators, k=k))
    out = tmp_path / "out"
    run = ["run", "--suite", str(suite), "--device", "cpu", "--workers", "1", "--out", str(out)]
    assert main(run) == 0
    assert main(["report", "--out", str(out)]) == 0
    summary = (out / "summary.md").read_text()
    section = summary[summary.index("## Paper protocols") :]
    steps = format_steps(PAPER_PROTOCOLS[paper].steps)
    assert f"### {paper}" in section
    assert f"**Stopped early**: mnist5k / {model} stopped at 3 of {steps} steps" in section
    assert "**Settings differ** from the protocol: dataset mnist5k (cited mnist)" in section
    assert "nll_samples 4 (cited " in section
    assert "| ours (nats) | published | ours − published |" in section
    rows = [line for line in section.splitlines() if line.startswith(f"| mnist5k | {model} |")]
    assert len(rows) == 1 and f"| 3 of {steps} |" in rows[0]
    published = load_published()
    figure = published[
        (published["protocol"] == paper)
        & (published["estimator"] == estimators.strip('"'))
        & (published["k"] == k)
    ]
    if len(figure):  # iwae_paper at K = 5: the published figure and ours − published
        ours, shown, difference = (float(c) for c in rows[0].strip("| ").split(" | ")[-3:])
        assert shown == round(figure["value"].iloc[0], 2)
        assert difference == pytest.approx(ours - shown, abs=0.011)
    else:
        assert "No published figure of this protocol is on file" in section
    assert (out / "plots" / f"paper_{paper}.png").stat().st_size > 0


def test_series_keys_are_one_per_estimator_kl_and_k_across_protocol_keys():
    """The nonlinear model stopped early carries steps=100000 in its protocol key; its DisARM is
    the linear model's DisARM: one colour and one legend entry, not two."""
    runs = pd.DataFrame(
        {
            "estimator": ["disarm", "disarm", "gumbel"],
            "kl": ["mc", "mc", "analytic"],
            "k": [2, 2, 1],
            "protocol": [
                "paper=disarm_paper",
                "paper=disarm_paper;steps=100000",
                "paper=disarm_paper",
            ],
        }
    )
    assert series_keys(runs) == [("disarm", "mc", 2), ("gumbel", "analytic", 1)]
