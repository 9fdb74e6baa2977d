"""The paper's fine-grained augmentations (docs/paper_fidelity.md, "SimCLR fine-grained
variants") as batched TensorFlow ops.

Each op is a pair of functions: `sample(seed, batch, size, config)` draws its
random parameters for a batch from a stateless seed (a dict of [batch, ...]
tensors), and `apply(images, params, config, side)` transforms float images
[B, S, S, C] in [0, 1], keeping shape and dtype. Drawing apart from applying lets
a view draw for the global batch and slice its replica's rows, and lets the
paper's "offline" mode draw once per image (a table indexed by image id) instead
of once per step. `side` carries per-image facts that are not random (the corner
centroid for `cropped_regions`).

Sizes the paper gave in pixels of its 512 px images are fractions of the image
side here, so every op works at any image size.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from fgssl_tf.errors import FgsslError
from fgssl_tf.grid import join_grid, paste, split_grid


@dataclasses.dataclass(frozen=True)
class FineGrainedConfig:
    gamma_min: float = 0.5  # albumentations RandomGamma(gamma_limit=(50, 250))
    gamma_max: float = 2.5
    dropout_holes_min: int = 5  # CoarseDropout(min_holes=5, max_holes=20)
    dropout_holes_max: int = 20
    dropout_size_min: float = 10 / 512  # square holes of randint(10, 25) px
    dropout_size_max: float = 25 / 512
    dropout_fill: float = 0.0
    swap_patch: float = 200 / 512  # two 200 px patches
    swap_drop: float = 50 / 512  # the lower patch starts at most 50 px below the middle
    jigsaw_grid: int = 4  # PMG jigsaw_generator(images, n=4)
    dcl_grid: int = 7  # DCL swap(img, (7, 7))
    dcl_border: float = 10 / 512  # img.crop((10, 10, W - 10, H - 10))
    crop_min: float = 200 / 512  # smartcrop window sides randint(200, 300)
    crop_max: float = 300 / 512
    crop_offset: float = 156 / 512  # pasted at (156, 156) of a white canvas
    corner_quality: float = 0.1  # goodFeaturesToTrack(qualityLevel=0.1, minDistance=10, maxCorners=50)
    corner_min_distance: float = 10 / 512
    corner_count: int = 50


def _px(fraction: float, size: int, minimum: int = 1) -> int:
    return max(minimum, int(round(fraction * size)))


def _randint(seed, shape, low, high):
    """Uniform integers in [low, high] (inclusive, tensors broadcast against shape)."""
    u = tf.random.stateless_uniform(shape, seed=seed)
    low = tf.cast(low, tf.float32)
    return tf.cast(tf.floor(low + u * (tf.cast(high, tf.float32) - low + 1.0)), tf.int32)


def _seeds(seed, count):
    return tf.unstack(tf.random.experimental.stateless_split(seed, num=count))


def _per_image(values, rank=4):
    return tf.reshape(values, [-1] + [1] * (rank - 1))


# --- random gamma -----------------------------------------------------------------


def sample_gamma(seed, batch, size, config: FineGrainedConfig):
    steps = _randint(seed, [batch], round(config.gamma_min * 100), round(config.gamma_max * 100))
    return {"gamma": tf.cast(steps, tf.float32) / 100.0}


def apply_gamma(images, params, config, side=None):
    return tf.pow(images, _per_image(params["gamma"]))


# --- coarse dropout ---------------------------------------------------------------


def sample_coarse_dropout(seed, batch, size, config: FineGrainedConfig):
    s = _seeds(seed, 4)
    hole = _randint(s[1], [batch], _px(config.dropout_size_min, size), _px(config.dropout_size_max, size))
    hole = tf.minimum(hole, size)
    holes = config.dropout_holes_max
    return {
        "count": _randint(s[0], [batch], config.dropout_holes_min, config.dropout_holes_max),
        "hole": hole,
        "top": _randint(s[2], [batch, holes], 0, (size - hole)[:, None]),
        "left": _randint(s[3], [batch, holes], 0, (size - hole)[:, None]),
    }


def _inside(positions, start, length):
    """[B, K, P] whether each position lies in [start, start + length)."""
    return (positions >= start[..., None]) & (positions < (start + length[:, None])[..., None])


def apply_coarse_dropout(images, params, config, side=None):
    size = images.shape[1]
    positions = tf.range(size)[None, None, :]
    active = tf.range(config.dropout_holes_max)[None, :] < params["count"][:, None]  # [B, K]
    rows = _inside(positions, params["top"], params["hole"]) & active[..., None]
    cols = _inside(positions, params["left"], params["hole"])
    holes = tf.reduce_any(rows[:, :, :, None] & cols[:, :, None, :], axis=1)  # [B, S, S]
    return tf.where(holes[..., None], tf.cast(config.dropout_fill, images.dtype), images)


# --- random patch swap ------------------------------------------------------------


def _swap_geometry(size: int, config: FineGrainedConfig) -> tuple[int, int]:
    patch = _px(config.swap_patch, size)
    if patch > size // 2:
        raise FgsslError(
            f"--swap_patch={config.swap_patch} must be at most half the image side: one patch comes from each half"
        )
    return patch, min(_px(config.swap_drop, size, 0), size - patch - size // 2)


def sample_patch_swap(seed, batch, size, config: FineGrainedConfig):
    patch, drop = _swap_geometry(size, config)
    s = _seeds(seed, 5)
    upper = _randint(s[0], [batch], 0, size // 2 - patch)
    lower = _randint(s[1], [batch], size // 2, size // 2 + drop)
    exchange = tf.random.stateless_uniform([batch], seed=s[4]) < 0.5  # the paper swapped y1, y2 for every other file
    return {
        "y1": tf.where(exchange, lower, upper),
        "y2": tf.where(exchange, upper, lower),
        "x1": _randint(s[2], [batch], 0, size - patch),
        "x2": _randint(s[3], [batch], 0, size - patch),
    }


def apply_patch_swap(images, params, config, side=None):
    size = images.shape[1]
    patch, _ = _swap_geometry(size, config)
    y, x = tf.meshgrid(tf.range(size), tf.range(size), indexing="ij")
    y, x = y[None], x[None]
    y1, x1, y2, x2 = (_per_image(params[k], 3) for k in ("y1", "x1", "y2", "x2"))
    in_first = (y >= y1) & (y < y1 + patch) & (x >= x1) & (x < x1 + patch)
    in_second = (y >= y2) & (y < y2 + patch) & (x >= x2) & (x < x2 + patch)
    source_y = tf.where(in_first, y - y1 + y2, tf.where(in_second, y - y2 + y1, y))
    source_x = tf.where(in_first, x - x1 + x2, tf.where(in_second, x - x2 + x1, x))
    return tf.gather_nd(images, tf.stack([source_y, source_x], axis=-1), batch_dims=1)


# --- random jigsaw (PMG jigsaw_generator) -----------------------------------------


def sample_random_jigsaw(seed, batch, size, config: FineGrainedConfig, grid: int | None = None):
    cells = (grid or config.jigsaw_grid) ** 2
    return {"order": tf.cast(tf.argsort(tf.random.stateless_uniform([batch, cells], seed=seed), axis=1), tf.int32)}


def jigsaw_generator_permutation(order: tf.Tensor) -> tf.Tensor:
    """PMG's `jigsaw_generator`: for each cell c in the shuffled list, swap block 0 with
    block c. Returns slot -> source block, [B, n*n]. (Not a uniform permutation.)"""
    cells = order.shape[1]
    slots = tf.range(cells, dtype=order.dtype)[None]
    source = tf.tile(slots, [tf.shape(order)[0], 1])
    # Whole rows per swap (a handful of ops each, not one per cell): a small graph to trace at grid 8.
    for i in range(cells):
        c = order[:, i : i + 1]
        block_c = tf.gather(source, c, batch_dims=1)
        source = tf.where(tf.equal(slots, c), source[:, :1], source)
        source = tf.concat([block_c, source[:, 1:]], axis=1)
    return source


def apply_random_jigsaw(images, params, config, side=None, grid: int | None = None):
    grid = grid or config.jigsaw_grid
    block = images.shape[1] // grid  # PMG: block = 448 // n; a remainder at the border stays put
    tiles = split_grid(images, grid, block)
    shuffled = tf.gather(tiles, jigsaw_generator_permutation(params["order"]), axis=1, batch_dims=1)
    return paste(images, join_grid(shuffled, grid))


def random_jigsaw(images, seed, grid: int, same_for_batch: bool = False):
    """The PMG op on a batch: per image, or one order for the batch as PMG's training loop did."""
    params = sample_random_jigsaw(
        seed, 1 if same_for_batch else tf.shape(images)[0], images.shape[1], FineGrainedConfig(), grid
    )
    if same_for_batch:
        params = {"order": tf.repeat(params["order"], tf.shape(images)[0], axis=0)}
    return apply_random_jigsaw(images, params, FineGrainedConfig(), grid=grid)


