"""`python -m bench check`: every registered estimator passes its battery, and the battery fails
what it must: a bias not declared, an impure forward, a variance claim that does not hold, options
that are not as declared; a declared bias is reported, not failed."""

from __future__ import annotations

import pytest
import torch

from bench.__main__ import main
from bench.check import check_estimator, failed
from bench.check.battery import DECLARED, FAIL, PASS
from bench.check.problems import checked_particles
from tests.test_estimators import LeaveOneIn
from tests.test_variance_reduction import FlippedLeaveOneOut
from vae_core.estimators import REGISTRY, EstimatorError, EstimatorOutput
from vae_core.estimators.pathwise import Reparam
from vae_core.estimators.score import Score

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name", list(REGISTRY))
def test_registered_estimator_passes_its_battery(name):
    verdicts = check_estimator(name)
    assert not failed(verdicts), [v for v in verdicts if v.outcome == FAIL]
    cls = REGISTRY[name]
    expected = DECLARED if cls.is_biased(checked_particles(cls)) else PASS
    assert outcomes(verdicts, "unbiased") == {expected}
    assert outcomes(verdicts, "variance") == ({PASS} if cls.variance_counterpart else set())


# Planted faults ------------------------------------------------------------------------------


class ScaledReparam(Reparam):
    """The pathwise gradient with its encoder part scaled by 1.1: E[ĝ_φ] = 1.1 ∇_φ L."""

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> EstimatorOutput:
        f, kl_analytic, _ = self.sample_terms(
            x, noise, stop_path=False, encoder_grad_scale=torch.tensor(1.1)
        )
        objective = f.mean(0) - kl_analytic
        return EstimatorOutput(objective.mean(), objective.detach(), f.detach())


class DeclaredScaledReparam(ScaledReparam):
    bias_reference = "reparam"


class CountingScore(Score):
    """The score function, counting its calls in a buffer: forward changes state."""

    def build_state(self) -> None:
        self.register_buffer("calls", torch.zeros((), dtype=torch.float64))

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> EstimatorOutput:
        self.calls.add_(1)
        return super().forward(x, noise)


class NoisierLeaveOneOut(FlippedLeaveOneOut):
    """Unbiased, but claims a variance reduction over `score` that it does not have (≈ 4×)."""

    variance_counterpart = "score"


class RefusesMonteCarloKL(Reparam):
    """Declares kl='mc' (inherited) but refuses it."""

    def __init__(self, model, kl="analytic", n_particles=1, beta=1.0):
        if kl == "mc":
            raise EstimatorError("no mc")
        super().__init__(model, kl, n_particles, beta)


@pytest.fixture
def planted(monkeypatch):
    """Register a class under a name for one test (as a plugin would be)."""

    def register(name: str, cls: type) -> str:
        monkeypatch.setattr(cls, "name", name)
        monkeypatch.setitem(REGISTRY, name, cls)
        return name

    return register


def outcomes(verdicts, prefix: str) -> set[str]:
    return {v.outcome for v in verdicts if v.check.startswith(prefix)}


def test_undeclared_pathwise_bias_fails_naming_it(planted):
    """Relative bias 0.1 of the encoder gradient: measured max |z| 7.1-436 against 4.3-4.8."""
    verdicts = check_estimator(planted("scaled_reparam", ScaledReparam))
    bad = [v for v in verdicts if v.outcome == FAIL]
    assert bad and all(v.check.startswith("unbiased") for v in bad)
    assert all("biased: encoder max |z|" in v.detail for v in bad)
    assert all("relative bias" in v.detail for v in bad)


def test_undeclared_score_function_bias_fails(planted):
    """A leave-one-*in* baseline shrinks the score term by (K − 1)/K (test_estimators)."""
    verdicts = check_estimator(planted("leave_one_in", LeaveOneIn))
    assert FAIL in outcomes(verdicts, "unbiased")
    assert outcomes(verdicts, "purity") == outcomes(verdicts, "options") == {PASS}


def test_declared_bias_is_reported_not_failed(planted):
    verdicts = check_estimator(planted("declared_scaled_reparam", DeclaredScaledReparam))
    assert outcomes(verdicts, "unbiased") == {DECLARED}
    assert not failed(verdicts)


def test_forward_that_changes_a_buffer_fails_purity(planted):
    verdicts = check_estimator(planted("counting_score", CountingScore))
    (purity,) = [v for v in verdicts if v.check == "purity"]
    assert purity.outcome == FAIL and "forward changed calls" in purity.detail
    assert failed(verdicts)  # (its in-place update also breaks vmap: those rows fail too)


def test_variance_claim_that_does_not_hold_fails(planted):
    verdicts = check_estimator(planted("noisier_loo", NoisierLeaveOneOut))
    assert outcomes(verdicts, "variance") == {FAIL}
    assert outcomes(verdicts, "unbiased") == {PASS}


def test_declared_option_that_is_refused_fails(planted):
    (options,) = check_estimator(planted("refuses_mc", RefusesMonteCarloKL))
    assert options.outcome == FAIL and "kl=mc K=1 refused" in options.detail


# The command ---------------------------------------------------------------------------------


def test_command_prints_the_table_and_exits_0(capsys):
    assert main(["check", "stl", "--draws", "2000"]) == 0
    out = capsys.readouterr().out
    assert "unbiased mc K=1 quadrature" in out and "variance < reparam K=1" in out
    assert out.rstrip().endswith("1 of 1 estimators pass")


def test_command_exits_1_on_a_failure(planted, capsys):
    name = planted("counting_score", CountingScore)
    assert main(["check", "stl", name, "--draws", "2000"]) == 1
    assert f"failed: {name}" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["check", "foo"], "unknown estimator 'foo'; valid: reparam, stl"),
        (["check"], "give estimator names or --all"),
        (["check", "--all", "stl"], "give estimator names or --all"),
        (["check", "stl", "--draws", "10"], "--draws must be >= 100"),
    ],
)
def test_command_refuses_bad_arguments_with_exit_2(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err
