"""SimCLR and VICReg models saved before the two-view methods shared their head code (commit
a3da343, by tests/data/two_view_v1/write.py) restore with today's code: the trainer's checkpoint
and the `.keras` file give back every weight and the same outputs."""

import io
import os
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO

import fgssl_tf
from fgssl_tf.pretext.simclr import SimCLRConfig
from fgssl_tf.pretext.vicreg import VICRegConfig

DATA = os.path.join(REPO, "tests", "data", "two_view_v1")
SIZE = 16


def tiny_encoder():
    # As write.py built it: the layer names and shapes the saved files hold.
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(4, 3, strides=2, padding="same", activation="relu", name="conv")(inputs)
    return keras.Model(inputs, keras.layers.GlobalAveragePooling2D(name="pool")(x), name="tiny_encoder")


BUILD = {
    "simclr": lambda: fgssl_tf.SimCLR(
        tiny_encoder(), config=SimCLRConfig(projection_dim=8, hidden_dim=8), name="simclr"
    ),
    "vicreg": lambda: fgssl_tf.VICReg(tiny_encoder(), config=VICRegConfig(expander_dim=8), name="vicreg"),
}
HEADS = {"simclr": "projector", "vicreg": "expander"}


def probe():
    images = np.random.RandomState(1).randint(0, 256, (4, SIZE, SIZE, 3)).astype(np.uint8)
    return tf.image.convert_image_dtype(images, tf.float32)


def saved(name):
    with np.load(os.path.join(DATA, f"{name}.npz")) as f:
        return f["outputs"], [f[f"w{i}"] for i in range(len(f.files) - 1)]


def assert_same(model, name):
    outputs, weights = saved(name)
    assert [w.shape for w in model.weights] == [w.shape for w in weights]
    for ours, theirs in zip(model.weights, weights):
        np.testing.assert_array_equal(ours.numpy(), theirs, err_msg=ours.path)
    np.testing.assert_allclose(model(probe()).numpy(), outputs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["simclr", "vicreg"])
def test_checkpoint_of_the_earlier_code_restores_every_value(name):
    model = BUILD[name]()
    model.compile()
    model.optimizer.build(model.trainable_variables)
    assert not np.array_equal(model.weights[0].numpy(), saved(name)[1][0])  # a fresh start, until restored
    checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
    # assert_consumed: every saved value found its variable, and every variable its value.
    checkpoint.read(os.path.join(DATA, f"{name}_ckpt")).assert_consumed()
    assert getattr(model, HEADS[name]) is model._head
    assert_same(model, name)


@pytest.mark.parametrize("name", ["simclr", "vicreg"])
def test_keras_file_of_the_earlier_code_loads_and_saves_alike(name, tmp_path):
    model = keras.saving.load_model(os.path.join(DATA, f"{name}.keras"))
    assert type(model) is type(BUILD[name]())
    assert getattr(model, HEADS[name]).name == HEADS[name]
    assert_same(model, name)
    # Today's save keeps the head under its attribute name, so the earlier code could read it too.
    path = str(tmp_path / f"{name}.keras")
    model.save(path)
    assert_same(keras.saving.load_model(path), name)
    with zipfile.ZipFile(path) as new, zipfile.ZipFile(os.path.join(DATA, f"{name}.keras")) as old:
        assert weight_paths(new) == weight_paths(old)


def weight_paths(archive) -> list:
    """The paths of the weights in a `.keras` file's model.weights.h5."""
    import h5py

    paths = []
    with h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r") as f:
        f.visititems(lambda path, item: paths.append(path) if isinstance(item, h5py.Dataset) else None)
    return sorted(paths)
