"""Decoding image files into fixed-size RGB uint8 arrays, skipping broken files.

Every source ends here, so grayscale, grayscale+alpha and RGBA inputs all become
RGB the same way (alpha dropped, as PIL's `convert("RGB")` does), and a corrupt
file costs a counted warning, never a crash in the middle of an epoch.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from fgssl_tf.data import disk_cache

TF_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")  # tf.io.decode_image reads these
PIL_EXTENSIONS = (".tif", ".tiff")  # TensorFlow has no TIFF decoder: Pillow reads them
IMAGE_EXTENSIONS = TF_EXTENSIONS + PIL_EXTENSIONS
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
    """Encoded bytes (JPEG, PNG, BMP, GIF, WebP) -> [image_size, image_size, 3] uint8."""
    image = tf.io.decode_image(contents, channels=0, dtype=tf.uint8, expand_animations=False)
    image.set_shape([None, None, None])
    return resize_uint8(to_rgb(image), image_size)


@dataclasses.dataclass
class DecodedFiles:
    images: np.ndarray  # [N_good, S, S, 3] uint8
    kept: np.ndarray  # indices into the input paths of the files that decoded
    skipped: list  # paths that could not be decoded


def _pil_array(path: str) -> np.ndarray:
    """A TIFF (first page) as uint8 [H, W, C]: 16- and 32-bit integer samples scaled to 8 bits."""
    from PIL import Image

    with Image.open(path) as image:
        image.seek(0)
        if image.mode.startswith("I;16") or image.mode == "I":  # 16-bit samples (Pillow reads 32-bit ones as I too)
            array = np.asarray(image, np.float64)
            array = array / (257.0 if array.max(initial=0) < 65536 else 16843009.0)
            return np.clip(np.round(array), 0, 255).astype(np.uint8)[..., None]
        if image.mode not in ("L", "LA", "RGB", "RGBA"):
            image = image.convert("RGBA" if "A" in image.mode else "RGB")
        array = np.asarray(image, np.uint8)
    return array[..., None] if array.ndim == 2 else array


def _decode_with_pil(paths: Sequence[str], image_size: int) -> dict:
    """{index: image} of the files Pillow decodes; the others are left out."""
    out = {}
    for index, path in enumerate(paths):
        try:
            array = _pil_array(path)
        except Exception:  # noqa: BLE001  (a broken file raises OSError, SyntaxError, ValueError, ... in Pillow)
            continue
        if array.size == 0:
            continue
        out[index] = resize_uint8(to_rgb(tf.constant(array)), image_size).numpy()
    return out


def decode_files(paths: Sequence[str], image_size: int) -> DecodedFiles:
    """Decode files in parallel; unreadable or corrupt ones are skipped and logged. The result is
    kept in the disk cache under each file's identity (size, times, inode): an edited, replaced or
    renamed file is decoded again, an unchanged folder is not."""
    paths = [os.fspath(p) for p in paths]
    if not paths:
        return DecodedFiles(np.zeros([0, image_size, image_size, 3], np.uint8), np.zeros([0], np.int64), [])
    decoded = _decode_files(paths, [_file_identity(p) for p in paths], image_size)
    for path in decoded.skipped[:20]:
        log.warning("skipped unreadable or corrupt image: %s", path)
    if len(decoded.skipped) > 20:
        log.warning("... and %d more unreadable images", len(decoded.skipped) - 20)
    return decoded


def _file_identity(path: str) -> tuple | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None  # missing or a broken link: decoding skips it
    return (stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino, stat.st_dev)


@disk_cache.cached
def _decode_files(paths: list[str], file_identities: list, image_size: int) -> DecodedFiles:
    """`decode_files` without the cache and the log; `file_identities` key the cache entry."""
    by_pil = [i for i, p in enumerate(paths) if p.lower().endswith(PIL_EXTENSIONS)]
    by_tf = [i for i, p in enumerate(paths) if not p.lower().endswith(PIL_EXTENSIONS)]
    kept, images = [], []
    if by_tf:
        dataset = tf.data.Dataset.from_tensor_slices((tf.constant(by_tf, tf.int64), [paths[i] for i in by_tf]))
        dataset = dataset.map(
            lambda index, path: (index, decode_rgb(tf.io.read_file(path), image_size)),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        dataset = dataset.ignore_errors().batch(_DECODE_BATCH).prefetch(2)
        for index_batch, image_batch in dataset:
            kept.append(index_batch.numpy())
            images.append(image_batch.numpy())
    if by_pil:
        decoded = _decode_with_pil([paths[i] for i in by_pil], image_size)
        kept.append(np.asarray([by_pil[i] for i in decoded], np.int64))
        empty = np.zeros([0, image_size, image_size, 3], np.uint8)
        images.append(np.stack(list(decoded.values())) if decoded else empty)
    kept_idx = np.concatenate(kept) if kept else np.zeros([0], np.int64)
    stacked = np.concatenate(images) if images else np.zeros([0, image_size, image_size, 3], np.uint8)
    order = np.argsort(kept_idx, kind="stable")  # input order, whichever decoder read a file
    kept_idx, stacked = kept_idx[order], stacked[order]
    good = set(kept_idx.tolist())
    skipped = [p for i, p in enumerate(paths) if i not in good]
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


@dataclasses.dataclass
class FileScan:
    """What a folder holds: image files (by extension), other files left out, links to folders not followed."""

    images: list  # sorted, so runs are repeatable
    ignored: list  # files that are not images by their extension, hidden files and folders
    links: list  # symbolic links to folders: not followed (they could loop or repeat images)


def scan_image_files(root: str, recursive: bool = True) -> FileScan:
    """Image files under root; what is left out is listed, never dropped in silence."""
    images, ignored, links = [], [], []
    for directory, folders, names in os.walk(root):
        for name in sorted(folders):
            path = os.path.join(directory, name)
            if os.path.islink(path):
                links.append(path)
            elif name.startswith(".") or not recursive:
                ignored.append(path)
        followed = [f for f in folders if not f.startswith(".") and not os.path.islink(os.path.join(directory, f))]
        folders[:] = followed if recursive else []
        for name in names:
            path = os.path.join(directory, name)
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS):
                images.append(path)
            else:
                ignored.append(path)
    return FileScan(sorted(images), sorted(ignored), sorted(links))


def list_image_files(root: str, recursive: bool = True) -> tuple[list[str], int]:
    """Image files under root (sorted, so runs are repeatable) and the count of other entries left out."""
    scan = scan_image_files(root, recursive)
    return scan.images, len(scan.ignored) + len(scan.links)
