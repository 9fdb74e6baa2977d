"""PMG, progressive multi-granularity training (Du et al. 2020): the paper's supervised
baseline (docs/paper_fidelity.md, "PMG, the supervised baseline"), trained on the labels of the
same split every encoder is measured on.

A ResNet backbone feeds three heads on its last three stages (1x1 and 3x3 conv
blocks, global max pooling, BN-Dense-BN-ELU-Dense classifiers) and a classifier on
their concatenation. Each batch takes four gradient steps: jigsaw-shuffled images
of 8x8, 4x4 and 2x2 blocks on heads 1, 2, 3, then the whole image on the
concatenated head with weight 2. The jigsaw is `fine_grained.random_jigsaw`, PMG's
`jigsaw_generator`, one order for the batch as PMG did; the same op makes the SimCLR
random-jigsaw view.

Differences from the paper's code, on purpose:
- P1: as many outputs as the data has classes (the paper's head had 200 for 5);
- P2: selection and the report use the shared fixed split (the paper's `test()`
  ignored its loader and read an unseeded `val/` folder);
- the backbone's ImageNet weights are Keras' (`keras.applications.ResNet50`, trained
  with Caffe preprocessing, which the model applies itself to its [0, 1] input);
  torchvision's weights and its (0.5, 0.5) normalisation are not available here;
- only variables with a gradient in a step are updated in it (PyTorch's old
  `zero_grad` kept zero gradients, so decay and momentum also moved unused heads).
"""

from __future__ import annotations

import dataclasses
import math
import os

import keras
import numpy as np
import tensorflow as tf

from fgssl_tf.augment import step_seed
from fgssl_tf.config import BackboneConfig, DataConfig, TrainConfig
from fgssl_tf.errors import FgsslError
from fgssl_tf.fine_grained import random_jigsaw
from fgssl_tf.models import build_resnet
from fgssl_tf.models.layers import CaffePreprocess, Conv2D, batch_norm
from fgssl_tf.models.resnet import stage_output_names
from fgssl_tf.objectives import global_batch_position
from fgssl_tf.optim import FusedSGD, add_coupled_weight_decay, guard
from fgssl_tf.pretext.base import (
    PretextModel,
    PretextSpec,
    config_from_dict,
    config_to_dict,
    deserialize_parts,
    encoder_image_size,
)
from fgssl_tf.pretext.settings import FlagSpec, weights_choice_error

DEFAULT_LEARNING_RATE = 2e-3  # SGD for the new heads; the backbone gets a tenth
DEFAULT_WEIGHT_DECAY = 5e-4
WEIGHTS_HELP = (
    "--backbone_weights=imagenet (Keras' ImageNet ResNet-50, downloaded once), a path to a weights file, or none"
)
# The last unit of stages 2, 3 and 4 of each backbone (PMG's layer2, layer3, layer4); Keras' ResNet-50 names
# its own, the package's basic-block ResNets follow `stage_output_names`.
_STAGE_OUTPUTS = {
    "resnet50": ("conv3_block4_out", "conv4_block6_out", "conv5_block3_out"),
    **{name: stage_output_names(name)[1:] for name in ("resnet10", "resnet18")},
}


@dataclasses.dataclass(frozen=True)
class PMGConfig:
    num_classes: int = 0  # from the data (the trainer fills it in)
    backbone_weights: str = "auto"  # auto (imagenet for resnet50, none for resnet18) | imagenet | none | PATH
    feature_size: int = 512
    head_channels: int = 1024
    backbone_lr_ratio: float = 0.1  # backbone learning rate = this x the heads'
    momentum: float = 0.9
    granularities: tuple = (8, 4, 2)  # jigsaw blocks per side for heads 1, 2, 3
    concat_weight: float = 2.0
    crop_padding: float = 8 / 448  # RandomCrop(448, padding=8), as a fraction of the side


