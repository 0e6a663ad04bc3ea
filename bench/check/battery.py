"""The correctness battery of one estimator class: the proof the tests give every built-in one.

Checks (each a `Verdict` row):
- options: every declared KL mode is accepted at the smallest valid K; undeclared KL modes, K
  below the minimum or off its multiple, and a model of another latent type are refused
  (EstimatorError).
- purity: the same noise gives the same surrogate, ELBO and gradient twice; `forward` leaves every
  parameter and buffer as it was.
- vmap = loop: gradient_draws batched and looped agree to float64 rounding.
- finite: every gradient draw of the battery is finite.
- unbiased: per declared KL mode and problem (bench.check.problems), R draws against the exact
  gradient of the declared objective, max |z| below the Bonferroni threshold; plus β = 2.5 on
  the primary problem. An estimator declaring itself biased at K (`is_biased`) is reported
  "biased (declared)" with its z, never failed.
- variance: when `variance_counterpart` is set, tr Σ of the encoder gradient below the
  counterpart's at equal evaluations of f (bench.check.variance), one-sided.

Margins: the family-wise false-alarm rate FAMILY_ERROR = 1e-3 per estimator is split equally
(Bonferroni) over its statistical tests (the z-tests and the variance test), each z-test further
over its coordinates. Everything is seeded: the same seed gives the same table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from statistics import NormalDist

import torch

from bench.check.problems import (
    Problem,
    checked_particles,
    problems,
    smallest_particles,
    warmed_up,
)
from bench.check.variance import compare
from bench.check.ztest import gradient_draws_at_once, max_z_score, threshold_for
from vae_core.estimators import KL_MODES, REGISTRY, Estimator, EstimatorError
from vae_core.exact import binary_vae, reference_gradient, small_vae
from vae_core.gradients import gradient_draws

FAMILY_ERROR = 1e-3
DEFAULT_DRAWS = 10_000
VARIANCE_DRAWS = 2_000
BETA = 2.5  # the KL weight of the β check
PASS, FAIL, DECLARED = "pass", "FAIL", "biased (declared)"


@dataclass(frozen=True)
class Verdict:
    """One row of the table: the check, its statistic, the value against its margin, the
    outcome (pass, FAIL or biased (declared)) and what failed."""

    check: str
    statistic: str
    value: str
    margin: str
    outcome: str
    detail: str = ""


@dataclass(frozen=True)
class Battery:
    """How one estimator class is checked: K, KL modes, draws and seed."""

    cls: type[Estimator]
    n_draws: int = DEFAULT_DRAWS
    seed: int = 0

    @property
    def n_particles(self) -> int:
        return checked_particles(self.cls)

    def build(self, problem: Problem, kl: str, beta: float = 1.0, warm: bool = True) -> Estimator:
        estimator = self.cls(problem.model, kl=kl, n_particles=self.n_particles, beta=beta)
        return warmed_up(estimator, problem.x, self.seed + 1) if warm else estimator

    def statistical_tests(self) -> int:
        unbiased = len(self.cls.kl_modes) * len(problems(self.cls, self.n_particles)) + 1
        return unbiased + (self.cls.variance_counterpart is not None)


def check_estimator(name: str, n_draws: int = DEFAULT_DRAWS, seed: int = 0) -> list[Verdict]:
    """The battery's verdicts for the registered estimator `name`."""
    battery = Battery(REGISTRY[name], n_draws, seed)
    try:
        n_tests = battery.statistical_tests()
    except EstimatorError as error:
        return [Verdict("problems", "exact reference", "-", "-", FAIL, str(error))]
    error = FAMILY_ERROR / n_tests
    rows = [guarded("options", lambda: options_verdict(battery.cls))]
    if rows[0].outcome == FAIL:
        return rows
    rows.append(guarded("purity", lambda: purity_verdict(battery)))
    rows.append(guarded("vmap = loop", lambda: vmap_verdict(battery)))
    finite: list[bool] = []
    k = battery.n_particles
    for kl in battery.cls.kl_modes:
        for problem in problems(battery.cls, k):
            label = f"unbiased {kl} K={k} {problem.label}"
            rows.append(
                guarded(
                    label,
                    lambda c=label, p=problem, m=kl: unbiased_verdict(
                        c, battery, p, m, 1.0, error, finite
                    ),
                )
            )
    (primary,) = problems(battery.cls, k, BETA)[:1]
    kl = battery.cls.kl_modes[0]
    label = f"unbiased {kl} K={k} beta={BETA} {primary.label}"
    rows.append(
        guarded(label, lambda: unbiased_verdict(label, battery, primary, kl, BETA, error, finite))
    )
    rows.append(
        Verdict(
            "finite gradients",
            "draws finite",
            f"{sum(finite)}/{len(finite)} sets",
            "all",
            PASS if finite and all(finite) else FAIL,
        )
    )
    if battery.cls.variance_counterpart is not None:
        label = f"variance < {battery.cls.variance_counterpart}"
        rows.append(guarded(label, lambda: variance_verdict(battery, error)))
    return rows


