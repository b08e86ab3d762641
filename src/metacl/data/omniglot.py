"""Omniglot: 1623 handwritten characters of 50 alphabets, 20 drawings each.

The two official archives (``images_background.zip``: 30 alphabets, 964 characters;
``images_evaluation.zip``: 20 alphabets, 659 characters) are found, verified and, when
missing, downloaded as :mod:`metacl.data.files` describes. The PNG images are read
straight from the archives (nothing is extracted, so no member path ever touches the
file system), turned into grey images of ``size`` x ``size`` with the strokes at 1 and
the background at 0, and cached as ``.npz`` beside the user cache so that the next load
skips decoding.

Every character is a class. Classes are numbered in the order (archive, alphabet,
character), background first, so that labels ``0..963`` are the background set. The
drawings of each character are split by drawer: the last ``test_drawers`` of the 20 go
to the test split. Few-shot episodes (:class:`metacl.meta.tasks.EpisodeTasks`) pool
both splits and cut the classes into meta-train / meta-validation / meta-test sets;
continual-learning protocols such as OML's use the per-class train / test split.

Example:
    >>> from metacl.data import load_dataset
    >>> ds = load_dataset("omniglot", subset="background")  # doctest: +SKIP
    >>> ds.n_classes, ds.input_shape  # doctest: +SKIP
    (964, (1, 28, 28))

References:
    Brenden M. Lake, Ruslan Salakhutdinov, Joshua B. Tenenbaum. "Human-level concept
    learning through probabilistic program induction", Science 350(6266), 2015.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from metacl.data.base import DATASETS, Dataset
from metacl.data.files import cache_dir, fetch, sha256_of
from metacl.errors import ConfigError, DataError

__all__ = ["CHECKSUMS", "MIRRORS", "ARCHIVES", "omniglot", "read_omniglot_archive"]

logger = logging.getLogger(__name__)

ARCHIVES = {
    "background": "images_background.zip",
    "evaluation": "images_evaluation.zip",
}

CHECKSUMS: dict[str, tuple[str, ...]] = {
    # SHA-256 of the official archives (9464212 and 6462886 bytes), as TensorFlow
    # Datasets lists them for the same URLs; their MD5s (68d2efa1..., 6b91aef0...)
    # match those torchvision publishes. Tests that write small stand-in archives
    # replace these entries.
    "images_background.zip": (
        "ad41ab679c8b5d90b271ef46be6987cc81211774a695c29dcc5367b2b26ee640",
    ),
    "images_evaluation.zip": (
        "1f61a8f3366785b057fc117d9228e78a16e3d976c8953b2a10fcc74cf0609cee",
    ),
}

MIRRORS: tuple[str, ...] = (
    "https://github.com/brendenlake/omniglot/raw/master/python/",
    "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/",
)

_MEMBER = re.compile(
    r"^images_(background|evaluation)/([^/]+)/(character\d+)/([^/]+)\.png$"
)
_MAX_IMAGE_BYTES = 1 << 20  # an official image is about 300 bytes
_MAX_PIXELS = 1024 * 1024
_CACHE_FORMAT = 1


def _decode(blob: bytes, size: int, where: str) -> np.ndarray:
    """One PNG -> float32 ``(size, size)`` image, strokes 1 and background 0."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(blob)) as image:
            width, height = image.size
            if width * height > _MAX_PIXELS:
                raise DataError(
                    f"{where} is {width}x{height} pixels, far larger than an Omniglot "
                    "image (105x105); the archive is not the official one: delete it"
                )
            grey = image.convert("L")
            if grey.size != (size, size):
                grey = grey.resize((size, size), Image.Resampling.BOX)
            pixels = np.asarray(grey, dtype=np.float32) / np.float32(255.0)
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise DataError(
            f"{where} is not a readable PNG ({error}); the archive is corrupt: delete "
            "it and load the dataset again"
        ) from error
    return np.float32(1.0) - pixels  # the official images draw black on white


def read_omniglot_archive(
    path: str | Path, *, size: int = 28
) -> list[tuple[str, list[np.ndarray]]]:
    """The characters of one Omniglot archive and their images.

    Args:
        path: ``images_background.zip`` or ``images_evaluation.zip``.
        size: Side of the square images returned.

    Returns:
        ``(alphabet/character, images)`` for each character, sorted by alphabet then
        character; the images of a character are sorted by file name, whose last
        number is the drawer.

    Raises:
        DataError: The file is not a zip archive, holds no character images, or holds
            an oversized or unreadable image.
    """
    path = Path(path)
    characters: dict[str, list[tuple[str, bytes]]] = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                match = _MEMBER.match(info.filename)
                if info.is_dir() or match is None:
                    continue
                if info.file_size > _MAX_IMAGE_BYTES:
                    raise DataError(
                        f"{path}: member {info.filename} unpacks to {info.file_size} "
                        "bytes, too large for an Omniglot image; the archive is not the "
                        "official one: delete it"
                    )
                key = f"{match.group(2)}/{match.group(3)}"
                blob = archive.read(info)
                characters.setdefault(key, []).append((match.group(4), blob))
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as error:
        raise DataError(
            f"cannot read the archive {path} ({error}); it is truncated or corrupt: "
            "delete it and load the dataset again to re-download it"
        ) from error
    if not characters:
        raise DataError(
            f"{path} holds no images_*/<alphabet>/<character>/<n>.png members; it is "
            "not an Omniglot archive: delete it and load the dataset again"
        )
    out = []
    for key in sorted(characters):
        drawings = sorted(characters[key])
        images = [
            _decode(blob, size, f"{path}:{key}/{name}.png") for name, blob in drawings
        ]
        out.append((key, images))
    return out


