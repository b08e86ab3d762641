"""Tests of metacl.data.vision on small stand-in files, and on the real Fashion-MNIST
that the Debian package dataset-fashion-mnist installs."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import struct
import tarfile
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from metacl.data import load_dataset, vision
from metacl.errors import DataError

IDX_NAMES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees the real cache or a METACL_DATA set outside."""
    monkeypatch.delenv("METACL_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


def idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    return header + array.astype(np.uint8).tobytes()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tiny_idx_files(n_train: int = 6, n_test: int = 4) -> dict[str, bytes]:
    """Gzipped IDX files named as MNIST's, with recognisable pixels and labels."""
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8)
    train[0, 0, 0], train[0, 0, 1] = 0, 255
    test = rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8)
    arrays = (train, np.arange(n_train) % 10, test, np.arange(n_test)[::-1] % 10)
    return {
        name: gzip.compress(idx(a)) for name, a in zip(IDX_NAMES, arrays, strict=True)
    }


def trust(
    monkeypatch: pytest.MonkeyPatch, dataset: str, blobs: dict[str, bytes]
) -> None:
    """Make the checksum table accept exactly these stand-in files."""
    monkeypatch.setitem(
        vision.CHECKSUMS, dataset, {n: (sha(b),) for n, b in blobs.items()}
    )


