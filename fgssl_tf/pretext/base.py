"""The contract every pretext keeps: a `PretextModel` and one `PretextSpec` entry.

A pretext is one module of `fgssl_tf.pretext` that defines
- a model class, a subclass of `PretextModel` (the contract: its docstring), and
- `SPEC = PretextSpec(...)`: its name, config dataclass, default learning rate and weight decay,
  `build(train, data, backbone, config)` for the trainer, and its command-line flags
  (`flags`: `fgssl_tf.pretext.settings.FlagSpec`s beside its config);
and one line in `fgssl_tf/pretext/__init__.py`. The trainer, the exporter and the monitor use
the entry and the model's hooks only (docs/python_api.md shows the same models used from Python).
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from fgssl_tf.augment import SimCLRAugmentation
from fgssl_tf.errors import FgsslError
from fgssl_tf.objectives import replica_info
from fgssl_tf.optim import FiniteMean, FusedAdam


class PretextModel(keras.Model):
    """A pretext task as a `keras.Model`: `compile()` then `fit()` on batches of uint8 images.

    Batches: uint8 images [B, S, S, 3], alone or as `(images, side)` where `side` is the image
    ids that index the tables of `prepare_data` (the trainer passes them) or, for a supervised
    pretext (`PretextSpec.supervised`), the integer labels. `train_step` does the pretext's
    work, `test_step` reports the same loss on validation batches. Losses are this replica's
    share of the global batch's mean (gradients are summed over replicas); `track_summed`
    logs such a share as the global value.

    Hooks (the trainer calls every one; the defaults here do nothing):
    - `exportable_encoders()` (required): {suffix: encoder} to export; '' is the encoder itself;
      the first one is what the monitor watches.
    - `prepare_data(train_images, val_images)`: per-image tables before training.
    - `training_callbacks(monitor)`: the pretext's own schedule (callbacks), on the `monitor` metric.
    - `summary_images(images, seed)`: {tag: uint8 picture} of its inputs, once at the start.
    - `epoch_images(images)`: {tag: uint8 picture} of its outputs, at the start and after every epoch.
    - `export_extras(suffix)`: {file name: model} saved as `.keras` beside the encoder of `suffix`.
    - `export_image_size`: the encoders' input size, when not the training image size (None).
    - `predicts_classes` and `predict_classes(images)`: a pretext trained on labels (PMG) is a
      classifier too; its `after_export` then writes its test report.
    - `after_export(name, version_dir, splits, data, metadata, seed)`: after the encoder `name` is
      exported; the default writes a classifier's test report beside the export, else does nothing.
    - `default_optimizer()`: what `compile()` uses when given no optimizer.
    - `benchmark_inputs(batch, size)`: fixed inputs in place of the on-device ones, for tools/benchmark.py.
    """

    predicts_classes = False

    def compile(self, optimizer=None, **kwargs):
        """Keras' compile; with no optimizer, the pretext's `default_optimizer()`. XLA is off unless asked
        for (the on-device augmentations use ops XLA cannot compile)."""
        kwargs.setdefault("jit_compile", False)
        super().compile(optimizer=self.default_optimizer() if optimizer is None else optimizer, **kwargs)

    def default_optimizer(self) -> keras.optimizers.Optimizer:
        return FusedAdam()

    def compiled_optimizers(self) -> dict:
        """{compile() argument: optimizer}: what a saved `.keras` file keeps (a pretext with two networks has two)."""
        return {"optimizer": self.optimizer}

    def get_compile_config(self) -> dict | None:
        if not self.compiled:
            return None
        optimizers = {name: keras.saving.serialize_keras_object(o) for name, o in self.compiled_optimizers().items()}
        return {"jit_compile": bool(self.jit_compile), "optimizers": optimizers}

    def compile_from_config(self, config: dict) -> None:
        """Reloading a `.keras` file: compile with the saved optimizers, built so their saved state loads."""
        optimizers = {name: keras.saving.deserialize_keras_object(o) for name, o in config["optimizers"].items()}
        self.compile(jit_compile=config.get("jit_compile", False), **optimizers)
        if not self.optimizer.built:
            self.optimizer.build(self.trainable_variables)

    def exportable_encoders(self) -> dict:
        """Encoders to export, by suffix of the export name ('' = the encoder)."""
        raise NotImplementedError(f"{type(self).__name__} must say which encoders it exports")

    def prepare_data(self, train_images: np.ndarray, val_images: np.ndarray | None = None) -> None:
        """Per-image tables the pretext needs, indexed by the image ids its batches carry."""

    def training_callbacks(self, monitor: str) -> list:
        """The pretext's own callbacks (a learning-rate schedule, a stage switch), on metric `monitor`."""
        return []

    def summary_images(self, images: np.ndarray, seed: int) -> dict:
        """{tag: uint8 picture} of what the network is fed, for TensorBoard at the start of training."""
        return {}

    def epoch_images(self, images: np.ndarray) -> dict:
        """{tag: uint8 picture} of what the network makes, for TensorBoard after every epoch."""
        return {}

    def export_extras(self, suffix: str) -> dict:
        """{file name: model} saved as `.keras` files beside the encoder exported under `suffix`."""
        return {}

    @property
    def export_image_size(self) -> int | None:
        """The exported encoders' input size; None: the training image size."""
        return None

    def benchmark_inputs(self, batch: int, size: int) -> tuple:
        """For tools/benchmark.py: replace this model's on-device input making with fixed tensors and
        return (the forward the step runs, its input shape, the output each forward-backward pass's loss
        reaches, None for the whole forward), so the step can be timed without its input pipeline and its
        FLOPs counted."""
        raise FgsslError(f"the {self.name} pretext has no pre-made inputs for tools/benchmark.py")

    def predict_classes(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Class predictions on uint8 images, for a pretext that `predicts_classes`."""
        raise FgsslError(f"the {self.name} pretext is not a classifier: it has no class predictions")

    def after_export(self, name: str, version_dir: str, splits, data, metadata: dict, seed: int) -> dict | None:
        """After the trainer exported encoder `name` to `version_dir`: a pretext that `predicts_classes`
        writes the test report of its own predictions beside the export, as the evaluation tool
        would (`fgssl_tf.evaluation.trained_classifier_report`) and returns it; others do nothing."""
        if not self.predicts_classes:
            return None
        from fgssl_tf import evaluation  # evaluation code, imported when a classifier is trained

        return evaluation.trained_classifier_report(
            self.predict_classes, name, version_dir, splits, data, metadata, seed
        )

    # --- helpers for what every pretext does ------------------------------------------

    @staticmethod
    def unpack_batch(data) -> tuple:
        """A batch -> (images, side): side is the image ids or labels, None for images alone."""
        if isinstance(data, (tuple, list)):
            return data[0], (data[1] if len(data) > 1 else None)
        return data, None

    @staticmethod
    def replicas():
        """The number of replicas in sync (1 outside a distribution strategy)."""
        return replica_info()[1]

    @staticmethod
    def global_mean(values) -> tf.Tensor:
        """This replica's share of the mean over the global batch: its sum over the global element count."""
        _, replicas, _ = replica_info()
        return tf.reduce_sum(values) / tf.cast(tf.size(values) * replicas, tf.float32)

    @staticmethod
    def make_trackers(*names: str) -> dict:
        """{name: running mean that leaves out non-finite values (a step the guard refused)}."""
        return {name: FiniteMean(name=name) for name in names}

    @staticmethod
    def track_summed(tracker, share, replicas) -> None:
        """Log a value whose replicas' shares add up to the global one: each replica logs share x replicas,
        and the metric averages over replicas."""
        tracker.update_state(share * replicas)

    @staticmethod
    def results(metrics) -> dict:
        return {m.name: m.result() for m in metrics}


@dataclasses.dataclass(frozen=True)
class PretextSpec:
    """One pretext's entry in the registry (`fgssl_tf.pretext.PRETEXTS`)."""

    name: str
    config_class: type
    default_learning_rate: float
    default_weight_decay: float
    build: Callable  # (train, data, backbone, config) -> the compiled PretextModel
    uses_backbone: bool = True  # False: it builds its own networks and --backbone does not apply (SRGAN)
    supervised: bool = False  # True: trains on the labelled training split, batches carry labels (PMG)
    resolve_backbone: Callable | None = None  # (backbone, data, config) -> the backbone it will build
    # Its command-line flags (`fgssl_tf.pretext.settings.FlagSpec`), each setting one field of its config.
    flags: tuple = ()
    # (config, flag values by name) -> the config: what a flag cannot set alone (defaults computed
    # from other flags, checks across flags); raises FgsslError naming the flags.
    finish: Callable | None = None
    # (flag values by name) -> None, raising FgsslError: a check across its flags that the entry
    # points run before any work (`fgssl_tf.flags.check_pretext_flags`).
    check_flags: Callable | None = None
    # For the shared flags' help texts (`fgssl_tf.flags`): the optimizer its default learning rate is
    # for, whether --lr_schedule=cosine applies (else it keeps the paper's schedule), why it refuses
    # --jit_compile ("": it does not), whether --source_size applies (it cuts random crops from the images).
    optimizer: str = "Adam"
    cosine_schedule: bool = False
    jit_compile_refused: str = ""
    uses_source_size: bool = False
    # tools/benchmark.py: (config, image_size, width, num_classes, flag values) -> the config it times,
    # sized with the tool's --image_size and --width; and the flags of its own the tool defines for it.
    benchmark_config: Callable | None = None
    benchmark_flags: tuple = ()
    # Its PretextModel subclass, public as `fgssl_tf.<the registry's public name>` (docs/python_api.md).
    model_class: type | None = None

    def backbone_for(self, backbone, data, config):
        """The backbone config this pretext will build, automatic choices settled."""
        return backbone if self.resolve_backbone is None else self.resolve_backbone(backbone, data, config)


def config_to_dict(config) -> dict:
    """A (nested) dataclass config as plain JSON-able values, for `get_config`."""
    return dataclasses.asdict(config)


def config_from_dict(cls: type, values: dict | None):
    """The dataclass `cls` from `config_to_dict`'s output: nested dataclasses rebuilt, lists back to tuples."""
    if values is None or isinstance(values, cls):
        return values if values is not None else cls()
    hints = typing.get_type_hints(cls)
    defaults = cls()
    kwargs = {}
    for field in dataclasses.fields(cls):
        if field.name not in values:
            continue
        value, default = values[field.name], getattr(defaults, field.name)
        if dataclasses.is_dataclass(default) and isinstance(value, dict):
            value = config_from_dict(type(default), value)
        elif isinstance(value, list) and (isinstance(default, tuple) or hints.get(field.name) is tuple):
            value = tuple(value)
        kwargs[field.name] = value
    return cls(**kwargs)


def deserialize_parts(config: dict, keys) -> dict:
    """`config` with the serialized Keras objects under `keys` (those present) rebuilt."""
    config = dict(config)
    for key in keys:
        if config.get(key) is not None:
            config[key] = keras.saving.deserialize_keras_object(config[key])
    return config


def encoder_image_size(encoder: keras.Model, image_size: int | None, augmenter=None) -> int:
    """The image size a pretext feeds `encoder`: as given, else the augmenter's, else the encoder's fixed input."""
    if image_size is not None:
        return int(image_size)
    if isinstance(augmenter, SimCLRAugmentation):
        return augmenter.image_size
    shape = encoder.input_shape if not isinstance(encoder.input_shape, list) else encoder.input_shape[0]
    if shape[1] is None:
        raise FgsslError(
            f"the encoder {encoder.name!r} takes images of any size: pass image_size= (the side of the square "
            "images the pretext feeds it)"
        )
    return int(shape[1])
