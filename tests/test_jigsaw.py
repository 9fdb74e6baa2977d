"""Jigsaw: permutation sets, puzzles, training on real elpv images, resume, replicas, export."""

import dataclasses
import glob
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import IMAGE_SIZE, TINY_BACKBONE, tiny_train_config, write_image

from fgssl_tf import trainer
from fgssl_tf.config import BackboneConfig, DataConfig
from fgssl_tf.data import load_splits
from fgssl_tf.distribute import make_strategy
from fgssl_tf.errors import FgsslError
from fgssl_tf.evaluation import EvalConfig, evaluate
from fgssl_tf.models import build_resnet
from fgssl_tf.models.layers import GridAveragePooling
from fgssl_tf.pretext import jigsaw

DATA = DataConfig(image_size=IMAGE_SIZE)
PERMUTATIONS = jigsaw.all_permutations()


def _min_distance_to(subset):
    """For every one of the 9! permutations, its Hamming distance to the nearest of `subset`."""
    nearest = np.full(len(PERMUTATIONS), 99)
    for p in subset:
        nearest = np.minimum(nearest, (PERMUTATIONS != p).sum(1))
    return nearest


def _noroozi_mean_greedy(count, seed):
    """Reference: Noroozi & Favaro's published greedy (largest mean distance to the set)."""
    rng = np.random.RandomState(seed)
    available = np.ones(len(PERMUTATIONS), bool)
    total = np.zeros(len(PERMUTATIONS))
    j, chosen = rng.randint(len(PERMUTATIONS)), []
    for _ in range(count):
        chosen.append(j)
        available[j] = False
        total += (PERMUTATIONS != PERMUTATIONS[j]).sum(1)
        j = int(np.argmax(np.where(available, total, -1)))
    return PERMUTATIONS[chosen]


def test_maxhamming_set_is_maximal_and_beats_the_published_greedy():
    chosen = jigsaw.maxhamming_permutations(100, seed=0)
    assert chosen.shape == (100, 9)
    assert len({tuple(p) for p in chosen}) == 100
    assert not any((p == np.arange(9)).all() for p in chosen)  # identity excluded
    stats = jigsaw.permutation_stats(chosen)
    pairwise = [int((a != b).sum()) for i, a in enumerate(chosen) for b in chosen[i + 1 :]]  # brute force
    assert stats["min_hamming"] == min(pairwise) and stats["mean_hamming"] == pytest.approx(np.mean(pairwise))
    # Max-min: no permutation left out is farther from the set than the set's own minimum.
    nearest = _min_distance_to(chosen)
    assert nearest[nearest > 0].max() <= stats["min_hamming"]
    reference = jigsaw.permutation_stats(_noroozi_mean_greedy(100, seed=0))
    assert stats["min_hamming"] >= reference["min_hamming"]
    assert stats["mean_hamming"] >= reference["mean_hamming"] - 0.1
    np.testing.assert_array_equal(chosen, jigsaw.maxhamming_permutations(100, seed=0))  # seeded
    assert not np.array_equal(chosen, jigsaw.maxhamming_permutations(100, seed=1))


def test_paper_set_is_seeded_fully_different_pairs():
    chosen = jigsaw.make_permutations("paper", 100, seed=3)
    assert len({tuple(p) for p in chosen}) == 100
    assert not any((p == np.arange(9)).all() for p in chosen)
    assert all((chosen[k] != chosen[k + 1]).all() for k in range(0, 100, 2))
    np.testing.assert_array_equal(chosen, jigsaw.make_permutations("paper", 100, seed=3))
    with pytest.raises(FgsslError, match="must be even"):
        jigsaw.make_permutations("paper", 7, seed=0)
    with pytest.raises(FgsslError, match="unknown --jigsaw_permutations"):
        jigsaw.make_permutations("random", 10, seed=0)


def _puzzles(images, config, permutations, seed=(5, 0), **kwargs):
    layer = jigsaw.JigsawPuzzle(images.shape[1], permutations, config)
    return layer(tf.constant(images), seed=tf.constant(seed, tf.int64), **kwargs)


