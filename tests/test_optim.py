"""The fused optimizers: Keras' Adam and SGD arithmetic in one TensorFlow kernel per variable."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from fgssl_tf.distribute import make_strategy
from fgssl_tf.optim import FusedAdam, FusedSGD, guard


def _train(make_optimizer, strategy=None, steps=5):
    """Weights of a small conv net after `steps` guarded updates on fixed data, the optimizer, and the op types
    of the traced step (its branches included)."""
    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = keras.Sequential(
            [
                keras.Input((8, 8, 3)),
                keras.layers.Conv2D(4, 3, activation="relu"),
                keras.layers.Flatten(),
                keras.layers.Dense(2),
            ]
        )
        optimizer = guard(make_optimizer())
        optimizer.build(model.trainable_variables)
    images = tf.random.stateless_normal([8, 8, 8, 3], seed=[1, 2])

    @tf.function
    def step(x):
        def replica_step(x):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(tf.square(model(x, training=True) - 1.0)) / 8.0
            optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)

        strategy.run(replica_step, (x,))

    dataset = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors(images))
    batch = next(iter(dataset))
    for _ in range(steps):
        step(batch)
    graph = step.get_concrete_function(batch).graph.as_graph_def()
    op_types = {n.op for n in graph.node} | {n.op for f in graph.library.function for n in f.node_def}
    return [v.numpy() for v in model.trainable_variables], optimizer, op_types


@pytest.mark.parametrize(
    "fused, stock, kernel, tolerance",
    [
        (
            lambda: FusedSGD(0.01, momentum=0.9),
            lambda: keras.optimizers.SGD(0.01, momentum=0.9),
            "ResourceApplyKerasMomentum",
            0.0,
        ),
        # Adam's kernel rounds 1 - beta in float32 where Keras rounds it from a double: float rounding apart.
        (lambda: FusedAdam(0.01), lambda: keras.optimizers.Adam(0.01), "ResourceApplyAdam", 1e-5),
    ],
    ids=["sgd", "adam"],
)
def test_fused_optimizers_update_like_keras(fused, stock, kernel, tolerance):
    expected, _, stock_ops = _train(stock)
    got, optimizer, fused_ops = _train(fused)
    assert kernel in fused_ops and kernel not in stock_ops  # the fused kernel runs, not Keras' ops
    moved = [np.abs(e - w).max() for e, w in zip(expected, _train(stock, steps=0)[0])]
    assert min(moved) > 1e-3  # every variable moved, so equality below means something
    for e, g in zip(expected, got):
        np.testing.assert_allclose(g, e, rtol=0, atol=tolerance)
    assert int(optimizer.iterations.numpy()) == 5


@pytest.mark.parametrize("make", [lambda: FusedAdam(0.01), lambda: FusedSGD(0.01, momentum=0.9)], ids=["adam", "sgd"])
def test_fused_optimizers_on_two_replicas_update_like_one(make):
    strategy = make_strategy("mirrored")  # the two logical CPUs of tests/conftest.py, one strategy per process
    one, _, _ = _train(make)
    two, _, _ = _train(make, strategy)
    for a, b in zip(one, two):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-5)


def test_a_keras_adam_checkpoint_restores_into_fused_adam(tmp_path):
    _, stock, _ = _train(lambda: keras.optimizers.Adam(0.01))
    tf.train.Checkpoint(optimizer=stock).write(str(tmp_path / "ckpt"))
    _, fused, _ = _train(lambda: FusedAdam(0.01), steps=0)
    tf.train.Checkpoint(optimizer=fused).read(str(tmp_path / "ckpt")).assert_existing_objects_matched()
    assert int(fused.iterations.numpy()) == 5
    for a, b in zip(stock.variables, fused.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
