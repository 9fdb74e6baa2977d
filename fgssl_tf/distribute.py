"""Choosing a tf.distribute strategy from a name."""

from __future__ import annotations

import tensorflow as tf

from fgssl_tf.errors import FgsslError

STRATEGIES = ("auto", "one_device", "mirrored", "multiworker")

# One instance per kind and process: two MirroredStrategy objects in one process
# hand out the same collective keys, and their all-reduces then collide.
_CREATED: dict = {}


def make_strategy(name: str = "auto") -> tf.distribute.Strategy:
    """auto: MirroredStrategy over the GPUs when there are several, else one device.

    `mirrored` without GPUs mirrors over the logical CPU devices (how the tests
    run two replicas on one machine). Repeated calls return the same strategy.
    """
    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        name = "mirrored" if len(gpus) > 1 else "one_device"
    if name not in STRATEGIES:
        raise FgsslError(f"unknown --strategy={name!r}; choose one of {', '.join(STRATEGIES)}")
    if name not in _CREATED:
        if name == "one_device":
            _CREATED[name] = tf.distribute.OneDeviceStrategy("/gpu:0" if gpus else "/cpu:0")
        elif name == "mirrored":
            devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
            _CREATED[name] = tf.distribute.MirroredStrategy(devices)
        else:
            _CREATED[name] = tf.distribute.MultiWorkerMirroredStrategy()
    return _CREATED[name]


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes checkpoints, logs and exports."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    return task_type in (None, "chief") or (task_type == "worker" and task_id == 0 and "chief" not in resolver.cluster_spec().as_dict())
