"""Parsers for the file formats the image datasets ship in.

Two formats, both read with ``numpy.frombuffer`` and nothing that executes data:

- **IDX** (MNIST, Fashion-MNIST): a 4-byte magic number (two zero bytes, a type code,
  the number of dimensions), one big-endian 32-bit size per dimension, then the values
  in row-major order. The file may be gzipped; that is told from its first bytes.
- **CIFAR binary** (CIFAR-10, CIFAR-100): fixed-size records of ``label_bytes`` label
  bytes followed by 3072 pixel bytes, the red, green and blue 32x32 planes in turn.

Every check that fails raises :class:`~metacl.errors.DataError` naming the file, what
was expected and what was found.

Example:
    >>> import numpy as np
    >>> data = bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 8, 9])
    >>> parse_idx(data, where="labels")
    array([7, 8, 9], dtype=uint8)
"""

from __future__ import annotations

import gzip
import math
import posixpath
import struct
import tarfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from metacl.errors import DataError

__all__ = [
    "CIFAR_IMAGE_SHAPE",
    "read_bytes",
    "parse_idx",
    "read_idx",
    "parse_cifar_records",
    "read_tar_members",
    "read_cifar_binary",
]

_GZIP_MAGIC = b"\x1f\x8b"

# IDX type code -> element type (multi-byte types are big-endian in the file)
_IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

CIFAR_IMAGE_SHAPE = (3, 32, 32)
_CIFAR_PIXELS = math.prod(CIFAR_IMAGE_SHAPE)

_REDOWNLOAD = "delete it and load the dataset again to re-download it"


