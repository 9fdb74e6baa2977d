"""NT-Xent against a NumPy reference, and across replicas."""

import numpy as np
import pytest
import tensorflow as tf
from conftest import replicated_loss_and_grads

from fgssl_tf.distribute import make_strategy
from fgssl_tf.objectives import nt_xent, nt_xent_mean


def numpy_nt_xent(z1, z2, temperature):
    """The paper's formula (docs/paper_fidelity.md, "SimCLR"), written the plain way."""
    z = np.concatenate([z1, z2]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    n = len(z1)
    sim = z @ z.T / temperature
    np.fill_diagonal(sim, -np.inf)
    log_softmax = sim - np.log(np.exp(sim).sum(axis=1, keepdims=True))
    positives = np.concatenate([np.arange(n, 2 * n), np.arange(n)])
    return -log_softmax[np.arange(2 * n), positives].mean()


@pytest.mark.parametrize("n,d,temperature", [(4, 8, 0.5), (16, 32, 0.1), (7, 5, 1.0)])
def test_nt_xent_matches_numpy(n, d, temperature):
    rng = np.random.RandomState(n)
    z1, z2 = rng.randn(n, d).astype(np.float32), rng.randn(n, d).astype(np.float32)
    ours = float(nt_xent_mean(tf.constant(z1), tf.constant(z2), temperature))
    assert ours == pytest.approx(numpy_nt_xent(z1, z2, temperature), rel=1e-5)


def test_nt_xent_identical_views_beat_random_views():
    rng = np.random.RandomState(0)
    z = rng.randn(32, 16).astype(np.float32)
    aligned = float(nt_xent_mean(z, z, 0.1))
    shuffled = float(nt_xent_mean(z, rng.permutation(z), 0.1))
    assert aligned < shuffled


def _replicated_loss_and_grads(strategy, z1, z2, temperature):
    """NT-Xent summed over replicas (each holds its slice), and the summed gradients."""

    def replica_loss(a, b):
        losses, _ = nt_xent(a, b, temperature)
        return tf.reduce_sum(losses) / (2 * len(z1))

    return replicated_loss_and_grads(strategy, replica_loss, z1, z2)


def test_two_replicas_equal_one_replica():
    rng = np.random.RandomState(1)
    z1, z2 = rng.randn(8, 6).astype(np.float32), rng.randn(8, 6).astype(np.float32)
    one = _replicated_loss_and_grads(make_strategy("one_device"), z1, z2, 0.5)
    two_replicas = make_strategy("mirrored")
    assert two_replicas.num_replicas_in_sync == 2
    two = _replicated_loss_and_grads(two_replicas, z1, z2, 0.5)
    assert two[0] == pytest.approx(one[0], rel=1e-6)
    assert two[0] == pytest.approx(numpy_nt_xent(z1, z2, 0.5), rel=1e-5)
    for g_two, g_one in zip(two[1], one[1]):
        np.testing.assert_allclose(g_two, g_one, rtol=1e-5, atol=1e-7)
