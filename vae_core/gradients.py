"""Gradient variance: R independent gradient estimates on one fixed minibatch.

Parameters, buffers and the minibatch stay fixed; only the latent noise is redrawn, so the spread
of the draws is the estimator's own Monte Carlo variance. Draws estimate ∇L itself: an estimator
whose expected encoder gradient is c·∇_φ L (NVIL's variance normalisation) has its encoder draws
divided by c, so that variances compare like with like. Statistics per parameter group
G ∈ {encoder, decoder} (names as in results/runs.csv):

    grad_var_G    = Σ_j Var_r[ĝ_j]              trace of the covariance (unbiased, R − 1)
    grad_sqnorm_G = ‖mean_r ĝ‖²
    snr_G         = mean_j |mean_r ĝ_j| / std_r ĝ_j   (Rainforth et al. 2018), over the j whose
                    spread is more than float rounding: std_j > 1000·eps·|mean_j| (a coordinate
                    that is deterministic but for rounding, e.g. an exact KL gradient plus score
                    terms that cancel, would otherwise add an SNR of ~10⁷ to the mean)

For a biased estimator (one naming a `bias_reference`), R' draws of the unbiased reference give
g_ref ≈ ∇L, and

    grad_bias_G    = ‖ḡ − ḡ_ref‖² − tr Σ̂/R − tr Σ̂_ref/R'   unbiased estimate of ‖E ĝ − ∇L‖²
    grad_bias_se_G = its standard error (coordinates treated as independent)
    grad_mse_G     = grad_var_G + grad_bias_G               E‖ĝ − ∇L‖² of one draw
"""

from __future__ import annotations

import torch
from torch.func import functional_call, grad, vmap

from vae_core.estimators import Estimator
from vae_core.models import PARAMETER_GROUPS

METHODS = ("vmap", "loop")
ROUNDING_SPREAD = 1000  # std below this many eps × |mean| is rounding noise (see snr_G)


def model_parameters(estimator: Estimator) -> dict[str, torch.Tensor]:
    """The model's parameters by their name inside the estimator (baseline networks excluded)."""
    return {f"model.{name}": p for name, p in estimator.model.named_parameters()}


def group_of(estimator: Estimator, name: str) -> str:
    return estimator.model.parameter_group(name.removeprefix("model."))


