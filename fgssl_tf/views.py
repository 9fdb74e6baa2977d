"""Two augmented views of every image: the part that every two-view method shares
(SimCLR, VICReg). A method subclasses `TwoViewModel` and supplies `_loss(view1, view2,
training)` and its metric trackers; views, the fine-grained extras, per-image tables
and TensorBoard pictures come from here.

The views follow the paper's fine-grained variants (docs/paper_fidelity.md): ops from
`fine_grained` added to one or both views, before the view transform T
(`view2_pre=("gamma",)`: view 2 = T(gamma(x))) or after it (`view1_post=("random_jigsaw",)`:
view 1 = jigsaw(T(x))). `extra_mode="offline"` draws each extra op once per image and
keeps it, as the paper's pre-computed folders did; "online" draws anew every step.
Both views are made from the same image tensor, so a pair can never be mismatched.
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
from fgssl_tf.config import AugmentConfig
from fgssl_tf.data import preprocess
from fgssl_tf.errors import FgsslError
from fgssl_tf.models import build_resnet
from fgssl_tf.objectives import global_batch_position
from fgssl_tf.optim import FusedAdam, add_coupled_weight_decay, guard, learning_rate
from fgssl_tf.pretext.base import (
    PretextModel,
    PretextSpec,
    config_from_dict,
    config_to_dict,
    deserialize_parts,
    encoder_image_size,
)
from fgssl_tf.pretext.settings import FlagSpec

EXTRA_MODES = ("online", "offline")
# The seed stream of the parameters drawn once per image in offline mode.
_OFFLINE_STREAM = 2**31 - 2

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ViewsConfig:
    """How the two views are made: the view transform T and the fine-grained extras."""

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
                raise FgsslError(
                    f"cropped_regions crops around corners of the original image: put it in "
                    f"--{slot.replace('post', 'pre')}_ops, not --{slot}_ops"
                )
        for name in self.extra_ops():  # sizes an op cannot use fail here, not mid-training
            fine_grained.sample(name, tf.constant([0, 0], tf.int64), 1, image_size, self.fine_grained)


class TwoViewModel(PretextModel):
    """Two augmented views per image -> encoder -> head -> the subclass's loss.

    A method subclasses it with `head_attribute` (the attribute that holds its head), `default_head(config)`,
    `_loss(view1, view2, training) -> (loss, metric values, replicas)` (with `embed_views` for head(encoder(.))),
    `_track(...)` and `metrics`; construction, `call`, `get_config`/`from_config`, `train_step`, `test_step`,
    views and pictures are shared.

    `encoder`: any Keras model from [0, 1] float images [B, image_size, image_size, 3] to
    features [B, D]. `augmenter` (default: `SimCLRAugmentation` of `config.augment`, seeded
    per step): the view transform T, a layer from [0, 1] images to [0, 1] views of image_size
    px; a layer other than `SimCLRAugmentation` is called as `augmenter(images, training=True)`.
    `projection_head`: any layer from features to embeddings (default: `default_head(config)`).
    """

    config_class = ViewsConfig
    default_learning_rate = 1e-3
    # The head's attribute name is the path of its variables in checkpoints and .keras files:
    # each method keeps its own ("projector", "expander") so that saved models still restore.
    head_attribute = "head"

    def __init__(
        self,
        encoder: keras.Model,
        image_size: int | None = None,
        config: ViewsConfig | None = None,
        seed: int = 0,
        weight_decay: float = 0.0,
        augmenter: keras.layers.Layer | None = None,
        projection_head: keras.layers.Layer | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        config = self.config_class() if config is None else config
        self.encoder = encoder
        self.image_size = encoder_image_size(encoder, image_size, augmenter)
        self.views_config = config
        self.seed = seed
        self.weight_decay = weight_decay
        # Image ops in float32 under mixed precision.
        self.augmenter = augmenter or SimCLRAugmentation(self.image_size, config.augment, name="views", dtype="float32")
        self.seeded_augmenter = isinstance(self.augmenter, SimCLRAugmentation)
        self.needs_centroids = bool(set(config.extra_ops()) & set(fine_grained.NEEDS_CENTROIDS))
        self.image_tables: dict = {}  # split -> per-image tables, from prepare_data
        head = projection_head or self.default_head(config)
        if not head.built:
            head.build((None, encoder.output_shape[-1]))
        setattr(self, self.head_attribute, head)
        self.built = True  # encoder and head are built; the augmenter has no weights

    def default_head(self, config) -> keras.layers.Layer:
        """The method's head when none is given, from its config."""
        raise NotImplementedError

    @property
    def _head(self) -> keras.layers.Layer:
        # Private on purpose: .keras saving walks public attributes in name order, and a public
        # alias sorting before `head_attribute` would save the head under the alias's name.
        return getattr(self, self.head_attribute)

    def embed_views(self, view1, view2, training):
        """head(encoder(.)) of both views in one batch: [2n, d], view 1's rows first."""
        features = self.encoder(tf.concat([view1, view2], axis=0), training=training)
        return self._head(features, training=training)

    def call(self, images, training=False):
        return self._head(self.encoder(images, training=training), training=training)

    def benchmark_inputs(self, batch: int, size: int) -> tuple:
        """Both views are the batch itself; the loss reaches the whole forward (encoder and head)."""
        self.views = lambda images, *args, **kwargs: (images, images)
        return (lambda x: self(x, training=False)), [2 * batch, size, size, 3], (None,)

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
        config, tables = self.views_config, {}
        if self.needs_centroids:
            started = time.time()
            tables["centroids"] = tf.constant(fine_grained.corner_centroids(images, config.fine_grained))
            log.info("corner centroids of %d images in %.1f s", len(images), time.time() - started)
        if offline and config.extra_mode == "offline":
            slots = [(slot, f"{slot}_{k}", name) for slot, ops in config.view_plan() for k, name in enumerate(ops)]
            for stream, (slot, key, name) in enumerate(slots):
                seed = tf.constant([self.seed, _OFFLINE_STREAM - stream], tf.int64)
                # Extras before T see the cached images (larger with DataConfig.source_size), after T the views.
                size = images.shape[1] if slot.endswith("_pre") else self.image_size
                tables[key] = fine_grained.sample(name, seed, len(images), size, config.fine_grained)
        return tables

    def _extras(self, x, slot, ops, seed, ids, tables, side, position):
        seeds = tf.unstack(tf.random.experimental.stateless_split(seed, num=max(1, len(ops))))
        local = tf.shape(x)[0]
        for k, name in enumerate(ops):
            key = f"{slot}_{k}"
            if key in tables:  # offline: this image's parameters, drawn once
                params = {n: tf.gather(t, ids) for n, t in tables[key].items()}
            else:
                params = fine_grained.sample(
                    name, seeds[k], position["global_batch"], x.shape[1], self.views_config.fine_grained
                )
                params = {n: t[position["offset"] : position["offset"] + local] for n, t in params.items()}
            x = fine_grained.apply(name, x, params, self.views_config.fine_grained, side)
        return x

    def views(self, images, seed, ids=None, split="train", tables=None):
        """Both views of this replica's images, random numbers drawn for the global batch.
        `ids` index the per-image tables of `split` (see prepare_data)."""
        config = self.views_config
        position = global_batch_position(tf.shape(images)[0])
        tables = self.image_tables.get(split, {}) if tables is None else tables
        if config.extra_ops() and config.extra_mode == "offline" and split == "train" and not tables:
            raise FgsslError(
                "offline extras are drawn per image: call prepare_data(train_images) first (the trainer does)"
            )
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
            if self.seeded_augmenter:
                y = self.augmenter(y, seed=seeds[v - 1], **position)
            else:
                y = self.augmenter(y, training=True)
            views.append(
                self._extras(y, f"view{v}_post", plan[f"view{v}_post"], seeds[2 * v + 1], ids, tables, None, position)
            )
        return tuple(views)

    def _loss(self, view1, view2, training):
        raise NotImplementedError

    def default_optimizer(self):
        return guard(FusedAdam(self.default_learning_rate))

    def get_config(self):
        return {
            "name": self.name,
            "encoder": keras.saving.serialize_keras_object(self.encoder),
            "image_size": self.image_size,
            "config": config_to_dict(self.views_config),
            "seed": self.seed,
            "weight_decay": self.weight_decay,
            "augmenter": keras.saving.serialize_keras_object(self.augmenter),
            "projection_head": keras.saving.serialize_keras_object(self._head),
        }

    @classmethod
    def from_config(cls, config):
        config = deserialize_parts(config, ("encoder", "augmenter", "projection_head"))
        return cls(**{**config, "config": config_from_dict(cls.config_class, config["config"])})

    def _track(self, loss, values, replicas):
        raise NotImplementedError

    def train_step(self, data):
        images, ids = self.unpack_batch(data)
        view1, view2 = self.views(images, step_seed(self.seed, self.optimizer.iterations), ids)
        with tf.GradientTape() as tape:
            loss, values, replicas = self._loss(view1, view2, training=True)
        variables = self.trainable_variables
        gradients = add_coupled_weight_decay(tape.gradient(loss, variables), variables, self.weight_decay)
        self.optimizer.apply(gradients, variables)
        return self._track(loss, values, replicas)

    def test_step(self, data):
        images, ids = self.unpack_batch(data)
        view1, view2 = self.views(images, step_seed(self.seed, VALIDATION_STREAM), ids, split="val")
        loss, values, replicas = self._loss(view1, view2, training=False)
        return self._track(loss, values, replicas)

    def summary_images(self, images, seed: int):
        """For TensorBoard: one row per image, original | view 1 | view 2, uint8."""
        tables = self._tables(images, offline=True)
        ids = tf.range(len(images))
        view1, view2 = self.views(tf.constant(images), tf.constant([seed, 0], tf.int64), ids, tables=tables)
        original = preprocess(tf.constant(images), self.image_size)
        rows = tf.concat([original, view1, view2], axis=2)
        grid = tf.reshape(rows, [-1, 3 * self.image_size, 3])
        return {"augmented_view_pairs": tf.cast(tf.round(grid * 255.0), tf.uint8).numpy()}


