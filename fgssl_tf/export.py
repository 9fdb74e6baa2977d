"""Exporting encoders for TF Serving, with a `.keras` copy for fine-tuning.

Layout (what TF Serving loads, `--model_base_path=savedmodels/NAME`):

    savedmodels/NAME/VERSION/saved_model.pb, variables/   serving_default: images -> embedding
    savedmodels/NAME/VERSION/encoder.keras                 the same encoder, to fine-tune (stock Keras layers)
    savedmodels/NAME/VERSION/fgssl_metadata.json           image size, configs, seed, data

The signature takes a uint8 batch [B, H, W, C] of any H and W (C = 1, 3 or 4) and
does the training-time preprocessing itself (scale to [0, 1], squash-resize).
A version is written under a hidden temporary name and renamed into place, so
a crash never leaves a half-written version for TF Serving to pick up.

Shipped `.keras` files hold stock `keras.layers.Conv2D` where the package trains with
`fgssl_tf.models.layers.Conv2D` (a CPU speed detail), so they load in a Python that
has never imported fgssl_tf; `load_keras_encoder` swaps the fast layer back in.
"""

from __future__ import annotations

import json
import os
import shutil

import keras
import numpy as np
import tensorflow as tf

from fgssl_tf.data.images import to_rgb
from fgssl_tf.data.transform import preprocess  # also importable from here, as before
from fgssl_tf.errors import FgsslError
from fgssl_tf.models import layers as fgssl_layers

METADATA_FILE = "fgssl_metadata.json"
KERAS_FILE = "encoder.keras"
SIGNATURE = "serving_default"
INPUT_NAME = "images"
OUTPUT_NAME = "embedding"


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


