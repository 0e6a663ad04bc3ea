"""Every timed figure of the suite goes through here: warm-up, repeats, CUDA synchronisation."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from typing import TypeVar

import torch

K = TypeVar("K")


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels so the clock reads finished work (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(
    fn: Callable[[], object], device: torch.device, repeats: int = 20, warmup: int = 5
) -> list[float]:
    """Seconds of each of `repeats` calls of `fn`, after `warmup` untimed calls."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats}, {warmup}")
    for _ in range(warmup):
        fn()
    synchronize(device)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    return seconds


def interleaved_medians(
    fns: Mapping[K, Callable[[], object]],
    device: torch.device,
    repeats: int = 20,
    rounds: int = 5,
    warmup: int = 5,
) -> dict[K, float]:
    """Median seconds per call of each of `fns`, from `repeats` timed calls each (at least).

    After `warmup` untimed calls of each, the timed calls are spread over `rounds` rounds, each
    visiting every fn in turn (one untimed call to refill caches, then its share): a slow spell
    of a shared machine then hits all of them alike, not only those timed during it.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    rounds = max(1, min(rounds, repeats))
    per_round = -(-repeats // rounds)
    seconds: dict[K, list[float]] = {key: [] for key in fns}
    for _ in range(rounds):
        for key, fn in fns.items():
            seconds[key] += time_calls(fn, device, per_round, warmup=1)
    return {key: statistics.median(values) for key, values in seconds.items()}


class Stopwatch:
    """Accumulates synchronised wall time over `with stopwatch:` blocks (e.g. training only)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds = 0.0
        self._start = 0.0

    def __enter__(self) -> Stopwatch:
        synchronize(self.device)
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        synchronize(self.device)
        self.seconds += time.perf_counter() - self._start