# --- DCL region confusion ---------------------------------------------------------


def sample_dcl(seed, batch, size, config: FineGrainedConfig):
    n = config.dcl_grid
    s = _seeds(seed, 2)
    return {
        "row_swaps": tf.random.stateless_uniform([batch, n - 1], seed=s[0]) < 0.5,
        "cell_swaps": tf.random.stateless_uniform([batch, n, n - 1], seed=s[1]) < 0.5,
    }


def neighbour_swap_permutation(swaps: tf.Tensor) -> tf.Tensor:
    """DCL's sweep with window 2: after item j arrives, items j-1 and j trade places
    with probability 1/2 (swaps[:, j-1]). Returns position -> source item, [..., L]."""
    length = swaps.shape[-1] + 1
    source = [tf.fill(tf.shape(swaps)[:-1], k) for k in range(length)]
    for j in range(1, length):
        swap = swaps[..., j - 1]
        source[j - 1], source[j] = tf.where(swap, source[j], source[j - 1]), tf.where(swap, source[j - 1], source[j])
    return tf.stack(source, axis=-1)


def dcl_cell_order(params, grid: int) -> tf.Tensor:
    """Slot -> source cell, [B, grid*grid]: rows move as wholes, cells within their row.
    (DCL shuffles the last two rows after every cell step, N times per pair: a fair coin.)"""
    rows = neighbour_swap_permutation(params["row_swaps"])  # [B, N]
    cells = neighbour_swap_permutation(params["cell_swaps"])  # [B, N, N], per source row
    cells_of_rows = tf.gather(cells, rows, batch_dims=1)
    return tf.reshape(rows[:, :, None] * grid + cells_of_rows, [-1, grid * grid])


