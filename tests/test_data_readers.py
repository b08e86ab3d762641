"""Tests of metacl.data.readers: IDX and CIFAR binary parsing on small files."""

from __future__ import annotations

import gzip
import io
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest

from metacl.data.readers import (
    parse_idx,
    read_bytes,
    read_cifar_binary,
    read_idx,
    read_tar_members,
)
from metacl.errors import DataError

_TYPE_CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C}


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode ``array`` as an IDX file (big-endian, as the format prescribes)."""
    code = _TYPE_CODES[array.dtype.type] if array.dtype.type in _TYPE_CODES else 0x0D
    header = bytes([0, 0, code, array.ndim]) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


@pytest.fixture
def images() -> np.ndarray:
    return np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)


@pytest.mark.parametrize("compress", [False, True])
def test_idx_round_trip(tmp_path: Path, images: np.ndarray, compress: bool) -> None:
    data = idx_bytes(images)
    path = tmp_path / "images-idx3-ubyte"
    path.write_bytes(gzip.compress(data) if compress else data)

    out = read_idx(path)

    assert out.dtype == np.uint8 and out.shape == (2, 3, 4)
    np.testing.assert_array_equal(out, images)


def test_gzip_is_told_by_magic_bytes_not_name(
    tmp_path: Path, images: np.ndarray
) -> None:
    packed = tmp_path / "looks-raw"
    packed.write_bytes(gzip.compress(idx_bytes(images)))
    plain = tmp_path / "looks-packed.gz"
    plain.write_bytes(idx_bytes(images))

    np.testing.assert_array_equal(read_idx(packed), images)
    np.testing.assert_array_equal(read_idx(plain), images)


@pytest.mark.parametrize(
    "array",
    [
        np.array([-3, 0, 300], dtype=np.int16),
        np.array([[1.5, -2.0]], dtype=np.float32),
        np.array([-(2**31), 2**31 - 1], dtype=np.int32),
    ],
)
def test_idx_multibyte_types_come_back_in_native_order(array: np.ndarray) -> None:
    out = parse_idx(idx_bytes(array), where="values")

    assert out.dtype.isnative
    np.testing.assert_array_equal(out, array)


def test_wrong_magic_names_the_file(tmp_path: Path, images: np.ndarray) -> None:
    path = tmp_path / "not-idx.bin"
    path.write_bytes(b"PK\x03\x04" + idx_bytes(images)[4:])

    with pytest.raises(DataError, match="not an IDX file") as info:
        read_idx(path)
    assert str(path) in str(info.value)
    assert "re-download" in str(info.value)


def test_unknown_type_code_is_refused() -> None:
    with pytest.raises(DataError, match="magic number 0x00000701"):
        parse_idx(bytes([0, 0, 7, 1, 0, 0, 0, 1, 5]), where="odd")


@pytest.mark.parametrize("cut", [1, 10])
def test_truncated_payload_says_expected_and_found(
    tmp_path: Path, images: np.ndarray, cut: int
) -> None:
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(idx_bytes(images)[:-cut])

    with pytest.raises(DataError) as info:
        read_idx(path)
    message = str(info.value)
    assert str(path) in message
    assert "2x3x4 uint8 = 24 bytes of payload" in message
    assert f"holds {24 - cut}" in message


def test_trailing_bytes_are_refused(images: np.ndarray) -> None:
    with pytest.raises(DataError, match="holds 25"):
        parse_idx(idx_bytes(images) + b"\x00", where="long")


def test_truncated_header_is_refused() -> None:
    with pytest.raises(DataError, match="needs 16 bytes"):
        parse_idx(bytes([0, 0, 8, 3, 0, 0, 0, 2]), where="short")
    with pytest.raises(DataError, match="too few"):
        parse_idx(b"\x00\x00", where="tiny")


def test_truncated_gzip_names_the_file(tmp_path: Path, images: np.ndarray) -> None:
    packed = gzip.compress(idx_bytes(np.tile(images, (50, 1, 1))))
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(packed[: len(packed) // 2])

    with pytest.raises(DataError, match="truncated or corrupt gzip") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_corrupt_gzip_names_the_file(tmp_path: Path, images: np.ndarray) -> None:
    packed = bytearray(gzip.compress(idx_bytes(images)))
    packed[-8] ^= 0xFF  # break the CRC in the trailer
    path = tmp_path / "bad.gz"
    path.write_bytes(bytes(packed))

    with pytest.raises(DataError, match="bad.gz"):
        read_bytes(path)


# ---------------------------------------------------------------- CIFAR binary


def cifar_records(labels: list[list[int]]) -> bytes:
    """Records whose pixel planes hold (record index, plane index) patterns."""
    out = bytearray()
    for i, label in enumerate(labels):
        pixels = np.empty((3, 32, 32), dtype=np.uint8)
        for plane in range(3):
            pixels[plane] = 10 * i + plane
        out += bytes(label) + pixels.tobytes()
    return bytes(out)


def write_tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_cifar10_batches_from_a_tar_gz(tmp_path: Path) -> None:
    archive = write_tar(
        tmp_path / "cifar-10-binary.tar.gz",
        {
            "cifar-10-batches-bin/readme.html": b"<html></html>",
            "cifar-10-batches-bin/data_batch_1.bin": cifar_records([[3], [7]]),
            "cifar-10-batches-bin/test_batch.bin": cifar_records([[9]]),
        },
    )
    names = [
        "cifar-10-batches-bin/data_batch_1.bin",
        "cifar-10-batches-bin/test_batch.bin",
    ]

    images, labels = read_cifar_binary(names, label_bytes=1, archive=archive)

    assert images.shape == (3, 3, 32, 32) and images.dtype == np.uint8
    assert labels.tolist() == [[3], [7], [9]]
    # channel planes are stored red, green, blue, each 32x32 row-major
    assert images[1, :, 5, 6].tolist() == [10, 11, 12]
    assert images[2, 2].min() == images[2, 2].max() == 2


def test_cifar100_label_bytes_from_plain_files(tmp_path: Path) -> None:
    path = tmp_path / "train.bin"
    path.write_bytes(cifar_records([[4, 44], [19, 99]]))

    images, labels = read_cifar_binary([path], label_bytes=2)

    assert images.shape == (2, 3, 32, 32)
    assert labels[:, 1].tolist() == [44, 99]


def test_cifar_bad_record_size_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "data_batch_1.bin"
    path.write_bytes(cifar_records([[1], [2]])[:-100])

    with pytest.raises(DataError, match="3073-byte record") as info:
        read_cifar_binary([path], label_bytes=1)
    assert str(path) in str(info.value)


def test_cifar100_file_read_as_cifar10_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "train.bin"
    path.write_bytes(cifar_records([[1, 2], [3, 4], [5, 6]]))

    with pytest.raises(DataError, match="not a positive multiple"):
        read_cifar_binary([path], label_bytes=1)


def test_missing_member_is_named(tmp_path: Path) -> None:
    archive = write_tar(tmp_path / "a.tar.gz", {"cifar-100-binary/train.bin": b""})

    with pytest.raises(DataError, match="lacks cifar-100-binary/test.bin"):
        read_tar_members(
            archive, ["cifar-100-binary/train.bin", "cifar-100-binary/test.bin"]
        )


def test_truncated_archive_names_it(tmp_path: Path) -> None:
    archive = write_tar(
        tmp_path / "cut.tar.gz",
        {"d/train.bin": np.random.default_rng(0).bytes(200_000)},
    )
    archive.write_bytes(archive.read_bytes()[:50_000])

    with pytest.raises(DataError, match="cut.tar.gz"):
        read_tar_members(archive, ["d/train.bin"])


def test_leading_dot_slash_in_member_names_is_ignored(tmp_path: Path) -> None:
    archive = write_tar(tmp_path / "a.tar.gz", {"./d/x.bin": b"abc"})

    assert read_tar_members(archive, ["d/x.bin"]) == {"d/x.bin": b"abc"}


def test_label_bytes_is_validated(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="label_bytes=3"):
        read_cifar_binary([tmp_path / "x.bin"], label_bytes=3)
