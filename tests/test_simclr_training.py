"""SimCLR training on real elpv images: the loss falls, replicas agree
(exact resume after a kill: test_reliability.py)."""

import dataclasses
import glob
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import IMAGE_SIZE, TINY_BACKBONE, tiny_train_config

from fgssl_tf import trainer
from fgssl_tf.config import BackboneConfig, DataConfig
from fgssl_tf.data import pipeline
from fgssl_tf.distribute import make_strategy
from fgssl_tf.errors import FgsslError
from fgssl_tf.models import build_resnet
from fgssl_tf.pretext import simclr

DATA = DataConfig(image_size=IMAGE_SIZE)


def _fixed_view_loss(model, images):
    """NT-Xent of fixed views (a fixed seed) of held-out images, batch-norm in training mode."""
    view1, view2 = model.views(tf.constant(images), tf.constant([123, 0], tf.int64))
    return float(model._loss(view1, view2, training=True)[0])


def _assert_40_steps_lower_the_loss(model, splits):
    held_out = splits.val_images[:64]
    before = _fixed_view_loss(model, held_out)
    dataset = pipeline.epoch_batches(splits.train_images, splits.train_labels, 32, 0, 0, 1, 40)
    model.fit(dataset, epochs=1, steps_per_epoch=40, verbose=0)
    after = _fixed_view_loss(model, held_out)
    assert after < before - 0.05, (before, after)


def test_a_few_steps_lower_the_loss(tmp_path, elpv_small):
    config = tiny_train_config(tmp_path)
    model = trainer.build_pretext_model(config, DATA, TINY_BACKBONE, simclr.SimCLRConfig())
    _assert_40_steps_lower_the_loss(model, elpv_small)


def test_tensorboard_logs_and_refusal_to_resume_other_settings(tmp_path, elpv_small):
    config = tiny_train_config(tmp_path, epochs=1, validate=True, export=False)  # logs, not the export, are checked
    trainer.pretrain(config, DATA, TINY_BACKBONE, splits=elpv_small)
    tags = set()
    for path in glob.glob(str(tmp_path / "run" / "logs" / "**" / "events.out.tfevents.*"), recursive=True):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags |= {value.tag for value in event.summary.value}
    assert {"epoch_loss", "epoch_learning_rate", "epoch_contrastive_accuracy"} <= tags
    assert "augmented_view_pairs" in tags  # the view grid, under logs/inputs
    assert glob.glob(str(tmp_path / "run" / "logs" / "validation" / "events.*"))
    with pytest.raises(FgsslError, match="other settings"):
        trainer.pretrain(dataclasses.replace(config, epochs=2, batch_size=16), DATA, TINY_BACKBONE, splits=elpv_small)


def test_pretrain_under_mirrored_strategy(tmp_path, elpv_small):
    """The whole path (views grid, fit, checkpoint, export) on two replicas."""
    result = trainer.pretrain(
        tiny_train_config(tmp_path, epochs=1, steps_per_epoch=1, strategy="mirrored"),
        DATA,
        TINY_BACKBONE,
        splits=elpv_small,
    )
    assert result.model.distribute_strategy.num_replicas_in_sync == 2
    assert np.isfinite(result.history["loss"][0])
    assert os.path.isfile(os.path.join(result.exports["tiny"], "saved_model.pb"))


def _one_step(strategy, images, optimizer):
    with strategy.scope():
        keras.utils.set_random_seed(0)
        encoder = build_resnet(
            BackboneConfig(name="resnet10", width=8, small_stem=False, synchronized_bn=True), IMAGE_SIZE
        )
        model = simclr.build(
            encoder, IMAGE_SIZE, simclr.SimCLRConfig(projection_dim=32, hidden_dim=32), seed=0, weight_decay=1e-3
        )
        model.compile(optimizer=optimizer())
    initial = [v.numpy() for v in model.trainable_weights]
    dataset = tf.data.Dataset.from_tensor_slices((images, np.zeros(len(images), np.int64))).batch(len(images))
    history = model.fit(dataset, epochs=1, verbose=0)
    return history.history["loss"][0], [v.numpy() - w for v, w in zip(model.trainable_weights, initial)]


def test_two_replicas_train_like_one(elpv_small):
    """With synchronized BN and cross-replica negatives, 2 replicas = 1 replica, same global batch."""
    images = elpv_small.train_images[:16]
    sgd = lambda: keras.optimizers.SGD(0.1)  # noqa: E731  (Adam would amplify rounding in tiny gradients)
    loss_one, updates_one = _one_step(make_strategy("one_device"), images, sgd)
    loss_two, updates_two = _one_step(make_strategy("mirrored"), images, sgd)
    assert loss_two == pytest.approx(loss_one, rel=1e-5)
    for one, two in zip(updates_one, updates_two):
        # The same update up to float rounding of a differently ordered sum.
        assert np.abs(two - one).max() <= 1e-3 * np.abs(one).max() + 1e-9


def test_bfloat16_mixed_precision_learns_and_exports_float32(tmp_path, elpv_small):
    """--mixed_precision=bfloat16: layers compute in bfloat16 with float32 weights, the loss
    falls as in float32, the policy does not leak, and the served embedding is float32."""
    config = tiny_train_config(tmp_path, mixed_precision="bfloat16", epochs=1, steps_per_epoch=40)
    model = trainer.build_pretext_model(config, DATA, TINY_BACKBONE, simclr.SimCLRConfig())
    assert keras.config.dtype_policy().name == "float32"
    conv = model.encoder.get_layer("stem_conv")
    assert conv.compute_dtype == "bfloat16" and conv.kernel.dtype == "float32"
    _assert_40_steps_lower_the_loss(model, elpv_small)

    from fgssl_tf.export import export_encoder

    path = export_encoder(model.encoder, str(tmp_path / "savedmodels"), "bf16", IMAGE_SIZE, {})
    serve = tf.saved_model.load(path).signatures["serving_default"]
    embeddings = next(iter(serve(images=tf.constant(elpv_small.test_images[:4])).values()))
    assert embeddings.dtype == tf.float32 and np.isfinite(embeddings.numpy()).all()