def test_unshuffling_gives_back_the_cropped_image_exactly(elpv_splits):
    images = elpv_splits.train_images[:6]
    permutations = jigsaw.make_permutations("maxhamming", 10, seed=0)
    # No tile crop and no jitter: the puzzle is the image, shuffled.
    config = jigsaw.JigsawConfig(tile_crop_fraction=1.0, brightness=0.0)
    tiles, labels = _puzzles(images, config, permutations)
    restored = jigsaw.assemble_tiles(jigsaw.unshuffle_tiles(tiles, tf.gather(permutations.astype(np.int32), labels)))
    tile = jigsaw.puzzle_geometry(IMAGE_SIZE, config)[0]
    top = (IMAGE_SIZE - 3 * tile) // 2
    expected = tf.image.convert_image_dtype(images[:, top : top + 3 * tile, top : top + 3 * tile], tf.float32).numpy()
    np.testing.assert_array_equal(restored.numpy(), expected)
    assert not np.array_equal(jigsaw.assemble_tiles(tiles).numpy(), expected)  # it was shuffled
    # With the paper's random crop inside each tile: every tile, put back, is a window of its own tile.
    tiles, labels = _puzzles(images, jigsaw.JigsawConfig(brightness=0.0), permutations)
    back = jigsaw.unshuffle_tiles(tiles, tf.gather(permutations.astype(np.int32), labels)).numpy()
    originals = jigsaw.cut_tiles(tf.image.convert_image_dtype(images, tf.float32), tile).numpy()
    crop = back.shape[2]
    for b in range(len(images)):
        for i in range(9):
            windows = [
                originals[b, i, y : y + crop, x : x + crop]
                for y in range(tile - crop + 1)
                for x in range(tile - crop + 1)
            ]
            assert any(np.array_equal(back[b, i], w) for w in windows), (b, i)


def test_puzzles_do_not_depend_on_the_replica_split(elpv_splits):
    images = elpv_splits.train_images[:8]
    permutations = jigsaw.make_permutations("maxhamming", 20, seed=0)
    config = jigsaw.JigsawConfig()
    whole, labels = _puzzles(images, config, permutations)
    first, labels_a = _puzzles(images[:4], config, permutations, offset=0, global_batch=8)
    second, labels_b = _puzzles(images[4:], config, permutations, offset=4, global_batch=8)
    np.testing.assert_array_equal(whole.numpy(), np.concatenate([first, second]))
    np.testing.assert_array_equal(labels.numpy(), np.concatenate([labels_a, labels_b]))
    assert len(set(labels.numpy())) > 1


def test_gray_rgba_and_tiny_images_become_puzzles(tmp_path):
    rng = np.random.RandomState(0)
    for k in range(4):
        write_image(
            str(tmp_path / "data" / "a" / f"gray{k}.png"), rng.randint(0, 255, (10, 12), np.uint8)
        )  # smaller than a tile
        write_image(str(tmp_path / "data" / "b" / f"rgba{k}.png"), rng.randint(0, 255, (50, 40, 4), np.uint8))
    splits = load_splits(DataConfig(dataset=f"folder:{tmp_path / 'data'}", image_size=IMAGE_SIZE, val_fraction=0.25))
    permutations = jigsaw.make_permutations("maxhamming", 10, seed=0)
    tiles, labels = _puzzles(splits.train_images, jigsaw.JigsawConfig(), permutations)
    assert tiles.shape[1:] == (9, 8, 8, 3) and np.isfinite(tiles.numpy()).all()
    # A batch of another size is resized to the puzzle's image size first.
    layer = jigsaw.JigsawPuzzle(IMAGE_SIZE, permutations)
    tiles, _ = layer(tf.zeros([2, 17, 23, 3], tf.uint8), seed=tf.constant([0, 0], tf.int64))
    assert tiles.shape == (2, 9, 8, 8, 3)
    with pytest.raises(FgsslError, match="--image_size of at least"):
        jigsaw.puzzle_geometry(16, jigsaw.JigsawConfig())