def write(folder: Path, blobs: dict[str, bytes]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in blobs.items():
        (folder / name).write_bytes(data)


# ------------------------------------------------------------------ MNIST (IDX)


def test_fake_mnist_loads_with_shapes_dtypes_and_range(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blobs = tiny_idx_files()
    write(tmp_path / "mnist", blobs)
    trust(monkeypatch, "mnist", blobs)

    ds = load_dataset("mnist", root=str(tmp_path), download=False)

    assert ds.train_x.shape == (6, 1, 28, 28) and ds.test_x.shape == (4, 1, 28, 28)
    assert ds.train_x.dtype == torch.float32 and ds.train_y.dtype == torch.int64
    assert 0.0 <= float(ds.train_x.min()) and float(ds.train_x.max()) <= 1.0
    assert ds.train_x[0, 0, 0, 0] == 0.0 and ds.train_x[0, 0, 0, 1] == 1.0
    assert ds.train_y.tolist() == [0, 1, 2, 3, 4, 5]
    assert ds.test_y.tolist() == [3, 2, 1, 0]
    assert ds.n_classes == 10


def test_unpacked_files_are_found_and_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blobs = {
        n.removesuffix(".gz"): gzip.decompress(b) for n, b in tiny_idx_files().items()
    }
    write(tmp_path, blobs)
    trust(monkeypatch, "mnist", blobs)

    ds = load_dataset("mnist", root=str(tmp_path), download=False)

    assert len(ds.train_x) == 6


def test_real_checksums_refuse_stand_in_files(tmp_path: Path) -> None:
    write(tmp_path / "mnist", tiny_idx_files())

    with pytest.raises(DataError, match="checksum mismatch") as info:
        load_dataset("mnist", root=str(tmp_path), download=False)
    assert "train-images-idx3-ubyte.gz" in str(info.value)


def test_missing_files_list_searched_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("METACL_DATA", str(tmp_path / "env"))

    with pytest.raises(DataError) as info:
        load_dataset("mnist", root=str(tmp_path / "root"), download=False)
    message = str(info.value)
    for folder in ("root/mnist", "root", "env/mnist", "env", "xdg/metacl/mnist"):
        assert str(tmp_path / folder) in message
    assert all(name in message for name in IDX_NAMES)
    assert "--data-dir" in message and "METACL_DATA" in message


def test_fashion_mnist_missing_suggests_the_debian_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nowhere = dataclasses.replace(
        vision._FASHION_MNIST, extra_dirs=(tmp_path / "none",)
    )
    monkeypatch.setattr(vision, "_FASHION_MNIST", nowhere)

    with pytest.raises(
        DataError, match="apt-get install dataset-fashion-mnist"
    ) as info:
        load_dataset("fashion_mnist", download=False)
    assert str(tmp_path / "none") in str(info.value)


def test_missing_files_are_downloaded_and_verified(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blobs = tiny_idx_files()
    trust(monkeypatch, "mnist", blobs)
    served = {vision._MNIST.mirrors[0] + name: data for name, data in blobs.items()}
    asked: list[str] = []

    def urlopen(request: urllib.request.Request, timeout: float) -> io.BytesIO:
        asked.append(request.full_url)
        return io.BytesIO(served[request.full_url])

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)

    ds = load_dataset("mnist", root=str(tmp_path))

    assert len(ds.train_x) == 6 and len(asked) == 4
    assert sorted(p.name for p in (tmp_path / "mnist").iterdir()) == sorted(IDX_NAMES)


def test_swapped_image_and_label_files_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blobs = tiny_idx_files()
    blobs["train-images-idx3-ubyte.gz"], blobs["train-labels-idx1-ubyte.gz"] = (
        blobs["train-labels-idx1-ubyte.gz"],
        blobs["train-images-idx3-ubyte.gz"],
    )
    write(tmp_path, blobs)
    trust(monkeypatch, "mnist", blobs)

    with pytest.raises(DataError, match="not 28x28 uint8 images"):
        load_dataset("mnist", root=str(tmp_path), download=False)


# ------------------------------------------------------------------------ CIFAR


def cifar_records(labels: list[list[int]]) -> bytes:
    out = bytearray()
    for i, label in enumerate(labels):
        out += bytes(label) + bytes([(7 * i) % 256]) * 3072
    return bytes(out)


def test_fake_cifar10_archive_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    members = {f"data_batch_{i}.bin": cifar_records([[i], [9]]) for i in range(1, 6)}
    members["test_batch.bin"] = cifar_records([[0], [1], [2]])
    archive = tmp_path / "cifar10" / "cifar-10-binary.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    trust(monkeypatch, "cifar10", {archive.name: archive.read_bytes()})

    ds = load_dataset("cifar10", root=str(tmp_path), download=False)

    assert ds.train_x.shape == (10, 3, 32, 32) and ds.test_x.shape == (3, 3, 32, 32)
    assert ds.train_x.dtype == torch.float32 and ds.test_y.dtype == torch.int64
    assert ds.train_y.tolist() == [1, 9, 2, 9, 3, 9, 4, 9, 5, 9]
    assert ds.test_x[1, 2, 31, 31] == pytest.approx(7 / 255)
    assert ds.n_classes == 10


def test_fake_cifar100_unpacked_uses_fine_labels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blobs = {
        "train.bin": cifar_records([[0, 99], [19, 5]]),
        "test.bin": cifar_records([[3, 42]]),
    }
    write(tmp_path / "cifar-100-binary", blobs)
    trust(monkeypatch, "cifar100", blobs)

    ds = load_dataset("cifar100", root=str(tmp_path), download=False)

    assert ds.train_y.tolist() == [99, 5] and ds.test_y.tolist() == [42]
    assert ds.n_classes == 100 and ds.input_shape == (3, 32, 32)


def test_cifar_missing_mentions_archive_and_unpacked_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_dataset("cifar100", root=str(tmp_path), download=False)
    message = str(info.value)
    assert "cifar-100-binary.tar.gz" in message and "cifar-100-binary/" in message


# ------------------------------------------------------ the real Fashion-MNIST


def test_debian_fashion_mnist_loads() -> None:
    folder = vision.FASHION_MNIST_SYSTEM_DIR
    if not (folder / "train-images-idx3-ubyte.gz").is_file():
        pytest.fail(
            f"the real Fashion-MNIST files are not in {folder}; this test needs the "
            "Debian/Ubuntu package: apt-get install dataset-fashion-mnist"
        )

    ds = load_dataset("fashion_mnist", download=False)

    assert (len(ds.train_x), len(ds.test_x), ds.n_classes) == (60000, 10000, 10)
    assert ds.input_shape == (1, 28, 28) and ds.train_x.dtype == torch.float32
    assert float(ds.train_x.min()) == 0.0 and float(ds.train_x.max()) == 1.0
    # the classes are balanced: 6000 train and 1000 test images each
    assert torch.bincount(ds.train_y).tolist() == [6000] * 10
    assert torch.bincount(ds.test_y).tolist() == [1000] * 10
