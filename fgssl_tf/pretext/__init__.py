"""Pretext tasks, one file each.

A pretext module provides `Config` (a dataclass) and `build_model(train, data,
backbone, config)`, which returns a compiled `keras.Model` whose `train_step`
does the pretext's work. The model offers `exportable_encoders()` (what gets
exported) and may offer `summary_images(images, seed)` (what TensorBoard shows
at the start of training).
"""

from __future__ import annotations

import importlib

from fgssl_tf.errors import FgsslError

_MODULES = {"simclr": "fgssl_tf.pretext.simclr"}
PRETEXTS = tuple(_MODULES)
PLANNED = ("jigsaw", "srgan", "pmg")


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