def dcl_mosaic(images, params, config: FineGrainedConfig):
    """The border-cropped image with its cells confused, before resizing back: pixels only move."""
    size, grid = images.shape[1], config.dcl_grid
    border = _px(config.dcl_border, size, 0)
    cell = (size - 2 * border) // grid
    if cell < 1:
        raise FgsslError(f"--dcl_grid={grid} leaves cells under one pixel at {size} px")
    tiles = split_grid(images, grid, cell, border, border)
    return join_grid(tf.gather(tiles, dcl_cell_order(params, grid), axis=1, batch_dims=1), grid)


def apply_dcl(images, params, config, side=None):
    size = images.shape[1]
    return tf.image.resize(dcl_mosaic(images, params, config), [size, size], method="bilinear", antialias=True)


# --- cropped regions (smartcrop on a white canvas) ---------------------------------


def corner_centroids(images: np.ndarray, config: FineGrainedConfig = FineGrainedConfig()) -> np.ndarray:
    """[N, 2] (row, col) centroid of the strongest Shi-Tomasi corners of each uint8 image,
    as smartcrop's cv2.goodFeaturesToTrack; the centre when an image has none."""
    from skimage.color import rgb2gray
    from skimage.feature import corner_peaks, corner_shi_tomasi

    size = images.shape[1]
    centroids = np.empty((len(images), 2), np.float32)
    for i, image in enumerate(images):
        response = corner_shi_tomasi(rgb2gray(image) if image.shape[-1] == 3 else image[..., 0] / 255.0)
        peaks = corner_peaks(
            response,
            min_distance=_px(config.corner_min_distance, size),
            threshold_rel=config.corner_quality,
            num_peaks=config.corner_count,
        )
        centroids[i] = peaks.mean(axis=0) if len(peaks) and response.max() > 0 else ((size - 1) / 2, (size - 1) / 2)
    return centroids


