"""Data sources, splits, decoding of awkward files and the unlabelled pool."""

import os

import numpy as np
import pytest
import tensorflow as tf

from conftest import write_image
from fgssl_tf.config import DataConfig
from fgssl_tf.data import label_fraction_subset, load_splits, pipeline, stratified_split
from fgssl_tf.errors import FgsslError

# Recorded when the elpv split was fixed; the split must never change.
ELPV_SPLIT_FINGERPRINT = "3eb2fe1f77e875e3"


def test_elpv_splits_are_stratified_disjoint_and_fixed(elpv_splits):
    sizes = {name: len(elpv_splits.split(name)[1]) for name in ("train", "val", "test")}
    assert sum(sizes.values()) == 2624
    assert sizes["train"] == pytest.approx(0.6 * 2624, abs=4)
    assert elpv_splits.num_classes == 4
    train_frac = np.bincount(elpv_splits.train_labels) / sizes["train"]
    test_frac = np.bincount(elpv_splits.test_labels) / sizes["test"]
    np.testing.assert_allclose(train_frac, test_frac, atol=0.01)
    assert elpv_splits.train_images.dtype == np.uint8
    assert elpv_splits.train_images.shape[1:] == (32, 32, 3)
    assert elpv_splits.stats["split_fingerprint"] == ELPV_SPLIT_FINGERPRINT
    # Disjoint: no image appears in two splits (the elpv images are all distinct).
    def keys(images):
        return {img.tobytes() for img in images}
    assert not keys(elpv_splits.train_images[:300]) & keys(elpv_splits.test_images)


def test_dataset_yields_uint8_images_and_labels(elpv_splits):
    images, labels = next(iter(elpv_splits.dataset("val", batch_size=8)))
    assert images.dtype == tf.uint8 and images.shape == (8, 32, 32, 3)
    assert labels.dtype == tf.int64


def test_stratified_split_is_seeded_and_complete():
    labels = np.repeat(np.arange(3), [50, 30, 7])
    parts = stratified_split(labels, (0.6, 0.2, 0.2), seed=3)
    again = stratified_split(labels, (0.6, 0.2, 0.2), seed=3)
    other = stratified_split(labels, (0.6, 0.2, 0.2), seed=4)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other))
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(len(labels)))
    for part in parts:  # every class present in every part
        assert set(labels[part]) == {0, 1, 2}


def test_label_fraction_subset_keeps_every_class():
    labels = np.repeat(np.arange(4), [100, 20, 5, 60])
    subset = label_fraction_subset(labels, 0.1, seed=0)
    assert set(labels[subset]) == {0, 1, 2, 3}
    assert len(subset) == pytest.approx(18, abs=2)
    assert not np.array_equal(subset, label_fraction_subset(labels, 0.1, seed=1))


def test_epoch_batches_depend_only_on_seed_and_epoch():
    images = np.arange(20, dtype=np.uint8).reshape(20, 1, 1, 1).repeat(3, axis=-1)
    labels = np.arange(20)
    full = [b[1].numpy().tolist() for b in pipeline.epoch_batches(images, labels, 4, 7, 0, 3, 5)]
    resumed = [b[1].numpy().tolist() for b in pipeline.epoch_batches(images, labels, 4, 7, 2, 3, 5)]
    assert resumed == full[10:]  # epoch 2 is the same whether or not epochs 0-1 ran here
    assert sorted(sum(full[:5], [])) == list(range(20))  # one epoch sees each image once
    assert full[:5] != full[5:10]


def _make_folder(root, rng, per_class=6, size=(40, 30)):
    for label in ("alpha", "beta"):
        for i in range(per_class):
            base = 60 if label == "alpha" else 190
            write_image(os.path.join(root, label, f"{i}.png"), rng.randint(base - 50, base + 50, size + (3,)).astype(np.uint8))


