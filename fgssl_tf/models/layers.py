"""Custom layers shared by the encoders."""

from __future__ import annotations

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="fgssl_tf")
class GridAveragePooling(keras.layers.Layer):
    """PyTorch `AdaptiveAvgPool2d((g, g))` followed by a flatten: [B, H, W, C] -> [B, g*g*C].

    Bin i spans rows floor(i*H/g) .. ceil((i+1)*H/g), so bins overlap when g does
    not divide H (7 -> 2 gives rows 0-3 and 3-6, as the paper's downstream model).
    `keras.layers.AdaptiveAveragePooling2D` computes the same bins but needs H and W
    known when the model is built; encoders here accept any image size.
    Flattened in (row, column, channel) order; PyTorch's flatten is channel-major.
    """

    def __init__(self, grid: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.grid = grid

    def _bounds(self, size):
        size = tf.cast(size, tf.int64)
        return [(i * size // self.grid, -(-(i + 1) * size // self.grid)) for i in range(self.grid)]

    def call(self, inputs):
        shape = tf.shape(inputs, out_type=tf.int64)
        rows, cols = self._bounds(shape[1]), self._bounds(shape[2])
        cells = [tf.reduce_mean(inputs[:, r0:r1, c0:c1, :], axis=[1, 2]) for r0, r1 in rows for c0, c1 in cols]
        return tf.concat(cells, axis=-1)

    def compute_output_shape(self, input_shape):
        channels = input_shape[-1]
        return (input_shape[0], None if channels is None else self.grid * self.grid * channels)

    def get_config(self):
        return {**super().get_config(), "grid": self.grid}