def build_two_view_model(make_model, train, data, backbone, config: ViewsConfig) -> TwoViewModel:
    """What every two-view method's `build_model` does: refuse XLA, check the views, build a
    ResNet encoder, hand it to `make_model(encoder)` and compile with Adam at the run's
    learning rate (schedule)."""
    if train.jit_compile:
        raise FgsslError(
            f"--jit_compile does not work with --pretext={train.pretext} yet: its on-device augmentation uses "
            "CropAndResize, which XLA cannot compile; leave --jit_compile off"
        )
    config.check(data.image_size)
    model = make_model(build_resnet(backbone, data.image_size))
    model.compile(optimizer=guard(FusedAdam(learning_rate(train))), jit_compile=False)
    return model


def two_view_spec(
    name: str, model_class: type, default_learning_rate: float, default_weight_decay: float, flags: tuple = ()
) -> PretextSpec:
    """The registry entry of a two-view method: `flags` (its own) then the views' (`VIEW_FLAGS`);
    the trainer builds `model_class(encoder, image_size, config, seed=, weight_decay=, name=name)`
    on a ResNet encoder with Adam (`build_two_view_model`)."""

    def build_model(train, data, backbone, config: ViewsConfig) -> TwoViewModel:
        def make(encoder):
            return model_class(
                encoder, data.image_size, config, seed=train.seed, weight_decay=train.weight_decay, name=name
            )

        return build_two_view_model(make, train, data, backbone, config)

    return PretextSpec(
        name,
        model_class.config_class,
        default_learning_rate,
        default_weight_decay,
        build_model,
        flags=(*flags, *VIEW_FLAGS),
        finish=finish_view_flags,
        cosine_schedule=True,
        jit_compile_refused="its augmentation has no XLA kernel",
        uses_source_size=True,
        model_class=model_class,
    )


