"""Seeded, stratified splits that never change between runs.

`numpy.random.RandomState` is used on purpose: NumPy freezes its stream, so the
same seed gives the same split on every machine and every NumPy version.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np


def stratified_split(labels: np.ndarray, fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """Split indices into len(fractions) parts, class by class, in the given proportions.

    Every part gets at least one image of a class that has as many images as parts.
    Returns sorted index arrays.
    """
    labels = np.asarray(labels)
    fractions = np.asarray(fractions, dtype=np.float64)
    if np.any(fractions <= 0) or not np.isclose(fractions.sum(), 1.0):
        raise ValueError(f"fractions must be positive and sum to 1, got {fractions.tolist()}")
    rng = np.random.RandomState(seed)
    parts: list[list[np.ndarray]] = [[] for _ in fractions]
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        members = members[rng.permutation(len(members))]
        sizes = np.floor(fractions * len(members)).astype(int)
        if len(members) >= len(fractions):
            sizes = np.maximum(sizes, 1)
        sizes[0] = len(members) - sizes[1:].sum()  # the first part takes the remainder
        bounds = np.cumsum(sizes)[:-1]
        for part, chunk in zip(parts, np.split(members, bounds)):
            part.append(chunk)
    return [np.sort(np.concatenate(p)) for p in parts]


def label_fraction_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A stratified subset of about `fraction` of the images, at least one per class."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
    labels = np.asarray(labels)
    if fraction == 1.0:
        return np.arange(len(labels))
    rng = np.random.RandomState(seed)
    chosen = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        count = max(1, int(round(fraction * len(members))))
        chosen.append(rng.choice(members, size=count, replace=False))
    return np.sort(np.concatenate(chosen))


def stratified_at_most(labels: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """A stratified subset of about `limit` images (every image when there are fewer)."""
    return label_fraction_subset(labels, min(1.0, limit / max(len(labels), 1)), seed)


def fingerprint(*index_arrays: np.ndarray) -> str:
    """A short hash of split indices, logged and stored so a changed split is noticed."""
    digest = hashlib.sha256()
    for indices in index_arrays:
        digest.update(np.asarray(indices, dtype=np.int64).tobytes())
        digest.update(b"|")
    return digest.hexdigest()[:16]
