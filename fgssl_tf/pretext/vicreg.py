"""VICReg (Bardes, Ponce & LeCun, ICLR 2022): two views, an expander, and a loss with no
negatives: the two embeddings agree (invariance), every dimension keeps a standard
deviation of at least 1 over the batch (variance), and dimensions are decorrelated
(covariance).

Why this negatives-free method here: a contrastive loss learns from the negatives in its
batch, and a CPU affords batches of 64-128, where SimCLR's signal is weak; VICReg needs
no negatives, no momentum encoder and no predictor (BYOL, SimSiam), holds up at small
batches (the paper's ablation), and its variance term prevents collapse explicitly, which
the monitor's collapse signals can watch. It takes the same views as SimCLR, the paper's
fine-grained variants included (`fgssl_tf.views`).

Across replicas the embeddings of the whole global batch are gathered first, so the
variance and covariance are those of the global batch, and the loss on R replicas equals
the loss on one.
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from fgssl_tf.models.layers import batch_norm
from fgssl_tf.objectives import cross_replica_concat, replica_info
from fgssl_tf.pretext.settings import FlagSpec
from fgssl_tf.views import TwoViewModel, ViewsConfig, two_view_spec

DEFAULT_LEARNING_RATE = 1e-3  # Adam (the paper: LARS at batch 2048; Adam suits the small batches of a CPU)
DEFAULT_WEIGHT_DECAY = 1e-5


@dataclasses.dataclass(frozen=True)
class VICRegConfig(ViewsConfig):
    expander_dim: int = 1024  # the paper: 8192 for ResNet-50; smaller suits small encoders and CPUs
    expander_layers: int = 3
    invariance_weight: float = 25.0  # the paper's lambda
    variance_weight: float = 25.0  # mu
    covariance_weight: float = 1.0  # nu


FLAGS = (
    FlagSpec(
        "vicreg_expander_dim",
        "expander_dim",
        "integer",
        1024,
        "VICReg: width of the expander's layers (the paper: 8192).",
        lower_bound=1,
    ),
    FlagSpec(
        "vicreg_expander_layers",
        "expander_layers",
        "integer",
        3,
        "VICReg: dense layers of the expander.",
        lower_bound=1,
    ),
    FlagSpec(
        "invariance_weight",
        "invariance_weight",
        "float",
        25.0,
        "VICReg: weight of the two views' mean squared difference.",
        lower_bound=0.0,
    ),
    FlagSpec(
        "variance_weight",
        "variance_weight",
        "float",
        25.0,
        "VICReg: weight of the hinge on each dimension's std.",
        lower_bound=0.0,
    ),
    FlagSpec(
        "covariance_weight",
        "covariance_weight",
        "float",
        1.0,
        "VICReg: weight of the off-diagonal covariance.",
        lower_bound=0.0,
    ),
)


def vicreg_terms(z1: tf.Tensor, z2: tf.Tensor) -> dict:
    """The three VICReg terms of the global batch: z1, z2 are this replica's [n, d] embeddings."""
    z1 = cross_replica_concat(tf.cast(z1, tf.float32))
    z2 = cross_replica_concat(tf.cast(z2, tf.float32))
    count = tf.cast(tf.shape(z1)[0], tf.float32)
    dim = tf.cast(tf.shape(z1)[1], tf.float32)
    invariance = tf.reduce_mean(tf.square(z1 - z2))
    variance = covariance = 0.0
    for z in (z1, z2):
        z = z - tf.reduce_mean(z, axis=0)
        std = tf.sqrt(tf.reduce_sum(tf.square(z), axis=0) / (count - 1.0) + 1e-4)
        variance += tf.reduce_mean(tf.nn.relu(1.0 - std)) / 2.0
        cov = tf.matmul(z, z, transpose_a=True) / (count - 1.0)
        off_diagonal = cov - tf.linalg.diag(tf.linalg.diag_part(cov))
        covariance += tf.reduce_sum(tf.square(off_diagonal)) / dim
    return {"invariance": invariance, "variance": variance, "covariance": covariance}


def vicreg_loss(terms: dict, config: VICRegConfig) -> tf.Tensor:
    return (
        config.invariance_weight * terms["invariance"]
        + config.variance_weight * terms["variance"]
        + config.covariance_weight * terms["covariance"]
    )


@keras.saving.register_keras_serializable(package="fgssl_tf")
class VICRegModel(TwoViewModel):
    """VICReg: two augmented views per image -> encoder -> expander -> VICReg loss.

    `fgssl_tf.VICReg(encoder, image_size=None, config=VICRegConfig(), seed=0, weight_decay=0.0,
    augmenter=None, projection_head=None)`: as `SimCLR`; `projection_head` replaces the expander
    (default: `config.expander_layers` Dense layers of `config.expander_dim`, BN and ReLU between).
    `compile()` uses Adam at 1e-3 with non-finite steps skipped; `fit` takes batches of uint8 images.
    """

    config_class = VICRegConfig
    default_learning_rate = DEFAULT_LEARNING_RATE
    head_attribute = "expander"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.vicreg_config = self.views_config
        self.trackers = self.make_trackers("loss", "invariance", "variance", "covariance")

    def default_head(self, config: VICRegConfig) -> keras.layers.Layer:
        layers = []
        for k in range(config.expander_layers - 1):
            layers += [
                keras.layers.Dense(config.expander_dim, name=f"expander_{k}"),
                batch_norm(f"expander_bn_{k}"),
                keras.layers.ReLU(),
            ]
        layers.append(keras.layers.Dense(config.expander_dim, name="expander_out"))
        return keras.Sequential(layers, name="expander")

    @property
    def metrics(self):
        return list(self.trackers.values())

    def _loss(self, view1, view2, training):
        local = tf.shape(view1)[0]
        embeddings = self.embed_views(view1, view2, training)
        terms = vicreg_terms(embeddings[:local], embeddings[local:])
        _, replicas, _ = replica_info()
        # Every replica computes the global batch's loss; its gradient reaches each replica's own
        # images through the gather, and the optimizer sums replicas: divide by their number.
        return vicreg_loss(terms, self.vicreg_config) / replicas, terms, replicas

    def _track(self, loss, terms, replicas):
        self.track_summed(self.trackers["loss"], loss, replicas)
        for name, value in terms.items():
            self.trackers[name].update_state(value)
        return self.results(self.metrics)


Config = VICRegConfig

# The trainer's build_model: a ResNet encoder, Adam with the run's learning rate (schedule).
SPEC = two_view_spec("vicreg", VICRegModel, DEFAULT_LEARNING_RATE, DEFAULT_WEIGHT_DECAY, FLAGS)
