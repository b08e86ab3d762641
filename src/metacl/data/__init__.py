"""Datasets: loading real data files into tensors, and the dataset registry.

Importing this package registers every dataset (``mnist``, ``fashion_mnist``,
``cifar10``, ``cifar100``, ``digits``, ``mnist1d``, ``omniglot``); :func:`load_dataset`
builds one by name from keyword settings.
"""

from metacl.data.base import DATASETS, Dataset, load_dataset
from metacl.data.files import (
    ENV_VAR,
    cache_dir,
    data_dirs,
    download,
    fetch,
    find_file,
    sha256_of,
    verify,
)
from metacl.data.readers import read_cifar_binary, read_idx, read_tar_members

# NOTE: imported for their side effect, the registration of their datasets.
from metacl.data import embedded, omniglot, vision  # noqa: E402, F401  # isort: skip

__all__ = [
    "Dataset",
    "DATASETS",
    "load_dataset",
    "ENV_VAR",
    "cache_dir",
    "data_dirs",
    "find_file",
    "sha256_of",
    "verify",
    "download",
    "fetch",
    "read_idx",
    "read_cifar_binary",
    "read_tar_members",
]
