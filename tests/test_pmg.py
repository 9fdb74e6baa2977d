"""PMG, the supervised baseline: four updates per batch, heads that learn, weights, the report."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import IMAGE_SIZE, TINY_BACKBONE, tiny_train_config

from fgssl_tf import fine_grained, trainer
from fgssl_tf.config import BackboneConfig, DataConfig
from fgssl_tf.data import pipeline
from fgssl_tf.errors import FgsslError
from fgssl_tf.evaluation import EvalConfig, evaluate
from fgssl_tf.models.layers import Conv2D, batch_norm
from fgssl_tf.pretext import pmg

DATA = DataConfig(image_size=IMAGE_SIZE)
SMALL = pmg.PMGConfig(num_classes=4, feature_size=32, head_channels=64, backbone_weights="none")


def _model(tmp_path, config=SMALL, **train):
    return trainer.build_pretext_model(
        tiny_train_config(tmp_path, pretext="pmg", batch_size=16, **train), DATA, TINY_BACKBONE, config
    )


def _small_stages():
    """Three stages of the ResNet's own layers (its Conv2D; batch norm, synchronized with several
    replicas): what 2 replicas = 1 rests on, with a fraction of ResNet-18's ops to trace four times."""
    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3), name="images")
    x, stages = inputs, []
    for stage, filters in enumerate((8, 16, 32), start=1):
        x = Conv2D(filters, 3, strides=2, padding="same", use_bias=False, name=f"stage{stage}_conv")(x)
        x = keras.layers.ReLU(name=f"stage{stage}_relu")(batch_norm(f"stage{stage}_bn")(x))
        stages.append(x)
    return keras.Model(inputs, stages, name="small_stages")


def _small_model(config=SMALL):
    """PMG on `_small_stages`, built as `pmg.build_model` builds it (two guarded SGDs, PMG's defaults)."""
    keras.utils.set_random_seed(0)
    return pmg.build(_small_stages(), IMAGE_SIZE, config, 0, pmg.DEFAULT_WEIGHT_DECAY, pmg.DEFAULT_LEARNING_RATE)


def _head_losses(model, images, labels):
    """Each head's cross-entropy on its own input (jigsaw 8, 4, 2, whole), fixed seeds."""
    x = tf.image.convert_image_dtype(images, tf.float32)
    losses = []
    for head, grid in enumerate((8, 4, 2, None)):
        inputs = (
            x
            if grid is None
            else fine_grained.random_jigsaw(x, tf.constant([9, head], tf.int64), grid, same_for_batch=True)
        )
        logits = model(inputs, training=True)[head]  # batch statistics: 30 steps barely move the moving ones
        losses.append(
            float(tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)))
        )
    return np.array(losses)


def test_four_updates_per_batch_and_every_head_learns(elpv_small, monkeypatch):
    grids = []
    original = pmg.random_jigsaw
    assert original is fine_grained.random_jigsaw  # the SimCLR random-jigsaw op, PMG's jigsaw_generator
    monkeypatch.setattr(
        pmg, "random_jigsaw", lambda images, seed, grid, **kw: grids.append(grid) or original(images, seed, grid, **kw)
    )
    model = _small_model()
    images, labels = elpv_small.train_images[:16], elpv_small.train_labels[:16]
    before = _head_losses(model, images, labels)
    model.fit(pipeline.epoch_batches(images, labels, 16, 0, 0, 1, 30), epochs=1, steps_per_epoch=30, verbose=0)
    assert grids[:3] == [8, 4, 2]  # three jigsaw granularities, then the whole image
    assert int(model.optimizer.iterations.numpy()) == 4 * 30  # four separate updates per batch
    assert int(model.backbone_optimizer.iterations.numpy()) == 4 * 30
    after = _head_losses(model, images, labels)
    assert (after < before - 0.05).all(), (before, after)


def test_zero_backbone_learning_rate_leaves_the_backbone_alone(tmp_path, elpv_small):
    import dataclasses

    model = _model(tmp_path, dataclasses.replace(SMALL, backbone_lr_ratio=0.0))
    model.run_eagerly = True  # two steps: tracing the four-pass step would cost more than running it
    backbone = [v.numpy().copy() for v in model.features.trainable_variables]
    heads = [v.numpy().copy() for v in model.head_variables]
    images, labels = elpv_small.train_images[:32], elpv_small.train_labels[:32]
    model.fit(pipeline.epoch_batches(images, labels, 16, 0, 0, 1, 2), epochs=1, steps_per_epoch=2, verbose=0)
    for before, variable in zip(backbone, model.features.trainable_variables):
        np.testing.assert_array_equal(before, variable.numpy(), err_msg=variable.path)
    assert all(not np.array_equal(b, v.numpy()) for b, v in zip(heads, model.head_variables))