def _cache_path(digests: list[str], size: int, test_drawers: int) -> Path:
    key = "-".join(d[:12] for d in digests)
    return (
        cache_dir()
        / "omniglot"
        / f"processed-v{_CACHE_FORMAT}-{size}-{test_drawers}-{key}.npz"
    )


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as error:  # a read-only cache only costs time
        logger.warning("cannot cache omniglot arrays in %s: %s", path.parent, error)
        return
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, **arrays)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _build_arrays(
    paths: list[Path], size: int, test_drawers: int
) -> dict[str, np.ndarray]:
    train_x, train_y, test_x, test_y = [], [], [], []
    label = 0
    for path in paths:
        for key, images in read_omniglot_archive(path, size=size):
            if len(images) <= test_drawers:
                raise DataError(
                    f"{path}: character {key} has {len(images)} drawings, not more than "
                    f"test_drawers = {test_drawers}; the archive is incomplete: delete "
                    "it, or lower test_drawers"
                )
            cut = len(images) - test_drawers
            train_x += images[:cut]
            test_x += images[cut:]
            train_y += [label] * cut
            test_y += [label] * test_drawers
            label += 1
    return {
        "train_x": np.stack(train_x)[:, None],  # (N, 1, size, size)
        "train_y": np.asarray(train_y, dtype=np.int64),
        "test_x": np.stack(test_x)[:, None],
        "test_y": np.asarray(test_y, dtype=np.int64),
        "n_classes": np.asarray(label, dtype=np.int64),
    }


@DATASETS.register(
    "omniglot",
    summary="Omniglot characters: 1623 classes x 20 drawings, grey 28x28 (download)",
)
def omniglot(
    *,
    root: str | None = None,
    download: bool = True,
    subset: Literal["all", "background", "evaluation"] = "all",
    size: int = 28,
    test_drawers: int = 5,
    cache: bool = True,
) -> Dataset:
    """Omniglot handwritten characters, one class per character.

    Args:
        root: A folder searched first for the archives, directly or in its
            ``omniglot/`` subfolder; downloads go to ``root/omniglot/``. None searches
            ``METACL_DATA`` and the user cache.
        download: Whether missing archives may be downloaded (SHA-256 verified).
        subset: ``"background"`` (964 classes), ``"evaluation"`` (659) or ``"all"``
            (1623, background first).
        size: Side of the square images (28 in most few-shot work; 105 is the
            original size).
        test_drawers: Drawings per character, the last by drawer, in the test split.
        cache: Keep the decoded arrays as ``.npz`` in the user cache.

    Returns:
        The dataset, images float32 ``(N, 1, size, size)`` in [0, 1] with the strokes
        at 1, labels int64.

    Raises:
        ConfigError: A bad ``size`` or ``test_drawers``.
        DataError: An archive is missing and cannot be downloaded, fails its checksum,
            or is corrupt.

    References:
        Brenden M. Lake, Ruslan Salakhutdinov, Joshua B. Tenenbaum. "Human-level
        concept learning through probabilistic program induction", Science, 2015.
    """
    if subset not in ("all", "background", "evaluation"):
        raise ConfigError(
            f"omniglot.subset = {subset!r} is invalid; expected 'all', 'background' or "
            "'evaluation'"
        )
    if isinstance(size, bool) or not isinstance(size, int) or not 4 <= size <= 105:
        raise ConfigError(f"omniglot.size = {size!r} is invalid; expected 4 to 105")
    if (
        isinstance(test_drawers, bool)
        or not isinstance(test_drawers, int)
        or not 1 <= test_drawers <= 19
    ):
        raise ConfigError(
            f"omniglot.test_drawers = {test_drawers!r} is invalid; expected 1 to 19 of "
            "the 20 drawings per character"
        )
    names = list(ARCHIVES.values()) if subset == "all" else [ARCHIVES[subset]]
    found = fetch(
        names,
        dataset="omniglot",
        checksums=CHECKSUMS,
        root=root,
        mirrors=MIRRORS,
        allow_download=download,
        gunzipped=False,
    )
    paths = [found[n] for n in names]

    # decode the archives, or read the arrays decoded last time
    cached = _cache_path([sha256_of(p) for p in paths], size, test_drawers)
    arrays = None
    if cache and cached.is_file():
        try:
            with np.load(cached, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
            logger.info("omniglot arrays read from the cache %s", cached)
        except (OSError, ValueError, zipfile.BadZipFile) as error:
            logger.warning("ignoring the unreadable cache %s: %s", cached, error)
    if arrays is None:
        arrays = _build_arrays(paths, size, test_drawers)
        if cache:
            _save_npz(cached, arrays)

    dataset = Dataset(
        name="omniglot",
        train_x=torch.from_numpy(arrays["train_x"]),
        train_y=torch.from_numpy(arrays["train_y"]),
        test_x=torch.from_numpy(arrays["test_x"]),
        test_y=torch.from_numpy(arrays["test_y"]),
        n_classes=int(arrays["n_classes"]),
    )
    logger.info("loaded %s", dataset.summary())
    return dataset