def test_folder_dataset_converts_gray_rgba_and_skips_corrupt(tmp_path, caplog):
    rng = np.random.RandomState(0)
    root = str(tmp_path / "data")
    _make_folder(root, rng)
    write_image(os.path.join(root, "alpha", "gray.png"), rng.randint(0, 255, (20, 20)).astype(np.uint8))
    write_image(os.path.join(root, "beta", "rgba.png"), rng.randint(0, 255, (20, 20, 4)).astype(np.uint8))
    write_image(os.path.join(root, "beta", "photo.jpg"), rng.randint(0, 255, (50, 50, 3)).astype(np.uint8), "JPEG")
    with open(os.path.join(root, "alpha", "truncated.jpg"), "wb") as f:
        f.write(open(os.path.join(root, "beta", "photo.jpg"), "rb").read()[:200])
    with open(os.path.join(root, "beta", "not_an_image.jpg"), "w") as f:
        f.write("hello")
    open(os.path.join(root, "beta", "empty.png"), "wb").close()
    splits = load_splits(DataConfig(dataset=f"folder:{root}", image_size=16))
    total = sum(len(splits.split(n)[1]) for n in ("train", "val", "test"))
    assert total == 6 + 6 + 3
    assert splits.stats["skipped_files"] == 3
    assert "truncated.jpg" in caplog.text
    assert splits.class_names == ("alpha", "beta")
    for name in ("train", "val", "test"):
        images, labels = splits.split(name)
        assert images.shape[1:] == (16, 16, 3) and images.dtype == np.uint8
        assert set(labels) == {0, 1}


def test_folder_with_train_test_layout_carves_val(tmp_path):
    rng = np.random.RandomState(1)
    _make_folder(str(tmp_path / "d" / "train"), rng, per_class=10)
    _make_folder(str(tmp_path / "d" / "test"), rng, per_class=3)
    splits = load_splits(DataConfig(dataset=f"folder:{tmp_path / 'd'}", image_size=16, val_fraction=0.2))
    assert len(splits.test_labels) == 6
    assert len(splits.val_labels) == 4 and len(splits.train_labels) == 16


def test_missing_empty_and_unknown_datasets_fail_clearly(tmp_path):
    with pytest.raises(FgsslError, match="does not exist"):
        load_splits(DataConfig(dataset=f"folder:{tmp_path / 'nope'}"))
    (tmp_path / "empty" / "a").mkdir(parents=True)
    (tmp_path / "empty" / "b").mkdir(parents=True)
    with pytest.raises(FgsslError, match="no images"):
        load_splits(DataConfig(dataset=f"folder:{tmp_path / 'empty'}"))
    with pytest.raises(FgsslError, match="unknown --dataset"):
        load_splits(DataConfig(dataset="imagenet"))


def test_unlabeled_pool_drops_copies_of_val_and_test(tmp_path, elpv_splits):
    from fgssl_tf.data import sources

    root = str(tmp_path / "unlabeled")
    rng = np.random.RandomState(2)
    test_images, _ = elpv_splits.split("test")
    val_images, _ = elpv_splits.split("val")
    # 3 exact copies and 2 JPEG re-encodings (the same photo saved again, quality 95)...
    for i in range(3):
        write_image(os.path.join(root, f"copy{i}.png"), test_images[i])
    for i in range(2):
        write_image(os.path.join(root, "sub", f"near{i}.jpg"), val_images[i], "JPEG", quality=95)
    # ...and 6 images that are not in val or test.
    for i in range(6):
        write_image(os.path.join(root, f"new{i}.png"), rng.randint(0, 255, (32, 32, 3)).astype(np.uint8))
    raw = sources.RawSplits(
        images={"train": elpv_splits.train_images, "val": val_images, "test": test_images},
        labels={"train": elpv_splits.train_labels, "val": elpv_splits.val_labels, "test": elpv_splits.test_labels},
        class_names=elpv_splits.class_names,
    )
    original = sources.load_elpv
    sources.load_elpv = lambda image_size: raw
    try:
        splits = load_splits(DataConfig(dataset="elpv", image_size=32, unlabeled_dir=root))
    finally:
        sources.load_elpv = original
    assert splits.stats["unlabeled_dropped_as_val_test_duplicates"] == 5
    assert splits.stats["unlabeled_kept"] == 6
    assert len(splits.pretraining_pool()) == len(splits.train_images) + 6


def test_cassava_loads_through_tfds(tmp_path):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=12):
        splits = load_splits(DataConfig(dataset="cassava", image_size=24))
    assert splits.num_classes == 5
    assert splits.class_names[0] == "cbb"
    for name in ("train", "val", "test"):
        images, labels = splits.split(name)
        assert images.shape == (12, 24, 24, 3) and images.dtype == np.uint8
        assert labels.min() >= 0 and labels.max() < 5


def test_cassava_without_internet_explains_what_to_do(tmp_path):
    with pytest.raises(FgsslError, match="tfds_data_dir"):
        load_splits(DataConfig(dataset="cassava", image_size=24, tfds_data_dir=str(tmp_path / "nowhere")))
