"""Near-duplicate detection with a 64-bit difference hash (dHash).

Used to keep evaluation images out of the pretraining pool: an unlabelled image
whose hash is within a few bits of a validation or test image is dropped.

Hashes are taken from the images at the training size. On low-texture images at
small sizes (elpv at 32 px) distinct images can share a hash, so some
unrelated images are dropped too: the error is on the side of never leaking an
evaluation image. The count of dropped images is logged and stored with the run.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def dhash(images: np.ndarray) -> np.ndarray:
    """[N, H, W, 3] uint8 -> [N] uint64 hashes (gray 9x8 thumbnail, horizontal gradients)."""
    if len(images) == 0:
        return np.zeros([0], np.uint64)
    hashes = []
    for start in range(0, len(images), 512):
        gray = tf.image.rgb_to_grayscale(tf.cast(images[start : start + 512], tf.float32))
        thumb = tf.image.resize(gray, [8, 9], method="area", antialias=True)[..., 0].numpy()
        bits = (thumb[:, :, 1:] > thumb[:, :, :-1]).reshape(len(thumb), 64)
        weights = np.uint64(1) << np.arange(64, dtype=np.uint64)
        hashes.append((bits.astype(np.uint64) * weights).sum(axis=1, dtype=np.uint64))
    return np.concatenate(hashes)


def near_duplicates(candidates: np.ndarray, references: np.ndarray, max_bits: int) -> np.ndarray:
    """Boolean mask over candidates: True where some reference hash is within max_bits."""
    mask = np.zeros(len(candidates), dtype=bool)
    if len(candidates) == 0 or len(references) == 0:
        return mask
    for start in range(0, len(candidates), 1024):
        chunk = candidates[start : start + 1024, None] ^ references[None, :]
        distances = np.bitwise_count(chunk)
        mask[start : start + 1024] = (distances <= max_bits).any(axis=1)
    return mask
