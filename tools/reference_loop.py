"""SimCLR through the simplest obvious Keras loop and through fgssl_tf, side by side in one run.

    python tools/reference_loop.py                      # ResNet-18, 64 px, batch 64, elpv
    python tools/reference_loop.py --image_size=32 --width=16

The reference is what one writes first: per-image augmentation in a `tf.data` map
with `tf.image` ops (random resized crop, colour jitter, grayscale, Gaussian blur,
the same probabilities as the paper's SimCLR_Original), then a plain `train_step`
(NT-Xent on one device, Adam) under `fit`. fgssl_tf's path is the trainer's own:
uint8 batches gathered in `tf.data`, both views made batched inside the step, the NaN
guard, synchronisable losses, and its convolution layer (`fgssl_tf.models.layers.Conv2D`,
whose input gradient avoids TensorFlow's slow CPU kernel). The reference's ResNet-18 is
the same graph built with stock `keras.layers.Conv2D`, as a plain loop would have it.
Same architecture, initial weights, projection head, batch, image size, data and
optimizer. Prints images/s of each, their ratio (`speedup`), and the reference loop
again with fgssl_tf's convolution layer, which splits the speed-up into its two parts.
"""

from __future__ import annotations

import contextlib
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

FLAGS = flags.FLAGS


def define_flags() -> None:
    """At the entry point only: importing this module (tests) defines no flags."""
    flags.DEFINE_integer("width", 64, "Channels of the first ResNet stage.", lower_bound=4)
    flags.DEFINE_integer("image_size", 64, "Image size.", lower_bound=16)
    flags.DEFINE_integer("batch_size", 64, "Global batch size.", lower_bound=2)
    flags.DEFINE_integer("steps", 12, "Timed steps per measurement (after warm-up).", lower_bound=2)
    flags.DEFINE_integer("warmup", 3, "Untimed steps first (tracing, allocation).", lower_bound=1)
    flags.DEFINE_string("dataset", "elpv", "Images to train on.")


