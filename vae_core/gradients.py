"""Gradient variance: R independent gradient estimates on one fixed minibatch.

Parameters, buffers and the minibatch stay fixed; only the latent noise is redrawn, so the spread
of the draws is the estimator's own Monte Carlo variance. Draws estimate ∇L itself: an estimator
whose expected encoder gradient is c·∇_φ L (NVIL's variance normalisation) has its encoder draws
divided by c, so that variances compare like with like. Statistics per parameter group
G ∈ {encoder, decoder} (names as in results/runs.csv):

    grad_var_G     = tr S = Σ_j Var_r[ĝ_j]     trace of the covariance (unbiased, R − 1)
    grad_var_se_G  = its standard error (jackknife over draws; variance_standard_error)
    grad_sqnorm_G  = ‖mean_r ĝ‖²
    snr_G          = mean_j |mean_r ĝ_j| / std_r ĝ_j   (Rainforth et al. 2018), over the j whose
                     spread is more than float rounding: std_j > 1000·eps·|mean_j| (a coordinate
                     that is deterministic but for rounding, e.g. an exact KL gradient plus score
                     terms that cancel, would otherwise add an SNR of ~10⁷ to the mean)
    snr_floor_G    = what snr_G averages to when the true gradient is zero: E|t_{R−1}|/√R,
                     ≈ √(2/(πR)) = 0.080 at R = 100 (snr_floor)
    snr_floor_sd_G = the spread of snr_G around that floor, from the draws' own correlations
                     (snr_floor_sd); an SNR below floor + 2 sd cannot be told from no signal

For a biased estimator (one naming a `bias_reference`), R' draws of the unbiased reference give
h̄ ≈ ∇L, and (BiasAccumulator.statistics)

    grad_bias_G    = ‖ḡ − h̄‖² − tr S/R − tr S_ref/R'   unbiased estimate of ‖E ĝ − ∇L‖²
    grad_bias_se_G = its standard error, from the full covariances of both sets of draws
    grad_mse_G     = grad_var_G + grad_bias_G            E‖ĝ − ∇L‖² of one draw

Every standard error here is checked against the spread of repeated measurements in
tests/test_gradient_statistics.py.
"""

from __future__ import annotations

import math

import torch
from torch.func import functional_call, grad, vmap

from vae_core.estimators import Estimator
from vae_core.models import PARAMETER_GROUPS

METHODS = ("vmap", "loop")
ROUNDING_SPREAD = 1000  # std below this many eps × |mean| is rounding noise (see snr_G)
SNR_SAMPLE_COORDINATES = 1000  # coordinates sampled for the correlations of snr_floor_sd_G


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
    groups = {name: group_of(estimator, name) for name in params}
    if method == "vmap":
        per_param = _draws_vmap(estimator, x, noise, params, chunk_size)
        draws = {
            group: torch.cat(
                [per_param[name].reshape(n_draws, -1) for name in params if groups[name] == group],
                dim=1,
            )
            for group in PARAMETER_GROUPS
            if group in groups.values()
        }
    else:
        draws = _draws_loop(estimator, x, noise, groups)
    scale = estimator.encoder_gradient_scale()
    if scale != 1.0:
        draws["encoder"].div_(scale)
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
    estimator: Estimator, x: torch.Tensor, noise: torch.Tensor, groups: dict[str, str]
) -> dict[str, torch.Tensor]:
    """One backward pass per draw, each gradient copied once, straight into its row of its
    group's (R, P_group) buffer (parameters in `groups`' order, as the vmap path concatenates
    them; no per-parameter stack and concatenation: 5% of a default-suite run, measured)."""
    tensors = list(model_parameters(estimator).values())
    columns: list[tuple[str, int, int]] = []  # each parameter's group and column range in it
    sizes: dict[str, int] = {}
    for name, tensor in zip(groups, tensors, strict=True):
        start = sizes.get(groups[name], 0)
        sizes[groups[name]] = start + tensor.numel()
        columns.append((groups[name], start, sizes[groups[name]]))
    draws = {
        group: tensors[0].new_empty(noise.shape[0], sizes[group])
        for group in PARAMETER_GROUPS
        if group in sizes
    }
    for row, eps in enumerate(noise):
        grads = torch.autograd.grad(estimator(x, eps).surrogate, tensors, allow_unused=True)
        for (group, start, end), g in zip(columns, grads, strict=True):
            target = draws[group][row, start:end]
            if g is None:
                target.zero_()
            else:
                target.copy_(g.reshape(-1))
    return draws


