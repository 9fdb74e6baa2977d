"""Custom layers shared by the encoders."""

from __future__ import annotations

import keras
import tensorflow as tf


def batch_norm(
    name: str, momentum: float = 0.9, epsilon: float = 1e-5, synchronized: bool | None = None
) -> keras.layers.Layer:
    """BatchNormalization (defaults: PyTorch's momentum 0.1 and eps 1e-5). `synchronized=None`:
    statistics over the global batch whenever the strategy the layer is built under has
    several replicas, so R replicas train as one replica with the same global batch."""
    if synchronized is None:
        synchronized = tf.distribute.get_strategy().num_replicas_in_sync > 1
    return keras.layers.BatchNormalization(momentum=momentum, epsilon=epsilon, synchronized=synchronized, name=name)


def _forward_padding(size, out_size, kernel: int, stride: int, padding: str):
    """(padding before, padded length) along one axis, as TensorFlow pads the forward convolution."""
    if padding == "VALID":
        return 0, size
    total = tf.maximum((out_size - 1) * stride + kernel - size, 0)
    return total // 2, size + total


# Strided convolutions whose output map has at most this many positions get the col2im input
# gradient. On 2 CPU cores at batch 128 (tools/conv_gradient_benchmark.py) col2im beats the
# stock kernel 9x on 2x2 outputs and 1.3-2.9x on 4x4, but loses on 8x8 (0.4-1x).
COL2IM_MAX_OUTPUT_POSITIONS = 16


def conv2d_input_gradient(dy, kernel, input_shape, strides, padding: str):
    """dL/dx of `tf.nn.conv2d(x, kernel, strides, padding)` from dL/dy, without Conv2DBackpropInput."""
    kh, kw, channels, filters = kernel.shape
    if strides == (1, 1) and padding == "SAME" and kh % 2 == 1 and kw % 2 == 1:
        # The transposed convolution of a stride-1 one is a convolution with the kernel flipped
        # and its channel axes swapped; symmetric "same" padding maps onto itself.
        flipped = tf.transpose(tf.reverse(kernel, [0, 1]), [0, 1, 3, 2])
        return tf.nn.conv2d(dy, flipped, 1, "SAME")
    (sh, sw), out_h, out_w = strides, dy.shape[1], dy.shape[2]
    if out_h is None or out_w is None or out_h * out_w > COL2IM_MAX_OUTPUT_POSITIONS or sh != sw:
        # Larger strided maps: the stock kernel is as fast or faster there (and unequal strides are rare).
        return tf.raw_ops.Conv2DBackpropInput(
            input_sizes=input_shape, filter=kernel, out_backprop=dy, strides=[1, *strides, 1], padding=padding
        )
    # Small strided maps, col2im: each output position's gradient spread over its kh x kw input
    # patch (one matmul), then the patches summed back onto the input grid. Sub-pixel form: taps
    # that land on the same phase of the stride are summed on the undilated grid, and one
    # depth_to_space interleaves the phases. A few whole-tensor ops keep the graph small (a
    # tap-by-tap loop of slices and pads made tracing a train step 1 s longer).
    cols = tf.matmul(tf.reshape(dy, [-1, filters]), tf.reshape(kernel, [-1, filters]), transpose_b=True)
    taps = tf.split(tf.reshape(cols, [-1, out_h, out_w, kh * kw * channels]), kh * kw, axis=-1)  # tap i * kw + j
    grid_h, grid_w = out_h + (kh - 1) // sh, out_w + (kw - 1) // sw  # each phase's grid
    phases = []
    for phase_i in range(sh):
        for phase_j in range(sw):
            shifted = [
                tf.pad(
                    taps[i * kw + j],
                    [[0, 0], [i // sh, grid_h - out_h - i // sh], [j // sw, grid_w - out_w - j // sw], [0, 0]],
                )
                for i in range(phase_i, kh, sh)
                for j in range(phase_j, kw, sw)
            ]
            # Phase (0, 0) always holds tap (0, 0); a phase no tap lands on (a kernel smaller than its stride) is zero.
            phases.append(tf.add_n(shifted) if shifted else tf.zeros_like(phases[0]))
    grid = tf.nn.depth_to_space(tf.concat(phases, -1), sh) if sh > 1 else phases[0]
    height, width = input_shape[1], input_shape[2]
    top, padded_h = _forward_padding(height, out_h, kh, sh, padding)
    left, padded_w = _forward_padding(width, out_w, kw, sw, padding)
    grid = tf.pad(
        grid, [[0, 0], [0, tf.maximum(padded_h - grid_h * sh, 0)], [0, tf.maximum(padded_w - grid_w * sw, 0)], [0, 0]]
    )
    return grid[:, top : top + height, left : left + width]


def conv2d_fast_input_gradient(x, kernel, strides=(1, 1), padding: str = "SAME"):
    """`tf.nn.conv2d` (NHWC, no dilation) whose input gradient avoids TensorFlow's CPU
    Conv2DBackpropInput kernel, which runs at 2-20 GFLOP/s on small feature maps where
    the forward convolution of the same size runs at 45-60 (tools/conv_gradient_benchmark.py).
    The filter gradient is TensorFlow's own."""
    strides, padding = tuple(strides), padding.upper()

    @tf.custom_gradient
    def convolve(x, kernel):
        def gradient(dy):
            dx = conv2d_input_gradient(dy, kernel, tf.shape(x), strides, padding)
            dk = tf.raw_ops.Conv2DBackpropFilter(
                input=x, filter_sizes=tf.shape(kernel), out_backprop=dy, strides=[1, *strides, 1], padding=padding
            )
            return dx, dk

        return tf.nn.conv2d(x, kernel, [1, *strides, 1], padding), gradient

    return convolve(x, tf.convert_to_tensor(kernel))


@keras.saving.register_keras_serializable(package="fgssl_tf")
class Conv2D(keras.layers.Conv2D):
    """`keras.layers.Conv2D` that trains faster on CPU: its input gradient is computed by
    `conv2d_fast_input_gradient` (same numbers up to float rounding). Where a GPU is
    visible (cuDNN's own input gradient is fast), or for dilated, grouped or channels-first
    convolutions, it is the stock layer."""

    def convolution_op(self, inputs, kernel):
        if (
            self.data_format != "channels_last"
            or tuple(self.dilation_rate) != (1, 1)
            or self.groups != 1
            or tf.config.list_logical_devices("GPU")
        ):
            return super().convolution_op(inputs, kernel)
        return conv2d_fast_input_gradient(inputs, kernel, self.strides, self.padding)


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
