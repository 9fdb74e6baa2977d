"""Gradient transforms that stay exact across replicas.

Inside a custom `train_step` each replica holds the gradient of its share of the
loss; the optimizer sums them over replicas afterwards. Keras applies
`global_clipnorm` before that sum (to each replica's part), which clips by the
wrong norm on several replicas, so clipping and coupled L2 are done here.
"""

from __future__ import annotations

import tensorflow as tf

from fgssl_tf.objectives import replica_info


def add_coupled_weight_decay(gradients, variables, weight_decay: float):
    """PyTorch-style `weight_decay` (L2 added to the gradient), split over replicas so the summed gradient gets it once."""
    if not weight_decay:
        return gradients
    _, replicas, _ = replica_info()
    return [g + (weight_decay / replicas) * v for g, v in zip(gradients, variables)]


def clip_by_global_norm_across_replicas(gradients, clip_norm: float):
    """Scale every replica's gradients by clip / max(clip, ||sum over replicas||), as
    `torch.nn.utils.clip_grad_norm_` does on one device. Returns (gradients, norm)."""
    context, replicas, _ = replica_info()
    total = gradients
    if replicas > 1:
        total = context.all_reduce(tf.distribute.ReduceOp.SUM, gradients)
    norm = tf.linalg.global_norm(total)
    scale = clip_norm / tf.maximum(norm, clip_norm)
    return [g * scale for g in gradients], norm