def unbiased_trace_of_square(gram: torch.Tensor) -> torch.Tensor:
    """Unbiased estimate of tr(Σ²) from the Gram matrix K = X_c X_cᵀ of n ≥ 4 centred draws
    (Himeno & Yamada 2014; no normality assumed):

        (n−1) / (n(n−2)(n−3)) · [(n−1)(n−2) tr S² + (tr S)² − n Q],

    S = K/(n−1) in the draws' own space (tr S = tr K/(n−1), tr S² = ‖K‖²_F/(n−1)²) and
    Q = Σ_r K_rr² / (n−1); batched over leading dimensions. The plug-in tr S² overstates tr Σ²
    by about (tr Σ)²/n, which for gradients (P ≫ R coordinates) can be many times tr Σ²."""
    n = gram.shape[-1]
    if n < 4:
        raise ValueError(f"an unbiased tr(Σ²) needs at least 4 draws, got {n}")
    diagonal = gram.diagonal(dim1=-2, dim2=-1)
    trace = diagonal.sum(-1) / (n - 1)
    trace_square = gram.pow(2).sum((-2, -1)) / (n - 1) ** 2
    fourth = diagonal.pow(2).sum(-1) / (n - 1)
    scale = (n - 1) / (n * (n - 2) * (n - 3))
    return scale * ((n - 1) * (n - 2) * trace_square + trace**2 - n * fourth)


def variance_standard_error(squared_deviations: torch.Tensor) -> float:
    """Standard error of grad_var = tr S from its own R draws, given a_r = ‖ĝ_r − ḡ‖²: the
    delete-one jackknife of tr S = Σ_r a_r / (R−1) (whole vectors, so correlated coordinates are
    accounted for). Leaving out draw r gives tr S₍₋ᵣ₎ = ((R−1) tr S − R a_r/(R−1)) / (R−2), so

        se² = R / ((R−1)(R−2)²) · Σ_r (a_r − ā)²   ≈ Var(‖ĝ − E ĝ‖²) / R."""
    a = squared_deviations.double()
    n = len(a)
    if n < 3:
        raise ValueError(f"a jackknife standard error needs at least 3 draws, got {n}")
    return math.sqrt(n / ((n - 1) * (n - 2) ** 2) * (a - a.mean()).pow(2).sum().item())


def snr_floor(n_draws: int) -> float:
    """E|mean_r ĝ_j| / std_r ĝ_j for a zero-mean Gaussian coordinate: E|t_ν| / √R with
    t_ν Student's t, ν = R − 1, and E|t_ν| = 2√ν Γ((ν+1)/2) / (√π (ν−1) Γ(ν/2)) → √(2/π)."""
    nu = n_draws - 1
    log_ratio = math.lgamma((nu + 1) / 2) - math.lgamma(nu / 2)
    return (
        2
        * math.sqrt(nu)
        * math.exp(log_ratio)
        / (math.sqrt(math.pi) * (nu - 1))
        / math.sqrt(n_draws)
    )


