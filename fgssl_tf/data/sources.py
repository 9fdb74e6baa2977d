"""The three ways images arrive: elpv (offline default), cassava (TFDS), an image folder.

Each loader returns `RawSplits`: decoded arrays for train, validation and test at
one image size. Nothing here shuffles per epoch; see `pipeline.py` for that.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import logging
import os

import numpy as np
import tensorflow as tf

from fgssl_tf.data import disk_cache
from fgssl_tf.data import images as image_io
from fgssl_tf.data.splits import stratified_split
from fgssl_tf.errors import FgsslError

log = logging.getLogger(__name__)

# Fixed forever: changing it changes every published elpv number.
ELPV_SPLIT_SEED = 2107
ELPV_FRACTIONS = (0.6, 0.2, 0.2)
ELPV_IMAGE_COUNT = 2624
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
    # What a folder source left out besides unreadable files, each a list of paths: "ignored_files"
    # (not images), "skipped_links" (links not followed, second paths to a file already used),
    # "unseen_class_files" (val/test images of classes train lacks, with --allow_unseen_classes).
    left_out: dict = dataclasses.field(default_factory=dict)
    unseen_classes: dict = dataclasses.field(default_factory=dict)  # split -> class names train lacks


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


@disk_cache.cached
def _decoded_elpv(image_size: int, package_version: str) -> tuple[np.ndarray, np.ndarray]:
    """All elpv images resized to image_size, and their classes; kept on disk per size and version."""
    from elpv_dataset.utils import load_dataset

    images, probabilities, _ = load_dataset()
    labels = np.rint(np.asarray(probabilities) * 3).astype(np.int64)
    return image_io.resize_array(images, image_size), labels


def load_elpv(image_size: int, max_cache_gb: float | None = None) -> RawSplits:
    """2,624 solar-cell images; the defect probability {0, 1/3, 2/3, 1} is the class."""
    try:
        import elpv_dataset  # noqa: F401
    except ImportError as err:
        raise FgsslError("the elpv dataset needs the `elpv-dataset` package: pip install 'fgssl_tf[elpv]'") from err
    check_fits_in_memory(ELPV_IMAGE_COUNT, image_size, max_cache_gb)
    resized, labels = _decoded_elpv(image_size, importlib.metadata.version("elpv-dataset"))
    parts = stratified_split(labels, ELPV_FRACTIONS, ELPV_SPLIT_SEED)
    return RawSplits(
        images={name: resized[idx] for name, idx in zip(SPLIT_NAMES, parts)},
        labels={name: labels[idx] for name, idx in zip(SPLIT_NAMES, parts)},
        class_names=ELPV_CLASS_NAMES,
        ids={name: idx for name, idx in zip(SPLIT_NAMES, parts)},
    )


def load_cassava(image_size: int, data_dir: str | None, max_cache_gb: float | None = None) -> RawSplits:
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
    counts = [int(split.cardinality()) for split in splits]  # known for TFDS splits; < 0: unknown
    if min(counts) >= 0:
        check_fits_in_memory(sum(counts), image_size, max_cache_gb)
    out_images, out_labels = {}, {}
    for name, split in zip(SPLIT_NAMES, splits):
        split = split.map(
            lambda image, label: (image_io.resize_uint8(image_io.to_rgb(image), image_size), label),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        batches = list(split.batch(256).as_numpy_iterator())
        out_images[name] = (
            np.concatenate([b[0] for b in batches]) if batches else np.zeros([0, image_size, image_size, 3], np.uint8)
        )
        out_labels[name] = (
            np.concatenate([b[1] for b in batches]).astype(np.int64) if batches else np.zeros([0], np.int64)
        )
    return RawSplits(out_images, out_labels, tuple(info.features["label"].names))


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _class_dirs(root: str, dataset_root: str, links: list) -> list[str]:
    """Class folders under root. A symbolic link to a folder inside the dataset (or above it:
    a loop) would repeat its images as another class: it is not followed, and listed in `links`."""
    dataset_real = os.path.realpath(dataset_root)
    names, seen = [], set()
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name)
        if name.startswith(".") or not os.path.isdir(path):
            continue
        real = os.path.realpath(path)
        if os.path.islink(path) and (_inside(real, dataset_real) or _inside(dataset_real, real) or real in seen):
            links.append(path)
            log.warning(
                "not following %s -> %s: a link to a folder already in the dataset (or above it) would repeat images",
                path,
                real,
            )
            continue
        seen.add(real)
        names.append(name)
    return names


def _labelled_files(root: str, class_names: list[str], left_out: dict, present: list[str]) -> tuple[list, list]:
    """The image files of each class folder of `class_names` that `_class_dirs` found (`present`) under root."""
    paths, labels = [], []
    for label, name in enumerate(class_names):
        class_dir = os.path.join(root, name)
        if name not in present:
            continue
        scan = image_io.scan_image_files(class_dir)
        paths += scan.images
        labels += [label] * len(scan.images)
        left_out["ignored_files"] += scan.ignored
        left_out["skipped_links"] += scan.links
    return paths, labels


def _one_path_per_file(sources: dict, left_out: dict) -> dict:
    """A file reached by several paths (a symbolic link to it, a linked class folder) is used once:
    through its own path if that is one of them, else the first (train before val, before test)."""
    entries = [(split, i, path) for split, (paths, _) in sources.items() for i, path in enumerate(paths)]
    keeper: dict[str, tuple] = {}
    for split, i, path in entries:
        real = os.path.realpath(path)
        direct = os.path.abspath(path) == real
        if real not in keeper or (direct and not keeper[real][3]):
            keeper[real] = (split, i, path, direct)
    keep = {(split, i) for split, i, _, _ in keeper.values()}
    out = {}
    for split, (paths, labels) in sources.items():
        chosen = [i for i in range(len(paths)) if (split, i) in keep]
        repeated = [paths[i] for i in range(len(paths)) if (split, i) not in keep]
        for path in repeated:
            log.warning("%s is another path to %s, already used: counted once", path, keeper[os.path.realpath(path)][2])
        left_out["skipped_links"] += repeated
        out[split] = ([paths[i] for i in chosen], [labels[i] for i in chosen])
    return out


def load_folder(
    root: str, image_size: int, val_fraction: float, max_cache_gb: float | None, allow_unseen_classes: bool = False
) -> RawSplits:
    """`root/<label>/*.jpg`, or `root/{train,val,test}/<label>/*.jpg` (val optional)."""
    if not os.path.isdir(root):
        raise FgsslError(f"image folder {root!r} does not exist; pass --dataset=folder:PATH with PATH/<label>/*.jpg")
    left_out: dict = {"ignored_files": [], "skipped_links": [], "unseen_class_files": []}
    split_layout = os.path.isdir(os.path.join(root, "train"))
    train_root = os.path.join(root, "train") if split_layout else root
    class_names = _class_dirs(train_root, root, left_out["skipped_links"])
    if len(class_names) < 2:
        raise FgsslError(
            f"image folder {train_root!r} has {len(class_names)} class folder(s); "
            "expected one sub-folder per label (PATH/<label>/*.jpg), at least two"
        )
    sources: dict[str, tuple[list, list]] = {"train": _labelled_files(train_root, class_names, left_out, class_names)}
    unseen: dict[str, list[str]] = {}
    if split_layout:
        for name, candidates in (("val", ("val", "validation")), ("test", ("test",))):
            for folder in candidates:
                split_root = os.path.join(root, folder)
                if os.path.isdir(split_root):
                    present = _class_dirs(split_root, root, left_out["skipped_links"])
                    sources[name] = _labelled_files(split_root, class_names, left_out, present)
                    extra = [c for c in present if c not in class_names]
                    if extra:
                        unseen[name] = extra
                        for label in extra:
                            unseen_files = image_io.scan_image_files(os.path.join(split_root, label)).images
                            left_out["unseen_class_files"] += unseen_files
                    break
    if unseen:
        listing = "; ".join(f"{split}: {', '.join(repr(c) for c in names)}" for split, names in unseen.items())
        count = len(left_out["unseen_class_files"])
        if not allow_unseen_classes:
            raise FgsslError(
                f"image folder {root!r} has classes that train lacks ({listing}; {count} images); a model trained on "
                "train cannot predict them, so they would be dropped; add them to train, remove them, or pass "
                "--allow_unseen_classes to leave their images out (counted in the report)"
            )
        log.warning("leaving out %d images of classes that train lacks (%s): --allow_unseen_classes", count, listing)
    sources = _one_path_per_file(sources, left_out)
    total = sum(len(p) for p, _ in sources.values())
    if total == 0:
        raise FgsslError(
            f"no images ({', '.join(image_io.IMAGE_EXTENSIONS)}) found under {root!r}; expected PATH/<label>/*.jpg"
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
    if left_out["ignored_files"]:
        log.warning(
            "%d files under %s are not images (%s) and were left out, e.g. %s",
            len(left_out["ignored_files"]),
            root,
            ", ".join(image_io.IMAGE_EXTENSIONS),
            left_out["ignored_files"][0],
        )
    return RawSplits(images, labels, tuple(class_names), skipped, left_out=left_out, unseen_classes=unseen)


def load_unlabeled(root: str, image_size: int, max_cache_gb: float | None) -> tuple[np.ndarray, list]:
    """Every image under root, recursively; labels are not read."""
    if not os.path.isdir(root):
        raise FgsslError(f"--unlabeled_dir {root!r} does not exist")
    scan = image_io.scan_image_files(root)
    if scan.links or scan.ignored:
        log.warning(
            "--unlabeled_dir %s: left out %d files that are not images and %d links to folders",
            root,
            len(scan.ignored),
            len(scan.links),
        )
    paths, seen = [], set()
    for path in scan.images:  # a file reached by two paths (a link to it) is used once
        if os.path.realpath(path) not in seen:
            seen.add(os.path.realpath(path))
            paths.append(path)
    if not paths:
        raise FgsslError(f"--unlabeled_dir {root!r} holds no images ({', '.join(image_io.IMAGE_EXTENSIONS)})")
    check_fits_in_memory(len(paths), image_size, max_cache_gb)
    decoded = image_io.decode_files(paths, image_size)
    return decoded.images, decoded.skipped
