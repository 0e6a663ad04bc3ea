"""`python -m bench agree`: a results directory judged against a reference (bench.compare), on
the committed quick-suite output (tests/fixtures/quick) spread over three seeds."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from bench.__main__ import main
from bench.compare import compare

FIXTURE = Path(__file__).parent / "fixtures" / "quick" / "runs.csv"
SEEDS = (0, 1, 2)
# Per-seed offsets of the final nll_test (nats): the spread between seeds of a configuration.
SPREAD = {0: -0.6, 1: 0.1, 2: 0.5}
CONFIG = ("reparam", "analytic")


def three_seeds(nll_shift: dict[int, float] | None = None, timing_factor: float = 1.0):
    """The fixture's rows of reparam and stl for seeds 0, 1, 2, the final nll_test offset by
    SPREAD per seed, plus `nll_shift[seed]` for CONFIG's estimator and KL mode; throughput times
    `timing_factor`."""
    rows = pd.read_csv(FIXTURE, dtype={"value": float}).query("estimator in ('reparam', 'stl')")
    frames = []
    for seed in SEEDS:
        frame = rows.assign(seed=seed)
        nll = frame["metric"] == "nll_test"
        frame.loc[nll, "value"] += SPREAD[seed]
        ours = nll & (frame["estimator"] == CONFIG[0]) & (frame["kl"] == CONFIG[1])
        frame.loc[ours, "value"] += (nll_shift or {}).get(seed, 0.0)
        frame.loc[frame["metric"] == "throughput", "value"] *= timing_factor
        frames.append(frame)
    return pd.concat(frames)


def results_dir(path: Path, rows: pd.DataFrame) -> Path:
    path.mkdir()
    rows.to_csv(path / "runs.csv", index=False)
    return path


def test_identical_directories_agree_to_rounding(tmp_path, capsys):
    ours = results_dir(tmp_path / "out", three_seeds())
    reference = results_dir(tmp_path / "reference", three_seeds(timing_factor=2.0))
    verdicts, timings = compare(ours, reference)
    assert verdicts and {v.verdict for v in verdicts} == {"identical"}
    assert "throughput" in timings and "throughput" not in {v.metric for v in verdicts}
    assert main(["agree", "--out", str(ours), "--reference", str(reference)]) == 0
    out = capsys.readouterr().out
    assert "your numbers agree with the reference" in out
    assert "timings, machine-dependent and not judged: " in out


def test_other_seeds_within_the_interval_agree(tmp_path):
    """Other per-seed values of the same spread (not identical) agree: Welch's t is far from
    significant (t = 0.4 on ~4 degrees of freedom)."""
    shift = {0: 0.9, 1: -0.5, 2: -0.1}
    ours = results_dir(tmp_path / "out", three_seeds(nll_shift=shift))
    reference = results_dir(tmp_path / "reference", three_seeds())
    verdicts, _ = compare(ours, reference)
    nll = [v for v in verdicts if v.metric == "nll_test" and v.configuration[2:4] == CONFIG]
    assert [v.verdict for v in nll] == ["agree"]
    assert {v.verdict for v in verdicts if v not in nll} == {"identical"}


@pytest.mark.parametrize("shift", [5.0, -5.0])
def test_a_shifted_nll_is_named(tmp_path, capsys, shift):
    """A 5-nat shift with a seed spread of ~0.6 nats: t ≈ 10 on 4 degrees of freedom, p ≈ 5e-4,
    beyond the Bonferroni level 0.05 / 1 of the one configuration-metric pair not identical."""
    ours = results_dir(tmp_path / "out", three_seeds(nll_shift=dict.fromkeys(SEEDS, shift)))
    reference = results_dir(tmp_path / "reference", three_seeds())
    verdicts, _ = compare(ours, reference)
    assert [(v.configuration[2:4], v.metric) for v in verdicts if v.verdict == "differ"] == [
        (CONFIG, "nll_test")
    ]
    assert main(["agree", "--out", str(ours), "--reference", str(reference)]) == 1
    out = capsys.readouterr().out
    assert "differ: mnist5k/mlp500 reparam/analytic/K=1 (cpu) nll_test" in out
    assert "1 of your numbers do not agree with the reference" in out


def test_one_seed_that_differs_is_untested_not_judged(tmp_path):
    rows = three_seeds()
    ours = results_dir(tmp_path / "out", three_seeds(nll_shift={0: 5.0}).query("seed == 0"))
    reference = results_dir(tmp_path / "reference", rows.query("seed == 0"))
    verdicts, _ = compare(ours, reference)
    assert [(v.configuration[2:4], v.verdict) for v in verdicts if v.verdict != "identical"] == [
        (CONFIG, "untested")
    ]


def test_missing_runs_are_one_line_and_status_2(tmp_path, capsys):
    reference = results_dir(tmp_path / "reference", three_seeds())
    assert main(["agree", "--out", str(tmp_path / "none"), "--reference", str(reference)]) == 2
    assert "no runs.csv" in capsys.readouterr().err
