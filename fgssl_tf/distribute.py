"""Choosing a tf.distribute strategy from a name."""

from __future__ import annotations

import json
import os

import tensorflow as tf

from fgssl_tf.config import STRATEGIES
from fgssl_tf.errors import FgsslError

# One instance per kind and process: two MirroredStrategy objects in one process
# hand out the same collective keys, and their all-reduces then collide.
_CREATED: dict = {}


def _patch_keras_for_multiworker() -> None:
    """Two Keras 3 faults make `fit` fail under MultiWorkerMirroredStrategy
    (keras-team/keras#20585, still open in Keras 3.15): before the first step it
    averages a batch of uint8 images over workers to learn shapes, and after each
    step it reduces the scalar logs over axis 0. Here the shapes come from this
    worker's first replica, and scalars are averaged over replicas without an axis.
    Only multi-worker runs are touched; other strategies take Keras' own path."""
    from keras import tree
    from keras.src.backend.tensorflow import trainer as tf_trainer

    if getattr(tf_trainer, "_fgssl_multiworker_patch", False):
        return
    original_build = tf_trainer.TensorFlowTrainer._maybe_symbolic_build
    original_reduce = tf_trainer.reduce_per_replica

    def maybe_symbolic_build(self, iterator=None, data_batch=None):
        strategy = self._distribute_strategy
        if iterator is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            return original_build(self, iterator, data_batch)
        for _, _, it in iterator:  # consumes one batch, as Keras' own does
            batch = next(it)
            data_batch = tree.map_structure(
                lambda x: (
                    strategy.experimental_local_results(x)[0] if isinstance(x, tf.distribute.DistributedValues) else x
                ),
                batch,
            )
            break
        return original_build(self, None, data_batch)

    def reduce_per_replica(values, strategy, reduction):
        if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and reduction in ("auto", "mean"):

            def mean(v):
                if (
                    getattr(v, "shape", None) is not None and v.shape.rank == 0
                ):  # a DistributedValues, or one replica's tensor
                    return strategy.reduce("MEAN", v, axis=None)
                return original_reduce(v, strategy, reduction)

            return tree.map_structure(mean, values)
        return original_reduce(values, strategy, reduction)

    tf_trainer.TensorFlowTrainer._maybe_symbolic_build = maybe_symbolic_build
    tf_trainer.reduce_per_replica = reduce_per_replica
    tf_trainer._fgssl_multiworker_patch = True


def _multiworker() -> tf.distribute.Strategy:
    """MultiWorkerMirroredStrategy from TF_CONFIG; it must exist before TensorFlow's first op."""
    raw = os.environ.get("TF_CONFIG", "")
    try:
        config = json.loads(raw) if raw else {}
    except json.JSONDecodeError as err:
        raise FgsslError(f"TF_CONFIG is not valid JSON ({err}); see README 'Several machines'") from err
    workers = config.get("cluster", {})
    task = config.get("task", {})
    if not workers or "type" not in task or "index" not in task:
        raise FgsslError(
            "--strategy=multiworker needs TF_CONFIG with a cluster and this process's task, e.g. "
            '\'{"cluster": {"worker": ["host1:2222", "host2:2222"]}, "task": {"type": "worker", "index": 0}}\'; '
            "see README 'Several machines'"
        )
    _patch_keras_for_multiworker()
    try:
        return tf.distribute.MultiWorkerMirroredStrategy()
    except RuntimeError as err:
        if "startup" not in str(err):
            raise
        raise FgsslError(
            "the multiworker strategy must be created before TensorFlow runs its first op; "
            "call fgssl_tf.distribute.make_strategy('multiworker') at the start of the program"
        ) from err


def make_strategy(name: str = "auto") -> tf.distribute.Strategy:
    """auto: MirroredStrategy over the GPUs when there are several, else one device.

    `mirrored` without GPUs mirrors over the logical CPU devices (how the tests
    run two replicas on one machine). `multiworker` reads the cluster from TF_CONFIG
    (each worker mirrors over its own GPUs, or its CPU). Repeated calls return the same strategy.
    """
    if name not in STRATEGIES:
        raise FgsslError(f"unknown --strategy={name!r}; choose one of {', '.join(STRATEGIES)}")
    if name == "multiworker":  # before list_logical_devices below, which starts the runtime
        if name not in _CREATED:
            _CREATED[name] = _multiworker()
        return _CREATED[name]
    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        name = "mirrored" if len(gpus) > 1 else "one_device"
    if name not in _CREATED:
        if name == "one_device":
            _CREATED[name] = tf.distribute.OneDeviceStrategy("/gpu:0" if gpus else "/cpu:0")
        else:
            devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
            _CREATED[name] = tf.distribute.MirroredStrategy(devices)
    return _CREATED[name]


def worker_index(strategy: tf.distribute.Strategy) -> tuple[str | None, int]:
    """(task type, task id) of this process; (None, 0) outside a multi-worker cluster."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return None, 0
    return resolver.task_type, int(resolver.task_id or 0)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes checkpoints, logs and exports: the `chief` task, or
    worker 0 of a cluster without one."""
    task_type, task_id = worker_index(strategy)
    if task_type is None:
        return True
    has_chief = "chief" in strategy.cluster_resolver.cluster_spec().as_dict()
    return task_type == "chief" or (task_type == "worker" and task_id == 0 and not has_chief)


def _gather_from_workers(strategy: tf.distribute.Strategy, value: int) -> list[int]:
    """`value` from every replica of the cluster (a collective: every worker must call it)."""

    def local():
        return tf.constant([value], tf.int64)

    @tf.function
    def gather():
        return strategy.gather(strategy.run(local), axis=0)

    return gather().numpy().tolist()


def check_workers_agree(strategy: tf.distribute.Strategy, value: int, what: str) -> None:
    """Raise unless every worker of a multi-worker cluster holds the same `value`: workers
    that resume from different checkpoints (a --model_dir that is not one shared folder)
    would otherwise wait on each other's all-reduces until they time out."""
    task_type, task_id = worker_index(strategy)
    if task_type is None:
        return
    values = _gather_from_workers(strategy, value)
    low, high = min(values), max(values)
    if low != high:
        raise FgsslError(
            f"the workers disagree on {what} (this one, {task_type} {task_id}: {value}; others from {low} to {high}); "
            "every worker must see the same --model_dir: put it on a filesystem they share (NFS, GCS)"
        )


def wait_for_workers(strategy: tf.distribute.Strategy) -> None:
    """A barrier: no worker leaves before the chief has written its exports (a worker that
    exits early makes the cluster's health check report the chief's peers as crashed)."""
    if worker_index(strategy)[0] is not None:
        _gather_from_workers(strategy, 0)
