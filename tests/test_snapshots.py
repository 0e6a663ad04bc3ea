"""A run killed part-way continues from its last snapshot (bench.snapshots) to the rows, states
and auxiliary states of an uninterrupted run, timings aside; a snapshot that cannot be used is
said and ignored."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from bench import runner
from bench.runner import RunResult, run_configuration
from bench.snapshots import Snapshots
from bench.suites import RunConfig
from tests.conftest import ROOT, RUN, TIMING_METRICS
from tests.conftest import untimed as untimed_rows
from tests.test_shared import TINY as SHARED_TINY
from vae_core.data import load_dataset

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = torch.device("cpu")
TINY = {**SHARED_TINY, "steps": 120}  # snapshots at the check steps 50 and 100
# A reference trajectory (keeps model states), an estimator with a learned baseline (keeps
# auxiliary states at seed 0), a binary-latent one with a running baseline.
CONFIGS = [
    RunConfig(estimator="reparam", kl="analytic", **TINY),
    RunConfig(estimator="score_nvil", kl="mc", **TINY),
    RunConfig(estimator="reinforce_loo", kl="mc", k=2, model="linear200", **TINY),
]


class Killed(Exception):
    """Stands for the process being killed mid-run."""


def untimed(result: RunResult) -> list[tuple[int, dict[str, float]]]:
    return [
        (step, {m: v for m, v in row.items() if m not in TIMING_METRICS})
        for step, row in result.measurements
    ]


def killed_at(step: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the run's `step`-th training step raise Killed."""
    calls = {"n": 0}
    real = runner.train_step

    def counted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == step:
            raise Killed
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "train_step", counted)


def same_states(a: dict[int, dict], b: dict[int, dict]) -> bool:
    return a.keys() == b.keys() and all(
        a[s].keys() == b[s].keys() and all(torch.equal(a[s][k], b[s][k]) for k in a[s]) for s in a
    )


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.estimator)
def test_a_killed_run_resumed_from_its_snapshot_gives_the_uninterrupted_rows(
    config, tmp_path, monkeypatch
):
    data = load_dataset("synthetic")
    whole = run_configuration(config, data, CPU)
    snapshots = Snapshots(tmp_path, "cpu", every_s=0.0)  # a snapshot at every check step
    with monkeypatch.context() as patch:
        killed_at(77, patch)  # after the snapshot at step 50, before the one at 100
        with pytest.raises(Killed):
            run_configuration(config, data, CPU, snapshots=snapshots)
    assert torch.load(snapshots.path(config), weights_only=True)["step"] < 77
    resumed = run_configuration(config, data, CPU, snapshots=snapshots)
    assert untimed(resumed) == untimed(whole)
    assert same_states(resumed.states, whole.states)
    assert same_states(resumed.auxiliary_states, whole.auxiliary_states)
    assert resumed.states or resumed.auxiliary_states or config.estimator == "reinforce_loo"


def test_a_snapshot_of_another_run_or_a_torn_one_is_said_and_not_used(tmp_path, capsys):
    data = load_dataset("synthetic")
    config, other = CONFIGS[0], RunConfig(estimator="reparam", kl="analytic", seed=1, **TINY)
    whole = run_configuration(config, data, CPU)
    snapshots = Snapshots(tmp_path, "cpu", every_s=0.0)
    run_configuration(other, data, CPU, snapshots=snapshots)
    shutil.copy(snapshots.path(other), snapshots.path(config))
    assert untimed(run_configuration(config, data, CPU, snapshots=snapshots)) == untimed(whole)
    assert "a snapshot of another run; training from step 0" in capsys.readouterr().err
    path = snapshots.path(config)
    path.write_bytes(path.read_bytes()[:100])
    assert untimed(run_configuration(config, data, CPU, snapshots=snapshots)) == untimed(whole)
    assert "unreadable snapshot" in capsys.readouterr().err


def test_a_killed_command_resumed_continues_from_the_snapshot(tmp_path, uninterrupted):
    """`run --snapshot-every 0` killed (SIGKILL, its whole session) once a snapshot exists;
    `--resume` continues that configuration from it and the rows are the serial run's."""
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "bench", *RUN, "--out", str(out), "--workers", "1"]
    driver = subprocess.Popen(
        [*command, "--snapshot-every", "0"],
        cwd=ROOT,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300
        while not list((out / "states" / "snapshots").glob("*.pt")):
            assert driver.poll() is None and time.monotonic() < deadline, "no snapshot was saved"
            time.sleep(0.05)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    resumed = subprocess.run(
        [*command, "--resume"], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr
    assert ": continuing from step " in resumed.stderr
    assert untimed_rows(out / "runs.csv") == untimed_rows(uninterrupted / "runs.csv")
    assert not list((out / "states" / "snapshots").glob("*.pt*"))  # deleted once written
