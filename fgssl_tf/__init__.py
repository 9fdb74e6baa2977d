"""fgssl_tf: self-supervised pretraining for fine-grained image classification.

Library code takes explicit dataclass configs (see `fgssl_tf.config`); absl flags
are parsed only by the entry points (`python -m fgssl_tf.train`, `tools/*.py`).

The pretexts as Keras models (docs/python_api.md): `from fgssl_tf import SimCLR, VICReg,
Jigsaw, SRGAN, PMG`; each is imported (with TensorFlow) when first named. Their public names
are the registry's (fgssl_tf/pretext/__init__.py).
"""

from fgssl_tf.errors import FgsslError
from fgssl_tf.pretext import PUBLIC_MODELS

__version__ = "0.1.0"
__all__ = ["FgsslError", "__version__", *PUBLIC_MODELS]


def __getattr__(name: str):
    """A pretext's model class by its public name (the registry, fgssl_tf/pretext/__init__.py)."""
    if name not in PUBLIC_MODELS:
        raise AttributeError(f"module 'fgssl_tf' has no attribute {name!r}")
    from fgssl_tf.pretext import pretext_spec

    return pretext_spec(PUBLIC_MODELS[name]).model_class
