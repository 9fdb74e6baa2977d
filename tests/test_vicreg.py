"""VICReg: its terms against a NumPy reference, 2 replicas against 1, training on real elpv
images, the whole path through the trainer; and the warm-up + cosine schedule it trains with."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import IMAGE_SIZE, TINY_BACKBONE, replicated_loss_and_grads, tiny_train_config

from fgssl_tf import trainer
from fgssl_tf.config import BackboneConfig, DataConfig
from fgssl_tf.data import pipeline
from fgssl_tf.distribute import make_strategy
from fgssl_tf.errors import FgsslError
from fgssl_tf.models import build_resnet
from fgssl_tf.objectives import replica_info
from fgssl_tf.optim import WarmupCosine, set_schedule_length
from fgssl_tf.pretext import vicreg

DATA = DataConfig(image_size=IMAGE_SIZE)
SMALL = vicreg.VICRegConfig(expander_dim=64)


def numpy_vicreg(z1, z2, config):
    """The paper's Algorithm 1, written the plain way."""
    z1, z2 = z1.astype(np.float64), z2.astype(np.float64)
    n, d = z1.shape
    invariance = np.mean((z1 - z2) ** 2)
    variance = covariance = 0.0
    for z in (z1, z2):
        z = z - z.mean(axis=0)
        variance += np.mean(np.maximum(0.0, 1.0 - np.sqrt(z.var(axis=0, ddof=1) + 1e-4))) / 2
        cov = z.T @ z / (n - 1)
        covariance += (np.sum(cov**2) - np.sum(np.diag(cov) ** 2)) / d
    return (
        config.invariance_weight * invariance
        + config.variance_weight * variance
        + config.covariance_weight * covariance
    )


@pytest.mark.parametrize("n,d,scale", [(8, 4, 0.1), (16, 32, 1.0), (5, 7, 3.0)])
def test_vicreg_loss_matches_numpy(n, d, scale):
    rng = np.random.RandomState(n)
    z1, z2 = (scale * rng.randn(n, d)).astype(np.float32), (scale * rng.randn(n, d)).astype(np.float32)
    ours = float(vicreg.vicreg_loss(vicreg.vicreg_terms(tf.constant(z1), tf.constant(z2)), SMALL))
    assert ours == pytest.approx(numpy_vicreg(z1, z2, SMALL), rel=1e-5)


def test_collapsed_embeddings_cost_more_than_spread_ones():
    rng = np.random.RandomState(0)
    spread = rng.randn(32, 16).astype(np.float32)
    collapsed = np.tile(spread[:1], [32, 1])
    loss = lambda z: float(vicreg.vicreg_loss(vicreg.vicreg_terms(tf.constant(z), tf.constant(z)), SMALL))  # noqa: E731
    assert loss(collapsed) > loss(spread) + 20.0  # the variance hinge: 25 x (1 - 0) for every dimension


def test_two_replicas_equal_one_replica():
    """Variance and covariance are those of the global batch: loss and gradients match one replica."""
    rng = np.random.RandomState(1)
    z1, z2 = rng.randn(8, 6).astype(np.float32), rng.randn(8, 6).astype(np.float32)

    def replica_loss(a, b):
        _, replicas, _ = replica_info()
        return vicreg.vicreg_loss(vicreg.vicreg_terms(a, b), SMALL) / replicas

    loss_one, grads_one = replicated_loss_and_grads(make_strategy("one_device"), replica_loss, z1, z2)
    loss_two, grads_two = replicated_loss_and_grads(make_strategy("mirrored"), replica_loss, z1, z2)
    assert loss_two == pytest.approx(loss_one, rel=1e-5)
    for one, two in zip(grads_one, grads_two):
        np.testing.assert_allclose(two, one, rtol=1e-4, atol=1e-6)


def _fixed_view_loss(model, images):
    view1, view2 = model.views(tf.constant(images), tf.constant([123, 0], tf.int64))
    return float(model._loss(view1, view2, training=True)[0])


