"""Cutting images into a grid of equal tiles and putting them back (Jigsaw, random
jigsaw, DCL region confusion all move tiles; none changes a pixel)."""

from __future__ import annotations

import tensorflow as tf


def split_grid(images: tf.Tensor, grid: int, tile: int, top: int = 0, left: int = 0) -> tf.Tensor:
    """[B, H, W, C] -> the grid x grid tiles of side `tile` starting at (top, left),
    row-major: [B, grid * grid, tile, tile, C]."""
    channels = images.shape[-1]
    x = images[:, top : top + grid * tile, left : left + grid * tile, :]
    x = tf.reshape(x, [-1, grid, tile, grid, tile, channels])
    return tf.reshape(tf.transpose(x, [0, 1, 3, 2, 4, 5]), [-1, grid * grid, tile, tile, channels])


def join_grid(tiles: tf.Tensor, grid: int, gap: int = 0, fill: float = 1.0) -> tf.Tensor:
    """[B, grid * grid, t, t, C] -> [B, grid t + (grid - 1) gap, ..., C], tiles row-major."""
    if gap:
        tiles = tf.pad(tiles, [[0, 0], [0, 0], [0, gap], [0, gap], [0, 0]], constant_values=fill)
    size, channels = tiles.shape[2], tiles.shape[-1]
    x = tf.reshape(tiles, [-1, grid, grid, size, size, channels])
    x = tf.reshape(tf.transpose(x, [0, 1, 3, 2, 4, 5]), [-1, grid * size, grid * size, channels])
    return x[:, : grid * size - gap, : grid * size - gap, :]


def paste(images: tf.Tensor, region: tf.Tensor, top: int = 0, left: int = 0) -> tf.Tensor:
    """`images` with the (statically sized) `region` written at (top, left)."""
    height, width = images.shape[1], images.shape[2]
    pads = [[0, 0], [top, height - top - region.shape[1]], [left, width - left - region.shape[2]], [0, 0]]
    return tf.pad(region, pads) + (1.0 - tf.pad(tf.ones_like(region), pads)) * images
