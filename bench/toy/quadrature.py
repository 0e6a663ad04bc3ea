"""Expectations over the standard noise by composite Gauss-Legendre quadrature on its truncated
support, times its density (see the package docstring for the resolution and its checks)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np

from bench.toy.problem import ToyProblem

_TRUNCATION = 12.0  # P(|ε| > 12) ≈ 2e-33; Maxwell and Rayleigh tails are as light.
_NODES_PER_PANEL = 20  # exact for polynomials of degree 39 on each panel
_PHASE_PER_PANEL = 8.0  # radians of the fastest integrand (frequency 4 × p.frequency) per panel
_BLOCK_SIZE = 1 << 20  # quadrature points evaluated at once (bounds memory for the 2-D rule)


def _gauss_legendre(a: float, b: float, n_panels: int) -> tuple[np.ndarray, np.ndarray]:
    """Composite Gauss-Legendre nodes and weights on [a, b] with `n_panels` equal panels."""
    x, w = np.polynomial.legendre.leggauss(_NODES_PER_PANEL)
    edges = np.linspace(a, b, n_panels + 1)
    half = 0.5 * np.diff(edges)[:, None]
    nodes = (0.5 * (edges[:-1] + edges[1:]))[:, None] + half * x
    return nodes.ravel(), (half * w).ravel()


def _panels(length: float, frequency: float) -> int:
    """Panels for an interval so each spans at most _PHASE_PER_PANEL radians of cos(4·freq·z)."""
    return max(1, math.ceil(4.0 * max(frequency, 1.0) * length / _PHASE_PER_PANEL))


def quadrature_blocks(
    kind: str, frequency: float
) -> Iterator[tuple[tuple[np.ndarray, ...], np.ndarray]]:
    """Nodes and weights (summing to 1) for the noise `kind`, in blocks of ≤ _BLOCK_SIZE points."""
    L = _TRUNCATION
    if kind == "rayleigh":
        w, weights = _gauss_legendre(0.0, L, _panels(L, frequency))
        yield (w,), weights * w * np.exp(-0.5 * w**2)
        return
    z, weights = _gauss_legendre(-L, L, _panels(2 * L, frequency))
    normal_density = np.exp(-0.5 * z**2) / math.sqrt(2 * math.pi)
    if kind == "normal":
        yield (z,), weights * normal_density
        return
    # (M, U): M ~ double-sided Maxwell, density m² φ(m); U ~ Uniform(0, 1). f(μ + σuM) has
    # frequency up to |M|·frequency ≤ L·frequency along u.
    u, u_weights = _gauss_legendre(0.0, 1.0, _panels(1.0, L * frequency))
    m_weights = weights * z**2 * normal_density
    rows = max(1, _BLOCK_SIZE // u.size)
    for start in range(0, z.size, rows):
        block = slice(start, start + rows)
        yield (z[block, None], u[None, :]), m_weights[block, None] * u_weights[None, :]


def expectation(p: ToyProblem, kind: str, function: Callable[..., np.ndarray]) -> float:
    """E[function(*noise)] by quadrature, for the noise `kind` and resolution of problem `p`."""
    return math.fsum(
        float(np.sum(w * function(*nodes))) for nodes, w in quadrature_blocks(kind, p.frequency)
    )
