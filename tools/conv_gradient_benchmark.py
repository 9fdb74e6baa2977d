"""TensorFlow's convolution input gradient against fgssl_tf's, per convolution shape, in one run.

    python tools/conv_gradient_benchmark.py                 # ResNet-18's convolutions at 64 px, batch 128
    python tools/conv_gradient_benchmark.py --batch_size=32

For each shape: milliseconds and GFLOP/s of `Conv2DBackpropInput` (what Keras' stock
Conv2D trains with), of `fgssl_tf.models.layers`' rewrite (a flipped-kernel forward
convolution for stride 1, col2im for small strided maps, the stock kernel otherwise),
and of the forward convolution of the same size for scale. This is the measurement
behind `fgssl_tf.models.layers.Conv2D` and its `COL2IM_MAX_OUTPUT_POSITIONS`.
"""

from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

FLAGS = flags.FLAGS

# (name, input size after any explicit padding, input channels, filters, kernel, stride, padding):
# ResNet-18 at 64 px (standard stem), whose stages run on 16, 8, 4 and 2 pixel maps.
SHAPES = (
    ("stage1 3x3", 16, 64, 64, 3, 1, "SAME"),
    ("stage2 3x3 stride 2", 18, 64, 128, 3, 2, "VALID"),
    ("stage2 1x1 stride 2", 16, 64, 128, 1, 2, "SAME"),
    ("stage2 3x3", 8, 128, 128, 3, 1, "SAME"),
    ("stage3 3x3 stride 2", 10, 128, 256, 3, 2, "VALID"),
    ("stage3 1x1 stride 2", 8, 128, 256, 1, 2, "SAME"),
    ("stage3 3x3", 4, 256, 256, 3, 1, "SAME"),
    ("stage4 3x3 stride 2", 6, 256, 512, 3, 2, "VALID"),
    ("stage4 1x1 stride 2", 4, 256, 512, 1, 2, "SAME"),
    ("stage4 3x3", 2, 512, 512, 3, 1, "SAME"),
)


def define_flags() -> None:
    flags.DEFINE_integer("batch_size", 128, "Batch of every convolution.", lower_bound=1)
    flags.DEFINE_integer("repeats", 5, "Timed calls per figure (after two untimed).", lower_bound=1)


def seconds(function, *args) -> float:
    function(*args)
    function(*args)
    start = time.perf_counter()
    for _ in range(FLAGS.repeats):
        result = function(*args)
    result.numpy()
    return (time.perf_counter() - start) / FLAGS.repeats


def main(argv):
    import tensorflow as tf

    from fgssl_tf.models.layers import conv2d_input_gradient

    batch = FLAGS.batch_size
    print(f"batch={batch} cpus={os.cpu_count()} gpus={len(tf.config.list_physical_devices('GPU'))} tf={tf.__version__}")
    print(
        f"{'convolution':22s} {'output':>7s} {'stock ms':>9s} {'GFLOP/s':>8s} {'ours ms':>8s} {'GFLOP/s':>8s} "
        f"{'forward GFLOP/s':>16s} {'speedup':>8s}"
    )
    total_stock = total_ours = 0.0
    for name, size, channels, filters, kernel_size, stride, padding in SHAPES:
        x = tf.random.uniform([batch, size, size, channels])
        kernel = tf.random.normal([kernel_size, kernel_size, channels, filters]) * 0.01
        forward = tf.function(
            lambda x, kernel, stride=stride, padding=padding: tf.nn.conv2d(x, kernel, stride, padding)
        )
        dy = tf.random.uniform(forward(x, kernel).shape)
        stock = tf.function(
            lambda x, kernel, dy, stride=stride, padding=padding: tf.raw_ops.Conv2DBackpropInput(
                input_sizes=tf.shape(x), filter=kernel, out_backprop=dy, strides=[1, stride, stride, 1], padding=padding
            )
        )
        ours = tf.function(
            lambda x, kernel, dy, stride=stride, padding=padding: conv2d_input_gradient(
                dy, kernel, tf.shape(x), (stride, stride), padding
            )
        )
        difference = float(tf.reduce_max(tf.abs(stock(x, kernel, dy) - ours(x, kernel, dy))))
        assert difference < 1e-3, f"{name}: the two input gradients differ by {difference}"
        flop = 2 * batch * dy.shape[1] * dy.shape[2] * filters * channels * kernel_size**2
        t_stock, t_ours, t_forward = (
            seconds(stock, x, kernel, dy),
            seconds(ours, x, kernel, dy),
            seconds(forward, x, kernel),
        )
        total_stock, total_ours = total_stock + t_stock, total_ours + t_ours
        print(
            f"{name:22s} {dy.shape[1]:>3d}x{dy.shape[2]:<3d} {t_stock * 1e3:9.1f} {flop / t_stock / 1e9:8.1f} "
            f"{t_ours * 1e3:8.1f} "
            f"{flop / t_ours / 1e9:8.1f} {flop / t_forward / 1e9:16.1f} {t_stock / t_ours:8.2f}"
        )
    print(f"stock_input_gradient_ms={total_stock * 1e3:.0f}")
    print(f"ours_input_gradient_ms={total_ours * 1e3:.0f}")
    print(f"speedup={total_stock / total_ours:.2f}")


if __name__ == "__main__":
    from fgssl_tf import cli

    define_flags()
    cli.run(main)
