"""The on-disk cache of decoded images: a second load reads it, and it never changes what is loaded."""

import os

import elpv_dataset.utils
import numpy as np
import pytest
from conftest import write_image

from fgssl_tf.data import disk_cache, sources
from fgssl_tf.data import images as image_io


@pytest.fixture
def fake_elpv(monkeypatch):
    """A stand-in for elpv's decoder with as many images (tiny ones), counting its calls."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=[sources.ELPV_IMAGE_COUNT, 12, 12], dtype=np.uint8)
    probabilities = rng.choice([0.0, 1 / 3, 2 / 3, 1.0], size=sources.ELPV_IMAGE_COUNT)
    calls = []

    def load_dataset():
        calls.append(1)
        return images, probabilities, np.array(["mono"] * len(images))

    monkeypatch.setattr(elpv_dataset.utils, "load_dataset", load_dataset)
    return calls


def _equal(a, b):
    return all(np.array_equal(a.images[s], b.images[s]) and np.array_equal(a.labels[s], b.labels[s]) for s in a.images)


def test_a_second_load_reads_the_cache_and_loads_the_same_arrays(fake_elpv, tmp_path, monkeypatch):
    monkeypatch.setenv(disk_cache.CACHE_DIR_ENV, str(tmp_path / "cache"))
    first = sources.load_elpv(8)
    second = sources.load_elpv(8)
    assert len(fake_elpv) == 1  # decoded once
    assert _equal(first, second)
    assert second.images["train"].shape[1:] == (8, 8, 3)
    sources.load_elpv(10)  # another size is another entry
    assert len(fake_elpv) == 2

    monkeypatch.setenv(disk_cache.CACHE_DIR_ENV, "")  # empty: no cache
    uncached = sources.load_elpv(8)
    assert len(fake_elpv) == 3
    assert _equal(first, uncached)


def test_an_unusable_cache_directory_only_costs_the_speed_up(fake_elpv, tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    monkeypatch.setenv(disk_cache.CACHE_DIR_ENV, str(blocker / "cache"))
    loaded = sources.load_elpv(8)
    assert len(fake_elpv) == 1 and loaded.images["test"].shape[1:] == (8, 8, 3)
    assert "not usable" in caplog.text and "decoding without it" in caplog.text


def test_the_default_cache_is_in_the_users_cache_folder(monkeypatch):
    monkeypatch.delenv(disk_cache.CACHE_DIR_ENV, raising=False)
    assert disk_cache.cache_dir() == os.path.join(os.path.expanduser("~"), ".cache", "fgssl_tf")


def _folder(root, rng):
    for label in ("a", "b"):
        for i in range(4):
            write_image(os.path.join(root, label, f"{i}.png"), rng.integers(0, 256, size=[20, 20, 3], dtype=np.uint8))
    with open(os.path.join(root, "a", "broken.jpg"), "wb") as f:
        f.write(b"not a jpeg")


def test_a_folder_is_decoded_again_only_where_a_file_changed(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv(disk_cache.CACHE_DIR_ENV, str(tmp_path / "cache"))
    root = str(tmp_path / "images")
    rng = np.random.default_rng(0)
    _folder(root, rng)
    runs = []
    decode = image_io._decode_with_pil  # called by every uncached decode of a .tif

    first = sources.load_folder(root, 8, 0.25, None)
    monkeypatch.setattr(image_io, "_decode_with_pil", lambda *a: runs.append(1) or decode(*a))
    write_image(os.path.join(root, "b", "extra.tif"), rng.integers(0, 256, size=[20, 20, 3], dtype=np.uint8))
    with_tif = sources.load_folder(root, 8, 0.25, None)
    assert len(runs) == 1  # a new file: decoded
    caplog.clear()
    again = sources.load_folder(root, 8, 0.25, None)
    assert len(runs) == 1  # unchanged: read from the cache
    assert _equal(with_tif, again) and "broken.jpg" in caplog.text  # the skipped file is still reported
    assert again.skipped_files == first.skipped_files == [os.path.join(root, "a", "broken.jpg")]

    # An image rewritten in place: its new pixels, not the cached ones.
    write_image(os.path.join(root, "b", "extra.tif"), np.zeros([20, 20, 3], np.uint8))
    edited = sources.load_folder(root, 8, 0.25, None)
    assert len(runs) == 2
    monkeypatch.setenv(disk_cache.CACHE_DIR_ENV, "")
    assert _equal(edited, sources.load_folder(root, 8, 0.25, None))
    assert not _equal(edited, again)