def _ops_error(names):
    if names:
        fine_grained.check_ops(names)


def _extra_ops_flags() -> tuple:
    # The paper's fine-grained variants: extra ops per view (gamma, coarse_dropout, patch_swap,
    # random_jigsaw, dcl, cropped_regions), before (pre) or after (post) the view transform.
    return tuple(
        FlagSpec(
            f"{view}_{stage}_ops",
            f"{view}_{stage}",
            "list",
            [],
            f"Extra augmentations applied to {view.replace('view', 'view ')} {where} the view transform, in order.",
            check=_ops_error,
        )
        for view in ("view1", "view2")
        for stage, where in (("pre", "before"), ("post", "after"))
    )


# The command-line flags of the views, shared by every two-view pretext (`PretextSpec.flags`).
# Augmentation strengths: the paper's SimCLR_Original by default.
VIEW_FLAGS = (
    FlagSpec(
        "crop_scale_min",
        "augment.crop_scale_min",
        "float",
        0.08,
        "Smallest area share of the random resized crop.",
        lower_bound=0.01,
        upper_bound=1.0,
    ),
    FlagSpec(
        "color_jitter_strength",
        "augment.color_jitter_strength",
        "float",
        0.8,
        "Brightness/contrast/saturation strength; hue = strength/4.",
        lower_bound=0.0,
    ),
    FlagSpec(
        "color_jitter_prob",
        "augment.color_jitter_prob",
        "float",
        0.4,
        "Probability of colour jitter.",
        lower_bound=0.0,
        upper_bound=1.0,
    ),
    FlagSpec(
        "grayscale_prob",
        "augment.grayscale_prob",
        "float",
        0.2,
        "Probability of grayscale.",
        lower_bound=0.0,
        upper_bound=1.0,
    ),
    FlagSpec(
        "blur_prob",
        "augment.blur_prob",
        "float",
        0.5,
        "Probability of Gaussian blur (kernel ~ image_size/10).",
        lower_bound=0.0,
        upper_bound=1.0,
    ),
    FlagSpec(
        "blur_sigma_max",
        "augment.blur_sigma_max",
        "float",
        2.0,
        "Largest Gaussian blur sigma in pixels (the paper's 2.0 was meant for 224-512 px images).",
        lower_bound=0.1,
    ),
    FlagSpec(
        "horizontal_flip",
        "augment.horizontal_flip",
        "boolean",
        False,
        "Random horizontal flip (off in the paper's Original).",
    ),
    FlagSpec(
        "vertical_flip",
        "augment.vertical_flip",
        "boolean",
        False,
        "Random vertical flip, p = 0.5 (images with no up: cells, tissue, leaves from above).",
    ),
    FlagSpec("rotate90", "augment.rotate90", "boolean", False, "Random rotation by a multiple of 90 degrees."),
    FlagSpec(
        "random_crop",
        "augment.random_crop",
        "boolean",
        True,
        "RandomResizedCrop in the view transform; off: the whole image (the paper's Resize-only variants).",
    ),
    *_extra_ops_flags(),
    FlagSpec(
        "extra_augmentation_mode",
        "extra_mode",
        "enum",
        "online",
        "online: extras drawn every step; offline: drawn once per image and kept (the paper).",
        choices=EXTRA_MODES,
    ),
    FlagSpec("gamma_min", "fine_grained.gamma_min", "float", 0.5, "Random gamma: smallest gamma.", lower_bound=0.01),
    FlagSpec("gamma_max", "fine_grained.gamma_max", "float", 2.5, "Random gamma: largest gamma.", lower_bound=0.01),
    FlagSpec(
        "dropout_holes_min",
        "fine_grained.dropout_holes_min",
        "integer",
        5,
        "Coarse dropout: fewest holes.",
        lower_bound=1,
    ),
    FlagSpec(
        "dropout_holes_max",
        "fine_grained.dropout_holes_max",
        "integer",
        20,
        "Coarse dropout: most holes.",
        lower_bound=1,
    ),
    FlagSpec(
        "dropout_size_min",
        "fine_grained.dropout_size_min",
        "float",
        10 / 512,
        "Coarse dropout: smallest hole side, a fraction of the image side.",
        lower_bound=0.0,
        upper_bound=1.0,
    ),
    FlagSpec(
        "dropout_size_max",
        "fine_grained.dropout_size_max",
        "float",
        25 / 512,
        "Coarse dropout: largest hole side, a fraction of the image side.",
        lower_bound=0.0,
        upper_bound=1.0,
    ),
    FlagSpec(
        "dropout_fill",
        "fine_grained.dropout_fill",
        "float",
        0.0,
        "Coarse dropout: fill value in [0, 1].",
        lower_bound=0.0,
        upper_bound=1.0,
    ),
    FlagSpec(
        "swap_patch",
        "fine_grained.swap_patch",
        "float",
        200 / 512,
        "Patch swap: patch side, a fraction of the image side (at most 0.5).",
        lower_bound=0.0,
        upper_bound=0.5,
    ),
    FlagSpec(
        "random_jigsaw_grid",
        "fine_grained.jigsaw_grid",
        "integer",
        4,
        "Random jigsaw: n x n blocks (PMG's jigsaw_generator).",
        lower_bound=1,
    ),
    FlagSpec("dcl_grid", "fine_grained.dcl_grid", "integer", 7, "DCL region confusion: N x N cells.", lower_bound=2),
    FlagSpec(
        "dcl_border",
        "fine_grained.dcl_border",
        "float",
        10 / 512,
        "DCL: border cropped first, a fraction of the image side.",
        lower_bound=0.0,
        upper_bound=0.25,
    ),
    FlagSpec(
        "region_crop_min",
        "fine_grained.crop_min",
        "float",
        200 / 512,
        "Cropped regions: smallest window side, a fraction of the image side.",
        lower_bound=0.01,
        upper_bound=1.0,
    ),
    FlagSpec(
        "region_crop_max",
        "fine_grained.crop_max",
        "float",
        300 / 512,
        "Cropped regions: largest window side, a fraction of the image side.",
        lower_bound=0.01,
        upper_bound=1.0,
    ),
)


def finish_view_flags(config: ViewsConfig, values) -> ViewsConfig:
    """`PretextSpec.finish` of the two-view pretexts: refuse a range whose low end is above its high end."""
    for low, high in (
        ("gamma_min", "gamma_max"),
        ("dropout_holes_min", "dropout_holes_max"),
        ("dropout_size_min", "dropout_size_max"),
        ("region_crop_min", "region_crop_max"),
    ):
        if values[low] > values[high]:
            raise FgsslError(f"--{low}={values[low]} is larger than --{high}={values[high]}")
    return config