def write_version(export_dir: str, name: str, write, retry_hint: str) -> str:
    """Make version N+1 of `name`: `write(staging_dir, version)` fills a hidden folder that is
    renamed into place only when complete. Returns the version directory."""
    model_root = os.path.join(export_dir, name)
    os.makedirs(model_root, exist_ok=True)
    version = next_version(model_root)
    final = os.path.join(model_root, str(version))
    staging = os.path.join(model_root, f".staging-{version}-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        write(staging, version)
        os.rename(staging, final)
    except OSError as err:  # a full disk, a quota, a read-only folder: earlier versions are untouched
        shutil.rmtree(staging, ignore_errors=True)
        kept = f"version {version - 1} of {name} is intact" if version > 1 else "no earlier version existed"
        raise FgsslError(
            f"exporting {name} version {version} failed ({err}); nothing was left half-written and {kept}; {retry_hint}"
        ) from err
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def export_encoder(
    encoder: keras.Model, export_dir: str, name: str, image_size: int, metadata: dict, extras: dict | None = None
) -> str:
    """Write a new version of `name` and return its directory; `extras` ({file name: model})
    are saved beside it as more `.keras` files (SRGAN's full networks)."""

    # Served and saved with stock Keras layers (outputs checked equal): the serving graph then has no
    # custom gradients, which SavedModel would otherwise trace and store (seconds, for nobody's use).
    shipped_encoder = stock_layers(encoder, probe_size=image_size)

    def serve(images):
        x = preprocess(_check_and_convert(images), image_size)
        return {
            OUTPUT_NAME: tf.cast(shipped_encoder(x, training=False), tf.float32)
        }  # float32 also from a mixed-precision encoder

    def write(staging, version):
        archive = keras.export.ExportArchive()
        archive.track(shipped_encoder)
        archive.add_endpoint(SIGNATURE, serve, input_signature=[tf.TensorSpec(None, tf.uint8, name=INPUT_NAME)])
        archive.write_out(staging, verbose=False)
        custom = {}
        keras_files = {KERAS_FILE: shipped_encoder, **{f: stock_layers(m) for f, m in (extras or {}).items()}}
        for filename, shipped in keras_files.items():
            shipped.save(os.path.join(staging, filename))
            custom.update({f"{filename}: {k}": v for k, v in custom_layers(shipped).items()})
        extra = {"keras_files_need_fgssl_tf": custom} if custom else {}
        with open(os.path.join(staging, METADATA_FILE), "w") as f:
            metadata_out = {"name": name, "version": version, "image_size": image_size, **metadata, **extra}
            json.dump(metadata_out, f, indent=2, default=str)

    retry = (
        "free space and re-run the same command (training resumes from its checkpoint, so only the export is redone)"
    )
    return write_version(export_dir, name, write, retry)


# Why a layer still in a shipped .keras file has no stock Keras equivalent (the file then needs fgssl_tf to load).
NON_STOCK_REASONS = {
    "GridAveragePooling": "PyTorch's adaptive g x g average pooling on maps of any size; Keras' "
    "AdaptiveAveragePooling2D needs the size fixed when the model is built, and this encoder "
    "takes any image size",
    "PixelShuffle": "depth-to-space upsampling on maps of any size; no stock Keras layer does it without a Lambda, "
    "which load_model refuses in safe mode",
    "FixedInputSize": "refuses a wrong image size by name before the dense layers; no stock layer checks a size",
}


def _iter_layers(model: keras.Model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _iter_layers(layer)


def custom_layers(model: keras.Model) -> dict:
    """{registered class name: why it is not stock} for the layers that need fgssl_tf to load."""
    return {
        keras.saving.get_registered_name(type(layer)): NON_STOCK_REASONS.get(type(layer).__name__, "a custom layer")
        for layer in _iter_layers(model)
        if type(layer).__module__.startswith("fgssl_tf")
    }


def _caffe_as_conv(layer: keras.layers.Layer) -> keras.layers.Layer:
    """CaffePreprocess as a frozen 1x1 convolution: RGB -> BGR times 255 minus the ImageNet mean."""
    return keras.layers.Conv2D(3, 1, name=layer.name, trainable=False, dtype=layer.dtype_policy)


_CAFFE_MEAN = np.array([103.939, 116.779, 123.68], np.float32)


def _swap_layers(model: keras.Model, replace) -> keras.Model:
    """A clone of `model` with `replace(layer)` (a new layer or None: a plain copy) for each layer,
    and the original's weights."""

    def clone(layer):
        return replace(layer) or layer.__class__.from_config(layer.get_config())

    copy = keras.models.clone_model(model, clone_function=clone, recursive=True)
    _copy_weights(model, copy)
    return copy


def _copy_weights(source: keras.Model, target: keras.Model) -> None:
    for old, new in zip(source.layers, target.layers):
        if isinstance(old, keras.Model):
            _copy_weights(old, new)
        elif isinstance(old, fgssl_layers.CaffePreprocess):
            kernel = np.zeros([1, 1, 3, 3], np.float32)
            for rgb in range(3):
                kernel[0, 0, rgb, 2 - rgb] = 255.0
            new.set_weights([kernel, -_CAFFE_MEAN])
        else:
            new.set_weights(old.get_weights())


def stock_layers(model: keras.Model, probe_size: int | None = None) -> keras.Model:
    """`model` with fgssl_tf's Conv2D as `keras.layers.Conv2D` (same config, same weights) and
    CaffePreprocess as a stock 1x1 convolution; with `probe_size`, outputs are checked equal."""

    def replace(layer):
        if type(layer) is fgssl_layers.Conv2D:
            return keras.layers.Conv2D.from_config(layer.get_config())
        if type(layer) is fgssl_layers.CaffePreprocess:
            return _caffe_as_conv(layer)
        return None

    if not any(type(layer) in (fgssl_layers.Conv2D, fgssl_layers.CaffePreprocess) for layer in _iter_layers(model)):
        return model
    shipped = _swap_layers(model, replace)
    if probe_size:
        probe = np.random.RandomState(0).uniform(size=(2, probe_size, probe_size, 3)).astype(np.float32)
        expected, got = call(model, probe), call(shipped, probe)
        for a, b in zip(tf.nest.flatten(expected), tf.nest.flatten(got)):
            a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
            if not np.allclose(a, b, rtol=1e-4, atol=1e-4 * (1 + np.abs(a).max())):
                raise FgsslError(
                    f"{model.name} with stock Keras layers differs from the trained model by "
                    f"{np.abs(a - b).max():g}; this is a bug in fgssl_tf.export.stock_layers, please report it"
                )
    return shipped


def call(model: keras.Model, images) -> tf.Tensor:
    """model(images) in inference mode, also for a model built with a one-element list of inputs."""
    return model([images] if isinstance(model.input, list) else images, training=False)


def fast_layers(model: keras.Model) -> keras.Model:
    """The reverse of `stock_layers` for Conv2D: fgssl_tf's layer, whose input gradient is fast on CPU."""

    def replace(layer):
        return fgssl_layers.Conv2D.from_config(layer.get_config()) if type(layer) is keras.layers.Conv2D else None

    if not any(type(layer) is keras.layers.Conv2D for layer in _iter_layers(model)):
        return model
    return _swap_layers(model, replace)


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
            raise FgsslError(
                "the encoder takes a batch [batch, height, width, 1|3|4] of images at least 1 x 1; "
                f"got shape {images.shape}"
            )
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
    """The trainable `.keras` copy that sits beside the SavedModel, with the package's fast
    CPU Conv2D in place of the stock one the file holds."""
    keras_path = os.path.join(path, KERAS_FILE)
    if not os.path.isfile(keras_path):
        raise FgsslError(
            f"{keras_path!r} is missing; fine-tuning needs the .keras file that export writes beside the SavedModel"
        )
    return fast_layers(keras.saving.load_model(keras_path, compile=False))
