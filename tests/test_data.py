"""Data sources, splits, decoding of awkward files and the unlabelled pool."""

import os

import numpy as np
import pytest
import tensorflow as tf
from conftest import write_image

from fgssl_tf.config import BackboneConfig, DataConfig
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
            write_image(
                os.path.join(root, label, f"{i}.png"), rng.randint(base - 50, base + 50, size + (3,)).astype(np.uint8)
            )


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


def _solid(path, colour, fmt=None, **options):
    write_image(str(path), np.full((12, 10, 3), colour, np.uint8), fmt, **options)


def test_val_or_test_classes_that_train_lacks_are_an_error_or_with_the_flag_counted(tmp_path):
    root = tmp_path / "d"
    for split, classes, count in (("train", ("alpha", "beta"), 6), ("test", ("alpha", "beta", "gamma", "delta"), 2)):
        for c, label in enumerate(classes):
            for i in range(count):
                _solid(root / split / label / f"{i}.png", (40 * c, 10 * i, 0))
    lacks = r"classes that train lacks \(test: 'delta', 'gamma'; 4 images\).*--allow_unseen_classes"
    with pytest.raises(FgsslError, match=lacks):
        load_splits(DataConfig(dataset=f"folder:{root}", image_size=8))
    splits = load_splits(DataConfig(dataset=f"folder:{root}", image_size=8, allow_unseen_classes=True))
    assert splits.stats["unseen_classes"] == {"test": ["delta", "gamma"]} and splits.stats["unseen_class_files"] == 4
    assert len(splits.test_labels) == 4 and splits.class_names == ("alpha", "beta")
    from fgssl_tf.evaluation import EvalConfig, evaluate  # the count reaches the evaluation report

    report = evaluate(
        EvalConfig(
            baseline="random_init",
            protocol="knn",
            dataset=f"folder:{root}",
            image_size=8,
            backbone=BackboneConfig(name="resnet10", width=4),
            output_dir=str(tmp_path / "report"),
            allow_unseen_classes=True,
        )
    )
    assert report["unseen_class_files"] == 4 and report["unseen_classes"] == {"test": ["delta", "gamma"]}
    assert "left out: 4 val/test images of classes train lacks" in (tmp_path / "report" / "report.md").read_text()


def test_webp_and_tiff_are_decoded_and_other_files_counted(tmp_path, caplog):
    from PIL import Image

    root = tmp_path / "d"
    for label in ("alpha", "beta"):
        for i in range(4):
            _solid(root / label / f"{i}.png", (100, 20 * i, 0 if label == "alpha" else 200))
    _solid(root / "alpha" / "lossless.webp", (11, 22, 33), "WEBP", lossless=True)
    _solid(root / "alpha" / "plain.tif", (44, 55, 66), "TIFF")
    Image.fromarray(np.full((9, 7), 51400, np.uint16)).save(root / "beta" / "sixteen_bit.TIFF")  # 51400/65535 = 200/255
    (root / "beta" / "broken.tiff").write_bytes(b"II*\x00garbage")
    (root / "beta" / "notes.txt").write_text("not an image")
    splits = load_splits(DataConfig(dataset=f"folder:{root}", image_size=8))
    everything = np.concatenate([splits.split(n)[0] for n in ("train", "val", "test")]).reshape(-1, 64, 3)
    colours = {tuple(image[0]) for image in everything if (image == image[0]).all()}
    assert {(11, 22, 33), (44, 55, 66), (200, 200, 200)} <= colours
    assert len(everything) == 8 + 3
    assert splits.stats["skipped_files"] == 1 and splits.stats["skipped_paths"][0].endswith("broken.tiff")
    assert splits.stats["ignored_files"] == 1 and splits.stats["ignored_files_paths"][0].endswith("notes.txt")
    assert "are not images" in caplog.text and "notes.txt" in caplog.text


def test_links_to_folders_in_the_dataset_are_not_classes_and_a_linked_file_is_used_once(tmp_path, caplog):
    root, outside = tmp_path / "d", tmp_path / "outside"
    for label in ("alpha", "beta"):
        for i in range(4):
            _solid(root / label / f"{i}.png", (100, 20 * i, 0 if label == "alpha" else 200))
    for i in range(3):
        _solid(outside / f"{i}.png", (7, 7, 10 * i))
    os.symlink(root, root / "loop")  # the dataset inside itself
    os.symlink(root / "alpha", root / "alpha_again")  # a class twice
    os.symlink(outside, root / "gamma")  # a class kept elsewhere: a class like any other
    os.symlink(root / "beta" / "0.png", root / "alpha" / "link.png")  # a file under two labels
    os.symlink(root, root / "beta" / "nested_loop")  # a loop one level down
    splits = load_splits(DataConfig(dataset=f"folder:{root}", image_size=8))
    assert splits.class_names == ("alpha", "beta", "gamma")
    assert sum(len(splits.split(n)[1]) for n in ("train", "val", "test")) == 4 + 4 + 3
    assert splits.stats["skipped_links"] == 4
    skipped = {os.path.basename(p) for p in splits.stats["skipped_links_paths"]}
    assert skipped == {"loop", "alpha_again", "link.png", "nested_loop"}
    assert "not following" in caplog.text and "already used: counted once" in caplog.text


