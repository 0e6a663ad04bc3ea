"""`python -m bench agree`: a results directory judged against a reference (bench.compare), on
the committed quick-suite output (tests/fixtures/quick) spread over three seeds; `python -m bench
compare A B` on synthetic results directories (tests/test_report.py's)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bench.__main__ import main
from bench.compare import compare, compare_sets, welch_interval
from tests.conftest import ROOT
from tests.test_report import HIDDEN_REPORT, synthetic_rows, write_results

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


# `python -m bench compare A B` (bench.compare.compare_sets) on synthetic results directories.

HIDDEN_COMPARE = HIDDEN_REPORT.replace(
    '["report", "--out", sys.argv[1]]', '["compare", *sys.argv[1:]]'
)


def scaled(rows: list[tuple], estimator: str, metric: str, by: dict[int, float], add: bool = False):
    """`rows` with `metric` of `estimator` times by[seed] (plus by[seed] with `add`)."""
    out = []
    for row in rows:
        if row[2] == estimator and row[9] == metric:
            factor = by[row[7]]
            row = (*row[:10], row[10] + factor if add else row[10] * factor)
        out.append(row)
    return out


def run_compare(capsys, *args: str) -> tuple[int, str, str]:
    status = main(["compare", *map(str, args)])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_two_runs_of_one_commit_show_no_difference(tmp_path, capsys):
    a = write_results(tmp_path / "a")
    b = write_results(tmp_path / "b")
    comparison = compare_sets(a, b)
    assert comparison.rows and not comparison.only_a and not comparison.only_b
    assert {r.verdict for r in comparison.rows} == {"no detectable difference"}
    assert all(r.a == r.b for r in comparison.rows)
    assert {r.metric for r in comparison.rows} >= {"nll_test", "grad_var_encoder", "throughput"}
    rule = "grad_var_encoder:ratio>1.10"
    status, out, _ = run_compare(capsys, a, b, "--fail-if", rule, "--out", tmp_path / "c.csv")
    assert status == 0 and "fail-if" not in out
    table = pd.read_csv(tmp_path / "c.csv")
    assert (table["a"] == table["b"]).all() and (table["effect"] == table["low"]).all()


def test_a_run_of_fewer_seeds_is_identical_at_the_seeds_it_shares(tmp_path):
    """A newcomer's `make bench` (seeds 0-2) against the reference (seeds 0-4) of one commit:
    every metric identical at the three shared seeds, and A's and B's printed means over those
    seeds, not over all of A's (where A's seeds 3-4 differ, the two means would)."""
    a = write_results(tmp_path / "a", synthetic_rows(seeds=(0, 1, 2, 3, 4), diverged=None))
    b = write_results(tmp_path / "b", synthetic_rows(seeds=(0, 1, 2), diverged=None))
    rows = compare_sets(a, b).rows
    assert rows and {r.method for r in rows} == {"identical at every seed"}
    assert all(r.a == r.b and r.seeds == 3 for r in rows)


def test_a_timing_measured_once_per_configuration_gets_no_interval(tmp_path, capsys):
    """The cost pass times each configuration once and copies the time to every seed: 1.2× that
    time on each seed is a ratio of one measurement per side, so untested (a paired t over the
    copies would give an interval of width 0), and the rule is not crossed beyond an interval."""
    rows = synthetic_rows(seeds=(0, 1, 2), diverged=None)
    slower = scaled(rows, "stl", "grad_seconds", {0: 1.2, 1: 1.2, 2: 1.2})
    a, b = write_results(tmp_path / "a", rows), write_results(tmp_path / "b", slower)
    changed = [r for r in compare_sets(a, b).rows if r.verdict != "no detectable difference"]
    assert {(r.metric, r.verdict) for r in changed} == {("grad_seconds", "untested")}
    assert all(r.effect == pytest.approx(1.2) and np.isnan(r.low) for r in changed)
    assert run_compare(capsys, a, b, "--fail-if", "grad_seconds:ratio>1.1")[0] == 0


def test_a_noisier_estimator_is_worse_on_grad_var_and_fails_the_rule(tmp_path, capsys):
    """stl's encoder variance × 1.5 at the same standard errors (10% of A's variance per seed,
    two seeds): the log ratio's se is ≈ 0.085, so the interval is ≈ [1.27, 1.77]: above 1.10,
    not above 1.40, though the point estimate is."""
    rows = synthetic_rows()
    noisier = scaled(rows, "stl", "grad_var_encoder", {0: 1.5, 1: 1.5})
    a, b = write_results(tmp_path / "a", rows), write_results(tmp_path / "b", noisier)
    comparison = compare_sets(a, b)
    changed = [r for r in comparison.rows if r.verdict != "no detectable difference"]
    assert [(r.label.split()[1], r.metric, r.verdict) for r in changed] == [
        ("stl/analytic/K=1", "grad_var_encoder", "worse"),
        ("stl/mc/K=1", "grad_var_encoder", "worse"),
    ]
    assert comparison.rows[:2] == changed  # worst first
    assert all(r.effect == pytest.approx(1.5) and 1.2 < r.low < 1.4 < r.high for r in changed)
    status, out, _ = run_compare(capsys, a, b, "--fail-if", "grad_var_encoder:ratio>1.10")
    assert status == 1
    assert "fail-if grad_var_encoder:ratio>1.10: crossed by mnist5k/mlp500 stl/analytic" in out
    assert out.splitlines()[1].startswith("worse ")
    assert run_compare(capsys, a, b, "--fail-if", "grad_var_encoder:ratio>1.40")[0] == 0
    # The other way round the variance dropped: better, and no rule on an increase is crossed.
    back = compare_sets(b, a)
    assert {r.verdict for r in back.rows if r.metric == "grad_var_encoder"} >= {"better"}


@pytest.mark.parametrize(("shift", "verdict"), [(1.0, "worse"), (-1.0, "better")])
def test_a_shifted_nll_is_caught(tmp_path, capsys, shift, verdict):
    """reparam's test NLL shifted by shift + (−0.1, 0, 0.1) over three seeds: paired t, sd 0.1,
    half-width t_{0.975,2} · 0.1 / √3 ≈ 0.25: the interval ≈ shift ± 0.25."""
    rows = synthetic_rows(seeds=(0, 1, 2))
    by = {seed: shift + d for seed, d in zip((0, 1, 2), (-0.1, 0.0, 0.1), strict=True)}
    a = write_results(tmp_path / "a", rows)
    b = write_results(tmp_path / "b", scaled(rows, "reparam", "nll_test", by, add=True))
    changed = [r for r in compare_sets(a, b).rows if r.verdict != "no detectable difference"]
    assert {(r.metric, r.verdict, r.method) for r in changed} == {
        ("nll_test", verdict, "paired t over 3 seeds")
    }
    assert all(r.low == pytest.approx(shift - 0.248, abs=1e-3) for r in changed)
    exits = [run_compare(capsys, a, b, "--fail-if", f"nll_test:diff>{x}")[0] for x in (0.5, 0.9)]
    assert exits == ([1, 0] if shift > 0 else [0, 0])


def test_welch_interval_is_scipy_welch():
    x, y = np.array([1.0, 2.0, 4.0]), np.array([3.0, 5.0, 4.5, 7.0])
    centre, half = welch_interval(x, y)
    expected = stats.ttest_ind(y, x, equal_var=False).confidence_interval(0.95)
    assert (centre - half, centre + half) == pytest.approx(tuple(expected))


def test_one_set_only_machines_and_outputs(tmp_path, capsys):
    """Configurations in one set only are listed; timings across machines labelled with both."""
    a = write_results(tmp_path / "a")
    b = write_results(tmp_path / "b", synthetic_rows(("reparam", "stl")))
    env = json.loads((b / "env.json").read_text())
    (b / "env.json").write_text(json.dumps({**env, "device_name": "Other CPU"}))
    status, out, _ = run_compare(capsys, a, b, "--out", tmp_path / "c.md")
    assert status == 0
    assert "only in A: mnist5k/mlp500 score/analytic/K=1 (cpu)" in out
    assert "throughput (timing, across machines)" in out
    assert "A ran on cpu: Test CPU" in out and "B ran on cpu: Other CPU" in out
    markdown = (tmp_path / "c.md").read_text()
    assert markdown.startswith("| verdict |") and "- only in A: mnist5k/mlp500 score" in markdown


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{missing}", "{a}"], "no results directory"),
        (["{a}", "{a}", "--metrics", "nll_tset"], "unknown metric 'nll_tset'"),
        (["{a}", "{a}", "--fail-if", "grad_var:ratio>1.1"], "unknown metric 'grad_var'"),
        (["{a}", "{a}", "--fail-if", "nll_test>0.5"], "malformed rule"),
        (["{a}", "{a}", "--fail-if", "nll_test:ratio>1.1"], "nll_test is compared by diff"),
        (["{a}", "{a}", "--out", "{a}/c.txt"], "expected a .md or .csv file"),
        (["{a}", "{empty}"], "no runs.csv"),
    ],
)
def test_bad_arguments_are_one_line_and_status_2(tmp_path, capsys, args, message):
    a = write_results(tmp_path / "a")
    (tmp_path / "empty").mkdir()
    paths = {"a": a, "missing": tmp_path / "missing", "empty": tmp_path / "empty"}
    status, out, err = run_compare(capsys, *(arg.format(**paths) for arg in args))
    assert status == 2 and not out
    assert len(err.splitlines()) == 1 and message in err, err


def test_compare_needs_neither_torch_nor_the_estimator_code(tmp_path):
    a = write_results(tmp_path / "a")
    b = write_results(
        tmp_path / "b", scaled(synthetic_rows(), "stl", "grad_var_encoder", {0: 1.5, 1: 1.5})
    )
    rule = "grad_var_encoder:ratio>1.10"
    done = subprocess.run(
        [sys.executable, "-c", HIDDEN_COMPARE, str(a), str(b), "--fail-if", rule],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode == 1, done.stderr
    assert "crossed by" in done.stdout