def guarded(check: str, run: Callable[[], Verdict]) -> Verdict:
    """`run()`, or a FAIL row naming the exception it raised (a plugin's bug is a verdict)."""
    try:
        return run()
    except Exception as error:  # noqa: BLE001  (any error of the estimator under check)
        return Verdict(check, "raised", type(error).__name__, "-", FAIL, str(error))


# Options ------------------------------------------------------------------------------------


def other_latent_model(latent: str) -> torch.nn.Module:
    return binary_vae() if latent != "bernoulli" else small_vae()


def options_verdict(cls: type[Estimator]) -> Verdict:
    """Declared options accepted, undeclared ones refused with EstimatorError."""
    model = problems(cls, checked_particles(cls))[0].model
    smallest = smallest_particles(cls)
    accepted = [(model, kl, smallest) for kl in cls.kl_modes]
    refused = [(model, kl, smallest) for kl in KL_MODES if kl not in cls.kl_modes]
    refused += [(model, cls.kl_modes[0], k) for k in {0, smallest - 1} if k < cls.min_particles]
    if cls.particles_multiple > 1:
        refused.append((model, cls.kl_modes[0], smallest + 1))
    if cls.max_particles is not None:
        refused.append((model, cls.kl_modes[0], cls.max_particles + cls.particles_multiple))
    refused.append((other_latent_model(cls.latent), cls.kl_modes[0], smallest))
    wrong = []
    for case in accepted:
        try:
            cls(case[0], kl=case[1], n_particles=case[2])
        except EstimatorError as error:
            wrong.append(f"kl={case[1]} K={case[2]} refused: {error}")
    for case in refused:
        try:
            cls(case[0], kl=case[1], n_particles=case[2])
        except EstimatorError:
            continue
        wrong.append(f"{case[0].latent} latents kl={case[1]} K={case[2]} accepted")
    total = len(accepted) + len(refused)
    return Verdict(
        "options",
        "as declared",
        f"{total - len(wrong)}/{total}",
        f"{total}/{total}",
        FAIL if wrong else PASS,
        "; ".join(wrong),
    )


# Purity and draws ---------------------------------------------------------------------------


def state_of(estimator: Estimator) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in estimator.state_dict(keep_vars=True).items()}


def purity_verdict(battery: Battery) -> Verdict:
    """forward(x, noise) twice: equal outputs and gradients, parameters and buffers unchanged."""
    problem = problems(battery.cls, battery.n_particles)[0]
    estimator = battery.build(problem, battery.cls.kl_modes[0])
    noise = estimator.sample_noise(len(problem.x), torch.Generator().manual_seed(battery.seed))
    parameters = list(problem.model.parameters())
    before = state_of(estimator)
    outputs = []
    for _ in range(2):
        out = estimator(problem.x, noise)
        gradients = torch.autograd.grad(out.surrogate, parameters, allow_unused=True)
        outputs.append([out.surrogate.detach(), out.elbo, *(g for g in gradients if g is not None)])
    after = state_of(estimator)
    changed = [name for name in before if not torch.equal(before[name], after[name])]
    differs = not all(torch.equal(a, b) for a, b in zip(*outputs, strict=True))
    problems_found = []
    if changed:
        problems_found.append(f"forward changed {', '.join(changed)}")
    if differs:
        problems_found.append("the same noise gave different outputs")
    return Verdict(
        "purity",
        "state, outputs",
        f"{len(changed)} changed, {'differ' if differs else 'equal'}",
        "0 changed, equal",
        FAIL if problems_found else PASS,
        "; ".join(problems_found),
    )


