"""The three ways images arrive: elpv (offline default), cassava (TFDS), an image folder.

Each loader returns `RawSplits`: decoded arrays for train, validation and test at
one image size. Nothing here shuffles per epoch; see `pipeline.py` for that.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import numpy as np
import tensorflow as tf

from fgssl_tf.data import images as image_io
from fgssl_tf.data.splits import stratified_split
from fgssl_tf.errors import FgsslError

log = logging.getLogger(__name__)

# Fixed forever: changing it changes every published elpv number.
ELPV_SPLIT_SEED = 2107
ELPV_FRACTIONS = (0.6, 0.2, 0.2)
ELPV_CLASS_NAMES = ("functional", "possibly_defective", "likely_defective", "defective")
FOLDER_SPLIT_SEED = 0
SPLIT_NAMES = ("train", "val", "test")


@dataclasses.dataclass
class RawSplits:
    images: dict  # split name -> [N, S, S, 3] uint8
    labels: dict  # split name -> [N] int64
    class_names: tuple
    skipped_files: list = dataclasses.field(default_factory=list)
    ids: dict = dataclasses.field(default_factory=dict)  # split -> stable ids (source indices or paths)


def _estimate_gb(count: int, image_size: int) -> float:
    return count * image_size * image_size * 3 / 1e9


def check_fits_in_memory(count: int, image_size: int, max_cache_gb: float | None) -> None:
    if max_cache_gb is None:
        max_cache_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2e9
    needed = _estimate_gb(count, image_size)
    if needed > max_cache_gb:
        raise FgsslError(
            f"{count} images at {image_size} px need {needed:.1f} GB of decoded cache, "
            f"more than the {max_cache_gb:.1f} GB allowed; lower --image_size or raise --max_cache_gb"
        )


def load_elpv(image_size: int) -> RawSplits:
    """2,624 solar-cell images; the defect probability {0, 1/3, 2/3, 1} is the class."""
    try:
        from elpv_dataset.utils import load_dataset
    except ImportError as err:
        raise FgsslError(
            "the elpv dataset needs the `elpv-dataset` package: pip install 'fgssl_tf[elpv]'"
        ) from err
    images, probabilities, _ = load_dataset()
    labels = np.rint(np.asarray(probabilities) * 3).astype(np.int64)
    parts = stratified_split(labels, ELPV_FRACTIONS, ELPV_SPLIT_SEED)
    resized = image_io.resize_array(images, image_size)
    return RawSplits(
        images={name: resized[idx] for name, idx in zip(SPLIT_NAMES, parts)},
        labels={name: labels[idx] for name, idx in zip(SPLIT_NAMES, parts)},
        class_names=ELPV_CLASS_NAMES,
        ids={name: idx for name, idx in zip(SPLIT_NAMES, parts)},
    )


def load_cassava(image_size: int, data_dir: str | None) -> RawSplits:
    """TFDS `cassava` with its official train / validation / test splits (5 classes)."""
    import tensorflow_datasets as tfds

    try:
        splits, info = tfds.load(
            "cassava",
            split=["train", "validation", "test"],
            as_supervised=True,
            with_info=True,
            data_dir=data_dir,
        )
    except Exception as err:  # download and preparation errors come in many types
        raise FgsslError(
            f"could not load TFDS 'cassava' ({type(err).__name__}: {str(err).splitlines()[0][:200]}); "
            "it downloads on first use, so run once on a machine with internet, or copy a prepared "
            "TFDS directory here and pass --tfds_data_dir"
        ) from err
    out_images, out_labels = {}, {}
    for name, split in zip(SPLIT_NAMES, splits):
        split = split.map(
            lambda image, label: (image_io.resize_uint8(image_io.to_rgb(image), image_size), label),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        batches = list(split.batch(256).as_numpy_iterator())
        out_images[name] = np.concatenate([b[0] for b in batches]) if batches else np.zeros([0, image_size, image_size, 3], np.uint8)
        out_labels[name] = np.concatenate([b[1] for b in batches]).astype(np.int64) if batches else np.zeros([0], np.int64)
    return RawSplits(out_images, out_labels, tuple(info.features["label"].names))


def _class_dirs(root: str) -> list[str]:
    return sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))


def _labelled_files(root: str, class_names: list[str]) -> tuple[list[str], list[int]]:
    paths, labels = [], []
    for label, name in enumerate(class_names):
        class_dir = os.path.join(root, name)
        if not os.path.isdir(class_dir):
            continue
        found, _ = image_io.list_image_files(class_dir)
        paths += found
        labels += [label] * len(found)
    return paths, labels


def load_folder(root: str, image_size: int, val_fraction: float, max_cache_gb: float | None) -> RawSplits:
    """`root/<label>/*.jpg`, or `root/{train,val,test}/<label>/*.jpg` (val optional)."""
    if not os.path.isdir(root):
        raise FgsslError(f"image folder {root!r} does not exist; pass --dataset=folder:PATH with PATH/<label>/*.jpg")
    split_layout = os.path.isdir(os.path.join(root, "train"))
    train_root = os.path.join(root, "train") if split_layout else root
    class_names = _class_dirs(train_root)
    if len(class_names) < 2:
        raise FgsslError(
            f"image folder {train_root!r} has {len(class_names)} class folder(s); "
            "expected one sub-folder per label (PATH/<label>/*.jpg), at least two"
        )
    sources: dict[str, tuple[list[str], list[int]]] = {"train": _labelled_files(train_root, class_names)}
    if split_layout:
        for name, candidates in (("val", ("val", "validation")), ("test", ("test",))):
            for folder in candidates:
                if os.path.isdir(os.path.join(root, folder)):
                    sources[name] = _labelled_files(os.path.join(root, folder), class_names)
                    break
    total = sum(len(p) for p, _ in sources.values())
    if total == 0:
        raise FgsslError(
            f"no images ({', '.join(image_io.IMAGE_EXTENSIONS)}) found under {root!r}; "
            "expected PATH/<label>/*.jpg"
        )
    check_fits_in_memory(total, image_size, max_cache_gb)
    images, labels, skipped = {}, {}, []
    for name, (paths, file_labels) in sources.items():
        decoded = image_io.decode_files(paths, image_size)
        skipped += decoded.skipped
        images[name] = decoded.images
        labels[name] = np.asarray(file_labels, np.int64)[decoded.kept]
    if len(images["train"]) == 0:
        raise FgsslError(f"none of the training images under {train_root!r} could be decoded")
    # Carve what is missing out of train, seeded and stratified.
    missing = [name for name in ("val", "test") if name not in images]
    if missing:
        fractions = [1.0 - val_fraction * len(missing)] + [val_fraction] * len(missing)
        parts = stratified_split(labels["train"], fractions, FOLDER_SPLIT_SEED)
        train_images, train_labels = images["train"], labels["train"]
        images["train"], labels["train"] = train_images[parts[0]], train_labels[parts[0]]
        for name, idx in zip(missing, parts[1:]):
            images[name], labels[name] = train_images[idx], train_labels[idx]
    if skipped:
        log.warning("%d of %d image files were unreadable and skipped", len(skipped), total)
    return RawSplits(images, labels, tuple(class_names), skipped)


def load_unlabeled(root: str, image_size: int, max_cache_gb: float | None) -> tuple[np.ndarray, list]:
    """Every image under root, recursively; labels are not read."""
    if not os.path.isdir(root):
        raise FgsslError(f"--unlabeled_dir {root!r} does not exist")
    paths, _ = image_io.list_image_files(root)
    if not paths:
        raise FgsslError(f"--unlabeled_dir {root!r} holds no images ({', '.join(image_io.IMAGE_EXTENSIONS)})")
    check_fits_in_memory(len(paths), image_size, max_cache_gb)
    decoded = image_io.decode_files(paths, image_size)
    return decoded.images, decoded.skipped
