"""SimCLR (Chen et al. 2020) as the paper ran it: ResNet encoder, 2-layer projection
head, NT-Xent with temperature 0.5, both views encoded in one batch (spec §3.1).

Differences from the paper's code, on purpose:
- negatives come from every replica (the paper ran one GPU, so this is what it
  computed there; on several GPUs a per-replica loss would silently learn less);
- Adam's weight decay is coupled L2 as in PyTorch, divided over replicas so the
  summed gradient matches one replica;
- the cosine schedule the paper created but never stepped (bug C1) is left out:
  the learning rate is the constant 1e-3 the paper actually trained with.
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from fgssl_tf.augment import VALIDATION_STREAM, SimCLRAugmentation, step_seed
from fgssl_tf.config import AugmentConfig, BackboneConfig, DataConfig, TrainConfig
from fgssl_tf.errors import FgsslError
from fgssl_tf.export import preprocess
from fgssl_tf.models import build_resnet
from fgssl_tf.objectives import nt_xent, replica_info
from fgssl_tf.optim import add_coupled_weight_decay

DEFAULT_LEARNING_RATE = 1e-3  # Adam, constant (the paper's schedule was never stepped)
DEFAULT_WEIGHT_DECAY = 1e-5


@dataclasses.dataclass(frozen=True)
class SimCLRConfig:
    projection_dim: int = 512
    hidden_dim: int = 512
    temperature: float = 0.5
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)


class SimCLRModel(keras.Model):
    """Two augmented views per image -> encoder -> projection -> NT-Xent."""

    def __init__(self, encoder: keras.Model, image_size: int, config: SimCLRConfig, seed: int = 0, weight_decay: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.image_size = image_size
        self.simclr_config = config
        self.seed = seed
        self.weight_decay = weight_decay
        self.augmenter = SimCLRAugmentation(image_size, config.augment, name="views")
        self.projector = keras.Sequential(
            [
                keras.layers.Dense(config.hidden_dim, name="projection_hidden"),
                keras.layers.ReLU(),
                keras.layers.Dense(config.projection_dim, name="projection_out"),
            ],
            name="projector",
        )
        self.projector.build((None, encoder.output_shape[-1]))
        self.built = True  # encoder and projector are built; the augmenter has no weights
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.accuracy_tracker = keras.metrics.Mean(name="contrastive_accuracy")

    @property
    def metrics(self):
        return [self.loss_tracker, self.accuracy_tracker]

    def exportable_encoders(self) -> dict:
        """Encoders to export, by suffix of the export name ('' = the encoder)."""
        return {"": self.encoder}

    def views(self, images, seed):
        """Both augmented views of this replica's images, drawn for the global batch."""
        _, replicas, replica_id = replica_info()
        local = tf.shape(images)[0]
        seeds = tf.random.experimental.stateless_split(seed, num=2)
        kwargs = dict(offset=replica_id * local, global_batch=local * replicas)
        return self.augmenter(images, seed=seeds[0], **kwargs), self.augmenter(images, seed=seeds[1], **kwargs)

    def _loss(self, view1, view2, training):
        local = tf.shape(view1)[0]
        features = self.encoder(tf.concat([view1, view2], axis=0), training=training)
        projections = self.projector(features, training=training)
        losses, hits = nt_xent(projections[:local], projections[local:], self.simclr_config.temperature)
        _, replicas, _ = replica_info()
        # Each replica holds 2n of the 2N anchors; gradients are summed over replicas.
        loss = tf.reduce_sum(losses) / tf.cast(2 * local * replicas, tf.float32)
        return loss, hits, replicas

    def _track(self, loss, hits, replicas):
        self.loss_tracker.update_state(loss * replicas)  # replicas' values are summed, then averaged
        self.accuracy_tracker.update_state(hits)
        return {m.name: m.result() for m in self.metrics}

    def train_step(self, data):
        images = data[0] if isinstance(data, (tuple, list)) else data
        view1, view2 = self.views(images, step_seed(self.seed, self.optimizer.iterations))
        with tf.GradientTape() as tape:
            loss, hits, replicas = self._loss(view1, view2, training=True)
        variables = self.trainable_variables
        gradients = add_coupled_weight_decay(tape.gradient(loss, variables), variables, self.weight_decay)
        self.optimizer.apply(gradients, variables)
        return self._track(loss, hits, replicas)

    def test_step(self, data):
        images = data[0] if isinstance(data, (tuple, list)) else data
        view1, view2 = self.views(images, step_seed(self.seed, VALIDATION_STREAM))
        loss, hits, replicas = self._loss(view1, view2, training=False)
        return self._track(loss, hits, replicas)

    def call(self, images, training=False):
        return self.projector(self.encoder(images, training=training), training=training)

    def summary_images(self, images, seed: int):
        """For TensorBoard: one row per image, original | view 1 | view 2, uint8."""
        view1, view2 = self.views(tf.constant(images), tf.constant([seed, 0], tf.int64))
        original = preprocess(tf.constant(images), self.image_size)
        rows = tf.concat([original, view1, view2], axis=2)
        grid = tf.reshape(rows, [-1, 3 * self.image_size, 3])
        return {"augmented_view_pairs": tf.cast(tf.round(grid * 255.0), tf.uint8).numpy()}


def build(encoder: keras.Model, image_size: int, config: SimCLRConfig, seed: int, weight_decay: float) -> SimCLRModel:
    return SimCLRModel(encoder, image_size, config, seed=seed, weight_decay=weight_decay, name="simclr")


def build_model(train: TrainConfig, data: DataConfig, backbone: BackboneConfig, config: SimCLRConfig) -> SimCLRModel:
    """The compiled pretext model (Adam, constant learning rate, as the paper trained)."""
    if train.jit_compile:
        raise FgsslError(
            "--jit_compile does not work with --pretext=simclr yet: its on-device augmentation uses "
            "CropAndResize, which XLA cannot compile; leave --jit_compile off"
        )
    model = build(build_resnet(backbone, data.image_size), data.image_size, config, train.seed, train.weight_decay)
    model.compile(optimizer=keras.optimizers.Adam(train.learning_rate), jit_compile=False)
    return model


Config = SimCLRConfig
