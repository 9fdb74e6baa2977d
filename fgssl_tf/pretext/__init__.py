"""Pretext tasks, one file each, and their registry.

The contract is `fgssl_tf.pretext.base`: a pretext module defines a `PretextModel` subclass
(whose hooks the trainer, exporter and monitor call) and one `SPEC = PretextSpec(...)` entry
(name, config dataclass, default learning rate and weight decay, `build(train, data, backbone,
config)`, whether it uses the --backbone, whether it trains on labels, how it settles automatic
backbone choices, and its command-line flags as `fgssl_tf.pretext.settings.FlagSpec`s, which
the entry points turn into absl flags; optional hooks: `PretextSpec`). Adding a pretext is its
module, a flagfile, its tests and one line below; a two-view method's module writes only its loss,
its head's default and its flags (`fgssl_tf.views.two_view_spec`).
"""

from __future__ import annotations

import dataclasses
import importlib

from fgssl_tf.errors import FgsslError

# name -> (the module that defines its SPEC, imported when the pretext is first used; the public
# name of its model class: `from fgssl_tf import SimCLR` is `SPEC.model_class`)
_MODULES = {
    "simclr": ("fgssl_tf.pretext.simclr", "SimCLR"),
    "jigsaw": ("fgssl_tf.pretext.jigsaw", "Jigsaw"),
    "srgan": ("fgssl_tf.pretext.srgan", "SRGAN"),
    "pmg": ("fgssl_tf.pretext.pmg", "PMG"),
    "vicreg": ("fgssl_tf.pretext.vicreg", "VICReg"),
}
PRETEXTS = tuple(_MODULES)
PUBLIC_MODELS = {public: name for name, (_, public) in _MODULES.items()}  # public class name -> pretext
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
    return importlib.import_module(_MODULES[name][0])


def pretext_spec(name: str):
    """The registry entry (`fgssl_tf.pretext.base.PretextSpec`) of pretext `name`."""
    return get_pretext(name).SPEC


def with_pretext_defaults(train):
    """`train` with an unset learning rate or weight decay taken from the pretext's defaults
    (`fgssl_tf.run_config.resolve_run` applies it, once a run)."""
    spec = pretext_spec(train.pretext)
    return dataclasses.replace(
        train,
        learning_rate=spec.default_learning_rate if train.learning_rate is None else train.learning_rate,
        weight_decay=spec.default_weight_decay if train.weight_decay is None else train.weight_decay,
    )