def test_dropout_only_in_training_and_nine_tiles_in_one_encoder_call():
    keras.utils.set_random_seed(0)
    permutations = jigsaw.make_permutations("maxhamming", 10, seed=0)
    encoder = build_resnet(TINY_BACKBONE, IMAGE_SIZE, pool_grid=2)
    calls = []
    encoder_call = encoder.call
    encoder.call = lambda *a, **k: calls.append(a[0].shape) or encoder_call(*a, **k)
    model = jigsaw.build(encoder, IMAGE_SIZE, permutations, jigsaw.JigsawConfig(), seed=0, weight_decay=0.0)
    tiles = tf.random.uniform([4, 9, 8, 8, 3], seed=1)
    np.testing.assert_array_equal(model(tiles, training=False).numpy(), model(tiles, training=False).numpy())
    assert not np.allclose(model(tiles, training=True).numpy(), model(tiles, training=True).numpy())
    assert calls and all(shape[0] == 36 for shape in calls)  # one call on 4 x 9 tiles


def test_grid_pooling_matches_keras_adaptive_pooling():
    x = tf.random.uniform([2, 7, 5, 3], seed=0)
    for grid in (1, 2, 3):
        ours = GridAveragePooling(grid)(x)
        reference = keras.layers.AdaptiveAveragePooling2D((grid, grid))(x)
        np.testing.assert_allclose(ours.numpy(), tf.reshape(reference, [2, -1]).numpy(), rtol=1e-6)


@pytest.fixture(scope="module")
def elpv_48px():
    """A stratified 400/288/288 subset of elpv at 48 px: 12 px tile crops (at 32 px, 8 px crops
    of solar cells hold too little to place them in a short run)."""
    from fgssl_tf.data import Splits, label_fraction_subset

    full = load_splits(DataConfig(dataset="elpv", image_size=48))
    parts = {}
    for name, limit in (("train", 400), ("val", 288), ("test", 288)):
        images, labels = full.split(name)
        idx = label_fraction_subset(labels, limit / len(labels), 0)[:limit]
        parts[name] = (images[idx], labels[idx])
    sizes = {k: len(v[1]) for k, v in parts.items()}
    return Splits(
        *parts["train"],
        *parts["val"],
        *parts["test"],
        class_names=full.class_names,
        unlabeled_images=full.unlabeled_images,
        stats={**full.stats, "split_sizes": sizes},
    )


def test_short_run_on_elpv_beats_chance_resumes_and_exports(tmp_path, elpv_48px):
    config = jigsaw.JigsawConfig(num_permutations=10)
    data = DataConfig(image_size=48)
    backbone = BackboneConfig(name="resnet10", width=8)  # small stem: automatic for 12 px tiles
    assert jigsaw.resolve_backbone(backbone, data, config).small_stem
    # Exported once, by the resumed run (--export is one of the settings a resume may change).
    # 60 steps (2 x 30) before the check (0.74 on the AVX2 machine, 29 Nov); the resume then trains 30 more.
    train = tiny_train_config(tmp_path, pretext="jigsaw", epochs=2, steps_per_epoch=30, validate=True, export=False)
    first = trainer.pretrain(train, data, backbone, config, splits=elpv_48px)
    assert first.history["val_accuracy"][-1] > 0.3, first.history  # chance: 0.10
    tags = set()
    for path in glob.glob(os.path.join(train.model_dir, "logs", "**", "events.out.tfevents.*"), recursive=True):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags |= {value.tag for value in event.summary.value}
    assert {"epoch_accuracy", "epoch_loss", "epoch_gradient_norm", "epoch_learning_rate"} <= tags
    puzzles = [t for t in tags if t.startswith("puzzle")]
    assert len(puzzles) == 4 and all(int(t.split("permutation")[1]) < 10 for t in puzzles)
    saved = json.load(open(os.path.join(train.model_dir, jigsaw.PERMUTATION_FILE)))
    np.testing.assert_array_equal(saved["permutations"], first.model.puzzle.permutations)
    assert saved["min_hamming"] == jigsaw.permutation_stats(np.array(saved["permutations"]))["min_hamming"]
    # Resume: the saved set is reloaded even if the generator would now give another.
    with open(os.path.join(train.model_dir, jigsaw.PERMUTATION_FILE), "w") as f:
        json.dump({**saved, "permutations": saved["permutations"][::-1]}, f)
    # (The run's own settings: a resume that changes --steps_per_epoch or --validate is refused, docs/reliability.md.)
    resumed = trainer.pretrain(
        dataclasses.replace(train, epochs=3, export=True), data, backbone, config, splits=elpv_48px
    )
    assert resumed.initial_epoch == 2
    np.testing.assert_array_equal(resumed.model.puzzle.permutations, saved["permutations"][::-1])
    with pytest.raises(FgsslError, match="use a new --model_dir"):
        trainer.pretrain(train, data, backbone, jigsaw.JigsawConfig(num_permutations=20), splits=elpv_48px)
    # The exported encoder goes through the evaluation tool unchanged.
    report = evaluate(
        EvalConfig(encoder=resumed.exports["tiny"], protocol="linear", output_dir=str(tmp_path / "eval")),
        splits=elpv_48px,
    )
    assert 0.0 <= report["accuracy"] <= 1.0 and report["encoder_metadata"]["pretext"] == "jigsaw"
    assert report["encoder_metadata"]["backbone"]["small_stem"] is True  # the stem it was trained with