def vmap_verdict(battery: Battery) -> Verdict:
    """5 draws vmapped and looped from the same noise agree (rtol 1e-10, atol 1e-12)."""
    problem = problems(battery.cls, battery.n_particles)[0]
    estimator = battery.build(problem, battery.cls.kl_modes[0])
    draws = {
        method: gradient_draws(
            estimator, problem.x, 5, torch.Generator().manual_seed(battery.seed), method=method
        )
        for method in ("vmap", "loop")
    }
    worst = max((draws["vmap"][g] - draws["loop"][g]).abs().max().item() for g in draws["vmap"])
    agree = all(
        torch.allclose(draws["vmap"][g], draws["loop"][g], rtol=1e-10, atol=1e-12)
        for g in draws["vmap"]
    )
    return Verdict(
        "vmap = loop", "max |difference|", f"{worst:.2g}", "rtol 1e-10", PASS if agree else FAIL
    )


# Unbiasedness -------------------------------------------------------------------------------


def unbiased_verdict(
    check: str,
    battery: Battery,
    problem: Problem,
    kl: str,
    beta: float,
    family_error: float,
    finite: list[bool],
) -> Verdict:
    """max |z| over all coordinates of R draws against the exact gradient (bench.check.ztest)."""
    estimator = battery.build(problem, kl, beta)
    reference = reference_gradient(problem.model, problem.objective)
    draws = gradient_draws_at_once(estimator, problem.x, battery.n_draws, battery.seed + 2)
    finite.append(all(bool(torch.isfinite(d).all()) for d in draws.values()))
    z = {group: max_z_score(draws[group], ref) for group, ref in reference.items()}
    threshold = threshold_for(reference, family_error)
    group = max(z, key=z.get)
    value = f"{z[group]:.2f} ({group})"
    margin = f"< {threshold:.2f}"
    bias = (draws[group].mean(0) - reference[group]).norm() / reference[group].norm()
    size = f"relative bias |mean - grad| / |grad| = {bias:.3g}"
    if battery.cls.is_biased(battery.n_particles):
        return Verdict(check, "max |z|", value, margin, DECLARED, f"{group}: {size}")
    if z[group] < threshold:
        return Verdict(check, "max |z|", value, margin, PASS)
    detail = f"biased: {group} max |z| = {z[group]:.2f} >= {threshold:.2f}, {size}"
    return Verdict(check, "max |z|", value, margin, FAIL, detail)


# Variance -----------------------------------------------------------------------------------


def equal_evaluation_particles(counterpart: type[Estimator], evaluations: int) -> int | None:
    """The smallest valid K of `counterpart` with as many evaluations of f as `evaluations`."""
    for k in range(max(counterpart.min_particles, 1), evaluations + 1):
        if k % counterpart.particles_multiple == 0 and counterpart.evaluations(k) == evaluations:
            return k
    return None


def variance_verdict(battery: Battery, family_error: float) -> Verdict:
    """tr Σ_A / tr Σ_B, its one-sided upper bound below 1, at equal evaluations of f."""
    cls = battery.cls
    counterpart = REGISTRY[cls.variance_counterpart]
    evaluations = cls.evaluations(battery.n_particles)
    k = equal_evaluation_particles(counterpart, evaluations)
    if k is None:
        raise EstimatorError(f"{counterpart.name} has no K with {evaluations} evaluations of f")
    shared = [kl for kl in cls.kl_modes if kl in counterpart.kl_modes]
    if not shared:
        raise EstimatorError(f"{counterpart.name} shares no KL mode with {cls.name}")
    problem = problems(cls, battery.n_particles)[0]
    estimator = battery.build(problem, shared[0])
    plain = warmed_up(counterpart(problem.model, kl=shared[0], n_particles=k), problem.x, 1)
    ratio = compare(estimator, plain, problem.x, VARIANCE_DRAWS, battery.seed + 3)
    critical = NormalDist().inv_cdf(1 - family_error)
    bound = ratio.upper_bound(critical)
    value = f"{ratio.ratio:.3g} (upper {bound:.3g})"
    detail = "" if bound < 1 else f"not shown less variable: {ratio.describe(critical)}"
    label = f"variance < {counterpart.name} K={k}"
    return Verdict(label, "tr S ratio", value, "upper < 1", PASS if bound < 1 else FAIL, detail)


# Output -------------------------------------------------------------------------------------


def table(name: str, verdicts: list[Verdict]) -> str:
    """The verdicts as a fixed-width table, failures' details below their row."""
    header = ("check", "statistic", "value", "margin", "verdict")
    rows = [(v.check, v.statistic, v.value, v.margin, v.outcome) for v in verdicts]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [name, "  " + "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    for verdict, row in zip(verdicts, rows, strict=True):
        lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
        if verdict.detail:
            lines.append(f"    {verdict.detail}")
    return "\n".join(line.rstrip() for line in lines)


def failed(verdicts: list[Verdict]) -> bool:
    return any(v.outcome == FAIL for v in verdicts)
