"""The public Python API (docs/python_api.md): every registered pretext built on a custom Keras
encoder (or what its design takes), trained on real elpv images, saved and reloaded as `.keras`,
and exported; and the tutorial's code, run as written."""

import os
import re

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO

import fgssl_tf
from fgssl_tf.export import ServingEncoder, export_encoder, preprocess
from fgssl_tf.pretext import PRETEXTS, pretext_spec
from fgssl_tf.pretext.base import PretextModel
from fgssl_tf.pretext.jigsaw import JigsawConfig
from fgssl_tf.pretext.pmg import PMGConfig
from fgssl_tf.pretext.simclr import SimCLRConfig
from fgssl_tf.pretext.srgan import SRGANConfig
from fgssl_tf.pretext.vicreg import VICRegConfig

SIZE = 32


def small_encoder(size=None, name="custom_encoder"):
    """A plain Keras encoder, nothing of the package's ResNet."""
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu")(x)
    return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x), name=name)


def stage_features():
    inputs = keras.Input((SIZE, SIZE, 3))
    a = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(inputs)
    b = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(a)
    c = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(b)
    return keras.Model(inputs, [a, b, c], name="custom_stages")


# compile() arguments other than the default: Jigsaw's SGD learns too slowly for a dozen steps.
COMPILE = {"jigsaw": lambda: {"optimizer": keras.optimizers.Adam(1e-2)}}
EPOCHS = {"jigsaw": 20}  # of 2 steps; 8 for the others
# Every registered pretext through the public names: a pretext added to the registry without one here fails.
PUBLIC = {
    "simclr": lambda classes: fgssl_tf.SimCLR(
        small_encoder(SIZE), config=SimCLRConfig(projection_dim=16, hidden_dim=16, temperature=0.2)
    ),
    "vicreg": lambda classes: fgssl_tf.VICReg(
        small_encoder(SIZE), projection_head=keras.layers.Dense(16), config=VICRegConfig(expander_dim=16)
    ),
    "jigsaw": lambda classes: fgssl_tf.Jigsaw(
        small_encoder(), SIZE, config=JigsawConfig(num_permutations=4, dropout=0.0)
    ),
    "srgan": lambda classes: fgssl_tf.SRGAN(
        config=SRGANConfig(
            stage="gan",
            scale=2,
            hr_size=16,
            residual_blocks=1,
            width=8,
            discriminator_width=8,
            discriminator_dense=16,
            perceptual_weights="none",
        )
    ),
    "pmg": lambda classes: fgssl_tf.PMG(
        stage_features(), num_classes=classes, config=PMGConfig(feature_size=8, head_channels=8)
    ),
}


def test_every_registered_pretext_has_a_public_class():
    assert set(PUBLIC) == set(PRETEXTS)
    from fgssl_tf.pretext import PUBLIC_MODELS, pretext_spec
    from fgssl_tf.pretext.base import PretextModel

    # The public names come from the registry alone: one line there makes `from fgssl_tf import X` work.
    assert sorted(PUBLIC_MODELS.values()) == sorted(PRETEXTS)
    assert set(PUBLIC_MODELS) <= set(fgssl_tf.__all__)
    for public, name in PUBLIC_MODELS.items():
        model_class = getattr(fgssl_tf, public)
        assert model_class is pretext_spec(name).model_class and issubclass(model_class, PretextModel)
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        fgssl_tf.Nope  # noqa: B018


@pytest.mark.parametrize("name", PRETEXTS)
def test_public_api_trains_saves_reloads_exports(name, elpv_small, tmp_path):
    keras.utils.set_random_seed(0)
    images, labels = elpv_small.split("train")
    images, labels = images[:32], np.asarray(labels[:32])
    model = PUBLIC[name](elpv_small.num_classes)
    assert isinstance(model, PretextModel)
    model.compile(**COMPILE.get(name, dict)())
    parts = (images, labels) if pretext_spec(name).supervised else images
    dataset = tf.data.Dataset.from_tensor_slices(parts).batch(16).repeat()
    history = model.fit(dataset, epochs=EPOCHS.get(name, 8), steps_per_epoch=2, verbose=0).history["loss"]
    assert np.all(np.isfinite(history)) and np.mean(history[-2:]) < np.mean(history[:2]), history

    path = str(tmp_path / f"{name}.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)
    assert type(reloaded) is type(model)
    assert len(reloaded.weights) == len(model.weights)
    for saved, loaded in zip(model.weights, reloaded.weights):
        np.testing.assert_array_equal(saved.numpy(), loaded.numpy(), err_msg=saved.path)
    steps = int(model.optimizer.iterations.numpy())  # PMG's heads take 4 steps a batch
    assert steps >= 16 and int(reloaded.optimizer.iterations.numpy()) == steps

    size = model.export_image_size or SIZE
    probe = preprocess(tf.constant(images[:4]), size)  # what the export does to its uint8 input
    encoders, reloaded_encoders = model.exportable_encoders(), reloaded.exportable_encoders()
    assert set(encoders) == set(reloaded_encoders) and encoders
    for suffix, encoder in encoders.items():
        np.testing.assert_allclose(reloaded_encoders[suffix](probe), encoder(probe), atol=1e-6)
        version = export_encoder(
            reloaded_encoders[suffix],
            str(tmp_path / "savedmodels"),
            f"{name}_{suffix}" if suffix else name,
            size,
            {"pretext": name},
            reloaded.export_extras(suffix) or None,
        )
        served = ServingEncoder(version)(images[:3])
        np.testing.assert_allclose(served, encoder(probe[:3]), rtol=1e-4, atol=1e-4)
        for filename in reloaded.export_extras(suffix):
            assert os.path.isfile(os.path.join(version, filename))
    reloaded.fit(dataset, epochs=1, steps_per_epoch=1, verbose=0)  # it trains on after reloading
    assert int(reloaded.optimizer.iterations.numpy()) > steps


def _tutorial_blocks() -> list[str]:
    with open(os.path.join(REPO, "docs", "python_api.md")) as f:
        return re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)


def test_tutorial_code_runs(tmp_path, monkeypatch):
    """docs/python_api.md's code blocks, in order, in one namespace, as a reader would run them."""
    blocks = _tutorial_blocks()
    assert len(blocks) >= 5
    monkeypatch.chdir(tmp_path)
    keras.utils.set_random_seed(0)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "docs/python_api.md", "exec"), namespace)
    assert np.all(np.isfinite(namespace["history"].history["loss"]))
    assert namespace["embeddings"].shape == (4, 32)
    assert int(namespace["reloaded"].optimizer.iterations.numpy()) == 6  # 2 epochs of 2 steps, then 2 more
    for pretext in ("vicreg", "jigsaw", "srgan", "pmg"):
        assert int(namespace[pretext].optimizer.iterations.numpy()) >= 2
