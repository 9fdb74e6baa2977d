"""SimCLR (Chen et al. 2020) as the paper ran it: ResNet encoder, 2-layer projection
head, NT-Xent with temperature 0.5, both views encoded in one batch (spec §3.1).

Differences from the paper's code, on purpose:
- negatives come from every replica (the paper ran one GPU, so this is what it
  computed there; on several GPUs a per-replica loss would silently learn less);
- Adam's weight decay is coupled L2 as in PyTorch, divided over replicas so the
  summed gradient matches one replica;
- the cosine schedule the paper created but never stepped (bug C1) is left out:
  the learning rate is the constant 1e-3 the paper actually trained with;
- the fine-grained variants make both views from the same image tensor, so a view
  pair can never be mismatched (the paper paired two folders by directory order, C3).

The variants (spec §3.2) add ops from `fine_grained` to one or both views, before
the view transform T (`view2_pre=("gamma",)`: view 2 = T(gamma(x))) or after it
(`view1_post=("random_jigsaw",)`: view 1 = jigsaw(T(x))). `extra_mode="offline"`
draws each extra op once per image and keeps it, as the paper's pre-computed
folders did; "online" draws anew every step.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import keras
import numpy as np
import tensorflow as tf

from fgssl_tf import fine_grained

from fgssl_tf.augment import VALIDATION_STREAM, SimCLRAugmentation, step_seed
from fgssl_tf.config import AugmentConfig, BackboneConfig, DataConfig, TrainConfig
from fgssl_tf.errors import FgsslError
from fgssl_tf.export import preprocess
from fgssl_tf.models import build_resnet
from fgssl_tf.objectives import global_batch_position, nt_xent, replica_info
from fgssl_tf.optim import FiniteMean, add_coupled_weight_decay, guard

DEFAULT_LEARNING_RATE = 1e-3  # Adam, constant (the paper's schedule was never stepped)
DEFAULT_WEIGHT_DECAY = 1e-5
EXTRA_MODES = ("online", "offline")
# The seed stream of the parameters drawn once per image in offline mode.
_OFFLINE_STREAM = 2**31 - 2

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SimCLRConfig:
    projection_dim: int = 512
    hidden_dim: int = 512
    temperature: float = 0.5
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)
    # Fine-grained extras per view: op names of `fine_grained.OPS`, before or after T.
    view1_pre: tuple = ()
    view1_post: tuple = ()
    view2_pre: tuple = ()
    view2_post: tuple = ()
    extra_mode: str = "online"  # online | offline (drawn once per image and kept, as the paper)
    fine_grained: fine_grained.FineGrainedConfig = dataclasses.field(default_factory=fine_grained.FineGrainedConfig)

    def view_plan(self) -> list[tuple[str, tuple]]:
        """[(slot, ops)] in the order they run: view1_pre, view1_post, view2_pre, view2_post."""
        return [(slot, tuple(getattr(self, slot))) for slot in ("view1_pre", "view1_post", "view2_pre", "view2_post")]

    def extra_ops(self) -> list[str]:
        return [name for _, ops in self.view_plan() for name in ops]

    def check(self, image_size: int) -> None:
        """Refuse unknown ops and settings an op cannot work with, before any work."""
        fine_grained.check_ops(self.extra_ops())
        if self.extra_mode not in EXTRA_MODES:
            raise FgsslError(f"unknown --extra_augmentation_mode={self.extra_mode!r}; choose online or offline")
        for slot in ("view1_post", "view2_post"):
            if set(getattr(self, slot)) & set(fine_grained.NEEDS_CENTROIDS):
                raise FgsslError(f"cropped_regions crops around corners of the original image: put it in --{slot.replace('post', 'pre')}_ops, not --{slot}_ops")
        for name in self.extra_ops():  # sizes an op cannot use fail here, not mid-training
            fine_grained.sample(name, tf.constant([0, 0], tf.int64), 1, image_size, self.fine_grained)


class SimCLRModel(keras.Model):
    """Two augmented views per image -> encoder -> projection -> NT-Xent."""

    def __init__(self, encoder: keras.Model, image_size: int, config: SimCLRConfig, seed: int = 0, weight_decay: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.image_size = image_size
        self.simclr_config = config
        self.seed = seed
        self.weight_decay = weight_decay
        self.augmenter = SimCLRAugmentation(image_size, config.augment, name="views", dtype="float32")  # image ops in float32 under mixed precision
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
        self.needs_centroids = bool(set(config.extra_ops()) & set(fine_grained.NEEDS_CENTROIDS))
        self.image_tables: dict = {}  # split -> per-image tables, from prepare_data
        self.loss_tracker = FiniteMean(name="loss")
        self.accuracy_tracker = FiniteMean(name="contrastive_accuracy")

    @property
    def metrics(self):
        return [self.loss_tracker, self.accuracy_tracker]

    def exportable_encoders(self) -> dict:
        """Encoders to export, by suffix of the export name ('' = the encoder)."""
        return {"": self.encoder}

    def prepare_data(self, train_images: np.ndarray, val_images: np.ndarray | None = None) -> None:
        """Per-image tables the extras need, indexed by the image ids the batches carry:
        corner centroids (cropped_regions) and, offline, the parameters drawn once per image."""
        self.image_tables = {"train": self._tables(train_images, offline=True)}
        if val_images is not None:
            self.image_tables["val"] = self._tables(val_images, offline=False)  # fixed seed: the same every epoch

    def _tables(self, images: np.ndarray, offline: bool) -> dict:
        config, tables = self.simclr_config, {}
        if self.needs_centroids:
            started = time.time()
            tables["centroids"] = tf.constant(fine_grained.corner_centroids(images, config.fine_grained))
            log.info("corner centroids of %d images in %.1f s", len(images), time.time() - started)
        if offline and config.extra_mode == "offline":
            slots = [(f"{slot}_{k}", name) for slot, ops in config.view_plan() for k, name in enumerate(ops)]
            for stream, (key, name) in enumerate(slots):
                seed = tf.constant([self.seed, _OFFLINE_STREAM - stream], tf.int64)
                tables[key] = fine_grained.sample(name, seed, len(images), self.image_size, config.fine_grained)
        return tables

    def _extras(self, x, slot, ops, seed, ids, tables, side, position):
        seeds = tf.unstack(tf.random.experimental.stateless_split(seed, num=max(1, len(ops))))
        local = tf.shape(x)[0]
        for k, name in enumerate(ops):
            key = f"{slot}_{k}"
            if key in tables:  # offline: this image's parameters, drawn once
                params = {n: tf.gather(t, ids) for n, t in tables[key].items()}
            else:
                params = fine_grained.sample(name, seeds[k], position["global_batch"], x.shape[1], self.simclr_config.fine_grained)
                params = {n: t[position["offset"] : position["offset"] + local] for n, t in params.items()}
            x = fine_grained.apply(name, x, params, self.simclr_config.fine_grained, side)
        return x

    def views(self, images, seed, ids=None, split="train", tables=None):
        """Both views of this replica's images, random numbers drawn for the global batch.
        `ids` index the per-image tables of `split` (see prepare_data)."""
        config = self.simclr_config
        position = global_batch_position(tf.shape(images)[0])
        tables = self.image_tables.get(split, {}) if tables is None else tables
        if config.extra_ops() and config.extra_mode == "offline" and split == "train" and not tables:
            raise FgsslError("offline extras are drawn per image: call prepare_data(train_images) first (the trainer does)")
        side = None
        if self.needs_centroids:
            if "centroids" not in tables or ids is None:
                raise FgsslError("cropped_regions needs corner centroids: call prepare_data(...) and pass image ids")
            side = {"centroids": tf.gather(tables["centroids"], ids)}
        x = tf.image.convert_image_dtype(images, tf.float32)
        seeds = tf.unstack(tf.random.experimental.stateless_split(seed, num=6))
        plan = dict(config.view_plan())
        views = []
        for v in (1, 2):
            y = self._extras(x, f"view{v}_pre", plan[f"view{v}_pre"], seeds[2 * v], ids, tables, side, position)
            y = self.augmenter(y, seed=seeds[v - 1], **position)
            views.append(self._extras(y, f"view{v}_post", plan[f"view{v}_post"], seeds[2 * v + 1], ids, tables, None, position))
        return tuple(views)

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
        images, ids = data[:2] if isinstance(data, (tuple, list)) else (data, None)
        view1, view2 = self.views(images, step_seed(self.seed, self.optimizer.iterations), ids)
        with tf.GradientTape() as tape:
            loss, hits, replicas = self._loss(view1, view2, training=True)
        variables = self.trainable_variables
        gradients = add_coupled_weight_decay(tape.gradient(loss, variables), variables, self.weight_decay)
        self.optimizer.apply(gradients, variables)
        return self._track(loss, hits, replicas)

    def test_step(self, data):
        images, ids = data[:2] if isinstance(data, (tuple, list)) else (data, None)
        view1, view2 = self.views(images, step_seed(self.seed, VALIDATION_STREAM), ids, split="val")
        loss, hits, replicas = self._loss(view1, view2, training=False)
        return self._track(loss, hits, replicas)

    def call(self, images, training=False):
        return self.projector(self.encoder(images, training=training), training=training)

    def summary_images(self, images, seed: int):
        """For TensorBoard: one row per image, original | view 1 | view 2, uint8."""
        tables = self._tables(images, offline=True)
        ids = tf.range(len(images))
        view1, view2 = self.views(tf.constant(images), tf.constant([seed, 0], tf.int64), ids, tables=tables)
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
    config.check(data.image_size)
    model = build(build_resnet(backbone, data.image_size), data.image_size, config, train.seed, train.weight_decay)
    model.compile(optimizer=guard(keras.optimizers.Adam(train.learning_rate)), jit_compile=False)
    return model


Config = SimCLRConfig
