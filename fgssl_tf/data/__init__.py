"""Data: `load_splits(DataConfig)` gives train / val / test and the pretraining pool."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import tensorflow as tf

from fgssl_tf.config import DataConfig
from fgssl_tf.data import dedup, pipeline, sources
from fgssl_tf.data.splits import fingerprint, label_fraction_subset, stratified_at_most, stratified_split
from fgssl_tf.data.transform import preprocess
from fgssl_tf.errors import FgsslError

log = logging.getLogger(__name__)

DATASETS = ("elpv", "cassava", "folder:PATH")


@dataclasses.dataclass
class Splits:
    """Decoded uint8 images [N, S, S, 3] and int64 labels for each split."""

    train_images: np.ndarray
    train_labels: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: tuple
    unlabeled_images: np.ndarray  # extra pretraining images, already de-duplicated
    stats: dict  # counts of skipped files, dropped duplicates, split fingerprint

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        if name not in ("train", "val", "test"):
            raise ValueError(f"unknown split {name!r}")
        return getattr(self, f"{name}_images"), getattr(self, f"{name}_labels")

    def dataset(self, name: str, batch_size: int = 64) -> tf.data.Dataset:
        """(uint8 image, int64 label) batches of one split, in a fixed order."""
        return pipeline.ordered_batches(*self.split(name), batch_size)

    def pretraining_pool(self) -> np.ndarray:
        """Train images (labels unused) plus the unlabelled extra images."""
        if len(self.unlabeled_images) == 0:
            return self.train_images
        return np.concatenate([self.train_images, self.unlabeled_images])


def _subsample(images, labels, limit, seed=0):
    if limit is None or len(labels) <= limit:
        return images, labels
    idx = stratified_at_most(labels, limit, seed)[:limit]
    return images[idx], labels[idx]


def load_splits(config: DataConfig) -> Splits:
    """Load, decode and split a dataset named by `config.dataset`."""
    name = config.dataset
    if config.image_size < 8:
        raise FgsslError(f"--image_size={config.image_size} is too small; use 8 or more")
    if name == "elpv":
        raw = sources.load_elpv(config.image_size)
    elif name == "cassava":
        raw = sources.load_cassava(config.image_size, config.tfds_data_dir, config.max_cache_gb)
    elif name.startswith("folder:"):
        raw = sources.load_folder(
            name[len("folder:") :],
            config.image_size,
            config.val_fraction,
            config.max_cache_gb,
            config.allow_unseen_classes,
        )
    else:
        raise FgsslError(f"unknown --dataset={name!r}; choose one of {', '.join(DATASETS)}")

    split_arrays = {}
    for split in ("train", "val", "test"):
        images, labels = _subsample(raw.images[split], raw.labels[split], config.max_images_per_split)
        split_arrays[split] = (images, labels)
    stats = {
        "dataset": name,
        "image_size": config.image_size,
        "skipped_files": len(raw.skipped_files),
        "skipped_paths": [str(p) for p in raw.skipped_files[:100]],  # the first 100, for the log and TensorBoard
        "split_sizes": {k: int(len(v[1])) for k, v in split_arrays.items()},
        "split_fingerprint": fingerprint(*(raw.ids.get(s, raw.labels[s]) for s in ("train", "val", "test"))),
    }
    for key, paths in raw.left_out.items():  # files a folder source left out, besides unreadable ones
        stats[key] = len(paths)
        stats[f"{key}_paths"] = [str(p) for p in paths[:100]]
    if raw.unseen_classes:
        stats["unseen_classes"] = {split: list(names) for split, names in raw.unseen_classes.items()}

    unlabeled = np.zeros([0, config.image_size, config.image_size, 3], np.uint8)
    if config.unlabeled_dir:
        unlabeled, skipped = sources.load_unlabeled(config.unlabeled_dir, config.image_size, config.max_cache_gb)
        held_out = np.concatenate([split_arrays["val"][0], split_arrays["test"][0]])
        duplicate = dedup.near_duplicates(dedup.dhash(unlabeled), dedup.dhash(held_out), config.near_duplicate_bits)
        unlabeled = unlabeled[~duplicate]
        stats["skipped_files"] += len(skipped)
        stats["skipped_paths"] = (stats["skipped_paths"] + [str(p) for p in skipped])[:100]
        stats["unlabeled_kept"] = int(len(unlabeled))
        stats["unlabeled_dropped_as_val_test_duplicates"] = int(duplicate.sum())
        log.info(
            "unlabelled pool: kept %d images, dropped %d near-duplicates of validation/test images",
            len(unlabeled),
            int(duplicate.sum()),
        )
    for split, (_, labels) in split_arrays.items():
        if len(labels) == 0:
            raise FgsslError(f"dataset {name!r} has an empty {split} split")
    log.info(
        "dataset %s: %s, %d classes, %d skipped files",
        name,
        stats["split_sizes"],
        len(raw.class_names),
        stats["skipped_files"],
    )
    return Splits(
        *split_arrays["train"],
        *split_arrays["val"],
        *split_arrays["test"],
        class_names=tuple(raw.class_names),
        unlabeled_images=unlabeled,
        stats=stats,
    )


__all__ = [
    "DATASETS",
    "Splits",
    "load_splits",
    "label_fraction_subset",
    "stratified_at_most",
    "stratified_split",
    "pipeline",
    "preprocess",
]
