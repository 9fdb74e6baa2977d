"""Exporting encoders for TF Serving, with a `.keras` copy for fine-tuning.

Layout (what TF Serving loads, `--model_base_path=savedmodels/NAME`):

    savedmodels/NAME/VERSION/saved_model.pb, variables/   serving_default: images -> embedding
    savedmodels/NAME/VERSION/encoder.keras                 the same encoder, to fine-tune
    savedmodels/NAME/VERSION/fgssl_metadata.json           image size, configs, seed, data

The signature takes a uint8 batch [B, H, W, C] of any H and W (C = 1, 3 or 4) and
does the training-time preprocessing itself (scale to [0, 1], squash-resize).
A version is written under a hidden temporary name and renamed into place, so
a crash never leaves a half-written version for TF Serving to pick up.
"""

from __future__ import annotations

import json
import os
import shutil

import keras
import numpy as np
import tensorflow as tf

from fgssl_tf.data.images import to_rgb
from fgssl_tf.errors import FgsslError

METADATA_FILE = "fgssl_metadata.json"
KERAS_FILE = "encoder.keras"
SIGNATURE = "serving_default"
INPUT_NAME = "images"
OUTPUT_NAME = "embedding"


def preprocess(images: tf.Tensor, image_size: int) -> tf.Tensor:
    """uint8 [B, H, W, 3] -> float32 [B, S, S, 3] in [0, 1], as in training."""
    x = tf.image.convert_image_dtype(images, tf.float32)
    if images.shape[1] == image_size and images.shape[2] == image_size:
        return x
    return tf.image.resize(x, [image_size, image_size], method="bilinear", antialias=True)


def _check_and_convert(images: tf.Tensor) -> tf.Tensor:
    """Validate rank and channels inside the graph, so serving clients get a plain message."""
    rank_check = tf.debugging.Assert(
        tf.equal(tf.rank(images), 4),
        ["images must be a uint8 batch of shape [batch, height, width, channels]; got shape", tf.shape(images)],
        summarize=8,
    )
    with tf.control_dependencies([rank_check]):
        # A shape vector of static length 4 gives the graph a static rank without an
        # op of its own failing first: a wrong rank is reported by the assert above.
        padded_shape = tf.concat([tf.shape(images), [1, 1, 1, 1]], axis=0)[:4]
        images = tf.reshape(images, tf.reshape(padded_shape, [4]))
    channels = tf.shape(images)[3]
    channel_check = tf.debugging.Assert(
        tf.reduce_any(tf.equal(channels, [1, 3, 4])),
        ["images must have 1 (gray), 3 (RGB) or 4 (RGBA) channels; got", channels],
    )
    size_check = tf.debugging.Assert(
        tf.reduce_all(tf.shape(images)[1:3] > 0),
        ["images must be at least 1 x 1 pixels; got height and width", tf.shape(images)[1:3]],
    )
    with tf.control_dependencies([channel_check, size_check]):
        images = tf.identity(images)
    return tf.ensure_shape(to_rgb(images), [None, None, None, 3])


def _versions(model_root: str) -> list[int]:
    """The numbered version folders under savedmodels/NAME (the ones TF Serving considers)."""
    return [int(d) for d in os.listdir(model_root) if d.isdigit()] if os.path.isdir(model_root) else []


def next_version(model_root: str) -> int:
    return max(_versions(model_root), default=0) + 1


def export_encoder(encoder: keras.Model, export_dir: str, name: str, image_size: int, metadata: dict, extras: dict | None = None) -> str:
    """Write a new version of `name` and return its directory; `extras` ({file name: model})
    are saved beside it as more `.keras` files (SRGAN's full networks)."""
    model_root = os.path.join(export_dir, name)
    os.makedirs(model_root, exist_ok=True)
    version = next_version(model_root)
    final = os.path.join(model_root, str(version))
    staging = os.path.join(model_root, f".staging-{version}-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)

    def serve(images):
        x = preprocess(_check_and_convert(images), image_size)
        return {OUTPUT_NAME: tf.cast(encoder(x, training=False), tf.float32)}  # float32 also from a mixed-precision encoder

    archive = keras.export.ExportArchive()
    archive.track(encoder)
    archive.add_endpoint(SIGNATURE, serve, input_signature=[tf.TensorSpec(None, tf.uint8, name=INPUT_NAME)])
    try:
        archive.write_out(staging, verbose=False)
        encoder.save(os.path.join(staging, KERAS_FILE))
        for filename, model in (extras or {}).items():
            model.save(os.path.join(staging, filename))
        with open(os.path.join(staging, METADATA_FILE), "w") as f:
            json.dump({"name": name, "version": version, "image_size": image_size, **metadata}, f, indent=2, default=str)
        os.rename(staging, final)
    except OSError as err:  # a full disk, a quota, a read-only folder: earlier versions are untouched
        shutil.rmtree(staging, ignore_errors=True)
        kept = f"version {version - 1} of {name} is intact" if version > 1 else "no earlier version existed"
        raise FgsslError(f"exporting {name} version {version} failed ({err}); nothing was left half-written and {kept}; "
                         "free space and re-run the same command (training resumes from its checkpoint, so only the export is redone)") from err
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def resolve_version_dir(path: str) -> str:
    """A version directory as given, or the newest version under savedmodels/NAME (as TF Serving)."""
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return path
    for version in sorted(_versions(path), reverse=True):
        candidate = os.path.join(path, str(version))
        if os.path.isfile(os.path.join(candidate, "saved_model.pb")):
            return candidate
    raise FgsslError(
        f"{path!r} is not an exported encoder (no saved_model.pb in it or in a numbered version under it); "
        "pass savedmodels/NAME/VERSION or savedmodels/NAME"
    )


class ServingEncoder:
    """A loaded export: call it on uint8 images, get embeddings. Checks input first."""

    def __init__(self, path: str):
        path = resolve_version_dir(path)
        self.path = path
        self.metadata = read_metadata(path)
        self.image_size = int(self.metadata.get("image_size", 0)) or None
        self._signature = tf.saved_model.load(path).signatures[SIGNATURE]

    def __call__(self, images) -> np.ndarray:
        images = np.asarray(images)
        if images.dtype != np.uint8:
            raise FgsslError(f"the encoder takes uint8 images (0..255); got dtype {images.dtype}")
        if images.ndim != 4 or images.shape[-1] not in (1, 3, 4) or 0 in images.shape[1:3]:
            raise FgsslError("the encoder takes a batch [batch, height, width, 1|3|4] of images at least 1 x 1; "
                             f"got shape {images.shape}")
        return self._signature(**{INPUT_NAME: tf.constant(images)})[OUTPUT_NAME].numpy()

    def embed(self, images: np.ndarray, batch_size: int = 128) -> np.ndarray:
        return np.concatenate([self(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])


def read_metadata(path: str) -> dict:
    meta_path = os.path.join(path, METADATA_FILE)
    if not os.path.isfile(meta_path):
        return {}
    with open(meta_path) as f:
        return json.load(f)


def load_keras_encoder(path: str) -> keras.Model:
    """The trainable `.keras` copy that sits beside the SavedModel."""
    keras_path = os.path.join(path, KERAS_FILE)
    if not os.path.isfile(keras_path):
        raise FgsslError(f"{keras_path!r} is missing; fine-tuning needs the .keras file that export writes beside the SavedModel")
    return keras.saving.load_model(keras_path, compile=False)