def gradient_draws(
    estimator: Estimator,
    x: torch.Tensor,
    n_draws: int,
    generator: torch.Generator | None = None,
    method: str = "vmap",
    chunk_size: int | None = 25,
) -> dict[str, torch.Tensor]:
    """R = n_draws gradient estimates of the minibatch-mean ELBO, flattened per parameter group.

    Returns {group: tensor of shape (R, P_group)}. `method='vmap'` computes the draws batched with
    torch.func (chunk_size draws at a time); `method='loop'` runs R separate backward passes.
    Both consume the same noise from `generator` and agree to floating-point rounding.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    if n_draws < 2:
        raise ValueError(f"n_draws must be >= 2 to estimate a variance, got {n_draws}")
    noise = torch.stack([estimator.sample_noise(x.shape[0], generator) for _ in range(n_draws)])
    params = {name: p.detach() for name, p in model_parameters(estimator).items()}
    if method == "vmap":
        per_param = _draws_vmap(estimator, x, noise, params, chunk_size)
    else:
        per_param = _draws_loop(estimator, x, noise, params)
    groups: dict[str, list[torch.Tensor]] = {group: [] for group in PARAMETER_GROUPS}
    for name, draws in per_param.items():
        groups[group_of(estimator, name)].append(draws.reshape(n_draws, -1))
    draws = {group: torch.cat(parts, dim=1) for group, parts in groups.items() if parts}
    draws["encoder"] = draws["encoder"] / estimator.encoder_gradient_scale()
    return draws


def _draws_vmap(
    estimator: Estimator,
    x: torch.Tensor,
    noise: torch.Tensor,
    params: dict[str, torch.Tensor],
    chunk_size: int | None,
) -> dict[str, torch.Tensor]:
    def surrogate(model_params: dict[str, torch.Tensor], eps: torch.Tensor) -> torch.Tensor:
        return functional_call(estimator, model_params, (x, eps), strict=False).surrogate

    return vmap(grad(surrogate), in_dims=(None, 0), chunk_size=chunk_size)(params, noise)


def _draws_loop(
    estimator: Estimator, x: torch.Tensor, noise: torch.Tensor, params: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    names = list(params)
    tensors = list(model_parameters(estimator).values())
    draws: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    for eps in noise:
        grads = torch.autograd.grad(estimator(x, eps).surrogate, tensors, allow_unused=True)
        for name, tensor, g in zip(names, tensors, grads, strict=True):
            draws[name].append(torch.zeros_like(tensor) if g is None else g.detach())
    return {name: torch.stack(gs) for name, gs in draws.items()}


def variance_statistics(draws: torch.Tensor) -> dict[str, float]:
    """grad_var, grad_sqnorm and snr (see module docstring) of draws shaped (R, P)."""
    mean = draws.mean(0)
    std = draws.std(0, unbiased=True)
    informative = std > ROUNDING_SPREAD * torch.finfo(draws.dtype).eps * mean.abs()
    snr = (mean.abs()[informative] / std[informative]).mean() if informative.any() else None
    return {
        "grad_var": draws.var(0, unbiased=True).sum().item(),
        "grad_sqnorm": mean.pow(2).sum().item(),
        "snr": float("nan") if snr is None else snr.item(),
    }


def gradient_moments(
    estimator: Estimator,
    x: torch.Tensor,
    n_draws: int,
    generator: torch.Generator | None = None,
    method: str = "vmap",
    chunk_draws: int = 100,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{group: (mean_r ĝ, Var_r ĝ per coordinate)} of n_draws gradient draws, computed in
    near-equal chunks of about `chunk_draws` (memory independent of n_draws) and combined
    exactly (the pairwise update of Chan, Golub & LeVeque 1979), in float64. The draws consume
    the generator as one `gradient_draws(n_draws)` call would."""
    if n_draws < 2:
        raise ValueError(f"n_draws must be >= 2 to estimate a variance, got {n_draws}")
    n_chunks = min(-(-n_draws // chunk_draws), n_draws // 2)  # chunks of >= 2 draws
    sizes = [n_draws // n_chunks + (i < n_draws % n_chunks) for i in range(n_chunks)]
    count = 0
    moments: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # group → (mean, Σ squared devs)
    for size in sizes:
        chunk = gradient_draws(estimator, x, size, generator, method)
        for group, draws in chunk.items():
            draws = draws.double()
            mean = draws.mean(0)
            squares = (draws - mean).pow(2).sum(0)
            if group in moments:
                old_mean, old_squares = moments[group]
                delta = mean - old_mean
                mean = old_mean + delta * size / (count + size)
                squares = old_squares + squares + delta.pow(2) * count * size / (count + size)
            moments[group] = (mean, squares)
        count += size
    return {group: (mean, squares / (n_draws - 1)) for group, (mean, squares) in moments.items()}


def bias_statistics(
    draws: torch.Tensor,
    reference_mean: torch.Tensor,
    reference_var: torch.Tensor,
    n_reference: int,
) -> dict[str, float]:
    """grad_bias, its standard error grad_bias_se, and grad_mse (see module docstring) of draws
    (R, P) against a reference's per-coordinate mean and variance from n_reference draws.

    With d = ḡ − ḡ_ref and v_j = Var ĝ_j/R + Var g_ref,j/R', E d_j² = b_j² + v_j, so
    Σ_j (d_j² − v̂_j) is unbiased for ‖b‖². Its standard error treats coordinates as independent
    (the covariance is not stored): Var Σ_j d_j² = Σ_j (2 v_j² + 4 b_j² v_j), with Σ_j b_j² v_j
    estimated without bias by Σ_j (d_j² − v_j) v_j (floored at 0).
    """
    draws = draws.double()
    variance = draws.var(0, unbiased=True)
    noise = variance / len(draws) + reference_var / n_reference
    excess = (draws.mean(0) - reference_mean).pow(2) - noise  # unbiased for b_j²
    bias = excess.sum().item()
    weighted_bias = (excess * noise).sum().clamp(min=0)
    se = (2 * noise.pow(2).sum() + 4 * weighted_bias).sqrt().item()
    return {"grad_bias": bias, "grad_bias_se": se, "grad_mse": variance.sum().item() + bias}


def gradient_statistics(
    estimator: Estimator,
    x: torch.Tensor,
    n_draws: int = 100,
    generator: torch.Generator | None = None,
    method: str = "vmap",
    reference: Estimator | None = None,
    n_reference_draws: int = 1000,
) -> dict[str, float]:
    """{'grad_var_encoder': …, 'snr_decoder': …}: variance_statistics for each parameter group,
    and bias_statistics against `reference` (an unbiased estimator of the same gradient)."""
    stats = {}
    draws = gradient_draws(estimator, x, n_draws, generator, method)
    for group, group_draws in draws.items():
        for metric, value in variance_statistics(group_draws).items():
            stats[f"{metric}_{group}"] = value
    if reference is not None:
        moments = gradient_moments(reference, x, n_reference_draws, generator, method)
        for group, (mean, var) in moments.items():
            bias = bias_statistics(draws[group], mean, var, n_reference_draws)
            stats.update({f"{metric}_{group}": value for metric, value in bias.items()})
    return stats