def snr_floor_sd(
    draws: torch.Tensor,
    columns: torch.Tensor | None = None,
    sample_size: int = SNR_SAMPLE_COORDINATES,
) -> float:
    """Standard deviation of the SNR statistic over the P informative coordinates when the true
    gradient is zero, from the draws' own correlations (coordinates share samples, so they are
    far from independent). With t_j = √R ḡ_j/s_j ≈ N(0, 1) and Cov(|t_j|, |t_k|) = c(ρ_jk),
    c(ρ) = (2/π)(√(1−ρ²) + ρ arcsin ρ − 1) ∈ [ρ²/π, (1−2/π)ρ²]:

        Var(snr) = (1/(R P²)) Σ_jk c(ρ_jk) ≈ (1/R) [Var|t_ν| / P + (1 − 1/P) ρ²‾ / π],

    with ρ²‾ the mean squared correlation between distinct coordinates, estimated without bias
    (unbiased_trace_of_square of the standardised draws) on a fixed random sample of the
    coordinates `columns` (default: all). Using ρ²/π for c(ρ) understates the sd by at most 7%
    (all |ρ| = 1)."""
    n = draws.shape[0]
    if columns is None:
        columns = torch.arange(draws.shape[1], device=draws.device)
    n_coordinates = len(columns)
    nu = n - 1
    var_abs_t = nu / (nu - 2) - (snr_floor(n) * math.sqrt(n)) ** 2
    if n_coordinates > sample_size:
        chooser = torch.Generator().manual_seed(0)
        chosen = torch.randperm(n_coordinates, generator=chooser)[:sample_size]
        columns = columns[chosen.to(columns.device)]
    sample = draws[:, columns].double()
    standardised = (sample - sample.mean(0)) / sample.std(0, unbiased=True)
    m = standardised.shape[1]
    mean_square_correlation = 0.0
    if m > 1:
        correlation_square = unbiased_trace_of_square(standardised @ standardised.T)
        mean_square_correlation = max((correlation_square.item() - m) / (m * (m - 1)), 0.0)
    diagonal = var_abs_t / n_coordinates
    off_diagonal = (1 - 1 / n_coordinates) * mean_square_correlation / math.pi
    return math.sqrt((diagonal + off_diagonal) / n)


def variance_statistics(draws: torch.Tensor) -> dict[str, float]:
    """grad_var and its standard error, grad_sqnorm, snr with its noise floor (see module
    docstring) of draws shaped (R, P)."""
    mean = draws.mean(0)
    squares = (draws - mean).square_()  # one pass serves the variance and its standard error
    variance = squares.sum(0) / (len(draws) - 1)
    std = variance.sqrt()
    informative = std > ROUNDING_SPREAD * torch.finfo(draws.dtype).eps * mean.abs()
    stats = {
        "grad_var": variance.sum().item(),
        # ‖ĝ_r − ḡ‖² summed in the draws' dtype (torch's cascade sum, relative error ~1e-7),
        # then the jackknife in float64: a float64 accumulation took half this function's time.
        "grad_var_se": variance_standard_error(squares.sum(1)),
        "grad_sqnorm": mean.pow(2).sum().item(),
        "snr": float("nan"),
        "snr_floor": snr_floor(len(draws)),
        "snr_floor_sd": float("nan"),
    }
    if informative.any():
        stats["snr"] = (mean.abs()[informative] / std[informative]).mean().item()
        stats["snr_floor_sd"] = snr_floor_sd(draws, informative.nonzero().squeeze(1))
    return stats