def test_an_absurd_image_size_is_refused_before_any_allocation():
    with pytest.raises(
        FgsslError, match=r"2624 images at 100000 px need 78720.0 GB of decoded cache.*lower --image_size"
    ):
        load_splits(DataConfig(dataset="elpv", image_size=100_000))


def _tree_entries():
    """A random folder tree: per class some valid PNGs (each a unique colour), and extra
    entries: broken files, non-images, oddly named valid files, links to files and folders."""
    from hypothesis import strategies as st

    extra = st.sampled_from(
        [
            "broken",
            "text",
            "hidden",
            "odd_name",
            "file_link",
            "dir_link_root",
            "dir_link_class",
            "broken_link",
            "upper_ext",
            "nested",
        ]
    )
    return st.tuples(
        st.integers(2, 3),
        st.lists(st.integers(3, 5), min_size=3, max_size=3),
        st.lists(st.tuples(extra, st.integers(0, 2), st.integers(0, 99)), max_size=8),
    )


def test_any_tree_of_files_is_accounted_for_once(tmp_path_factory):
    """Property: every file under the dataset is used once (its colour appears once), or counted
    as unreadable, or counted as left out (not an image, a second path to a used file); never two
    of these, never twice; links to folders are counted and not followed."""
    from hypothesis import HealthCheck, given, settings

    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(_tree_entries())
    def check(tree):
        classes, counts, extras = tree
        root = tmp_path_factory.mktemp("tree")
        next_id = iter(range(1, 10_000))
        valid = {}  # real path -> colour id
        unreadable, not_images, links_to_dirs, repeated = set(), set(), set(), set()

        def colour(number):
            return (number % 256, number // 256, 77)

        for c in range(classes):
            for i in range(counts[c]):
                number = next(next_id)
                path = root / f"class{c}" / f"{i}.png"
                _solid(path, colour(number))
                valid[os.path.realpath(path)] = number
        for k, (kind, c, n) in enumerate(extras):
            folder = root / f"class{c % classes}"
            if kind == "broken":
                (folder / f"broken{k}.jpg").write_bytes(b"\xff\xd8\xff" + bytes(n))
                unreadable.add(os.path.realpath(folder / f"broken{k}.jpg"))
            elif kind == "text":
                (folder / f"notes{k}.txt").write_text("x" * n)
                not_images.add(os.path.realpath(folder / f"notes{k}.txt"))
            elif kind == "hidden":
                (folder / f".hidden{k}.png").write_bytes(b"")
                not_images.add(os.path.realpath(folder / f".hidden{k}.png"))
            elif kind in ("odd_name", "upper_ext", "nested"):
                names = {
                    "odd_name": f"  -odd #{k} é'\"$(x).png",
                    "upper_ext": f"UPPER{k}.PNG",
                    "nested": f"sub{k}/deeper/{k}.png",
                }
                name = names[kind]
                number = next(next_id)
                _solid(folder / name, colour(number))
                valid[os.path.realpath(folder / name)] = number
            elif kind == "file_link":
                target = sorted(valid)[n % len(valid)]
                os.symlink(target, folder / f"link{k}.png")
                repeated.add(str(folder / f"link{k}.png"))
            elif kind == "broken_link":
                os.symlink(root / f"nowhere{k}.png", folder / f"dangling{k}.png")
                unreadable.add(os.path.realpath(folder / f"dangling{k}.png"))
            else:
                target = root if kind == "dir_link_root" else root / f"class{n % classes}"
                link = (folder if n % 2 else root) / f"dirlink{k}"
                os.symlink(target, link)
                links_to_dirs.add(str(link))

        splits = load_splits(DataConfig(dataset=f"folder:{root}", image_size=8, val_fraction=0.2))
        used = [tuple(image[0, 0]) for name in ("train", "val", "test") for image in splits.split(name)[0]]
        assert len(used) == len(set(used)), "an image used twice"
        assert sorted(used) == sorted(colour(n) for n in valid.values())
        stats = splits.stats
        skipped = {os.path.realpath(p) for p in stats["skipped_paths"]}
        assert stats["skipped_files"] == len(unreadable) and skipped == unreadable
        assert stats["ignored_files"] == len(not_images)
        assert {os.path.realpath(p) for p in stats["ignored_files_paths"]} == not_images
        not_followed = links_to_dirs | repeated
        assert set(stats["skipped_links_paths"]) == not_followed and stats["skipped_links"] == len(not_followed)
        assert not skipped & set(valid) and not not_images & set(valid)

    check()
