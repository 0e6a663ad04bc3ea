"""The unbiasedness z-test: R gradient draws against an exact gradient, Bonferroni over coordinates.

For each coordinate j the mean of R independent draws has standard error s_j/√R, so under
E[ĝ] = ∇L, z_j = (ḡ_j − ∇_j L)/(s_j/√R) ≈ N(0, 1) (central limit theorem). The statistic is
max_j |z_j|; Bonferroni's union bound makes P(max_j |z_j| > Φ⁻¹(1 − α/(2P))) ≤ α whatever the
correlation between coordinates (they share samples, so they are correlated: the bound needs no
independence, it is only conservative).
"""

from __future__ import annotations

import math
from statistics import NormalDist

import torch

from vae_core.estimators import Estimator
from vae_core.gradients import gradient_draws

N_DRAWS = 20_000
FAMILY_ERROR = 1e-3  # family-wise false-alarm rate of one Bonferroni z-test


def max_z_score(draws: torch.Tensor, reference: torch.Tensor) -> float:
    """max_j |mean_j − ref_j| / (std_j/√R); coordinates with zero spread must match exactly
    (|difference| ≤ 1e-10), else the answer is infinite."""
    mean, std = draws.mean(0), draws.std(0)
    constant = std == 0
    if not torch.allclose(mean[constant], reference[constant], rtol=0, atol=1e-10):
        return math.inf
    if constant.all():
        return 0.0
    z = (mean - reference).abs()[~constant] / (std[~constant] / math.sqrt(len(draws)))
    return float(z.max())


def bonferroni_threshold(n_coordinates: int, family_error: float = FAMILY_ERROR) -> float:
    """Two-sided critical value of max |z| over n_coordinates at family-wise `family_error`."""
    return NormalDist().inv_cdf(1 - family_error / (2 * n_coordinates))


def threshold_for(reference: dict[str, torch.Tensor], family_error: float = FAMILY_ERROR) -> float:
    """The Bonferroni threshold over every coordinate of `reference`."""
    return bonferroni_threshold(sum(r.numel() for r in reference.values()), family_error)


def gradient_draws_at_once(
    estimator: Estimator, x: torch.Tensor, n_draws: int, seed: int
) -> dict[str, torch.Tensor]:
    """R = n_draws draws in one vmap from `seed` (the models here are tiny: ~1 s for 20,000
    draws, against ~60 s in chunks of 25)."""
    generator = torch.Generator().manual_seed(seed)
    return gradient_draws(estimator, x, n_draws, generator, chunk_size=None)


def z_scores(
    estimator: Estimator,
    x: torch.Tensor,
    reference: dict[str, torch.Tensor],
    seed: int,
    n_draws: int = N_DRAWS,
) -> dict[str, float]:
    """max |z| per parameter group of R = n_draws draws against `reference`."""
    draws = gradient_draws_at_once(estimator, x, n_draws, seed)
    return {group: max_z_score(draws[group], ref) for group, ref in reference.items()}
