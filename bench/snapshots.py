"""Training snapshots: a long run killed part-way continues where it stopped.

While a configuration trains, every SNAPSHOT_EVERY_S seconds of wall time (at the next check
step, every CHECK_EVERY steps) its process saves what the rest of the run needs: the estimator's
parameters and buffers, the optimiser's state, the training generator's state and the minibatch
stream's position, the rows measured so far, the training seconds and the states kept for the
shared-parameter pass. It goes to DIR/states/snapshots/<configuration>.pt, written whole (tmp,
then replace). `run --resume` continues the configuration from it: the rows are those of an
uninterrupted run, timings aside (tests/test_snapshots.py); a run without --resume deletes the
directory's snapshots first. The driver deletes a snapshot once its configuration's rows are in
runs.csv. The driver or a local pool worker writes it, on the
results' file system; Ray tasks save none (their nodes need not share one).

A snapshot that cannot be read, or was saved for another configuration, is reported on stderr
and not used: the configuration trains from step 0.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from bench.results import state_file

if TYPE_CHECKING:
    from bench.suites import RunConfig

SNAPSHOT_EVERY_S = 600.0
FOLDER = Path("states") / "snapshots"  # under the results directory

Snapshot = dict[str, Any]  # the keys of `Snapshots.save`'s docstring


class Snapshots:
    """The snapshots of one results directory's runs on `device` (a device type)."""

    def __init__(self, out_dir: Path, device: str, every_s: float = SNAPSHOT_EVERY_S) -> None:
        self.folder, self.device, self.every_s = out_dir / FOLDER, device, every_s

    def path(self, config: RunConfig) -> Path:
        return state_file(self.folder, config, self.device)

    def timer(self) -> SnapshotTimer:
        return SnapshotTimer(self.every_s)

    def save(self, config: RunConfig, snapshot: Snapshot) -> None:
        """Write `snapshot` (label, step, estimator, optimizer, generator, stream, rows,
        train_seconds, states, auxiliary_states) for `config`, whole."""
        path = self.path(config)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".pt.tmp")
        torch.save({**snapshot, "label": config.label()}, tmp)
        os.replace(tmp, path)

    def load(self, config: RunConfig) -> Snapshot | None:
        """`config`'s snapshot, or None when there is none or it cannot be used; either way
        said on stderr."""
        path = self.path(config)
        if not path.is_file():
            return None
        try:
            snapshot = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # a torn or foreign file: never used
            print(f"{path}: unreadable snapshot ({err}); training from step 0", file=sys.stderr)
            return None
        if not isinstance(snapshot, dict) or snapshot.get("label") != config.label():
            print(f"{path}: a snapshot of another run; training from step 0", file=sys.stderr)
            return None
        print(f"{config.label()}: continuing from step {snapshot['step']}", file=sys.stderr)
        return snapshot

    def discard(self, config: RunConfig) -> None:
        self.path(config).unlink(missing_ok=True)

    def discard_all(self) -> None:
        """Every snapshot of the directory (a run without --resume starts each configuration
        afresh)."""
        for path in self.folder.glob("*.pt*"):
            path.unlink(missing_ok=True)


class SnapshotTimer:
    """When a run's next snapshot is due: `every_s` seconds after its start or its last one."""

    def __init__(self, every_s: float) -> None:
        self.every_s, self.last = every_s, time.monotonic()

    def due(self) -> bool:
        return time.monotonic() - self.last >= self.every_s

    def reset(self) -> None:
        self.last = time.monotonic()