def reference_view(image, size: int, config):
    """One SimCLR view of one uint8 image, with tf.image's per-image ops."""
    import tensorflow as tf

    from fgssl_tf.augment import blur_kernel_size

    x = tf.image.convert_image_dtype(image, tf.float32)
    begin, extent, _ = tf.image.sample_distorted_bounding_box(
        tf.shape(x),
        bounding_boxes=tf.zeros([1, 0, 4]),
        min_object_covered=0.0,
        area_range=(config.crop_scale_min, 1.0),
        aspect_ratio_range=(config.crop_ratio_min, config.crop_ratio_max),
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    x = tf.image.resize(tf.slice(x, begin, extent), [size, size])
    s = config.color_jitter_strength

    def jitter(x):
        x = tf.image.random_brightness(x, s)
        x = tf.image.random_contrast(x, 1 - s, 1 + s)
        x = tf.image.random_saturation(x, 1 - s, 1 + s)
        return tf.clip_by_value(tf.image.random_hue(x, s / 4), 0.0, 1.0)

    def blur(x):
        k = blur_kernel_size(size)
        sigma = tf.random.uniform([], config.blur_sigma_min, config.blur_sigma_max)
        taps = tf.exp(-tf.square(tf.range(k, dtype=tf.float32) - k // 2) / (2 * sigma**2))
        taps /= tf.reduce_sum(taps)
        padded = tf.pad(x[None], [[0, 0], [k // 2, k // 2], [k // 2, k // 2], [0, 0]], mode="REFLECT")
        rows = tf.nn.depthwise_conv2d(padded, tf.tile(taps[:, None, None, None], [1, 1, 3, 1]), [1, 1, 1, 1], "VALID")
        return tf.nn.depthwise_conv2d(rows, tf.tile(taps[None, :, None, None], [1, 1, 3, 1]), [1, 1, 1, 1], "VALID")[0]

    x = tf.cond(tf.random.uniform([]) < config.color_jitter_prob, lambda: jitter(x), lambda: x)
    x = tf.cond(
        tf.random.uniform([]) < config.grayscale_prob,
        lambda: tf.image.grayscale_to_rgb(tf.image.rgb_to_grayscale(x)),
        lambda: x,
    )
    x = tf.cond(tf.random.uniform([]) < config.blur_prob, lambda: blur(x), lambda: x)
    return tf.clip_by_value(x, 0.0, 1.0)


def reference_model(encoder, hidden: int, projection: int, temperature: float, learning_rate: float):
    import keras
    import tensorflow as tf

    from fgssl_tf.objectives import nt_xent_mean

    class ReferenceSimCLR(keras.Model):
        def __init__(self):
            super().__init__()
            self.encoder = encoder
            self.projector = keras.Sequential(
                [keras.layers.Dense(hidden), keras.layers.ReLU(), keras.layers.Dense(projection)]
            )

        def train_step(self, data):
            view1, view2 = data
            with tf.GradientTape() as tape:
                z = self.projector(self.encoder(tf.concat([view1, view2], 0), training=True), training=True)
                loss = nt_xent_mean(z[: tf.shape(view1)[0]], z[tf.shape(view1)[0] :], temperature)
            variables = self.trainable_variables
            self.optimizer.apply(tape.gradient(loss, variables), variables)
            return {"loss": loss}

    model = ReferenceSimCLR()
    model.compile(optimizer=keras.optimizers.Adam(learning_rate))
    return model


@contextlib.contextmanager
def stock_convolutions():
    """Builds ResNets with `keras.layers.Conv2D` (TensorFlow's own gradients) inside the block."""
    import keras

    from fgssl_tf.models import resnet

    fast = resnet.Conv2D
    resnet.Conv2D = keras.layers.Conv2D
    try:
        yield
    finally:
        resnet.Conv2D = fast


def main(argv):
    import time

    import keras
    import numpy as np
    import tensorflow as tf

    from fgssl_tf import trainer
    from fgssl_tf.config import BackboneConfig, DataConfig, TrainConfig
    from fgssl_tf.data import load_splits, pipeline
    from fgssl_tf.models import build_resnet
    from fgssl_tf.pretext import simclr

    size, batch = FLAGS.image_size, FLAGS.batch_size
    data = DataConfig(dataset=FLAGS.dataset, image_size=size)
    splits = load_splits(data)
    images = splits.pretraining_pool()
    backbone = BackboneConfig(width=FLAGS.width, small_stem=size <= 32)
    config = simclr.SimCLRConfig()
    steps = FLAGS.warmup + FLAGS.steps

    class Timer(keras.callbacks.Callback):
        def on_train_batch_end(self, index, logs=None):
            if index + 1 == FLAGS.warmup:
                self.start = time.perf_counter()
            self.end = time.perf_counter()

    def images_per_s(model, dataset) -> float:
        timer = Timer()
        model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0, callbacks=[timer])
        return FLAGS.steps * batch / (timer.end - timer.start)

    train = TrainConfig(pretext="simclr", model_dir="unused", batch_size=batch, seed=0, verbose=0)
    ours = trainer.build_pretext_model(train, data, backbone, config)
    ours_ips = images_per_s(ours, pipeline.epoch_batches(images, np.arange(len(images)), batch, 0, 0, 1, steps))

    augment = config.augment
    dataset = (
        tf.data.Dataset.from_tensor_slices(images)
        .shuffle(len(images), seed=0)
        .repeat()
        .map(
            lambda image: (reference_view(image, size, augment), reference_view(image, size, augment)),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        .batch(batch, drop_remainder=True)
        .prefetch(tf.data.AUTOTUNE)
    )

    def reference_images_per_s(encoder) -> float:
        model = reference_model(
            encoder, config.hidden_dim, config.projection_dim, config.temperature, simclr.DEFAULT_LEARNING_RATE
        )
        return images_per_s(model, dataset)

    keras.utils.set_random_seed(0)
    with stock_convolutions():
        reference_ips = reference_images_per_s(build_resnet(backbone, size))
    keras.utils.set_random_seed(0)
    reference_fast_conv_ips = reference_images_per_s(build_resnet(backbone, size))

    print(
        f"SimCLR resnet18 width={FLAGS.width} small_stem={backbone.small_stem} image_size={size} batch={batch} "
        f"steps={FLAGS.steps} (after {FLAGS.warmup} warm-up) cpus={os.cpu_count()} "
        f"gpus={len(tf.config.list_physical_devices('GPU'))} tf={tf.__version__}"
    )
    print(
        "reference loop (per-image tf.image augmentation in tf.data, plain fit, stock Conv2D): "
        f"{reference_ips:.2f} images/s"
    )
    print(f"fgssl_tf (batched augmentation in the step, its trainer's pipeline, its Conv2D): {ours_ips:.2f} images/s")
    print(f"reference loop with fgssl_tf's Conv2D: {reference_fast_conv_ips:.2f} images/s")
    print(f"reference_images_per_s={reference_ips:.2f}")
    print(f"ours_images_per_s={ours_ips:.2f}")
    print(f"speedup={ours_ips / reference_ips:.3f}")
    print(f"speedup_from_conv_layer={reference_fast_conv_ips / reference_ips:.3f}")
    print(f"speedup_from_the_rest={ours_ips / reference_fast_conv_ips:.3f}")


if __name__ == "__main__":
    from fgssl_tf import cli

    define_flags()
    cli.run(main)