class BiasAccumulator:
    """The bias of R ≥ 4 draws ĝ (in memory) against R' draws h of an unbiased reference,
    streamed in chunks of m_c ≥ 4 draws (memory independent of R'); see `statistics`."""

    def __init__(self, draws: torch.Tensor) -> None:
        if draws.shape[0] < 4:
            raise ValueError(f"the bias needs at least 4 estimator draws, got {draws.shape[0]}")
        draws = draws.double()
        self.mean = draws.mean(0)
        self.centred = draws - self.mean  # the only copy of the draws kept
        self.reference_mean = torch.zeros_like(self.mean)
        self.reference_count = 0
        self.reference_squares = 0.0  # Σ_r ‖h_r − h̄‖² over the chunks so far
        self.trace_squares: list[float] = []  # unbiased tr Σ_h² from each chunk
        self.cross: list[float] = []  # unbiased tr(Σ_g Σ_h) from each chunk
        # (d_cᵀ S_c d_c, draws before chunk c) for c ≥ 2, d_c = ḡ − (mean before chunk c)
        self.forms: list[tuple[float, int]] = []

    def add(self, chunk: torch.Tensor) -> None:
        chunk = chunk.double()
        size = chunk.shape[0]
        if size < 4:
            raise ValueError(f"reference chunks need at least 4 draws, got {size}")
        chunk_mean = chunk.mean(0)
        centred = chunk - chunk_mean
        gram = centred @ centred.T
        self.trace_squares.append(unbiased_trace_of_square(gram).item())
        n = self.centred.shape[0]
        self.cross.append((self.centred @ centred.T).pow(2).sum().item() / ((n - 1) * (size - 1)))
        count = self.reference_count
        if count:
            d = self.mean - self.reference_mean  # independent of this chunk
            form = (centred @ d).pow(2).sum().item() / (size - 1)
            self.forms.append((form, count))
        delta = chunk_mean - self.reference_mean
        self.reference_squares += gram.trace().item() + delta.pow(2).sum().item() * count * size / (
            count + size
        )
        self.reference_mean = self.reference_mean + delta * size / (count + size)
        self.reference_count = count + size

    def statistics(self) -> dict[str, float]:
        """grad_bias, grad_bias_se and grad_mse; with d = ḡ − h̄,

            grad_bias = ‖d‖² − tr S_g/R − tr S_h/R'        (unbiased for ‖b‖², b = E ĝ − ∇L)

        is a sum of U-statistics, so for any distribution of the draws, exactly,

            Var = 4 bᵀΣ_g b/R + 4 bᵀΣ_h b/R'
                  + 2 tr Σ_g²/(R(R−1)) + 2 tr Σ_h²/(R'(R'−1)) + 4 tr(Σ_g Σ_h)/(R R').

        Every term uses the full covariances, never coordinates treated as independent. The
        second-order terms are estimated without bias: tr Σ² from the Gram matrices of the centred
        draws (unbiased_trace_of_square; R×R for ĝ, per chunk for h, averaged, each floored at
        0); tr(Σ_g Σ_h) as ‖G_c H_cᵀ‖²_F/((R−1)(m_c−1)) per chunk, averaged (a sum of squares).
        At b = 0 they are the whole variance, and they are > 0 whenever both sets of draws vary.

        The first-order terms F = 4 bᵀΣ_g b/R + 4 bᵀΣ_h b/R' are estimated without bias from
        quadratic forms in d, less their noise: E dᵀΣd = bᵀΣb + tr(Σ Cov d), so

            bᵀΣ_g b ≈ dᵀ S_g d − tr Σ_g²/R − tr(Σ_g Σ_h)/R'            (S_g from all R draws)
            bᵀΣ_h b ≈ d_cᵀ S_c d_c − tr(Σ_g Σ_h)/R − tr Σ_h²/n_c       (chunk c, c ≥ 2)

        where d_c = ḡ − (mean of the n_c reference draws before chunk c) is independent of chunk
        c's scatter S_c; the chunks' estimates are averaged with weights n_c². S_g and ḡ share
        draws, so the ĝ side is unbiased up to third-moment terms of order 1/R². Since F ≥ 0, the
        estimate is max(F̂, 0) (the positive part, closer to F than F̂ for every draw); the
        variance is never below the second-order terms, so the SE is > 0 whenever the draws vary.
        Where b ≈ 0 the positive part makes the SE conservative, by the mean of F̂'s positive
        noise. Over 80 repeats at nonlinear200's trained state (tests/test_gradient_statistics.py
        checks it by repetition) spread² ÷ mean SE² was 1.10 for gumbel's biased encoder and 0.68
        for st_gumbel's unbiased decoder (b = 0). The former estimate ‖b‖² · (dᵀS d/‖d‖²) took
        the direction of b from d: where d's noise is as large as b (‖d‖² ≈ 2‖b‖² there), it
        missed half of F and gave 1.92 for that encoder, an SE 28% too small."""
        n_chunks = len(self.cross)
        if n_chunks < 2:
            raise ValueError(f"the bias needs at least 2 reference chunks, got {n_chunks}")
        n, n_ref = self.centred.shape[0], self.reference_count
        trace_g = self.centred.pow(2).sum().item() / (n - 1)
        trace_h = self.reference_squares / (n_ref - 1)
        d = self.mean - self.reference_mean
        squared_distance = d.pow(2).sum().item()
        bias = squared_distance - trace_g / n - trace_h / n_ref

        trace_square_g = max(unbiased_trace_of_square(self.centred @ self.centred.T).item(), 0.0)
        trace_square_h = max(sum(self.trace_squares) / n_chunks, 0.0)
        cross = sum(self.cross) / n_chunks
        form_g = (self.centred @ d).pow(2).sum().item() / (n - 1)  # dᵀ S_g d
        quadratic_g = form_g - trace_square_g / n - cross / n_ref
        weights = [before**2 for _, before in self.forms]
        quadratic_h = sum(
            w * (form - cross / n - trace_square_h / before)
            for w, (form, before) in zip(weights, self.forms, strict=True)
        ) / sum(weights)
        first_order = max(4 * quadratic_g / n + 4 * quadratic_h / n_ref, 0.0)
        variance = (
            first_order
            + 2 * trace_square_g / (n * (n - 1))
            + 2 * trace_square_h / (n_ref * (n_ref - 1))
            + 4 * cross / (n * n_ref)
        )
        se = math.sqrt(variance)
        return {"grad_bias": bias, "grad_bias_se": se, "grad_mse": trace_g + bias}


