"""Tests of metacl.data.files: search order, checksums, downloads (no network)."""

from __future__ import annotations

import gzip
import hashlib
import io
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from metacl.data import files
from metacl.data.files import (
    cache_dir,
    data_dirs,
    download,
    fetch,
    find_file,
    sha256_of,
    verify,
)
from metacl.errors import DataError

PAYLOAD = b"the official bytes\n" * 100
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees the real cache or a METACL_DATA set outside."""
    monkeypatch.delenv("METACL_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


class FakeMirrors:
    """Stands in for urllib.request.urlopen: serves bytes or fails, by URL."""

    def __init__(self, answers: dict[str, bytes | Exception]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    def __call__(self, request: urllib.request.Request, timeout: float) -> io.BytesIO:
        url = request.full_url
        self.asked.append(url)
        answer = self.answers.get(url, urllib.error.URLError("no route to host"))
        if isinstance(answer, Exception):
            raise answer
        return io.BytesIO(answer)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ------------------------------------------------------------------ search order


def test_data_dirs_order_root_env_cache_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("METACL_DATA", str(tmp_path / "env"))
    extra = tmp_path / "system"

    dirs = data_dirs(tmp_path / "root", extra=[extra])

    assert dirs == [
        tmp_path / "root",
        tmp_path / "env",
        tmp_path / "xdg" / "metacl",
        extra,
    ]


def test_data_dirs_without_root_or_env_and_duplicates(tmp_path: Path) -> None:
    cache = tmp_path / "xdg" / "metacl"

    assert data_dirs(None) == [cache]
    assert data_dirs(cache, extra=[cache]) == [cache]


def test_cache_dir_falls_back_to_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))

    assert cache_dir() == tmp_path / "home" / ".cache" / "metacl"


def test_explicit_root_beats_env_beats_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("METACL_DATA", str(tmp_path / "env"))
    for folder in ("root", "env", "xdg/metacl"):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "f.bin").write_text(folder)

    assert find_file(["f.bin"], data_dirs(tmp_path / "root")).read_text() == "root"
    assert find_file(["f.bin"], data_dirs(None)).read_text() == "env"
    (tmp_path / "env" / "f.bin").unlink()
    assert find_file(["f.bin"], data_dirs(None)).read_text() == "xdg/metacl"


def test_dataset_subfolder_is_searched_before_the_folder(tmp_path: Path) -> None:
    (tmp_path / "mnist").mkdir()
    (tmp_path / "x.gz").write_text("top")
    (tmp_path / "mnist" / "x.gz").write_text("sub")

    assert find_file(["x.gz"], [tmp_path], subdir="mnist").read_text() == "sub"
    assert find_file(["x.gz"], [tmp_path]).read_text() == "top"


def test_gzipped_and_unpacked_names_are_both_found(tmp_path: Path) -> None:
    (tmp_path / "a-idx1-ubyte").write_text("raw")
    (tmp_path / "b-idx1-ubyte.gz").write_text("packed")

    assert find_file(["a-idx1-ubyte.gz"], [tmp_path]).name == "a-idx1-ubyte"
    assert find_file(["b-idx1-ubyte"], [tmp_path]).name == "b-idx1-ubyte.gz"
    assert find_file(["a-idx1-ubyte.gz"], [tmp_path], gunzipped=False) is None
    assert find_file(["nothing"], [tmp_path / "missing"]) is None


# --------------------------------------------------------------------- checksums


def test_sha256_of_matches_hashlib(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(PAYLOAD * 3000)  # several read chunks

    assert sha256_of(path) == hashlib.sha256(PAYLOAD * 3000).hexdigest()


def test_verify_accepts_any_listed_digest(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(PAYLOAD)

    verify(path, DIGEST)
    verify(path, ["0" * 64, DIGEST.upper()])


def test_verify_mismatch_names_file_digests_and_fix(tmp_path: Path) -> None:
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(PAYLOAD + b"!")

    with pytest.raises(DataError) as info:
        verify(path, DIGEST)
    message = str(info.value)
    assert str(path) in message
    assert DIGEST in message
    assert hashlib.sha256(PAYLOAD + b"!").hexdigest() in message
    assert "delete it" in message and "METACL_DATA" in message


def test_verify_accepts_a_repacked_gzip_by_its_content(tmp_path: Path) -> None:
    path = tmp_path / "f.gz"
    path.write_bytes(gzip.compress(PAYLOAD, mtime=12345))

    verify(path, "0" * 64, content_sha256=DIGEST)
    with pytest.raises(DataError, match="checksum mismatch"):
        verify(path, "0" * 64, content_sha256="1" * 64)


# ---------------------------------------------------------------------- download


def test_download_tries_mirrors_in_order_and_verifies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mirrors = FakeMirrors({"https://b/f.gz": PAYLOAD})
    monkeypatch.setattr(urllib.request, "urlopen", mirrors)
    dest = tmp_path / "data" / "f.gz"

    out = download(["https://a/f.gz", "https://b/f.gz", "https://c/f.gz"], dest, DIGEST)

    assert out == dest and dest.read_bytes() == PAYLOAD
    assert mirrors.asked == ["https://a/f.gz", "https://b/f.gz"]
    assert leftovers(dest.parent) == ["f.gz"]
    assert dest.stat().st_mode & 0o777 == 0o644


def test_download_mismatch_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        urllib.request, "urlopen", FakeMirrors({"https://a/f.gz": b"evil"})
    )
    dest = tmp_path / "f.gz"

    with pytest.raises(DataError) as info:
        download(["https://a/f.gz"], dest, DIGEST)
    message = str(info.value)
    assert str(dest) in message and DIGEST in message
    assert hashlib.sha256(b"evil").hexdigest() in message
    assert "delete it" in message
    assert leftovers(tmp_path) == []


def test_download_skips_a_mirror_with_wrong_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    answers = {"https://a/f.gz": b"stale", "https://b/f.gz": PAYLOAD}
    monkeypatch.setattr(urllib.request, "urlopen", FakeMirrors(answers))

    download(["https://a/f.gz", "https://b/f.gz"], tmp_path / "f.gz", DIGEST)

    assert leftovers(tmp_path) == ["f.gz"]


def test_no_network_says_where_to_put_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(urllib.request, "urlopen", FakeMirrors({}))
    dest = tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz"

    with pytest.raises(DataError) as info:
        download(["https://a/x", "https://b/x"], dest, DIGEST)
    message = str(info.value)
    assert "t10k-labels-idx1-ubyte.gz" in message
    assert f"put it in {dest.parent}" in message
    assert "https://a/x" in message and "https://b/x" in message
    assert leftovers(dest.parent) == []


class Interrupting(io.BytesIO):
    def read(self, size: int = -1) -> bytes:
        if self.tell() > 0:
            raise KeyboardInterrupt
        return super().read(10)


def test_interrupt_leaves_no_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        urllib.request, "urlopen", lambda request, timeout: Interrupting(PAYLOAD)
    )

    with pytest.raises(KeyboardInterrupt):
        download(["https://a/f.gz"], tmp_path / "f.gz", DIGEST)
    assert leftovers(tmp_path) == []


def test_connection_dropped_midway_leaves_no_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Dropping(io.BytesIO):
        def read(self, size: int = -1) -> bytes:
            if self.tell() > 0:
                raise ConnectionResetError("reset by peer")
            return super().read(10)

    monkeypatch.setattr(
        urllib.request, "urlopen", lambda request, timeout: Dropping(PAYLOAD)
    )

    with pytest.raises(DataError, match="reset by peer"):
        download(["https://a/f.gz"], tmp_path / "f.gz", DIGEST)
    assert leftovers(tmp_path) == []


# ------------------------------------------------------------------------- fetch


def test_fetch_missing_without_download_lists_every_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("METACL_DATA", str(tmp_path / "env"))

    with pytest.raises(DataError) as info:
        fetch(
            ["a.gz", "b.gz"],
            dataset="toy",
            checksums={},
            root=tmp_path / "root",
            extra_dirs=[tmp_path / "system"],
            allow_download=False,
            hint="install the toy package",
        )
    message = str(info.value)
    for folder in ("root/toy", "root", "env/toy", "env", "xdg/metacl/toy", "system"):
        assert f"  {tmp_path / folder}\n" in message + "\n"
    assert "a.gz, b.gz" in message
    assert "install the toy package" in message and "METACL_DATA" in message
    assert "--data-dir" in message and "download=True" in message


def test_fetch_downloads_into_the_first_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        urllib.request, "urlopen", FakeMirrors({"https://m/a.gz": PAYLOAD})
    )

    paths = fetch(
        ["a.gz"],
        dataset="toy",
        checksums={"a.gz": DIGEST},
        root=tmp_path,
        mirrors=["https://m/"],
    )

    assert paths == {"a.gz": tmp_path / "toy" / "a.gz"}
    assert paths["a.gz"].read_bytes() == PAYLOAD


def test_fetch_failed_download_lists_files_and_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(urllib.request, "urlopen", FakeMirrors({}))

    with pytest.raises(DataError) as info:
        fetch(
            ["a.gz"], dataset="toy", checksums={"a.gz": DIGEST}, mirrors=["https://m/"]
        )
    message = str(info.value)
    assert "file(s) not found: a.gz" in message
    assert "Downloading failed" in message and "https://m/a.gz" in message
    assert str(tmp_path / "xdg" / "metacl" / "toy") in message


def test_fetch_verifies_found_files(tmp_path: Path) -> None:
    (tmp_path / "a.gz").write_bytes(b"tampered")

    with pytest.raises(DataError, match="checksum mismatch"):
        fetch(["a.gz"], dataset="toy", checksums={"a.gz": DIGEST}, root=tmp_path)


def test_fetch_checks_an_unpacked_file_against_its_own_digest(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(PAYLOAD)

    paths = fetch(
        ["a.gz"],
        dataset="toy",
        checksums={"a.gz": "0" * 64, "a": DIGEST},
        root=tmp_path,
    )

    assert paths["a.gz"] == tmp_path / "a"


def test_module_logger_reports_downloads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(
        urllib.request, "urlopen", FakeMirrors({"https://m/a.gz": PAYLOAD})
    )

    with caplog.at_level("INFO", logger=files.__name__):
        download(["https://x/a.gz", "https://m/a.gz"], tmp_path / "a.gz", DIGEST)

    assert any("could not download a.gz" in r.message for r in caplog.records)
    assert any("SHA-256 verified" in r.message for r in caplog.records)


def test_unwritable_destination_is_a_data_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        urllib.request, "urlopen", FakeMirrors({"https://m/a": PAYLOAD})
    )
    (tmp_path / "file").write_text("a file, not a folder")

    with pytest.raises(DataError, match="cannot write a.gz into"):
        download(["https://m/a"], tmp_path / "file" / "a.gz", DIGEST)
