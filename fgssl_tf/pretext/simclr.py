"""SimCLR (Chen et al. 2020) as the paper ran it: ResNet encoder, 2-layer projection
head, NT-Xent with temperature 0.5, both views encoded in one batch
(docs/paper_fidelity.md).

Differences from the paper's code, on purpose:
- negatives come from every replica (the paper ran one GPU, so this is what it
  computed there; on several GPUs a per-replica loss would silently learn less);
- Adam's weight decay is coupled L2 as in PyTorch, divided over replicas so the
  summed gradient matches one replica;
- the cosine schedule the paper created but never stepped is left out by default:
  the learning rate is the constant 1e-3 the paper actually trained with
  (`--lr_schedule=cosine` gives a warm-up and cosine decay that do step);
- the fine-grained variants make both views from the same image tensor, so a view
  pair can never be mismatched (the paper paired two folders by directory order).

The views, and the paper's fine-grained variants of them, come from `fgssl_tf.views`.
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from fgssl_tf.config import BackboneConfig, DataConfig, TrainConfig
from fgssl_tf.objectives import nt_xent, replica_info
from fgssl_tf.optim import FiniteMean
from fgssl_tf.pretext.base import PretextSpec
from fgssl_tf.pretext.settings import FlagSpec
from fgssl_tf.views import (  # noqa: F401 (API)
    EXTRA_MODES,
    VIEW_FLAGS,
    TwoViewModel,
    ViewsConfig,
    build_two_view_model,
    finish_view_flags,
)

DEFAULT_LEARNING_RATE = 1e-3  # Adam, constant (the paper's schedule was never stepped)
DEFAULT_WEIGHT_DECAY = 1e-5


@dataclasses.dataclass(frozen=True)
class SimCLRConfig(ViewsConfig):
    projection_dim: int = 512
    hidden_dim: int = 512
    temperature: float = 0.5


FLAGS = (
    FlagSpec("temperature", "temperature", "float", 0.5, "NT-Xent temperature.", lower_bound=1e-3),
    FlagSpec("projection_dim", "projection_dim", "integer", 512, "Output size of the projection head.", lower_bound=1),
    FlagSpec(
        "projection_hidden_dim", "hidden_dim", "integer", 512, "Hidden size of the projection head.", lower_bound=1
    ),
    *VIEW_FLAGS,
)


@keras.saving.register_keras_serializable(package="fgssl_tf")
class SimCLRModel(TwoViewModel):
    """SimCLR: two augmented views per image -> encoder -> projection head -> NT-Xent.

    `fgssl_tf.SimCLR(encoder, image_size=None, config=SimCLRConfig(), seed=0, weight_decay=0.0,
    augmenter=None, projection_head=None)`: `encoder` is any Keras model from [0, 1] images to
    features [B, D] (image_size: its input side, read from the encoder when fixed); `augmenter`
    the view transform (see `TwoViewModel`); `projection_head` any layer from features to
    projections (default: the paper's Dense-ReLU-Dense of `config.hidden_dim`, `projection_dim`).
    `compile()` uses Adam at 1e-3 with non-finite steps skipped; `fit` takes batches of uint8 images.
    """

    config_class = SimCLRConfig
    default_learning_rate = DEFAULT_LEARNING_RATE

    def __init__(
        self,
        encoder: keras.Model,
        image_size: int | None = None,
        config: SimCLRConfig | None = None,
        seed: int = 0,
        weight_decay: float = 0.0,
        projection_head: keras.layers.Layer | None = None,
        **kwargs,
    ):
        super().__init__(encoder, image_size, config, seed=seed, weight_decay=weight_decay, **kwargs)
        config = self.views_config
        self.simclr_config = config
        self.projector = projection_head or keras.Sequential(
            [
                keras.layers.Dense(config.hidden_dim, name="projection_hidden"),
                keras.layers.ReLU(),
                keras.layers.Dense(config.projection_dim, name="projection_out"),
            ],
            name="projector",
        )
        if not self.projector.built:
            self.projector.build((None, encoder.output_shape[-1]))
        self.built = True  # encoder and projector are built; the augmenter has no weights
        self.loss_tracker = FiniteMean(name="loss")
        self.accuracy_tracker = FiniteMean(name="contrastive_accuracy")

    @property
    def metrics(self):
        return [self.loss_tracker, self.accuracy_tracker]

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
        self.track_summed(self.loss_tracker, loss, replicas)
        self.accuracy_tracker.update_state(hits)
        return self.results(self.metrics)

    def call(self, images, training=False):
        return self.projector(self.encoder(images, training=training), training=training)

    def get_config(self):
        return {**super().get_config(), "projection_head": keras.saving.serialize_keras_object(self.projector)}


def build(encoder: keras.Model, image_size: int, config: SimCLRConfig, seed: int, weight_decay: float) -> SimCLRModel:
    return SimCLRModel(encoder, image_size, config, seed=seed, weight_decay=weight_decay, name="simclr")


def build_model(train: TrainConfig, data: DataConfig, backbone: BackboneConfig, config: SimCLRConfig) -> SimCLRModel:
    """The compiled pretext model (Adam; a constant learning rate, as the paper trained, unless
    `train.lr_schedule` asks for warm-up and cosine decay)."""

    def make(encoder):
        return build(encoder, data.image_size, config, train.seed, train.weight_decay)

    return build_two_view_model(make, train, data, backbone, config)


Config = SimCLRConfig

SPEC = PretextSpec(
    "simclr",
    SimCLRConfig,
    DEFAULT_LEARNING_RATE,
    DEFAULT_WEIGHT_DECAY,
    build_model,
    flags=FLAGS,
    finish=finish_view_flags,
)