def near_equal_chunks(n_draws: int, chunk_draws: int, smallest: int) -> list[int]:
    """Sizes of near-equal chunks of about `chunk_draws` (at least `smallest`) summing to
    n_draws."""
    n_chunks = max(min(-(-n_draws // chunk_draws), n_draws // smallest), 1)
    return [n_draws // n_chunks + (i < n_draws % n_chunks) for i in range(n_chunks)]


def bias_statistics(
    estimator_draws: dict[str, torch.Tensor],
    reference: Estimator,
    x: torch.Tensor,
    n_reference_draws: int,
    generator: torch.Generator | None = None,
    method: str = "vmap",
    chunk_draws: int = 25,
) -> dict[str, dict[str, float]]:
    """{group: BiasAccumulator.statistics()} of the estimator's draws against n_reference_draws
    draws of `reference` on the same minibatch, drawn in near-equal chunks of about
    `chunk_draws` (each chunk's scatter estimates Σ_h in the standard error, so C = R'/chunk_draws
    should be tens). The draws consume the generator as one gradient_draws(R') call would."""
    sizes = near_equal_chunks(n_reference_draws, min(chunk_draws, n_reference_draws // 2), 4)
    if len(sizes) < 2:
        raise ValueError(f"n_reference_draws must be >= 8, got {n_reference_draws}")
    accumulators = {group: BiasAccumulator(draws) for group, draws in estimator_draws.items()}
    for size in sizes:
        for group, chunk in gradient_draws(reference, x, size, generator, method).items():
            accumulators[group].add(chunk)
    return {group: accumulator.statistics() for group, accumulator in accumulators.items()}


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
        bias = bias_statistics(draws, reference, x, n_reference_draws, generator, method)
        for group, group_stats in bias.items():
            stats.update({f"{metric}_{group}": value for metric, value in group_stats.items()})
    return stats