FLAGS = (
    FlagSpec(
        "backbone_weights",
        "backbone_weights",
        "string",
        "auto",
        "PMG backbone: imagenet (Keras' ResNet-50, downloads once), none, a weights file, "
        "or auto (imagenet for resnet50, none for resnet18).",
        check=weights_choice_error(("auto", "imagenet", "none")),
    ),
    FlagSpec(
        "backbone_lr_ratio",
        "backbone_lr_ratio",
        "float",
        0.1,
        "PMG: the backbone's learning rate as a share of the heads' (the paper: 0.1).",
        lower_bound=0.0,
    ),
    FlagSpec(
        "pmg_feature_size",
        "feature_size",
        "integer",
        512,
        "PMG: channels of the heads' 1x1 convs and hidden size of their classifiers.",
        lower_bound=1,
    ),
    FlagSpec(
        "pmg_head_channels",
        "head_channels",
        "integer",
        1024,
        "PMG: channels of the heads' 3x3 convs (the pooled feature of each head).",
        lower_bound=1,
    ),
)


def _load_resnet50(weights: str, image_size: int) -> keras.Model:
    if weights not in ("imagenet", "none") and not os.path.isfile(weights):
        raise FgsslError(f"--backbone_weights={weights!r}: no such file; use {WEIGHTS_HELP}")
    try:
        return keras.applications.ResNet50(
            include_top=False, weights=None if weights == "none" else weights, input_shape=(image_size, image_size, 3)
        )
    except FgsslError:
        raise
    except Exception as err:  # no internet, a truncated or mismatched file
        raise FgsslError(
            f"could not load the ResNet-50 weights {weights!r} ({type(err).__name__}: {err}); use {WEIGHTS_HELP}"
        ) from err


def build_stage_features(backbone: BackboneConfig, image_size: int, weights: str) -> keras.Model:
    """[0, 1] images -> the feature maps of the last three stages."""
    if backbone.name not in _STAGE_OUTPUTS:
        raise FgsslError(f"--pretext=pmg supports --backbone={' or '.join(_STAGE_OUTPUTS)}, not {backbone.name!r}")
    if weights == "auto":
        weights = "imagenet" if backbone.name == "resnet50" else "none"
    inputs = keras.Input((image_size, image_size, 3), name="images")
    if backbone.name == "resnet50":
        net = _load_resnet50(weights, image_size)
        stages = keras.Model(net.input, [net.get_layer(n).output for n in _STAGE_OUTPUTS["resnet50"]], name="resnet50")
        outputs = stages(CaffePreprocess(name="caffe_preprocess")(inputs))
    else:
        if weights != "none":
            pretty = backbone.name.replace("resnet", "ResNet-")
            raise FgsslError(
                f"Keras has no ImageNet {pretty}: use --backbone=resnet50 for ImageNet weights, "
                "or --backbone_weights=none"
            )
        net = build_resnet(backbone, image_size)
        outputs = keras.Model(
            net.input, [net.get_layer(n).output for n in _STAGE_OUTPUTS[backbone.name]], name=backbone.name
        )(inputs)
    return keras.Model(inputs, outputs, name="stage_features")


def _conv_block(filters: int, kernel: int, name: str) -> list:
    # PMG's BasicConv: conv without bias, BN (PyTorch momentum 0.01 = Keras 0.99, eps 1e-5), ReLU.
    return [
        Conv2D(filters, kernel, padding="same", use_bias=False, name=f"{name}_conv"),
        batch_norm(f"{name}_bn", momentum=0.99),
        keras.layers.ReLU(name=f"{name}_relu"),
    ]


def _classifier(config: PMGConfig, name: str) -> keras.Sequential:
    return keras.Sequential(
        [
            batch_norm(f"{name}_bn1"),
            keras.layers.Dense(config.feature_size, name=f"{name}_dense1"),
            batch_norm(f"{name}_bn2"),
            keras.layers.ELU(name=f"{name}_elu"),
            keras.layers.Dense(config.num_classes, name=f"{name}_logits"),
        ],
        name=name,
    )


