"""Image classification datasets read from their official files.

Each loader finds its files as :mod:`metacl.data.files` describes (an explicit
``root``, then ``METACL_DATA``, then the user cache, then any system folder the dataset
knows), checks them against the SHA-256 digests in :data:`CHECKSUMS`, downloads what is
missing when ``download`` is true, and returns a :class:`~metacl.data.base.Dataset`
whose images are float32 in [0, 1], shaped ``(N, channels, height, width)``, and whose
labels are int64.

Note [checksum table]
    :data:`CHECKSUMS` holds, per dataset and file name, every SHA-256 digest accepted
    for that file: the official download, a known re-packed copy of it, and the digest
    of the unpacked content for files that may be found gunzipped (a gzip file whose
    own digest is unknown also passes when its content digest matches). Where each
    digest comes from is noted beside it. Tests that write small stand-in files
    replace entries of this table.

Example:
    >>> from metacl.data import load_dataset
    >>> ds = load_dataset("fashion_mnist", download=False)  # doctest: +SKIP
    >>> ds.summary()  # doctest: +SKIP
    'fashion_mnist: 60000 train / 10000 test, input (1, 28, 28), 10 classes'
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from metacl.data.base import DATASETS, Dataset
from metacl.data.files import data_dirs, fetch, find_file
from metacl.data.readers import (
    parse_cifar_records,
    read_bytes,
    read_idx,
    read_tar_members,
)
from metacl.errors import DataError

__all__ = [
    "CHECKSUMS",
    "FASHION_MNIST_SYSTEM_DIR",
    "mnist",
    "fashion_mnist",
    "cifar10",
    "cifar100",
]

logger = logging.getLogger(__name__)

FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Where the Debian/Ubuntu package ``dataset-fashion-mnist`` installs the files."""

_IDX_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)

