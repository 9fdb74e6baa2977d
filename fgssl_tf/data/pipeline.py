"""tf.data pipelines over decoded images held in memory.

The order of every epoch is a pure function of (seed, epoch), so a run resumed
from a checkpoint at epoch k sees exactly the batches an uninterrupted run would.
Images stay uint8 until they reach the device, where augmentation runs batched.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def epoch_batches(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    seed: int,
    first_epoch: int,
    epochs: int,
    steps_per_epoch: int,
) -> tf.data.Dataset:
    """Shuffled (uint8 image, label) batches for epochs [first_epoch, epochs), full batches only."""
    count = len(images)
    if count < batch_size:
        raise ValueError(f"{count} images are fewer than one batch of {batch_size}")
    images_t = tf.constant(images)
    labels_t = tf.constant(np.asarray(labels, np.int64))
    passes = -(-steps_per_epoch * batch_size // count)  # ceil: passes over the data per epoch

    def one_epoch(epoch):
        def one_pass(k):
            keys = tf.random.stateless_uniform([count], seed=tf.stack([tf.cast(seed, tf.int64), epoch * 1000 + k]))
            return tf.data.Dataset.from_tensor_slices(tf.argsort(keys))

        indices = tf.data.Dataset.range(passes).flat_map(one_pass)
        return indices.batch(batch_size, drop_remainder=True).take(steps_per_epoch)

    dataset = tf.data.Dataset.range(first_epoch, epochs).flat_map(one_epoch)
    dataset = dataset.map(
        lambda idx: (tf.gather(images_t, idx), tf.gather(labels_t, idx)),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return dataset.prefetch(tf.data.AUTOTUNE)


def ordered_batches(images: np.ndarray, labels: np.ndarray, batch_size: int) -> tf.data.Dataset:
    """Every image once, in order (evaluation, feature extraction)."""
    dataset = tf.data.Dataset.from_tensor_slices((images, np.asarray(labels, np.int64)))
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)