@keras.saving.register_keras_serializable(package="fgssl_tf")
class PMGModel(PretextModel):
    """Images -> (head 1, head 2, head 3, concatenated head) logits.

    `fgssl_tf.PMG(features, image_size=None, config=PMGConfig(), seed=0, weight_decay=0.0,
    learning_rate=2e-3, num_classes=None)`: PMG trains on labels and needs more than an encoder:
    `features` is a Keras model from [0, 1] images to the feature maps of three stages (coarse to
    fine; `build_stage_features` makes them from a ResNet), each feeding a head.
    `num_classes` (or `config.num_classes`) sizes the heads; batches are (uint8 images, labels).
    `compile()` gives the heads SGD at `learning_rate` and the backbone a tenth of it;
    `training_callbacks('loss')` gives PMG's cosine per epoch. It is a classifier too
    (`predict_classes`); `exportable_encoders` gives the average-pooled last stage.
    """

    predicts_classes = True

    def __init__(
        self,
        features: keras.Model,
        image_size: int | None = None,
        config: PMGConfig | None = None,
        seed: int = 0,
        weight_decay: float = 0.0,
        learning_rate: float = DEFAULT_LEARNING_RATE,
        num_classes: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        config = PMGConfig() if config is None else config
        if num_classes is not None:
            config = dataclasses.replace(config, num_classes=num_classes)
        if config.num_classes < 2:
            raise FgsslError("PMG needs the number of classes (at least 2) of the labelled data")
        image_size = encoder_image_size(features, image_size)
        self.base_learning_rate = learning_rate
        self.backbone_optimizer = None  # set by compile
        self.features, self.image_size, self.pmg_config = features, image_size, config
        self.seed, self.weight_decay = seed, weight_decay
        self.blocks, self.classifiers = [], []
        for i, stage in enumerate(features.outputs, start=1):
            block = keras.Sequential(
                _conv_block(config.feature_size, 1, f"head{i}_a")
                + _conv_block(config.head_channels, 3, f"head{i}_b")
                + [keras.layers.GlobalMaxPooling2D(name=f"head{i}_max")],
                name=f"conv_block{i}",
            )
            block.build(stage.shape)
            classifier = _classifier(config, f"classifier{i}")
            classifier.build((None, config.head_channels))
            self.blocks.append(block)
            self.classifiers.append(classifier)
        self.classifier_concat = _classifier(config, "classifier_concat")
        self.classifier_concat.build((None, 3 * config.head_channels))
        self.built = True
        self.head_variables = [
            v for layer in self.blocks + self.classifiers + [self.classifier_concat] for v in layer.trainable_variables
        ]
        self.trackers = self.make_trackers(
            "loss", "loss_granularity_8", "loss_granularity_4", "loss_granularity_2", "loss_whole"
        )
        self.accuracy_tracker = keras.metrics.SparseCategoricalAccuracy(name="accuracy")  # concatenated head
        self.combined_tracker = keras.metrics.SparseCategoricalAccuracy(name="combined_accuracy")  # sum of the four

    @property
    def metrics(self):
        return [*self.trackers.values(), self.accuracy_tracker, self.combined_tracker]

    def call(self, images, training=False):
        pooled = [
            block(stage, training=training)
            for block, stage in zip(self.blocks, self.features(images, training=training))
        ]
        logits = [classifier(x, training=training) for classifier, x in zip(self.classifiers, pooled)]
        return (*logits, self.classifier_concat(tf.concat(pooled, axis=-1), training=training))

    def encoder(self) -> keras.Model:
        """The backbone with global average pooling of its last stage: features for the evaluation tool."""
        inputs = keras.Input((None, None, 3), name="images")
        resized = keras.layers.Resizing(self.image_size, self.image_size, name="resize")(inputs)
        pooled = keras.layers.GlobalAveragePooling2D(name="avg_pool")(self.features(resized)[-1])
        return keras.Model(inputs, pooled, name="pmg_encoder")

    def benchmark_inputs(self, batch: int, size: int) -> tuple:
        """Augmentation off; four forward-backward passes per batch, pass k's loss on head k."""
        self._augment = lambda images, *args, **kwargs: tf.image.convert_image_dtype(images, tf.float32)
        return (lambda x: self(x, training=False)), [batch, size, size, 3], (0, 1, 2, 3)

    def exportable_encoders(self) -> dict:
        return {"": self.encoder()}

    def _augment(self, images, seed):
        """RandomCrop(S, padding) with zero padding and a horizontal flip, per image (PMG's train transform)."""
        x = tf.image.convert_image_dtype(images, tf.float32)
        size = self.image_size
        pad = int(round(self.pmg_config.crop_padding * size))
        position = global_batch_position(tf.shape(x)[0])
        local = tf.shape(x)[0]
        seeds = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
        corners = tf.random.stateless_uniform(
            [position["global_batch"], 2], seeds[0], minval=0, maxval=2 * pad + 1, dtype=tf.int32
        )
        flips = tf.random.stateless_uniform([position["global_batch"]], seeds[1]) < 0.5
        corners = corners[position["offset"] : position["offset"] + local]
        flips = flips[position["offset"] : position["offset"] + local]
        if pad:
            x = tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
            span = tf.range(size)
            x = tf.gather(x, corners[:, :1] + span, axis=1, batch_dims=1)
            x = tf.gather(x, corners[:, 1:] + span, axis=2, batch_dims=1)
        return tf.where(flips[:, None, None, None], tf.reverse(x, axis=[2]), x)

    def _head_loss(self, logits, labels):
        losses = keras.losses.sparse_categorical_crossentropy(labels, tf.cast(logits, tf.float32), from_logits=True)
        return self.global_mean(losses), self.replicas()

    def train_step(self, data):
        images, labels = self.unpack_batch(data)
        seed = step_seed(self.seed, self.optimizer.iterations)
        seeds = tf.unstack(tf.random.experimental.stateless_split(seed, num=4))
        x = self._augment(images, seeds[0])
        config = self.pmg_config
        backbone_variables = self.features.trainable_variables
        names = ["loss_granularity_8", "loss_granularity_4", "loss_granularity_2", "loss_whole"]
        total = 0.0
        for head, grid in enumerate((*config.granularities, None)):
            inputs = x if grid is None else random_jigsaw(x, seeds[1 + head], grid, same_for_batch=True)
            with tf.GradientTape() as tape:
                outputs = self(inputs, training=True)
                loss, replicas = self._head_loss(outputs[head], labels)
                loss = loss * (config.concat_weight if grid is None else 1.0)
            groups = ((self.backbone_optimizer, backbone_variables), (self.optimizer, self.head_variables))
            gradients = tape.gradient(loss, [variables for _, variables in groups])
            for (optimizer, variables), grads in zip(groups, gradients):
                used = [(g, v) for g, v in zip(grads, variables) if g is not None]  # only what this loss reaches
                optimizer.apply(
                    add_coupled_weight_decay([g for g, _ in used], [v for _, v in used], self.weight_decay),
                    [v for _, v in used],
                )
            self.track_summed(self.trackers[names[head]], loss, replicas)
            total += loss
        self.track_summed(self.trackers["loss"], total, replicas)
        self.accuracy_tracker.update_state(labels, outputs[3])
        self.combined_tracker.update_state(labels, tf.add_n(list(outputs)))
        return self.results(self.metrics)

    def test_step(self, data):
        images, labels = self.unpack_batch(data)
        outputs = self(tf.image.convert_image_dtype(images, tf.float32), training=False)
        loss, replicas = self._head_loss(outputs[3], labels)
        self.track_summed(self.trackers["loss"], loss, replicas)
        self.accuracy_tracker.update_state(labels, outputs[3])
        self.combined_tracker.update_state(labels, tf.add_n(list(outputs)))
        return self.results((self.trackers["loss"], self.accuracy_tracker, self.combined_tracker))

    def predict_classes(self, images: np.ndarray, batch_size: int = 64, combined: bool = True) -> np.ndarray:
        """Class predictions on uint8 images: argmax of the four heads' summed logits (PMG's acc_com)
        or of the concatenated head."""
        predictions = []
        for i in range(0, len(images), batch_size):
            outputs = self(tf.image.convert_image_dtype(images[i : i + batch_size], tf.float32), training=False)
            predictions.append(np.argmax((tf.add_n(list(outputs)) if combined else outputs[3]).numpy(), axis=1))
        return np.concatenate(predictions)

    def training_callbacks(self, monitor: str) -> list:
        return [_CosinePerEpoch(self)]

    def _sgd(self, rate: float, name: str):
        return guard(FusedSGD(rate, momentum=self.pmg_config.momentum, name=name))

    def default_optimizer(self):
        return self._sgd(self.base_learning_rate, "heads_sgd")

    def compile(self, optimizer=None, backbone_optimizer=None, **kwargs):
        """The heads' optimizer (`optimizer`) and the backbone's, each built on its variables."""
        if backbone_optimizer is not None or self.backbone_optimizer is None:  # else: the one set before
            self.backbone_optimizer = backbone_optimizer or self._sgd(
                self.base_learning_rate * self.pmg_config.backbone_lr_ratio, "backbone_sgd"
            )
        super().compile(optimizer=optimizer, **kwargs)
        if not self.backbone_optimizer.built:
            self.backbone_optimizer.build(self.features.trainable_variables)
        if not self.optimizer.built:
            self.optimizer.build(self.head_variables)

    def compiled_optimizers(self) -> dict:
        return {"optimizer": self.optimizer, "backbone_optimizer": self.backbone_optimizer}

    def get_config(self):
        return {
            "name": self.name,
            "features": keras.saving.serialize_keras_object(self.features),
            "image_size": self.image_size,
            "config": config_to_dict(self.pmg_config),
            "seed": self.seed,
            "weight_decay": self.weight_decay,
            "learning_rate": self.base_learning_rate,
        }

    @classmethod
    def from_config(cls, config):
        config = deserialize_parts(config, ("features",))
        return cls(**{**config, "config": config_from_dict(PMGConfig, config["config"])})


class _CosinePerEpoch(keras.callbacks.Callback):
    """PMG's schedule: lr_e = lr_0 / 2 (cos(pi e / E) + 1) at the start of epoch e, for both groups."""

    def __init__(self, model: PMGModel):
        super().__init__()
        self.pmg = model

    def on_train_begin(self, logs=None):
        self.epochs = self.params["epochs"]

    def on_epoch_begin(self, epoch, logs=None):
        factor = 0.5 * (math.cos(math.pi * epoch / self.epochs) + 1.0)
        self.pmg.optimizer.learning_rate.assign(self.pmg.base_learning_rate * factor)
        self.pmg.backbone_optimizer.learning_rate.assign(
            self.pmg.base_learning_rate * self.pmg.pmg_config.backbone_lr_ratio * factor
        )


def build(
    features, image_size, config: PMGConfig, seed: int, weight_decay: float, learning_rate: float, momentum: float = 0.9
) -> PMGModel:
    model = PMGModel(
        features, image_size, config, seed=seed, weight_decay=weight_decay, learning_rate=learning_rate, name="pmg"
    )
    model.compile(
        optimizer=guard(FusedSGD(learning_rate, momentum=momentum, name="heads_sgd")),
        backbone_optimizer=guard(
            FusedSGD(learning_rate * config.backbone_lr_ratio, momentum=momentum, name="backbone_sgd")
        ),
        jit_compile=False,
    )
    return model


def build_model(train: TrainConfig, data: DataConfig, backbone: BackboneConfig, config: PMGConfig) -> PMGModel:
    """Two SGD groups (heads at the learning rate, the backbone at a tenth), coupled L2, cosine per epoch."""
    for grid in config.granularities:
        if data.image_size // grid < 1:
            raise FgsslError(f"--image_size={data.image_size} is too small for {grid}x{grid} jigsaw blocks")
    features = build_stage_features(backbone, data.image_size, config.backbone_weights)
    return build(
        features, data.image_size, config, train.seed, train.weight_decay, train.learning_rate, config.momentum
    )


def benchmark_config(config: PMGConfig, image_size: int, width: int, num_classes: int, values) -> PMGConfig:
    """`PretextSpec.benchmark_config`: heads sized with the backbone (the paper's 512 and 1024 at the
    standard width 64); random weights: the step costs the same, and ImageNet's cannot be fetched offline."""
    return dataclasses.replace(
        config,
        num_classes=num_classes,
        feature_size=8 * width,
        head_channels=16 * width,
        backbone_weights="none",
    )


Config = PMGConfig

SPEC = PretextSpec(
    "pmg",
    PMGConfig,
    DEFAULT_LEARNING_RATE,
    DEFAULT_WEIGHT_DECAY,
    build_model,
    supervised=True,
    flags=FLAGS,
    optimizer="SGD",
    benchmark_config=benchmark_config,
    model_class=PMGModel,
)