def sample_cropped_regions(seed, batch, size, config: FineGrainedConfig):
    s = _seeds(seed, 2)
    low, high = _px(config.crop_min, size), _px(config.crop_max, size)
    return {"height": _randint(s[0], [batch], low, high), "width": _randint(s[1], [batch], low, high)}


def apply_cropped_regions(images, params, config, side=None):
    if side is None or "centroids" not in side:
        raise FgsslError("cropped_regions needs each image's corner centroid (fine_grained.corner_centroids)")
    size = images.shape[1]
    offset = _px(config.crop_offset, size, 0)
    height, width = (tf.minimum(_per_image(params[k], 3), size) for k in ("height", "width"))
    centre = tf.cast(tf.round(side["centroids"]), tf.int32)
    top = tf.clip_by_value(_per_image(centre[:, 0], 3) - height // 2, 0, size - height)
    left = tf.clip_by_value(_per_image(centre[:, 1], 3) - width // 2, 0, size - width)
    y, x = tf.meshgrid(tf.range(size), tf.range(size), indexing="ij")
    y, x = y[None] - offset, x[None] - offset  # canvas -> crop coordinates
    inside = (y >= 0) & (y < height) & (x >= 0) & (x < width)
    source = tf.stack([tf.clip_by_value(top + y, 0, size - 1), tf.clip_by_value(left + x, 0, size - 1)], axis=-1)
    return tf.where(inside[..., None], tf.gather_nd(images, source, batch_dims=1), tf.ones_like(images))


OPS = {
    "gamma": (sample_gamma, apply_gamma),
    "coarse_dropout": (sample_coarse_dropout, apply_coarse_dropout),
    "patch_swap": (sample_patch_swap, apply_patch_swap),
    "random_jigsaw": (sample_random_jigsaw, apply_random_jigsaw),
    "dcl": (sample_dcl, apply_dcl),
    "cropped_regions": (sample_cropped_regions, apply_cropped_regions),
}
NEEDS_CENTROIDS = ("cropped_regions",)


def check_ops(names) -> None:
    unknown = [n for n in names if n not in OPS]
    if unknown:
        raise FgsslError(f"unknown augmentation {', '.join(map(repr, unknown))}; choose from {', '.join(OPS)}")


def sample(name, seed, batch, size, config):
    return OPS[name][0](seed, batch, size, config)


def apply(name, images, params, config, side=None):
    """Op `name` on float images in [0, 1], or on uint8 images (returned as uint8)."""
    if images.dtype != tf.uint8:
        return OPS[name][1](images, params, config, side)
    result = OPS[name][1](tf.image.convert_image_dtype(images, tf.float32), params, config, side)
    return tf.image.convert_image_dtype(result, tf.uint8, saturate=True)


@keras.saving.register_keras_serializable(package="fgssl_tf")
class FineGrainedAugmentation(keras.layers.Layer):
    """One op as a Keras layer: call(images, seed, side=None), float images in [0, 1] or uint8."""

    def __init__(self, op: str, config: FineGrainedConfig | None = None, **kwargs):
        super().__init__(**kwargs)
        check_ops([op])
        self.op, self.config = op, config or FineGrainedConfig()

    def call(self, images, seed, side=None):
        params = sample(self.op, seed, tf.shape(images)[0], images.shape[1], self.config)
        return apply(self.op, images, params, self.config, side)

    def get_config(self):
        return {**super().get_config(), "op": self.op, "config": dataclasses.asdict(self.config)}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["config"] = FineGrainedConfig(**config["config"])
        return cls(**config)