def _one_step(strategy, images):
    with strategy.scope():
        keras.utils.set_random_seed(0)
        encoder = build_resnet(
            BackboneConfig(name="resnet10", width=8, small_stem=False, synchronized_bn=True), IMAGE_SIZE, pool_grid=2
        )
        permutations = jigsaw.make_permutations("maxhamming", 10, seed=0)
        # No dropout (its masks are drawn per replica); a clip norm low enough to act.
        model = jigsaw.build(
            encoder,
            IMAGE_SIZE,
            permutations,
            jigsaw.JigsawConfig(dropout=0.0, clip_norm=0.5),
            seed=0,
            weight_decay=1e-3,
        )
        model.compile(optimizer=keras.optimizers.SGD(0.1))
    # One batch: tracing the step (twice, on 2 replicas) costs more than running it; eagerly, each replica
    # still runs in MirroredStrategy's replica context (synchronized batch norm, global batch).
    model.run_eagerly = True
    initial = [v.numpy() for v in model.trainable_weights]
    dataset = tf.data.Dataset.from_tensor_slices((images, np.zeros(len(images), np.int64))).batch(len(images))
    history = model.fit(dataset, epochs=1, verbose=0).history
    return history, [v.numpy() - w for v, w in zip(model.trainable_weights, initial)]


def test_two_replicas_train_like_one(elpv_small):
    images = elpv_small.train_images[:16]
    one, updates_one = _one_step(make_strategy("one_device"), images)
    two, updates_two = _one_step(make_strategy("mirrored"), images)
    assert one["gradient_norm"][0] > 0.5  # clipping was active
    assert two["loss"][0] == pytest.approx(one["loss"][0], rel=1e-5)
    assert two["accuracy"][0] == one["accuracy"][0]
    # The norm of a sum of large gradients, summed in another order: float32 rounding.
    assert two["gradient_norm"][0] == pytest.approx(one["gradient_norm"][0], rel=1e-3)
    for a, b in zip(updates_one, updates_two):
        assert np.abs(b - a).max() <= 1e-3 * np.abs(a).max() + 1e-9


def test_random_init_baseline_can_match_the_jigsaw_encoder():
    from fgssl_tf.evaluation import _random_encoder

    baseline = _random_encoder(
        EvalConfig(baseline="random_init", pool_grid=2, backbone=TINY_BACKBONE), IMAGE_SIZE, seed=0
    )
    assert baseline.output_shape[-1] == build_resnet(TINY_BACKBONE, IMAGE_SIZE, pool_grid=2).output_shape[-1] == 4 * 64