def read_bytes(path: str | Path) -> bytes:
    """The content of ``path``, decompressed when it starts with the gzip magic bytes.

    Raises:
        DataError: The file is a truncated or corrupt gzip stream.
    """
    data = Path(path).read_bytes()
    if not data.startswith(_GZIP_MAGIC):
        return data
    try:
        return gzip.decompress(data)
    except (EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise DataError(
            f"{path} is a truncated or corrupt gzip file ({error}); {_REDOWNLOAD}"
        ) from error


def parse_idx(data: bytes, *, where: str) -> np.ndarray:
    """Decode an uncompressed IDX file.

    Args:
        data: The whole file content.
        where: The file's name, for error messages.

    Returns:
        An array shaped as the header says, in native byte order. For one-byte types it
        is a read-only view of ``data``.

    Raises:
        DataError: A bad magic number, an unknown type code, no dimensions, or a
            payload whose size differs from what the header announces.
    """
    if len(data) < 4:
        raise DataError(
            f"{where} holds {len(data)} bytes, too few for an IDX header; {_REDOWNLOAD}"
        )
    code, ndim = data[2], data[3]
    if data[:2] != b"\x00\x00" or code not in _IDX_TYPES:
        magic = int.from_bytes(data[:4], "big")
        codes = ", ".join(f"0x{c:02X}" for c in _IDX_TYPES)
        raise DataError(
            f"{where} is not an IDX file: magic number 0x{magic:08X}, expected "
            f"0x0000TTNN with type code TT in ({codes}); it is corrupt or another "
            f"format: {_REDOWNLOAD}"
        )
    if ndim == 0:
        raise DataError(f"{where}: the IDX header declares 0 dimensions; {_REDOWNLOAD}")

    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(
            f"{where}: the IDX header needs {header} bytes for {ndim} dimensions but the "
            f"file holds {len(data)}; it is truncated: {_REDOWNLOAD}"
        )
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = _IDX_TYPES[code]
    count = math.prod(dims)
    expected = count * dtype.itemsize
    found = len(data) - header
    if found != expected:
        shape = "x".join(map(str, dims))
        raise DataError(
            f"{where}: the header announces {shape} {dtype.name} = {expected} bytes of "
            f"payload, but the file holds {found}; it is truncated or corrupt: "
            f"{_REDOWNLOAD}"
        )

    array = np.frombuffer(data, dtype=dtype, count=count, offset=header).reshape(dims)
    if dtype.itemsize > 1:
        array = array.astype(dtype.newbyteorder("="))
    return array


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file, gzipped or not (told from its first bytes, not its name).

    Args:
        path: The file.

    Returns:
        The array the file holds; see :func:`parse_idx`.

    Raises:
        DataError: The file is truncated, corrupt or not IDX; the message names it.
    """
    return parse_idx(read_bytes(path), where=str(path))


def parse_cifar_records(
    data: bytes, *, label_bytes: int, where: str
) -> tuple[np.ndarray, np.ndarray]:
    """Split CIFAR binary records into images and label bytes.

    Args:
        data: The content of one batch file.
        label_bytes: Label bytes before each image: 1 for CIFAR-10, 2 (coarse, fine)
            for CIFAR-100.
        where: The file's name, for error messages.

    Returns:
        ``(images, labels)``: uint8 ``(N, 3, 32, 32)`` and uint8 ``(N, label_bytes)``,
        read-only views of ``data``.

    Raises:
        DataError: The file is empty or its size is not a whole number of records.
    """
    record = label_bytes + _CIFAR_PIXELS
    if not data or len(data) % record:
        raise DataError(
            f"{where} holds {len(data)} bytes, not a positive multiple of the "
            f"{record}-byte record ({label_bytes} label byte(s) + {_CIFAR_PIXELS} pixel "
            f"bytes); it is truncated, corrupt or from the other CIFAR: {_REDOWNLOAD}"
        )
    rows = np.frombuffer(data, dtype=np.uint8).reshape(-1, record)
    images = rows[:, label_bytes:].reshape(-1, *CIFAR_IMAGE_SHAPE)  # (N, 3, 32, 32)
    return images, rows[:, :label_bytes]


def read_tar_members(archive: str | Path, names: Sequence[str]) -> dict[str, bytes]:
    """The content of the named regular-file members of a tar archive.

    The archive (gzipped or not) is read in one pass and nothing is extracted to disk,
    so member paths are never used as file system paths.

    Args:
        archive: The tar file.
        names: Member paths inside it (a leading ``./`` does not matter).

    Returns:
        The bytes of each member, keyed by its normalised name.

    Raises:
        DataError: The archive is unreadable or truncated, or lacks a member.
    """
    archive = Path(archive)
    wanted = {posixpath.normpath(name) for name in names}
    blobs: dict[str, bytes] = {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                key = posixpath.normpath(member.name)
                if key not in wanted or key in blobs:
                    continue
                handle = tar.extractfile(member) if member.isfile() else None
                if handle is None:
                    raise DataError(
                        f"{archive}: member {member.name} is not a regular file; "
                        f"the archive is not the one expected: {_REDOWNLOAD}"
                    )
                blobs[key] = handle.read()
                if len(blobs) == len(wanted):
                    break
    except (tarfile.TarError, EOFError, zlib.error, OSError) as error:
        raise DataError(
            f"cannot read the archive {archive} ({error}); it is truncated or corrupt: "
            f"{_REDOWNLOAD}"
        ) from error

    missing = sorted(wanted - set(blobs))
    if missing:
        raise DataError(
            f"{archive} lacks {', '.join(missing)}; it is incomplete or not the binary "
            f"version of the dataset: {_REDOWNLOAD}"
        )
    return blobs


def read_cifar_binary(
    paths: Sequence[str | Path],
    *,
    label_bytes: int,
    archive: str | Path | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Read and join CIFAR binary batch files.

    The batches are read from plain files, or, when ``archive`` is given, straight
    from that tar archive (gzipped or not) without extracting anything.

    Args:
        paths: Batch files in order; with ``archive``, member names inside it
            (``"cifar-10-batches-bin/data_batch_1.bin"``).
        label_bytes: 1 for CIFAR-10, 2 for CIFAR-100 (coarse label, then fine label).
        archive: The ``.tar.gz`` holding the batches, or None to read plain files.

    Returns:
        ``(images, labels)``: uint8 ``(N, 3, 32, 32)`` and uint8 ``(N, label_bytes)``,
        the batches concatenated in the order given.

    Raises:
        ValueError: ``label_bytes`` is not 1 or 2, or ``paths`` is empty.
        DataError: A file or member is missing, truncated or has a bad size.

    Example:
        >>> import tempfile, pathlib
        >>> batch = pathlib.Path(tempfile.mkdtemp()) / "batch.bin"
        >>> _ = batch.write_bytes(bytes([3]) + bytes(3072))
        >>> images, labels = read_cifar_binary([batch], label_bytes=1)
        >>> images.shape, labels.tolist()
        ((1, 3, 32, 32), [[3]])
    """
    if label_bytes not in (1, 2):
        raise ValueError(
            f"label_bytes={label_bytes!r} is invalid; use 1 for CIFAR-10, 2 for CIFAR-100"
        )
    if not paths:
        raise ValueError("paths is empty; name at least one batch file")

    if archive is None:
        sources = [(str(p), read_bytes(p)) for p in paths]
    else:
        blobs = read_tar_members(archive, [str(p) for p in paths])
        sources = [(f"{archive}:{p}", blobs[posixpath.normpath(str(p))]) for p in paths]

    parts = [
        parse_cifar_records(data, label_bytes=label_bytes, where=w)
        for w, data in sources
    ]
    images = np.concatenate([images for images, _ in parts])
    labels = np.concatenate([labels for _, labels in parts])
    return images, labels
