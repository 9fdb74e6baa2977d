"""Custom layers shared by the encoders."""

from __future__ import annotations

import keras
import tensorflow as tf


def batch_norm(name: str, momentum: float = 0.9, epsilon: float = 1e-5, synchronized: bool | None = None) -> keras.layers.Layer:
    """BatchNormalization (defaults: PyTorch's momentum 0.1 and eps 1e-5). `synchronized=None`:
    statistics over the global batch whenever the strategy the layer is built under has
    several replicas, so R replicas train as one replica with the same global batch."""
    if synchronized is None:
        synchronized = tf.distribute.get_strategy().num_replicas_in_sync > 1
    return keras.layers.BatchNormalization(momentum=momentum, epsilon=epsilon, synchronized=synchronized, name=name)


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


@keras.saving.register_keras_serializable(package="fgssl_tf")
class CaffePreprocess(keras.layers.Layer):
    """[0, 1] RGB -> what Keras' ImageNet ResNet-50 and VGG19 were trained on: 0-255 BGR minus the ImageNet mean."""

    def call(self, images):
        return images[..., ::-1] * 255.0 - tf.constant([103.939, 116.779, 123.68])


@keras.saving.register_keras_serializable(package="fgssl_tf")
class PixelShuffle(keras.layers.Layer):
    """PyTorch `PixelShuffle(r)`: [B, H, W, C r^2] -> [B, H r, W r, C] (TensorFlow's channel order)."""

    def __init__(self, factor: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor

    def call(self, inputs):
        return tf.nn.depth_to_space(inputs, self.factor)

    def compute_output_shape(self, input_shape):
        batch, height, width, channels = input_shape
        scale = lambda n: None if n is None else n * self.factor  # noqa: E731
        return (batch, scale(height), scale(width), None if channels is None else channels // self.factor**2)

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}


@keras.saving.register_keras_serializable(package="fgssl_tf")
class FixedInputSize(keras.layers.Layer):
    """Passes [B, size, size, C] through and refuses any other size with a plain message.

    Put in front of a network with a dense layer on flattened features (the SRGAN
    discriminator), so a wrong size fails here, by name, instead of deep in a matmul.
    """

    def __init__(self, size: int, network: str = "this network", hint: str = "", **kwargs):
        super().__init__(**kwargs)
        self.size, self.network, self.hint = size, network, hint

    def _message(self, got) -> str:
        return f"{self.network} was built for {self.size}x{self.size} images and got {got}{self.hint}"

    def call(self, inputs):
        height, width = inputs.shape[1], inputs.shape[2]
        if (height is not None and height != self.size) or (width is not None and width != self.size):
            from fgssl_tf.errors import FgsslError

            raise FgsslError(self._message(f"{height}x{width}"))
        if height is None or width is None:
            shape = tf.shape(inputs)
            check = tf.debugging.assert_equal(
                shape[1:3], tf.constant([self.size, self.size]), message=self._message("another size")
            )
            with tf.control_dependencies([check]):
                inputs = tf.identity(inputs)
        return tf.ensure_shape(inputs, [None, self.size, self.size, inputs.shape[-1]])

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.size, self.size, input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "size": self.size, "network": self.network, "hint": self.hint}
