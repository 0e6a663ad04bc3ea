"""The report's shared-parameter view (bench/report/shared_view.py): the ratios, their intervals,
the table in summary.md and summary.csv, and the plot, from synthetic runs with shared rows."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from bench.report import write_report
from bench.report.stats import Z
from tests.test_report import (
    ENCODER_BIAS,
    ENCODER_VARIANCE,
    binary_rows,
    synthetic_rows,
    write_results,
)

SHARED_STEPS = (0, 100, 1000)
REFERENCES = {"mlp500": "reparam", "linear200": "disarm"}
SE = 0.05  # relative standard error of every shared variance


def shared_rows(rows: list[tuple]) -> list[tuple]:
    """Shared-pass rows for every seed-0 configuration of `rows` (diverged ones too): at each of
    SHARED_STEPS its encoder variance ENCODER_VARIANCE × (1 + step/1000) and the reference's
    ENCODER_VARIANCE of the model's reference at the same state, each with a 5% standard error;
    bias ENCODER_BIAS for biased estimators; shared_complete last."""
    configs = sorted({row[:8] for row in rows if row[7] == 0})
    extra = []
    for key in configs:
        estimator, reference = key[2], REFERENCES[key[1]]
        for step in SHARED_STEPS:
            growth = 1 + step / 1000
            values = {
                "grad_var_encoder": ENCODER_VARIANCE[estimator] * growth,
                "ref_grad_var_encoder": ENCODER_VARIANCE[reference],
                "grad_var_decoder": 900.0,
                "ref_grad_var_decoder": 900.0,
            }
            for name in list(values):
                values[name.replace("grad_var", "grad_var_se")] = SE * values[name]
            if estimator in ENCODER_BIAS:
                values["grad_bias_encoder"], values["grad_bias_se_encoder"] = ENCODER_BIAS[
                    estimator
                ]
            extra += [(*key, step, f"shared_{name}", value) for name, value in values.items()]
        extra.append((*key, 1000, "shared_complete", 1.0))
    return extra


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    rows = synthetic_rows() + binary_rows()
    out = write_results(tmp_path_factory.mktemp("shared"), rows + shared_rows(rows))
    return out, write_report(out)


def test_summary_csv_holds_each_ratio_with_its_delta_method_interval(shared):
    out, _ = shared
    table = pd.read_csv(out / "summary.csv")
    row = table[(table["estimator"] == "stl") & (table["kl"] == "mc")].iloc[0]
    assert (row["shared_step_first"], row["shared_step_mid"], row["shared_step_last"]) == (
        0,
        100,
        1000,
    )
    expected = ENCODER_VARIANCE["stl"] * 2 / ENCODER_VARIANCE["reparam"]
    spread = math.exp(Z * math.hypot(SE, SE))
    assert row["shared_var_encoder_rel_last"] == pytest.approx(expected)
    assert row["shared_var_encoder_rel_last_low"] == pytest.approx(expected / spread)
    assert row["shared_var_encoder_rel_last_high"] == pytest.approx(expected * spread)
    gumbel = table[table["estimator"] == "gumbel"].iloc[0]
    bias, bias_se = ENCODER_BIAS["gumbel"]
    assert gumbel["shared_bias_encoder_rel_last"] == pytest.approx(
        bias / ENCODER_VARIANCE["disarm"]
    )
    spread = math.exp(Z * math.hypot(bias_se / bias, SE))
    assert gumbel["shared_bias_encoder_rel_last_high"] == pytest.approx(
        bias / ENCODER_VARIANCE["disarm"] * spread
    )
    # A debiased bias² ≤ 0 has a ratio but no interval; an unbiased estimator has neither.
    st = table[table["estimator"] == "st_gumbel"].iloc[0]
    assert st["shared_bias_encoder_rel_last"] < 0 and np.isnan(
        st["shared_bias_encoder_rel_last_low"]
    )
    assert np.isnan(table[table["estimator"] == "disarm"]["shared_bias_encoder_rel_last"]).all()


def test_summary_md_has_a_shared_table_per_section_with_diverged_rows_measured(shared):
    out, _ = shared
    summary = (out / "summary.md").read_text()
    assert summary.count("At shared parameters:") == 2
    assert "| enc. var ÷ reparam, step 0 | enc. var ÷ reparam, step 100 |" in summary
    assert "enc. bias² ÷ disarm var, step 1000" in summary
    section = summary.split("At shared parameters:")[2].split("##")[0]  # mlp500
    # score (mc) diverged for seed 1 only; its seed-0 run still has shared rows: no dash.
    score = [line for line in section.splitlines() if line.startswith("| score | mc")]
    assert score and "—" not in score[0]
    assert "nan" not in summary.lower()


def test_shared_plot_is_drawn_and_skipped_with_a_reason_without_shared_rows(shared, tmp_path):
    out, written = shared
    assert out / "plots" / "shared_variance.png" in written
    assert (out / "plots" / "shared_variance.png").stat().st_size > 0
    plain = write_results(tmp_path / "plain")
    write_report(plain)
    assert not (plain / "plots" / "shared_variance.png").exists()
    summary = (plain / "summary.md").read_text()
    assert "plots/shared_variance.png`: skipped: no shared-parameter measurements" in summary
    assert "At shared parameters:" not in summary


def test_a_biased_row_not_measured_at_shared_parameters_shows_a_dash(tmp_path):
    """Gumbel-softmax in a section whose reference has no analytic-KL run is not measured at
    shared parameters (its seed-0 run has no shared rows): its bias² cell is a dash, as its
    variance cells are, not "nan (none)" (a bias ≤ 0 says "(none)" only when it was measured)."""
    rows = synthetic_rows() + binary_rows()
    measured = [row for row in shared_rows(rows) if row[2] != "gumbel"]
    out = write_results(tmp_path / "out", rows + measured)
    write_report(out)
    summary = (out / "summary.md").read_text()
    shared = summary.split("At shared parameters:")[1].split("##")[0]  # linear200
    gumbel = [line for line in shared.splitlines() if line.startswith("| gumbel")]
    assert gumbel and gumbel[0].rstrip(" |").endswith("—"), gumbel
    assert "nan" not in summary.lower()
