"""Randomised quasi-Monte Carlo (RQMC) reparameterisation (Buchholz, Wenzel & Mandt 2018): the
pathwise estimators with the K noise vectors of each example taken from a scrambled Sobol
sequence mapped through the normal inverse CDF (`vae_core.quasirandom`) instead of K i.i.d.
draws of N(0, I).

Each ε_k is still exactly N(0, I), so every average over the K samples has the same
expectation as with i.i.d. draws: `reparam_rqmc`, whose gradient is such an average, is unbiased
for ∇ELBO. The IWAE bound is not an average (its log is taken after averaging the weights), so
`iwae_rqmc` estimates the gradient of a different bound and is biased for ∇L_K (its docstring);
DReG's identity needs each z_k to follow q given the others, which stratified points do not, so
no RQMC DReG is offered. The K points of an
example are stratified rather than independent; for integrands smooth in ε the variance of their
average falls faster than 1/K (O(K^(−1−2/D+δ)) for scrambled nets, Owen 1997, against 1/K). At
K = 1 a scrambled point is one uniform draw: RQMC is plain Monte Carlo.
"""

from __future__ import annotations

import torch

from vae_core.estimators.base import Estimator, register
from vae_core.estimators.multisample import IWAE
from vae_core.estimators.pathwise import Reparam
from vae_core.quasirandom import scrambled_sobol_normal


class ScrambledSobolNoise(Estimator):
    """Mixin: `sample_noise` gives K scrambled Sobol points per example, mapped to N(0, I);
    the estimator's `forward` is its Monte Carlo counterpart's, unchanged."""

    sweeps_particles = True  # the point set, and with it the variance, changes with K

    def sample_noise(
        self, batch_size: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        reference = next(self.model.parameters())
        return scrambled_sobol_normal(
            self.n_particles,
            batch_size,
            self.model.latent_dim,
            generator,
            reference.device,
            reference.dtype,
        )


@register("reparam_rqmc")
class ReparamRQMC(ScrambledSobolNoise, Reparam):
    """`reparam` averaged over K scrambled Sobol points per example:
    ∇_φ L ≈ (1/K) Σ_k ∇_φ f(μ + σ Φ⁻¹(u_k)) − ∇_φ KL, unbiased for ∇ELBO."""

    summary = "pathwise gradient, K scrambled-Sobol (RQMC) samples (Buchholz et al. 2018)"
    monte_carlo_counterpart = "reparam"


@register("iwae_rqmc")
class IWAERQMC(ScrambledSobolNoise, IWAE):
    """`iwae` with the K samples of the bound from scrambled Sobol points. BIASED for ∇L_K at
    K > 1: each w_k is still unbiased for p(x), but the log of their average is not linear in
    the samples, so E[log (1/K) Σ_k w_k] over the stratified points is another bound,
    L_K^RQMC (≤ log p(x) by Jensen; tighter than L_K when the average varies less), and this is
    its pathwise gradient. The harness measures the bias against ∇L_K (dreg's draws, as for
    iwae_stl); tests/test_quasirandom.py detects it."""

    summary = "IWAE bound on K scrambled-Sobol (RQMC) samples; BIASED for grad L_K when K>1"
    monte_carlo_counterpart = "iwae"
    bias_reference = "dreg"

    @classmethod
    def is_biased(cls, n_particles: int) -> bool:
        return n_particles > 1  # one scrambled point is one uniform draw: iwae at K = 1
