"""Losses shared by the pretext tasks.

NT-Xent gathers the embeddings of every replica, so each anchor sees the
negatives of the whole global batch (not just its replica's), and the loss and
its gradients on R replicas equal those on one replica with the same batch.
"""

from __future__ import annotations

import tensorflow as tf

_MASKED = -1e9  # self-similarity logit; finite so the softmax stays NaN-free


def replica_info() -> tuple[tf.distribute.ReplicaContext | None, int, tf.Tensor]:
    """(context, number of replicas, this replica's index as an int32 tensor).

    In a cross-replica context (e.g. a callback inside `strategy.scope()`) the
    caller holds the whole batch: one replica.
    """
    context = tf.distribute.get_replica_context()
    if context is None:
        return None, 1, tf.constant(0, tf.int32)
    return context, context.num_replicas_in_sync, tf.cast(context.replica_id_in_sync_group, tf.int32)


def global_batch_position(local_batch: tf.Tensor) -> dict:
    """{offset, global_batch} of this replica's rows in the global batch (equal shares),
    the arguments of the batched random layers that draw for the global batch."""
    _, replicas, replica_id = replica_info()
    return {"offset": replica_id * local_batch, "global_batch": local_batch * replicas}


def cross_replica_concat(tensor: tf.Tensor) -> tf.Tensor:
    """Concatenate `tensor` over replicas along axis 0, in replica order; differentiable."""
    context, replicas, replica_id = replica_info()
    if replicas == 1:
        return tensor
    # all_reduce has a gradient (the all-reduced upstream gradient); all_gather's is less certain.
    scattered = tf.scatter_nd([[replica_id]], tensor[None], tf.concat([[replicas], tf.shape(tensor)], 0))
    summed = context.all_reduce(tf.distribute.ReduceOp.SUM, scattered)
    return tf.reshape(summed, tf.concat([[-1], tf.shape(tensor)[1:]], 0))


def nt_xent(z1: tf.Tensor, z2: tf.Tensor, temperature: float) -> tuple[tf.Tensor, tf.Tensor]:
    """NT-Xent for this replica's anchors against the global batch.

    z1, z2: [n, d] projections of the two views of the same n images.
    Returns (per-anchor losses [2n], per-anchor top-1 hits [2n]). The loss of the
    whole global batch of N pairs is the sum over all replicas divided by 2N.
    """
    z1 = tf.math.l2_normalize(tf.cast(z1, tf.float32), axis=1)
    z2 = tf.math.l2_normalize(tf.cast(z2, tf.float32), axis=1)
    _, replicas, replica_id = replica_info()
    local = tf.shape(z1)[0]
    keys = tf.concat([cross_replica_concat(z1), cross_replica_concat(z2)], axis=0)  # [2N, d]
    total = tf.shape(keys)[0] // 2
    anchors = tf.concat([z1, z2], axis=0)  # [2n, d]
    first = tf.range(local) + replica_id * local  # global index of each local image
    self_index = tf.concat([first, first + total], axis=0)
    positive = tf.concat([first + total, first], axis=0)
    logits = tf.matmul(anchors, keys, transpose_b=True) / temperature
    logits = logits + _MASKED * tf.one_hot(self_index, 2 * total)
    losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=positive, logits=logits)
    hits = tf.cast(tf.equal(tf.argmax(logits, axis=1, output_type=tf.int32), positive), tf.float32)
    return losses, hits


def nt_xent_mean(z1: tf.Tensor, z2: tf.Tensor, temperature: float) -> tf.Tensor:
    """Mean NT-Xent over all 2N anchors on one replica (the paper's formula, docs/paper_fidelity.md, "SimCLR")."""
    losses, _ = nt_xent(z1, z2, temperature)
    return tf.reduce_mean(losses)