CHECKSUMS: dict[str, dict[str, tuple[str, ...]]] = {
    "mnist": {
        # the official .gz files, as several independent public loaders list them
        # (torchvision's prototype MNIST among them); all but train-images were also
        # re-hashed here from copies whose MD5 equals the one torchvision publishes
        "train-images-idx3-ubyte.gz": (
            "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        ),
        "train-labels-idx1-ubyte.gz": (
            "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        ),
        "t10k-images-idx3-ubyte.gz": (
            "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        ),
        "t10k-labels-idx1-ubyte.gz": (
            "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        ),
        # their unpacked content
        "train-images-idx3-ubyte": (
            "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        ),
        "train-labels-idx1-ubyte": (
            "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        ),
        "t10k-images-idx3-ubyte": (
            "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        ),
        "t10k-labels-idx1-ubyte": (
            "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        ),
    },
    "fashion_mnist": {
        # first: the official .gz files (their MD5s are those in the Fashion-MNIST
        # README); second: the copies in Debian's dataset-fashion-mnist, which holds the
        # same deflate stream under a gzip header without the file name
        "train-images-idx3-ubyte.gz": (
            "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
            "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
        ),
        "train-labels-idx1-ubyte.gz": (
            "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
            "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
        ),
        "t10k-images-idx3-ubyte.gz": (
            "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
            "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
        ),
        "t10k-labels-idx1-ubyte.gz": (
            "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
            "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
        ),
        # their unpacked content, identical for both
        "train-images-idx3-ubyte": (
            "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        ),
        "train-labels-idx1-ubyte": (
            "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        ),
        "t10k-images-idx3-ubyte": (
            "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        ),
        "t10k-labels-idx1-ubyte": (
            "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        ),
    },
    "cifar10": {
        # the official archive (170052171 bytes, MD5 c32a1d4ab5d03f1284b67883e8d87530
        # as published on the CIFAR page); then the unpacked batches, as one public
        # loader lists them (not re-checked here: no copy was at hand)
        "cifar-10-binary.tar.gz": (
            "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
        ),
        "data_batch_1.bin": (
            "cee916563c9f80d84e3cc88e17fdc0941787f1244f00a67874d45b261883ada5",
        ),
        "data_batch_2.bin": (
            "a591ca11fa1708a91ee40f54b3da4784ccd871ecf2137de63f51ada8b3fa57ed",
        ),
        "data_batch_3.bin": (
            "bbe8596564c0f86427f876058170b84dac6670ddf06d79402899d93ceea26f67",
        ),
        "data_batch_4.bin": (
            "014e562d6e23c72197cc727519169a60359f5eccd8945ad5a09d710285ff4e48",
        ),
        "data_batch_5.bin": (
            "755304fc0b379caeae8c14f0dac912fbc7d6cd469eb67a1029a08a39453a9add",
        ),
        "test_batch.bin": (
            "8e2eb146ae340b09e24670f29cabc6326dba54da8789dab6768acf480273f65b",
        ),
    },
    "cifar100": {
        # the official archive (168513733 bytes, MD5 03b5dce01913d631647c71ecec9e9cb8
        # as published on the CIFAR page); then the unpacked batches, as one public
        # loader lists them (not re-checked here: no copy was at hand)
        "cifar-100-binary.tar.gz": (
            "58a81ae192c23a4be8b1804d68e518ed807d710a4eb253b1f2a199162a40d8ec",
        ),
        "train.bin": (
            "f31298fc616915fa142368359df1c4ca2ae984d6915ca468b998a5ec6aeebf29",
        ),
        "test.bin": (
            "d8b1e6b7b3bee4020055f0699b111f60b1af1e262aeb93a0b659061746f8224a",
        ),
    },
}


def _images(array: np.ndarray) -> Tensor:
    """uint8 pixels -> float32 tensor in [0, 1], converted once."""
    pixels = array.astype(np.float32)
    np.divide(pixels, np.float32(255), out=pixels)
    return torch.from_numpy(pixels)


def _labels(array: np.ndarray) -> Tensor:
    return torch.from_numpy(array.astype(np.int64))


# ----------------------------------------------------------------------------- IDX


@dataclass(frozen=True)
class _IdxSpec:
    name: str
    mirrors: tuple[str, ...]
    extra_dirs: tuple[Path, ...] = ()
    hint: str = ""


def _idx_images(path: Path) -> np.ndarray:
    images = read_idx(path)
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
        raise DataError(
            f"{path} holds {images.dtype} data of shape {images.shape}, not 28x28 uint8 "
            "images; it is not the image file of this dataset: replace it with the "
            "official file"
        )
    return images


def _idx_labels(path: Path) -> np.ndarray:
    labels = read_idx(path)
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise DataError(
            f"{path} holds {labels.dtype} data of shape {labels.shape}, not a list of "
            "uint8 labels; it is not the label file of this dataset: replace it with "
            "the official file"
        )
    return labels


def _load_idx(spec: _IdxSpec, root: str | None, download: bool) -> Dataset:
    paths = fetch(
        _IDX_FILES,
        dataset=spec.name,
        checksums=CHECKSUMS[spec.name],
        root=root,
        extra_dirs=spec.extra_dirs,
        mirrors=spec.mirrors,
        allow_download=download,
        hint=spec.hint,
    )
    train_images, train_labels, test_images, test_labels = (
        paths[n] for n in _IDX_FILES
    )

    train_x = _images(_idx_images(train_images)).unsqueeze(1)  # (N, 1, 28, 28)
    test_x = _images(_idx_images(test_images)).unsqueeze(1)
    dataset = Dataset(
        name=spec.name,
        train_x=train_x,
        train_y=_labels(_idx_labels(train_labels)),
        test_x=test_x,
        test_y=_labels(_idx_labels(test_labels)),
        n_classes=10,
    )
    logger.info("loaded %s from %s", dataset.summary(), train_images.parent)
    return dataset


_MNIST = _IdxSpec(
    "mnist",
    mirrors=(
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        "https://yann.lecun.com/exdb/mnist/",
    ),
)

_FASHION_MNIST = _IdxSpec(
    "fashion_mnist",
    mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    extra_dirs=(FASHION_MNIST_SYSTEM_DIR,),
    hint=(
        "install the Debian/Ubuntu package that provides them "
        f"(apt-get install dataset-fashion-mnist, into {FASHION_MNIST_SYSTEM_DIR})"
    ),
)


@DATASETS.register("mnist", summary="MNIST digits: 60000/10000 grey 28x28, 10 classes")
def mnist(*, root: str | None = None, download: bool = True) -> Dataset:
    """MNIST handwritten digits, 60000 train and 10000 test images of 1x28x28.

    Args:
        root: A folder searched first for the four ``*-ubyte.gz`` files (or their
            unpacked versions), directly or in its ``mnist/`` subfolder; downloads go
            to ``root/mnist/``. None searches ``METACL_DATA`` and the user cache.
        download: Whether missing files may be downloaded from the known mirrors.

    Returns:
        The dataset, images float32 in [0, 1], labels int64 in [0, 10).

    Raises:
        DataError: A file is missing and cannot be downloaded, or is corrupt or fails
            its checksum.

    References:
        LeCun, Bottou, Bengio, Haffner. Gradient-based learning applied to document
        recognition. 1998.
    """
    return _load_idx(_MNIST, root, download)


@DATASETS.register(
    "fashion_mnist",
    summary="Fashion-MNIST clothing: 60000/10000 grey 28x28, 10 classes",
)
def fashion_mnist(*, root: str | None = None, download: bool = True) -> Dataset:
    """Fashion-MNIST clothing images, 60000 train and 10000 test images of 1x28x28.

    Besides the usual folders, the files are found where the Debian/Ubuntu package
    ``dataset-fashion-mnist`` installs them (:data:`FASHION_MNIST_SYSTEM_DIR`).

    Args:
        root: A folder searched first, directly or in its ``fashion_mnist/``
            subfolder; downloads go to ``root/fashion_mnist/``. None searches
            ``METACL_DATA``, the user cache and the system folder.
        download: Whether missing files may be downloaded from the official mirror.

    Returns:
        The dataset, images float32 in [0, 1], labels int64 in [0, 10).

    Raises:
        DataError: A file is missing and cannot be downloaded, or is corrupt or fails
            its checksum.

    References:
        Xiao, Rasul, Vollgraf. Fashion-MNIST: a novel image dataset for benchmarking
        machine learning algorithms. 2017.
    """
    return _load_idx(_FASHION_MNIST, root, download)


# --------------------------------------------------------------------------- CIFAR


@dataclass(frozen=True)
class _CifarSpec:
    name: str
    archive: str
    folder: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    label_bytes: int
    label_index: int
    n_classes: int


_CIFAR_MIRRORS = ("https://www.cs.toronto.edu/~kriz/",)


def _cifar_blobs(
    spec: _CifarSpec, root: str | None, download: bool
) -> dict[str, bytes]:
    """The content of every batch file, by its member name inside the archive."""
    members = [f"{spec.folder}/{m}" for m in spec.train + spec.test]
    checksums = CHECKSUMS[spec.name]

    # an unpacked copy of the archive is used as it is
    dirs = data_dirs(root)
    if find_file(members[:1], dirs, subdir=spec.name, gunzipped=False) is not None:
        paths = fetch(
            members,
            dataset=spec.name,
            checksums=checksums,
            root=root,
            allow_download=False,
            gunzipped=False,
        )
        return {m: read_bytes(paths[m]) for m in members}

    archive = fetch(
        [spec.archive],
        dataset=spec.name,
        checksums=checksums,
        root=root,
        mirrors=_CIFAR_MIRRORS,
        allow_download=download,
        gunzipped=False,
        hint=f"unpack it so that {spec.folder}/ sits in one of those folders",
    )[spec.archive]
    return read_tar_members(archive, members)


def _cifar_split(
    spec: _CifarSpec, blobs: dict[str, bytes], names: Sequence[str]
) -> tuple[Tensor, Tensor]:
    images, labels = [], []
    for name in names:
        member = f"{spec.folder}/{name}"
        x, y = parse_cifar_records(
            blobs[member], label_bytes=spec.label_bytes, where=member
        )
        images.append(x)
        labels.append(y[:, spec.label_index])
    return _images(np.concatenate(images)), _labels(np.concatenate(labels))


def _load_cifar(spec: _CifarSpec, root: str | None, download: bool) -> Dataset:
    blobs = _cifar_blobs(spec, root, download)
    train_x, train_y = _cifar_split(spec, blobs, spec.train)
    test_x, test_y = _cifar_split(spec, blobs, spec.test)
    dataset = Dataset(spec.name, train_x, train_y, test_x, test_y, spec.n_classes)
    logger.info("loaded %s", dataset.summary())
    return dataset


_CIFAR10 = _CifarSpec(
    "cifar10",
    archive="cifar-10-binary.tar.gz",
    folder="cifar-10-batches-bin",
    train=tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
    test=("test_batch.bin",),
    label_bytes=1,
    label_index=0,
    n_classes=10,
)

_CIFAR100 = _CifarSpec(
    "cifar100",
    archive="cifar-100-binary.tar.gz",
    folder="cifar-100-binary",
    train=("train.bin",),
    test=("test.bin",),
    label_bytes=2,
    label_index=1,  # each record starts with the coarse label, then the fine one
    n_classes=100,
)


@DATASETS.register("cifar10", summary="CIFAR-10: 50000/10000 colour 32x32, 10 classes")
def cifar10(*, root: str | None = None, download: bool = True) -> Dataset:
    """CIFAR-10, 50000 train and 10000 test colour images of 3x32x32.

    Read from the binary distribution ``cifar-10-binary.tar.gz``, straight from the
    archive or from its unpacked folder ``cifar-10-batches-bin/``.

    Args:
        root: A folder searched first, directly or in its ``cifar10/`` subfolder;
            downloads go to ``root/cifar10/``. None searches ``METACL_DATA`` and the
            user cache.
        download: Whether the archive may be downloaded when missing (163 MiB).

    Returns:
        The dataset, images float32 in [0, 1], labels int64 in [0, 10).

    Raises:
        DataError: The files are missing and cannot be downloaded, or are corrupt or
            fail their checksums.

    References:
        Krizhevsky. Learning multiple layers of features from tiny images. 2009.
    """
    return _load_cifar(_CIFAR10, root, download)


@DATASETS.register(
    "cifar100", summary="CIFAR-100: 50000/10000 colour 32x32, 100 fine classes"
)
def cifar100(*, root: str | None = None, download: bool = True) -> Dataset:
    """CIFAR-100 with its 100 fine labels, 50000 train and 10000 test images of 3x32x32.

    Read from the binary distribution ``cifar-100-binary.tar.gz``, straight from the
    archive or from its unpacked folder ``cifar-100-binary/``.

    Args:
        root: A folder searched first, directly or in its ``cifar100/`` subfolder;
            downloads go to ``root/cifar100/``. None searches ``METACL_DATA`` and the
            user cache.
        download: Whether the archive may be downloaded when missing (161 MiB).

    Returns:
        The dataset, images float32 in [0, 1], fine labels int64 in [0, 100).

    Raises:
        DataError: The files are missing and cannot be downloaded, or are corrupt or
            fail their checksums.

    References:
        Krizhevsky. Learning multiple layers of features from tiny images. 2009.
    """
    return _load_cifar(_CIFAR100, root, download)
