"""Tests of metacl.data.omniglot on small archives the tests write (no network)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metacl.data import load_dataset
from metacl.data import omniglot as module
from metacl.data.files import sha256_of
from metacl.errors import ConfigError, DataError
from metacl.meta.tasks import EpisodeTasks

# (archive, alphabet, characters): a stand-in with the official layout
LAYOUT = {
    "background": {"Alpha": 2, "Beta": 1},
    "evaluation": {"Gamma": 2},
}
DRAWINGS = 6


def _png(character: int, drawer: int) -> bytes:
    """A white 20x20 image with a black square whose place tells the drawing."""
    pixels = np.full((20, 20), 255, dtype=np.uint8)
    row, col = 2 * character, 2 * drawer
    pixels[row : row + 2, col : col + 2] = 0
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").convert("1").save(buffer, format="PNG")
    return buffer.getvalue()


def _write_archives(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths, character = {}, 0
    for subset, alphabets in LAYOUT.items():
        path = folder / module.ARCHIVES[subset]
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr(f"images_{subset}/", b"")
            for alphabet, count in alphabets.items():
                for c in range(1, count + 1):
                    for drawer in range(1, DRAWINGS + 1):
                        name = f"images_{subset}/{alphabet}/character{c:02d}/{900 + character:04d}_{drawer:02d}.png"
                        archive.writestr(name, _png(character, drawer))
                    character += 1
            archive.writestr("__MACOSX/ignored.txt", b"not an image")
        paths[subset] = path
    return paths


@pytest.fixture
def archives(tmp_path, monkeypatch):
    """Stand-in archives in tmp_path/data/omniglot, their digests in CHECKSUMS, and a
    private cache folder."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("METACL_DATA", raising=False)
    paths = _write_archives(tmp_path / "data" / "omniglot")
    for path in paths.values():
        monkeypatch.setitem(module.CHECKSUMS, path.name, (sha256_of(path),))
    return paths


def test_loads_every_character_as_a_class_split_by_drawer(archives, tmp_path):
    ds = load_dataset(
        "omniglot", root=str(tmp_path / "data"), download=False, size=20, test_drawers=2
    )
    assert ds.n_classes == 5 and ds.input_shape == (1, 20, 20)
    assert len(ds.train_x) == 5 * 4 and len(ds.test_x) == 5 * 2
    assert ds.train_y.tolist() == [c for c in range(5) for _ in range(4)]
    # strokes are 1 on a 0 background; the square's place tells class and drawer
    for x, y, drawers in (
        (ds.train_x, ds.train_y, range(1, 5)),
        (ds.test_x, ds.test_y, (5, 6)),
    ):
        for image, label, drawer in zip(
            x, y, [d for _ in range(5) for d in drawers], strict=True
        ):
            row, col = 2 * int(label), 2 * drawer
            assert float(image[0, row, col]) == 1.0
            assert float(image.sum()) == 4.0
    assert ds.train_x.dtype == torch.float32 and ds.train_y.dtype == torch.int64

    background = load_dataset(
        "omniglot",
        root=str(tmp_path / "data"),
        download=False,
        size=20,
        subset="background",
    )
    assert background.n_classes == 3  # Alpha's two characters and Beta's one
    small = load_dataset(
        "omniglot", root=str(tmp_path / "data"), download=False, size=10
    )
    assert small.input_shape == (1, 10, 10)


def test_episodes_draw_from_omniglot(archives, tmp_path):
    ds = load_dataset("omniglot", root=str(tmp_path / "data"), download=False, size=20)
    family = EpisodeTasks(ds, ways=2, shots=1, query_shots=2, splits=(3, 0, 2))
    batch = family.sample(3, generator=torch.Generator().manual_seed(0))
    assert batch.support_x.shape == (3, 2, 1, 20, 20)


def test_the_decoded_arrays_are_cached(archives, tmp_path, monkeypatch):
    first = load_dataset(
        "omniglot", root=str(tmp_path / "data"), download=False, size=20
    )

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(module, "_build_arrays", no_decoding)
    second = load_dataset(
        "omniglot", root=str(tmp_path / "data"), download=False, size=20
    )
    assert torch.equal(first.train_x, second.train_x)
    assert torch.equal(first.test_y, second.test_y)


def test_download_from_a_mirror_is_verified(archives, tmp_path, monkeypatch):
    mirror = archives["background"].parent.as_uri() + "/"
    monkeypatch.setattr(module, "MIRRORS", (mirror,))
    root = tmp_path / "fresh"
    ds = load_dataset("omniglot", root=str(root), size=20, cache=False)
    assert ds.n_classes == 5
    assert (root / "omniglot" / "images_background.zip").is_file()

    # a mirror serving other bytes: an error naming the checksum, and nothing kept
    monkeypatch.setitem(module.CHECKSUMS, "images_evaluation.zip", ("0" * 64,))
    other = tmp_path / "other"
    with pytest.raises(DataError, match="checksum mismatch"):
        load_dataset("omniglot", root=str(other), subset="evaluation", size=20)
    assert not list((other / "omniglot").glob("*"))


def test_missing_corrupt_or_unverified_archives_give_clear_errors(
    archives, tmp_path, monkeypatch
):
    with pytest.raises(DataError, match="(?s)images_background.zip.*download=False"):
        load_dataset("omniglot", root=str(tmp_path / "empty"), download=False)

    # right name, wrong content: the checksum catches it
    monkeypatch.setitem(module.CHECKSUMS, "images_evaluation.zip", ("f" * 64,))
    with pytest.raises(DataError, match="checksum mismatch"):
        load_dataset("omniglot", root=str(tmp_path / "data"), download=False, size=20)

    # a file that passes its (patched) checksum but is not a zip archive
    bad = tmp_path / "bad" / "omniglot" / "images_background.zip"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"PK\x03\x04 truncated")
    monkeypatch.setitem(module.CHECKSUMS, bad.name, (sha256_of(bad),))
    with pytest.raises(DataError, match="truncated or corrupt"):
        load_dataset(
            "omniglot", root=str(tmp_path / "bad"), subset="background", cache=False
        )

    # a zip archive whose image is not a PNG
    with zipfile.ZipFile(bad, "w") as archive:
        archive.writestr("images_background/A/character01/1_01.png", b"no png here")
    monkeypatch.setitem(module.CHECKSUMS, bad.name, (sha256_of(bad),))
    with pytest.raises(DataError, match="not a readable PNG"):
        load_dataset(
            "omniglot", root=str(tmp_path / "bad"), subset="background", cache=False
        )


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        ({"subset": "train"}, "subset = 'train'"),
        ({"size": 2}, "size = 2"),
        ({"test_drawers": 20}, "test_drawers = 20"),
    ],
)
def test_bad_settings_are_named(settings, fragment):
    with pytest.raises(ConfigError) as error:
        load_dataset("omniglot", download=False, **settings)
    assert fragment in str(error.value)