def test_short_run_beats_the_majority_class_and_reports_on_test(tmp_path, elpv_small):
    train = tiny_train_config(tmp_path, pretext="pmg", batch_size=16, epochs=3, steps_per_epoch=25, validate=True)
    result = trainer.pretrain(
        train,
        DATA,
        TINY_BACKBONE,
        pmg.PMGConfig(feature_size=32, head_channels=64, backbone_weights="none"),
        splits=elpv_small,
    )
    majority = np.mean(elpv_small.val_labels == np.bincount(elpv_small.train_labels).argmax())
    assert result.history["val_combined_accuracy"][-1] > majority + 0.03, (result.history, majority)
    # Cosine per epoch: the last of 3 epochs starts at lr0 / 2 (cos(2 pi / 3) + 1) = lr0 / 4.
    assert float(result.model.optimizer.learning_rate.numpy()) == pytest.approx(pmg.DEFAULT_LEARNING_RATE / 4)
    assert float(result.model.backbone_optimizer.learning_rate.numpy()) == pytest.approx(pmg.DEFAULT_LEARNING_RATE / 40)
    export = result.exports["tiny"]
    report_path = os.path.join(os.path.dirname(export), "evaluations", "v1-elpv-classifier-labels100", "report.json")
    report = json.load(open(report_path))
    assert report["protocol"] == "classifier" and report["split_fingerprint"] == elpv_small.stats["split_fingerprint"]
    assert 0.0 <= report["balanced_accuracy"] <= 1.0 and np.sum(report["confusion_matrix"]) == len(
        elpv_small.test_labels
    )
    # Its backbone is an encoder like any other for the evaluation tool.
    linear = evaluate(
        EvalConfig(encoder=export, protocol="linear", output_dir=str(tmp_path / "linear")), splits=elpv_small
    )
    assert linear["encoder_metadata"]["pretext"] == "pmg" and 0.0 <= linear["accuracy"] <= 1.0


def test_backbone_weights_imagenet_path_and_none(tmp_path, monkeypatch):
    resnet50 = BackboneConfig(name="resnet50")
    with pytest.raises(FgsslError, match="no such file.*imagenet.*none"):
        pmg.build_stage_features(resnet50, 32, str(tmp_path / "missing.weights.h5"))
    with pytest.raises(FgsslError, match="no ImageNet ResNet-18"):
        pmg.build_stage_features(BackboneConfig(name="resnet18"), 32, "imagenet")
    with pytest.raises(FgsslError, match="no ImageNet ResNet-10"):
        pmg.build_stage_features(BackboneConfig(name="resnet10"), 32, "imagenet")

    def offline(*args, **kwargs):
        raise OSError("URL fetch failure: no internet")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    import keras.src.applications.resnet as keras_resnet

    monkeypatch.setattr(keras_resnet.file_utils, "get_file", offline)
    with pytest.raises(
        FgsslError, match="could not load the ResNet-50 weights 'imagenet'.*a path to a weights file, or none"
    ):
        pmg.build_stage_features(resnet50, 32, "imagenet")
    # A local weights file is loaded as it is.
    keras.utils.set_random_seed(1)
    source = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(32, 32, 3))
    path = str(tmp_path / "resnet50_notop.weights.h5")
    source.save_weights(path)
    loaded = pmg.build_stage_features(resnet50, 32, path)
    np.testing.assert_array_equal(
        loaded.get_layer("resnet50").get_layer("conv1_conv").kernel.numpy(),
        source.get_layer("conv1_conv").kernel.numpy(),
    )


def _one_batch(strategy, images, labels):
    """One batch (four updates) from the same initial weights; the logs and each weight's change."""
    with strategy.scope():
        model = _small_model()
    # One batch: tracing the four-pass step (twice, on 2 replicas) costs ~10x running it; eagerly,
    # each replica still runs in MirroredStrategy's replica context (synchronized batch norm, global batch).
    model.run_eagerly = True
    initial = [v.numpy() for v in model.trainable_weights]
    dataset = tf.data.Dataset.from_tensor_slices((images, labels.astype(np.int64))).batch(len(images))
    logs = model.fit(dataset, epochs=1, verbose=0).history
    return logs, [v.numpy() - w for v, w in zip(model.trainable_weights, initial)]


def test_two_replicas_train_like_one(elpv_small):
    """Batch norm synchronized (the default with several replicas), the same jigsaw for
    the whole global batch, crops drawn for the global batch: 2 replicas = 1 replica."""
    from fgssl_tf.distribute import make_strategy

    images, labels = elpv_small.train_images[:16], elpv_small.train_labels[:16]
    one, updates_one = _one_batch(make_strategy("one_device"), images, labels)
    two, updates_two = _one_batch(make_strategy("mirrored"), images, labels)
    for name in ("loss_granularity_8", "loss_granularity_4", "loss_granularity_2", "loss_whole", "loss"):
        # Four updates in sequence: the later heads see weights that differ by float rounding.
        assert two[name][0] == pytest.approx(one[name][0], rel=1e-4), name
    assert abs(two["accuracy"][0] - one["accuracy"][0]) <= 1 / 16
    for a, b in zip(updates_one, updates_two):
        assert np.abs(b - a).max() <= 2e-3 * np.abs(a).max() + 1e-8
