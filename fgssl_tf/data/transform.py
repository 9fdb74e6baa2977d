"""The training input transform: what every encoder sees, in training, evaluation and serving.

A module of its own (not `preprocess.py`) so the function re-exported as
`fgssl_tf.data.preprocess` does not shadow a submodule of the same name.
"""

from __future__ import annotations

import tensorflow as tf


def preprocess(images: tf.Tensor, image_size: int) -> tf.Tensor:
    """uint8 [B, H, W, 3] -> float32 [B, S, S, 3] in [0, 1], as in training."""
    x = tf.image.convert_image_dtype(images, tf.float32)
    if images.shape[1] == image_size and images.shape[2] == image_size:
        return x
    return tf.image.resize(x, [image_size, image_size], method="bilinear", antialias=True)
