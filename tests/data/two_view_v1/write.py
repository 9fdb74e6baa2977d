"""Writes the saved SimCLR and VICReg models that tests/test_two_view_compat.py restores.

Run with the fgssl_tf whose files are to be kept readable on PYTHONPATH (these were written by
commit a3da343, before the two-view methods shared their head code):

    PYTHONPATH=<checkout> python tests/data/two_view_v1/write.py tests/data/two_view_v1

Each model (default head, small config, a tiny Keras encoder) trains one step, then is saved as a
trainer checkpoint (tf.train.Checkpoint(model=, optimizer=)), as a `.keras` file, and its weights
and outputs on fixed images as `<name>.npz`.
"""

import os
import sys

import keras
import numpy as np
import tensorflow as tf

import fgssl_tf
from fgssl_tf.pretext.simclr import SimCLRConfig
from fgssl_tf.pretext.vicreg import VICRegConfig

SIZE = 16


def encoder():
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(4, 3, strides=2, padding="same", activation="relu", name="conv")(inputs)
    return keras.Model(inputs, keras.layers.GlobalAveragePooling2D(name="pool")(x), name="tiny_encoder")


def models():
    return {
        "simclr": fgssl_tf.SimCLR(encoder(), config=SimCLRConfig(projection_dim=8, hidden_dim=8), name="simclr"),
        "vicreg": fgssl_tf.VICReg(encoder(), config=VICRegConfig(expander_dim=8), name="vicreg"),
    }


def images(count=8, seed=0):
    return np.random.RandomState(seed).randint(0, 256, (count, SIZE, SIZE, 3)).astype(np.uint8)


def main(out_dir):
    keras.utils.set_random_seed(0)
    probe = tf.image.convert_image_dtype(images(4, seed=1), tf.float32)
    for name, model in models().items():
        model.compile()
        model.fit(tf.data.Dataset.from_tensors(images()), epochs=1, verbose=0)
        tf.train.Checkpoint(model=model, optimizer=model.optimizer).write(os.path.join(out_dir, f"{name}_ckpt"))
        model.save(os.path.join(out_dir, f"{name}.keras"))
        weights = {f"w{i}": w.numpy() for i, w in enumerate(model.weights)}
        np.savez(os.path.join(out_dir, f"{name}.npz"), outputs=model(probe).numpy(), **weights)


if __name__ == "__main__":
    main(sys.argv[1])
