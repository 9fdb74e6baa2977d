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

from fgssl_tf.objectives import nt_xent, replica_info
from fgssl_tf.optim import FiniteMean
from fgssl_tf.pretext.settings import FlagSpec
from fgssl_tf.views import (  # noqa: F401 (API)
    EXTRA_MODES,
    VIEW_FLAGS,
    TwoViewModel,
    ViewsConfig,
    build_two_view_model,
    finish_view_flags,
    two_view_spec,
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
    head_attribute = "projector"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.simclr_config = self.views_config
        self.loss_tracker = FiniteMean(name="loss")
        self.accuracy_tracker = FiniteMean(name="contrastive_accuracy")

    def default_head(self, config: SimCLRConfig) -> keras.layers.Layer:
        return keras.Sequential(
            [
                keras.layers.Dense(config.hidden_dim, name="projection_hidden"),
                keras.layers.ReLU(),
                keras.layers.Dense(config.projection_dim, name="projection_out"),
            ],
            name="projector",
        )

    @property
    def metrics(self):
        return [self.loss_tracker, self.accuracy_tracker]

    def _loss(self, view1, view2, training):
        local = tf.shape(view1)[0]
        projections = self.embed_views(view1, view2, training)
        losses, hits = nt_xent(projections[:local], projections[local:], self.simclr_config.temperature)
        _, replicas, _ = replica_info()
        # Each replica holds 2n of the 2N anchors; gradients are summed over replicas.
        loss = tf.reduce_sum(losses) / tf.cast(2 * local * replicas, tf.float32)
        return loss, hits, replicas

    def _track(self, loss, hits, replicas):
        self.track_summed(self.loss_tracker, loss, replicas)
        self.accuracy_tracker.update_state(hits)
        return self.results(self.metrics)


def build(encoder: keras.Model, image_size: int, config: SimCLRConfig, seed: int, weight_decay: float) -> SimCLRModel:
    return SimCLRModel(encoder, image_size, config, seed=seed, weight_decay=weight_decay, name="simclr")


Config = SimCLRConfig

# The trainer's build_model: a ResNet encoder, Adam at a constant learning rate (as the paper
# trained) unless `train.lr_schedule` asks for warm-up and cosine decay.
SPEC = two_view_spec("simclr", SimCLRModel, DEFAULT_LEARNING_RATE, DEFAULT_WEIGHT_DECAY, FLAGS)
build_model = SPEC.build
