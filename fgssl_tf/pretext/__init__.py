"""Pretext tasks, one file each.

A pretext module provides `Config` (a dataclass), `DEFAULT_LEARNING_RATE`,
`DEFAULT_WEIGHT_DECAY` and `build_model(train, data, backbone, config)`, which
returns a compiled `keras.Model` whose `train_step` does the pretext's work. The
model offers `exportable_encoders()` (what gets exported) and may offer
`summary_images(images, seed)` (what TensorBoard shows at the start of training)
and `training_callbacks(monitor)` (e.g. a learning-rate schedule on `monitor`),
`epoch_images(images)` (TensorBoard pictures after every epoch, e.g. SR triplets),
`export_extras(suffix)` (more `.keras` files saved beside an encoder) and
`export_image_size` (the input size of its encoders, when not the image size).
A module with `USES_BACKBONE = False` builds its own networks (SRGAN).
A module may define `resolve_backbone(backbone, data, config)` to settle automatic
backbone choices its own way (Jigsaw: the small stem follows the tile size).
"""

from __future__ import annotations

import dataclasses
import importlib

from fgssl_tf.errors import FgsslError

_MODULES = {
    "simclr": "fgssl_tf.pretext.simclr",
    "jigsaw": "fgssl_tf.pretext.jigsaw",
    "srgan": "fgssl_tf.pretext.srgan",
    "pmg": "fgssl_tf.pretext.pmg",
    "vicreg": "fgssl_tf.pretext.vicreg",
}
PRETEXTS = tuple(_MODULES)
PLANNED: tuple = ()


def check_pretext(name: str) -> None:
    if name in PRETEXTS:
        return
    if name in PLANNED:
        raise FgsslError(f"--pretext={name} is not implemented yet; available: {', '.join(PRETEXTS)}")
    raise FgsslError(f"unknown --pretext={name!r}; choose one of {', '.join(PRETEXTS)}")


def get_pretext(name: str):
    """The module of pretext `name`."""
    check_pretext(name)
    return importlib.import_module(_MODULES[name])


def with_pretext_defaults(train):
    """`train` with an unset learning rate or weight decay taken from the pretext's defaults."""
    module = get_pretext(train.pretext)
    return dataclasses.replace(
        train,
        learning_rate=module.DEFAULT_LEARNING_RATE if train.learning_rate is None else train.learning_rate,
        weight_decay=module.DEFAULT_WEIGHT_DECAY if train.weight_decay is None else train.weight_decay,
    )


def resolve_backbone(pretext: str, backbone, data, config):
    """The backbone config the pretext will build, automatic choices settled."""
    module = get_pretext(pretext)
    if hasattr(module, "resolve_backbone"):
        return module.resolve_backbone(backbone, data, config)
    return backbone
