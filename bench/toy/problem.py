"""The toy problem F(μ, σ) = E_{x ~ N(μ, σ²)} f(x; k) for three costs, and its exact gradient."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

COSTS: tuple[str, ...] = ("square", "exp", "cos")
PARAMS: tuple[str, ...] = ("mu", "sigma")


@dataclass(frozen=True)
class ToyProblem:
    """F(μ, σ) = E_{x ~ N(μ, σ²)} f(x; k) for one of `COSTS`; validates its inputs."""

    cost: str
    k: float
    mu: float
    sigma: float

    def __post_init__(self) -> None:
        if self.cost not in COSTS:
            raise ValueError(f"unknown cost {self.cost!r}; valid costs: {', '.join(COSTS)}")
        for name in ("k", "mu", "sigma"):
            value = getattr(self, name)
            if not isinstance(value, (int, float, np.integer, np.floating)) or isinstance(
                value, bool
            ):
                raise ValueError(f"{name} must be a real number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value!r}")
            object.__setattr__(self, name, float(value))
        if self.sigma <= 0:
            raise ValueError(f"sigma must be > 0, got {self.sigma!r}")
        if self.cost == "exp" and self.k < 0:
            # exp(+|k| x²) has no finite fourth moment under N(μ, σ²) once 8|k|σ² ≥ 1.
            raise ValueError(f"k must be >= 0 for the exp cost, got {self.k!r}")

    def f(self, x: np.ndarray) -> np.ndarray:
        """The cost f(x; k)."""
        if self.cost == "square":
            return (x - self.k) ** 2
        if self.cost == "exp":
            return np.exp(-self.k * x**2)
        return np.cos(self.k * x)

    def df(self, x: np.ndarray) -> np.ndarray:
        """The derivative f'(x; k), used by the pathwise estimator."""
        if self.cost == "square":
            return 2.0 * (x - self.k)
        if self.cost == "exp":
            return -2.0 * self.k * x * np.exp(-self.k * x**2)
        return -self.k * np.sin(self.k * x)

    @property
    def frequency(self) -> float:
        """How fast f(μ + σz) varies in the standard noise z; sets the quadrature's panel width."""
        if self.cost == "cos":
            return abs(self.k) * self.sigma
        if self.cost == "exp":
            return self.sigma * math.sqrt(2.0 * self.k)  # exp(−kσ²z²) has width 1/(σ√(2k))
        return 0.0


def true_gradient(cost: str, k: float, mu: float, sigma: float) -> tuple[float, float]:
    """Closed-form (∂F/∂μ, ∂F/∂σ) of F = E_{N(μ, σ²)} f."""
    p = ToyProblem(cost, k, mu, sigma)
    k, mu, sigma = p.k, p.mu, p.sigma
    if p.cost == "square":
        # F = (μ − k)² + σ².
        return 2.0 * (mu - k), 2.0 * sigma
    if p.cost == "exp":
        # F = exp(−kμ²/s)/√s with s = 1 + 2kσ² (a Gaussian integral); ds/dσ = 4kσ and
        # ∂ log F/∂s = kμ²/s² − 1/(2s).
        s = 1.0 + 2.0 * k * sigma**2
        value = math.exp(-k * mu**2 / s) / math.sqrt(s)
        return -2.0 * k * mu / s * value, (k * mu**2 / s**2 - 0.5 / s) * 4.0 * k * sigma * value
    # F = Re E[exp(ikx)] = cos(kμ) exp(−k²σ²/2), the Gaussian characteristic function.
    damping = math.exp(-0.5 * (k * sigma) ** 2)
    return -k * math.sin(k * mu) * damping, -(k**2) * sigma * math.cos(k * mu) * damping
