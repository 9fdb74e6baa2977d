"""Measure the SimCLR training step on this machine, side by side in one run.

    python tools/benchmark.py --pretext=simclr

Prints images/s of the full step (tf.data pipeline + on-device augmentation +
forward/backward), the same step fed pre-made views (no pipeline, no
augmentation), their ratio, the achieved FLOP/s over a float32 matmul peak
measured in the same run, and the peak resident memory. Training FLOPs are
counted as 3x the forward FLOPs TensorFlow's profiler reports for the encoder
and projection head (both views). The last lines are `key=value`, one a figure.
"""

from __future__ import annotations

import os
import resource
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_enum("pretext", "simclr", ["simclr"], "Pretext to measure.")
flags.DEFINE_enum("backbone", "resnet18", ["resnet18", "resnet50"], "Encoder.")
flags.DEFINE_integer("image_size", 64, "Image size.", lower_bound=8)
flags.DEFINE_integer("batch_size", 64, "Global batch size.", lower_bound=2)
flags.DEFINE_integer("steps", 12, "Timed steps per measurement (after warm-up).", lower_bound=2)
flags.DEFINE_integer("warmup", 3, "Untimed steps first (tracing, allocation).", lower_bound=1)
flags.DEFINE_boolean("jit_compile", False, "XLA-compile the train step (SimCLR refuses it for now).")
flags.DEFINE_string("dataset", "elpv", "Images for the real-pipeline measurement.")


class _Timer:
    """Times the steps after warm-up: a Keras callback."""

    def __init__(self, warmup):
        import keras

        class Callback(keras.callbacks.Callback):
            def on_train_batch_end(cb, batch, logs=None):
                if batch + 1 == warmup:
                    self.start = time.perf_counter()
                self.end = time.perf_counter()

        self.callback = Callback()
        self.start = self.end = None


def matmul_peak_flops(size=2048, repeats=10) -> float:
    import tensorflow as tf

    a = tf.random.normal([size, size])
    b = tf.random.normal([size, size])

    @tf.function
    def chain(a, b):
        x = a
        for _ in range(repeats):
            x = tf.matmul(x, b) * 1e-3
        return x

    chain(a, b).numpy()
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        chain(a, b).numpy()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 * repeats / best


def forward_flops(model, batch: int, image_size: int) -> int:
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    forward = tf.function(lambda x: model.projector(model.encoder(x, training=False)))
    concrete = forward.get_concrete_function(tf.TensorSpec([batch, image_size, image_size, 3], tf.float32))
    frozen = convert_variables_to_constants_v2(concrete)
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    profile = tf.compat.v1.profiler.profile(graph=frozen.graph, run_meta=tf.compat.v1.RunMetadata(), cmd="op", options=options)
    return profile.total_float_ops


def main(argv):
    import keras
    import numpy as np
    import tensorflow as tf

    from fgssl_tf import trainer
    from fgssl_tf.config import BackboneConfig, DataConfig, TrainConfig
    from fgssl_tf.data import load_splits, pipeline
    from fgssl_tf.models import build_resnet
    from fgssl_tf.pretext import simclr

    size, batch = FLAGS.image_size, FLAGS.batch_size
    train = TrainConfig(batch_size=batch, jit_compile=FLAGS.jit_compile, verbose=0)
    data = DataConfig(dataset=FLAGS.dataset, image_size=size)
    backbone = BackboneConfig(name=FLAGS.backbone)
    splits = load_splits(data)
    steps = FLAGS.warmup + FLAGS.steps

    def measure(model, dataset) -> float:
        timer = _Timer(FLAGS.warmup)
        model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0, callbacks=[timer.callback])
        return FLAGS.steps * batch / (timer.end - timer.start)

    # 1. The real thing: tf.data over decoded images, augmentation on device, the step.
    model = trainer.build_pretext_model(train, data, backbone, simclr.SimCLRConfig())
    real = pipeline.epoch_batches(splits.train_images, splits.train_labels, batch, 0, 0, 1, steps)
    real_ips = measure(model, real)

    # 2. The same step fed pre-made views: no input pipeline, no augmentation.
    class PremadeViews(simclr.SimCLRModel):
        def views(self, images, seed):
            return images, images

    premade_model = PremadeViews(
        build_resnet(backbone, size), size, simclr.SimCLRConfig(), seed=0, weight_decay=train.weight_decay
    )
    premade_model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=FLAGS.jit_compile)
    views = tf.random.uniform([batch, size, size, 3])
    premade = tf.data.Dataset.from_tensors((views, tf.zeros([batch], tf.int64))).repeat()
    premade_ips = measure(premade_model, premade)

    flops_per_image = 3 * forward_flops(model, 2 * batch, size) / batch  # both views, fwd + bwd
    peak = matmul_peak_flops()
    achieved = real_ips * flops_per_image
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    print(f"pretext={FLAGS.pretext} backbone={FLAGS.backbone} image_size={size} batch={batch} jit={FLAGS.jit_compile} "
          f"cpus={os.cpu_count()} gpus={len(tf.config.list_physical_devices('GPU'))} tf={tf.__version__}")
    print(f"training GFLOP per image (3x forward, 2 views): {flops_per_image / 1e9:.3f}")
    print(f"matmul peak: {peak / 1e9:.1f} GFLOP/s; achieved: {achieved / 1e9:.1f} GFLOP/s")
    print(f"step with pipeline + augmentation: {real_ips:.1f} images/s; with pre-made views: {premade_ips:.1f} images/s")
    print(f"images_per_s={real_ips:.2f}")
    print(f"flop_ratio={achieved / peak:.3f}")
    print(f"pipeline_ratio={real_ips / premade_ips:.3f}")
    print(f"peak_rss_mb={rss_mb:.0f}")


if __name__ == "__main__":
    from fgssl_tf import cli

    app.run(lambda argv: cli.run_main(main, argv))
