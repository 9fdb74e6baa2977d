"""fgssl_tf: self-supervised pretraining for fine-grained image classification.

Library code takes explicit dataclass configs (see `fgssl_tf.config`); absl flags
are parsed only by the entry points (`python -m fgssl_tf.train`, `tools/*.py`).
"""

from fgssl_tf.errors import FgsslError

__version__ = "0.1.0"
__all__ = ["FgsslError", "__version__"]