def test_forty_steps_lower_the_loss_on_elpv(tmp_path, elpv_small):
    config = tiny_train_config(tmp_path, pretext="vicreg", lr_schedule="cosine", warmup_epochs=0.1)
    model = trainer.build_pretext_model(config, DATA, TINY_BACKBONE, SMALL)
    set_schedule_length(model, 40, 1)
    held_out = elpv_small.val_images[:64]
    before = _fixed_view_loss(model, held_out)
    model.fit(
        pipeline.epoch_batches(elpv_small.train_images, elpv_small.train_labels, 32, 0, 0, 1, 40),
        epochs=1,
        steps_per_epoch=40,
        verbose=0,
    )
    after = _fixed_view_loss(model, held_out)
    assert after < before - 1.0, (before, after)


def test_pretrain_exports_a_vicreg_encoder_with_views_cut_from_larger_images(tmp_path, elpv_small):
    config = tiny_train_config(tmp_path, pretext="vicreg", lr_schedule="cosine", warmup_epochs=1)
    data = DataConfig(image_size=IMAGE_SIZE, source_size=2 * IMAGE_SIZE, max_images_per_split=128)
    result = trainer.pretrain(config, data, TINY_BACKBONE, SMALL)
    assert np.all(np.isfinite(result.history["loss"]))
    serve = tf.saved_model.load(result.exports["tiny"]).signatures["serving_default"]
    embedding = next(iter(serve(images=tf.constant(elpv_small.test_images[:2])).values()))
    assert embedding.shape == (2, result.model.encoder.output_shape[-1])
    # The schedule knows the run's length, and it is the run's: 0 at the end.
    schedule = result.model.optimizer.inner_optimizer._learning_rate
    assert (schedule.steps_per_epoch, schedule.epochs) == (3, 2)
    assert float(schedule(5)) == pytest.approx(0.0, abs=1e-9)


def test_schedule_and_source_size_are_refused_where_they_do_not_apply(tmp_path, elpv_small):
    with pytest.raises(FgsslError, match="lr_schedule=cosine is not available for --pretext=jigsaw"):
        trainer.pretrain(
            tiny_train_config(tmp_path, pretext="jigsaw", lr_schedule="cosine"),
            DataConfig(image_size=64),
            BackboneConfig(name="resnet10", width=8),
            splits=elpv_small,
        )
    with pytest.raises(FgsslError, match="source_size=16 is for the two-view methods"):
        trainer.pretrain(
            tiny_train_config(tmp_path),
            DataConfig(image_size=IMAGE_SIZE, source_size=16),
            TINY_BACKBONE,
            splits=elpv_small,
        )


def test_warmup_cosine_schedule():
    schedule = WarmupCosine(0.1, warmup_epochs=2, final_fraction=0.0)
    with pytest.raises(ValueError, match="set_length"):
        schedule(0)
    schedule.set_length(steps_per_epoch=10, epochs=12)
    rates = np.array([float(schedule(step)) for step in range(120)])
    assert rates[0] == pytest.approx(0.1 / 20) and rates[19] == pytest.approx(0.1)  # linear warm-up over 20 steps
    assert np.all(np.diff(rates[:20]) > 0) and np.all(np.diff(rates[19:]) < 0)  # up, then down
    assert rates[69] == pytest.approx(0.05, rel=1e-4)  # half-way through the decay: half the peak
    assert rates[-1] == pytest.approx(0.0, abs=1e-9)
    restored = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(schedule))
    assert float(restored(37)) == pytest.approx(rates[37])


def test_encoder_of_any_keras_architecture_pretrains(elpv_small):
    """The method takes any Keras encoder: here a plain CNN, not the package's ResNet."""
    keras.utils.set_random_seed(0)
    encoder = keras.Sequential(
        [
            keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3)),
            keras.layers.Conv2D(8, 3, strides=2),
            keras.layers.ReLU(),
            keras.layers.GlobalAveragePooling2D(),
        ]
    )
    model = vicreg.VICRegModel(encoder, IMAGE_SIZE, SMALL)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    history = model.fit(
        tf.data.Dataset.from_tensor_slices(elpv_small.train_images[:256]).batch(64), epochs=3, verbose=0
    )
    assert history.history["loss"][-1] < history.history["loss"][0]


def test_resnet_encoder_builds_for_vicreg_at_small_stem():
    encoder = build_resnet(BackboneConfig(name="resnet10", width=8, small_stem=True), 16)
    model = vicreg.VICRegModel(encoder, 16, SMALL)
    assert model(tf.zeros([2, 16, 16, 3])).shape == (2, 64)
