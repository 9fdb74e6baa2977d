"""fgssl_tf: self-supervised pretraining for fine-grained image classification.

Library code takes explicit dataclass configs (see `fgssl_tf.config`); absl flags
are parsed only by the entry points (`python -m fgssl_tf.train`, `tools/*.py`).

The pretexts as Keras models (docs/python_api.md): `from fgssl_tf import SimCLR, VICReg,
Jigsaw, SRGAN, PMG`; each is imported (with TensorFlow) when first named.
"""

from fgssl_tf.errors import FgsslError

__version__ = "0.1.0"
# Public name -> (module, class): the pretext models of fgssl_tf/pretext/.
_MODELS = {
    "SimCLR": ("fgssl_tf.pretext.simclr", "SimCLRModel"),
    "VICReg": ("fgssl_tf.pretext.vicreg", "VICRegModel"),
    "Jigsaw": ("fgssl_tf.pretext.jigsaw", "JigsawModel"),
    "SRGAN": ("fgssl_tf.pretext.srgan", "SRGANModel"),
    "PMG": ("fgssl_tf.pretext.pmg", "PMGModel"),
}
__all__ = ["FgsslError", "__version__", *_MODELS]


def __getattr__(name: str):
    if name not in _MODELS:
        raise AttributeError(f"module 'fgssl_tf' has no attribute {name!r}")
    import importlib

    module, cls = _MODELS[name]
    return vars(importlib.import_module(module))[cls]
