"""Finding, downloading and verifying dataset files.

A dataset file is looked for in a fixed order of folders (see :func:`data_dirs`); in
each folder both the dataset's own subfolder (``<folder>/fashion_mnist/``) and the
folder itself are searched, and a gzipped file may also be found unpacked. A file that
is found is checked against the SHA-256 digests known for it before it is read. A file
that is missing is downloaded, when allowed, into the first folder of the search order,
mirror after mirror, and only a file whose digest matches is ever moved into place.

Example:
    >>> from metacl.data.files import data_dirs
    >>> data_dirs("/data")[0].as_posix()
    '/data'
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.client
import logging
import os
import tempfile
import urllib.request
import zlib
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

from metacl.errors import DataError

__all__ = [
    "ENV_VAR",
    "cache_dir",
    "data_dirs",
    "search_folders",
    "find_file",
    "sha256_of",
    "verify",
    "download",
    "fetch",
]

logger = logging.getLogger(__name__)

ENV_VAR = "METACL_DATA"
"""Environment variable naming a folder that holds dataset files."""

_CHUNK = 1 << 20
_USER_AGENT = "metacl (dataset download)"

Digests = str | Collection[str]
"""One SHA-256 hex digest, or several that are all accepted."""


def cache_dir() -> Path:
    """The user cache folder: ``$XDG_CACHE_HOME/metacl`` or ``~/.cache/metacl``."""
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path.home() / ".cache") / "metacl"


def data_dirs(
    root: str | Path | None = None, *, extra: Iterable[Path] = ()
) -> list[Path]:
    """The folders searched for dataset files, first match wins.

    The order is: ``root``, the folder named by the ``METACL_DATA`` environment
    variable, the user cache (:func:`cache_dir`), then ``extra``. Downloads go into the
    first folder of the list, so ``extra`` should hold read-only system folders only.

    Args:
        root: A folder given explicitly (the CLI's ``--data-dir``), or None.
        extra: Dataset-specific folders searched last, such as the folder a system
            package installs the files into.

    Returns:
        The folders in search order, without duplicates. They need not exist.
    """
    dirs: list[Path] = []
    if root is not None and str(root) != "":
        dirs.append(Path(root).expanduser())
    env = os.environ.get(ENV_VAR)
    if env:
        dirs.append(Path(env).expanduser())
    dirs.append(cache_dir())
    dirs.extend(Path(d) for d in extra)

    unique: list[Path] = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique


def search_folders(dirs: Iterable[Path], subdir: str | None = None) -> list[Path]:
    """Every folder :func:`find_file` looks into, in order: ``<dir>/<subdir>``, ``<dir>``."""
    folders: list[Path] = []
    for d in dirs:
        for folder in (d / subdir, d) if subdir else (d,):
            if folder not in folders:
                folders.append(folder)
    return folders


def _variants(name: str, gunzipped: bool) -> list[str]:
    if not gunzipped:
        return [name]
    if name.endswith(".gz"):
        return [name, name[: -len(".gz")]]
    return [name, name + ".gz"]


def find_file(
    names: Sequence[str],
    dirs: Iterable[Path],
    *,
    subdir: str | None = None,
    gunzipped: bool = True,
) -> Path | None:
    """The first existing file among ``names`` in the folders ``dirs``.

    Folders are tried in order, each as ``<dir>/<subdir>`` and then ``<dir>``; within a
    folder the names are tried in order, each also with ``.gz`` added or removed when
    ``gunzipped`` is true.

    Args:
        names: File names (or relative paths) to look for, preferred first.
        dirs: Folders in search order, as from :func:`data_dirs`.
        subdir: The dataset's own subfolder name, searched before the folder itself.
        gunzipped: Whether ``x.gz`` may also be found as ``x`` and the reverse.

    Returns:
        The path of the first match, or None when no folder holds any of the names.
    """
    for folder in search_folders(dirs, subdir):
        for name in names:
            for variant in _variants(name, gunzipped):
                path = folder / variant
                if path.is_file():
                    return path
    return None


def sha256_of(path: str | Path) -> str:
    """The SHA-256 hex digest of the file at ``path``, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _digest_set(sha256: Digests) -> set[str]:
    if isinstance(sha256, str):
        return {sha256.lower()}
    return {d.lower() for d in sha256}


def _content_sha256(path: Path) -> str | None:
    """SHA-256 of a gzip file's decompressed content; None if it is not valid gzip."""
    digest = hashlib.sha256()
    try:
        with gzip.open(path, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    except (OSError, EOFError, zlib.error):
        return None
    return digest.hexdigest()


def _mismatch_message(path: Path, expected: set[str], actual: str) -> str:
    wanted = " or ".join(sorted(expected))
    return (
        f"checksum mismatch for {path}: expected SHA-256 {wanted}, found {actual}. "
        "The file is truncated, corrupt or another version: delete it and load the "
        f"dataset again to re-download it, or set {ENV_VAR} (or --data-dir) to a folder "
        "that holds the official file"
    )


def verify(path: str | Path, sha256: Digests, *, content_sha256: Digests = ()) -> None:
    """Check that the file at ``path`` has one of the expected SHA-256 digests.

    Args:
        path: The file to check.
        sha256: The accepted digest, or several accepted digests.
        content_sha256: Digests of the decompressed content of a gzip file. A gzip file
            whose own digest is unknown still passes when its content matches; this
            accepts a file that was only re-packed (a new gzip header, as some
            distributions write), at the cost of decompressing it once more.

    Raises:
        DataError: The digest matches none of the expected ones; the message names the
            file, the expected and the actual digest, and how to fix it.
    """
    path = Path(path)
    expected = _digest_set(sha256)
    actual = sha256_of(path)
    if actual in expected:
        return

    content = _digest_set(content_sha256)
    if content:
        found = _content_sha256(path)
        if found in content:
            logger.info("%s is a re-packed gzip of the official content", path)
            return
    raise DataError(_mismatch_message(path, expected, actual))


class _NoMirrorAnswered(DataError):
    """Every mirror failed with a network error; none served wrong bytes."""


def _fetch_to(url: str, handle: BinaryIO, timeout: float) -> str:
    """Stream ``url`` into the open binary ``handle``; return the SHA-256 of the bytes."""
    digest = hashlib.sha256()
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        while chunk := response.read(_CHUNK):
            digest.update(chunk)
            handle.write(chunk)
    return digest.hexdigest()


def _temporary_beside(dest: Path) -> tuple[Path, int]:
    """A new empty file in ``dest``'s folder (created if need be), and its descriptor."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(
            prefix=f".{dest.name}.", suffix=".part", dir=dest.parent
        )
    except OSError as error:
        raise DataError(
            f"cannot write {dest.name} into {dest.parent}: {error}; pass a writable "
            f"folder as root (--data-dir) or set {ENV_VAR} to one"
        ) from error
    return Path(name), fd


def download(
    urls: Sequence[str], dest: str | Path, sha256: Digests, *, timeout: float = 60.0
) -> Path:
    """Download a file from the first mirror that serves it with the right digest.

    Each mirror's bytes go to a temporary file beside ``dest`` and are hashed as they
    arrive; the file is moved onto ``dest`` (atomically, with :func:`os.replace`) only
    when the digest matches. Whatever happens, including an interrupt, no partial or
    unverified file is left behind.

    Args:
        urls: Full URLs of the file, tried in order.
        dest: Where the verified file is written; its folder is created.
        sha256: The accepted SHA-256 digest(s).
        timeout: Seconds to wait on a silent connection.

    Returns:
        ``dest`` as a :class:`~pathlib.Path`.

    Raises:
        DataError: A mirror served bytes with another digest and no later mirror served
            the right ones (the message names the file, both digests and the fix), or
            no mirror could be reached (the message says where to put the file by
            hand).
    """
    dest = Path(dest)
    expected = _digest_set(sha256)
    failures: list[str] = []
    mismatch: str | None = None

    for url in urls:
        logger.info("downloading %s from %s", dest.name, url)
        tmp, fd = _temporary_beside(dest)
        try:
            with os.fdopen(fd, "wb") as handle:
                actual = _fetch_to(url, handle, timeout)
            if actual in expected:
                tmp.chmod(0o644)  # mkstemp made it private; a data file is not
                os.replace(tmp, dest)
                logger.info("saved %s (SHA-256 verified)", dest)
                return dest
            logger.warning(
                "%s from %s has SHA-256 %s; expected another", dest.name, url, actual
            )
            mismatch = (
                f"{_mismatch_message(dest, expected, actual)} (the bytes came from {url} "
                "and were not kept)"
            )
        except (OSError, http.client.HTTPException, ValueError) as error:
            logger.warning("could not download %s from %s: %s", dest.name, url, error)
            failures.append(f"{url}: {error}")
        finally:
            # NOTE: runs on every way out, KeyboardInterrupt included; after a
            # successful os.replace the temporary name no longer exists.
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    if mismatch is not None:
        raise DataError(mismatch)
    tried = "; ".join(failures) or "no mirror is known for it"
    raise _NoMirrorAnswered(
        f"could not download {dest.name} ({tried}). Download it by hand and put it in "
        f"{dest.parent}, or in a folder named by {ENV_VAR} or passed as --data-dir"
    )


def _missing_message(
    dataset: str, names: Sequence[str], folders: Sequence[Path], reason: str, hint: str
) -> str:
    listed = "\n".join(f"  {folder}" for folder in folders)
    fixes = [
        "put the files (gzipped or not) into one of those folders",
        "pass the folder that holds them as root= (the CLI's --data-dir)",
        f"set {ENV_VAR} to it",
    ]
    if hint:
        fixes.append(hint)
    fixes.append("allow download (download=True) on a machine with network access")
    return (
        f"dataset {dataset!r}: file(s) not found: {', '.join(names)}\n"
        f"searched, in order:\n{listed}\n{reason}\n"
        f"To fix: {'; or '.join(fixes)}."
    )


def fetch(
    names: Sequence[str],
    *,
    dataset: str,
    checksums: Mapping[str, Digests],
    root: str | Path | None = None,
    extra_dirs: Iterable[Path] = (),
    mirrors: Sequence[str] = (),
    allow_download: bool = True,
    gunzipped: bool = True,
    hint: str = "",
) -> dict[str, Path]:
    """Find, verify and, when missing, download the files of one dataset.

    Args:
        names: The files the dataset needs, by their download names.
        dataset: The dataset's registered name; also its subfolder name.
        checksums: Accepted SHA-256 digest(s) by file name, for the download names and
            for the unpacked names of gzip files. A found file whose name has no entry
            is read unverified, with a warning; a downloaded file must have one.
        root: An explicit folder searched first and downloaded into.
        extra_dirs: Dataset-specific folders searched last.
        mirrors: Base URLs; a file's URL is the base followed by its name.
        allow_download: Whether missing files may be downloaded.
        gunzipped: Whether ``x.gz`` may be found unpacked as ``x``.
        hint: One more way to fix a missing file, for the error message.

    Returns:
        The path of each file, by its name in ``names`` (the path may be the unpacked
        variant).

    Raises:
        DataError: A file fails its checksum, or is missing and cannot be downloaded;
            the message lists every folder searched and how to fix it.
    """
    dirs = data_dirs(root, extra=extra_dirs)
    found: dict[str, Path] = {}
    missing: list[str] = []

    # look in every folder, and check what is there
    for name in names:
        path = find_file([name], dirs, subdir=dataset, gunzipped=gunzipped)
        if path is None:
            missing.append(name)
            continue
        if path.name in checksums:
            unpacked = path.name.removesuffix(".gz")
            content = checksums.get(unpacked, ()) if unpacked != path.name else ()
            verify(path, checksums[path.name], content_sha256=content)
        else:
            logger.warning("no known checksum for %s; reading it unverified", path)
        logger.debug("dataset %r: using %s", dataset, path)
        found[name] = path
    if not missing:
        return found

    # download what is missing into the first folder
    folders = search_folders(dirs, dataset)
    if not allow_download:
        raise DataError(
            _missing_message(
                dataset,
                missing,
                folders,
                "download=False, so nothing was downloaded.",
                hint,
            )
        )
    target = dirs[0] / dataset
    for name in missing:
        if name not in checksums:
            raise DataError(
                f"dataset {dataset!r}: no known checksum for {name}, so it is not "
                "downloaded; put the file in one of the searched folders by hand"
            )
        urls = [base + name for base in mirrors]
        try:
            found[name] = download(urls, target / name, checksums[name])
        except _NoMirrorAnswered as error:
            raise DataError(
                _missing_message(
                    dataset, missing, folders, f"Downloading failed: {error}", hint
                )
            ) from error
    return found
