"""Decoding image files into fixed-size RGB uint8 arrays, skipping broken files.

Every source ends here, so grayscale, grayscale+alpha and RGBA inputs all become
RGB the same way (alpha dropped, as PIL's `convert("RGB")` does), and a corrupt
file costs a counted warning, never a crash in the middle of an epoch.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Sequence

import numpy as np
import tensorflow as tf

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
_DECODE_BATCH = 128

log = logging.getLogger(__name__)


def to_rgb(image: tf.Tensor) -> tf.Tensor:
    """[..., C] with C in 1..4 -> [..., 3]: gray is repeated, alpha dropped."""
    channels = tf.shape(image)[-1]
    return tf.cond(
        channels < 3,
        lambda: tf.repeat(image[..., :1], 3, axis=-1),
        lambda: image[..., :3],
    )


def resize_uint8(image: tf.Tensor, image_size: int) -> tf.Tensor:
    """Squash-resize (as torchvision `Resize((S, S))`) with antialiasing, back to uint8."""
    resized = tf.image.resize(image, [image_size, image_size], method="bilinear", antialias=True)
    return tf.cast(tf.round(tf.clip_by_value(resized, 0.0, 255.0)), tf.uint8)


def decode_rgb(contents: tf.Tensor, image_size: int) -> tf.Tensor:
    """Encoded bytes (JPEG, PNG, BMP, GIF) -> [image_size, image_size, 3] uint8."""
    image = tf.io.decode_image(contents, channels=0, dtype=tf.uint8, expand_animations=False)
    image.set_shape([None, None, None])
    return resize_uint8(to_rgb(image), image_size)


@dataclasses.dataclass
class DecodedFiles:
    images: np.ndarray  # [N_good, S, S, 3] uint8
    kept: np.ndarray  # indices into the input paths of the files that decoded
    skipped: list  # paths that could not be decoded


def decode_files(paths: Sequence[str], image_size: int) -> DecodedFiles:
    """Decode files in parallel; unreadable or corrupt ones are skipped and logged."""
    paths = [os.fspath(p) for p in paths]
    if not paths:
        return DecodedFiles(np.zeros([0, image_size, image_size, 3], np.uint8), np.zeros([0], np.int64), [])
    dataset = tf.data.Dataset.from_tensor_slices((tf.range(len(paths), dtype=tf.int64), paths))
    dataset = dataset.map(
        lambda index, path: (index, decode_rgb(tf.io.read_file(path), image_size)),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    dataset = dataset.ignore_errors().batch(_DECODE_BATCH).prefetch(2)
    kept, images = [], []
    for index_batch, image_batch in dataset:
        kept.append(index_batch.numpy())
        images.append(image_batch.numpy())
    kept_idx = np.concatenate(kept) if kept else np.zeros([0], np.int64)
    good = set(kept_idx.tolist())
    skipped = [p for i, p in enumerate(paths) if i not in good]
    for path in skipped[:20]:
        log.warning("skipped unreadable or corrupt image: %s", path)
    if len(skipped) > 20:
        log.warning("... and %d more unreadable images", len(skipped) - 20)
    stacked = np.concatenate(images) if images else np.zeros([0, image_size, image_size, 3], np.uint8)
    return DecodedFiles(stacked, kept_idx, skipped)


def resize_array(images: np.ndarray, image_size: int) -> np.ndarray:
    """[N, H, W] or [N, H, W, C] uint8 arrays -> [N, S, S, 3] uint8, in batches."""
    if images.ndim == 3:
        images = images[..., None]
    out = np.empty([len(images), image_size, image_size, 3], np.uint8)
    for start in range(0, len(images), _DECODE_BATCH):
        batch = tf.convert_to_tensor(images[start : start + _DECODE_BATCH])
        batch = to_rgb(batch)
        if batch.shape[1] != image_size or batch.shape[2] != image_size:
            batch = resize_uint8(batch, image_size)
        out[start : start + len(batch)] = batch.numpy()
    return out


def list_image_files(root: str, recursive: bool = True) -> tuple[list[str], int]:
    """Image files under root (sorted, so runs are repeatable) and the count of other files."""
    found, other = [], 0
    walker = os.walk(root) if recursive else [(root, [], os.listdir(root))]
    for directory, _, names in walker:
        for name in names:
            if name.startswith("."):
                continue
            if name.lower().endswith(IMAGE_EXTENSIONS):
                found.append(os.path.join(directory, name))
            elif os.path.isfile(os.path.join(directory, name)):
                other += 1
    return sorted(found), other
