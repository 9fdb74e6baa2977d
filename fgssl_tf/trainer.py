"""Pretraining a pretext task end to end: data, strategy, checkpoints, logs, export.

`pretrain(...)` is what `python -m fgssl_tf.train` calls after parsing flags; it
takes dataclass configs so tests and notebooks can call it directly.

Resuming: the model, optimizer and epoch live in a `tf.train.Checkpoint` under
`model_dir/checkpoints` (TensorFlow writes the files, then the index, so a crash
mid-write leaves the previous checkpoint usable). Batches are a function of
(seed, epoch) and augmentation of (seed, step), so a resumed run continues with
exactly the data an uninterrupted one would have seen.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time

import keras
import numpy as np
import tensorflow as tf

from fgssl_tf import export as export_lib
from fgssl_tf.config import BackboneConfig, DataConfig, TrainConfig
from fgssl_tf.data import Splits, load_splits, pipeline
from fgssl_tf.distribute import is_chief, make_strategy
from fgssl_tf.errors import FgsslError
from fgssl_tf.monitor import Monitor, MonitorConfig
from fgssl_tf.pretext import get_pretext, resolve_backbone, with_pretext_defaults

log = logging.getLogger(__name__)

RUN_CONFIG_FILE = "run_config.json"
# Settings that must match to resume from a model_dir's checkpoint.
_RESUME_KEYS = ("pretext", "backbone", "image_size", "batch_size", "seed", "dataset")


@dataclasses.dataclass
class PretrainResult:
    model: keras.Model
    history: dict
    exports: dict  # encoder name -> export directory
    initial_epoch: int
    splits: Splits


def _summary(train: TrainConfig, data: DataConfig, backbone: BackboneConfig, pretext_config) -> dict:
    return {
        "pretext": train.pretext,
        "backbone": backbone.name,
        "image_size": data.image_size,
        "batch_size": train.batch_size,
        "seed": train.seed,
        "dataset": data.dataset,
        "train": dataclasses.asdict(train),
        "data": dataclasses.asdict(data),
        "backbone_config": dataclasses.asdict(backbone),
        "pretext_config": dataclasses.asdict(pretext_config),
    }


def _check_resumable(model_dir: str, summary: dict) -> None:
    path = os.path.join(model_dir, RUN_CONFIG_FILE)
    if not os.path.isfile(path):
        return
    with open(path) as f:
        previous = json.load(f)
    changed = [k for k in _RESUME_KEYS if previous.get(k) != summary[k]]
    if changed:
        details = ", ".join(f"{k}: {previous.get(k)!r} -> {summary[k]!r}" for k in changed)
        raise FgsslError(
            f"--model_dir={model_dir} holds a run with other settings ({details}); "
            "use a new --model_dir, or the same settings to resume"
        )


def build_pretext_model(train: TrainConfig, data: DataConfig, backbone: BackboneConfig, pretext_config=None) -> keras.Model:
    """The pretext model, compiled, with optimizer variables created (so restore is exact)."""
    module = get_pretext(train.pretext)
    keras.utils.set_random_seed(train.seed)
    model = module.build_model(with_pretext_defaults(train), data, backbone, pretext_config or module.Config())
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    return model


class _EpochCheckpoint(keras.callbacks.Callback):
    """Saves model, optimizer and the number of finished epochs at each epoch end."""

    def __init__(self, manager: tf.train.CheckpointManager, epoch: tf.Variable, write: bool):
        super().__init__()
        self.manager, self.epoch, self.write = manager, epoch, write

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.assign(epoch + 1)
        if self.write:
            self.manager.save(checkpoint_number=epoch + 1)


class _SummaryImages(keras.callbacks.Callback):
    """At the start of training: the pretext's pictures of its inputs (view pairs, puzzles) to TensorBoard."""

    def __init__(self, images: np.ndarray, log_dir: str, seed: int):
        super().__init__()
        self.images, self.log_dir, self.seed = images, log_dir, seed

    def on_train_begin(self, logs=None):
        if not hasattr(self.model, "summary_images"):
            return
        with tf.summary.create_file_writer(os.path.join(self.log_dir, "inputs")).as_default():
            for tag, grid in self.model.summary_images(self.images, self.seed).items():
                tf.summary.image(tag, grid[None], step=0)


class _EpochImages(keras.callbacks.Callback):
    """The pretext's pictures of its outputs (SRGAN: bicubic | SR | HR) at the start and after every epoch."""

    def __init__(self, images: np.ndarray, log_dir: str, initial_epoch: int):
        super().__init__()
        self.images, self.log_dir, self.initial_epoch = images, log_dir, initial_epoch

    def _write(self, step):
        with tf.summary.create_file_writer(os.path.join(self.log_dir, "outputs")).as_default():
            for tag, picture in self.model.epoch_images(self.images).items():
                tf.summary.image(tag, picture[None], step=step)

    def on_train_begin(self, logs=None):
        self._write(self.initial_epoch)

    def on_epoch_end(self, epoch, logs=None):
        self._write(epoch + 1)


def _monitor(model, splits: Splits, config: MonitorConfig, input_size: int, log_dir: str, seed: int, initial_epoch: int) -> Monitor:
    """The monitor on the pretext's first exportable encoder, over stratified subsets of train (bank) and val (queries)."""
    from fgssl_tf.data import label_fraction_subset

    def subset(name, limit):
        images, labels = splits.split(name)
        chosen = label_fraction_subset(labels, min(1.0, limit / max(len(labels), 1)), seed)
        return images[chosen], np.asarray(labels)[chosen]

    encoder = next(iter(model.exportable_encoders().values()))
    return Monitor(encoder, input_size, subset("train", config.max_bank_images), subset("val", config.max_query_images),
                   splits.num_classes, config, log_dir, seed, initial_epoch)


def default_export_name(train: TrainConfig, data: DataConfig, backbone: BackboneConfig, suffix: str = "") -> str:
    """<export_name>[_suffix], else <pretext>_<backbone>_<dataset>[_suffix]; a pretext with its
    own networks (SRGAN) gives <pretext>_<suffix>_<dataset>, e.g. srgan_generator_elpv."""
    dataset = data.dataset.split(":", 1)[0]
    if train.export_name:
        return f"{train.export_name}_{suffix}" if suffix else train.export_name
    if not getattr(get_pretext(train.pretext), "USES_BACKBONE", True):
        return "_".join(part for part in (train.pretext, suffix, dataset) if part)
    return "_".join(part for part in (train.pretext, backbone.name, dataset, suffix) if part)


def pretrain(
    train: TrainConfig,
    data: DataConfig,
    backbone: BackboneConfig | None = None,
    pretext_config=None,
    splits: Splits | None = None,
    monitor: MonitorConfig | None = None,
) -> PretrainResult:
    """Train `train.pretext` on `data`, resume from `train.model_dir` if it holds a checkpoint, export.
    `monitor` (every > 0) adds kNN, online linear probe and collapse signals during training."""
    backbone = backbone or BackboneConfig()
    train = with_pretext_defaults(train)
    module = get_pretext(train.pretext)
    pretext_config = pretext_config or module.Config()
    backbone = resolve_backbone(train.pretext, backbone, data, pretext_config)
    if train.epochs < 1 or train.batch_size < 2:
        raise FgsslError("--epochs must be at least 1 and --batch_size at least 2")
    supervised = getattr(module, "SUPERVISED", False)
    if supervised:  # a supervised "pretext" (PMG) sizes its heads from the labels
        splits = splits or load_splits(data)
        pretext_config = dataclasses.replace(pretext_config, num_classes=splits.num_classes)
    summary = _summary(train, data, backbone, pretext_config)
    _check_resumable(train.model_dir, summary)

    strategy = make_strategy(train.strategy)
    if train.batch_size % strategy.num_replicas_in_sync:
        raise FgsslError(
            f"--batch_size={train.batch_size} does not split evenly over {strategy.num_replicas_in_sync} replicas"
        )
    chief = is_chief(strategy)
    with strategy.scope():  # before the data: a setting the model refuses fails fast
        model = build_pretext_model(train, data, backbone, pretext_config)
    splits = splits or load_splits(data)
    if supervised:
        pool, pool_side = splits.split("train")
    else:  # pretext batches carry image ids, not labels: per-image tables are indexed by them
        pool = splits.pretraining_pool()
        pool_side = np.arange(len(pool))
    if len(pool) < train.batch_size:
        raise FgsslError(f"the pretraining pool has {len(pool)} images, fewer than --batch_size={train.batch_size}")
    steps = train.steps_per_epoch or len(pool) // train.batch_size

    epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
    checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer, epoch=epoch)
    manager = tf.train.CheckpointManager(
        checkpoint, os.path.join(train.model_dir, "checkpoints"), max_to_keep=train.checkpoints_to_keep
    )
    if manager.latest_checkpoint:
        checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        log.info("resumed from %s (epoch %d)", manager.latest_checkpoint, int(epoch.numpy()))
    initial_epoch = int(epoch.numpy())
    if chief:
        os.makedirs(train.model_dir, exist_ok=True)
        with open(os.path.join(train.model_dir, RUN_CONFIG_FILE), "w") as f:
            json.dump({**summary, "data_stats": splits.stats}, f, indent=2, default=str)

    history: dict = {}
    if initial_epoch < train.epochs:
        dataset = pipeline.epoch_batches(pool, pool_side, train.batch_size, train.seed, initial_epoch, train.epochs, steps)
        validation, val_images = None, None
        if train.validate and len(splits.val_images) >= train.batch_size:
            count = len(splits.val_images) // train.batch_size * train.batch_size
            val_images = splits.val_images[:count]
            val_side = splits.val_labels[:count] if supervised else np.arange(count)
            validation = pipeline.ordered_batches(val_images, val_side, train.batch_size)
        if hasattr(model, "prepare_data"):
            model.prepare_data(pool, val_images)
        log_dir = os.path.join(train.model_dir, "logs")
        # The pretext's schedule first, so the checkpoint holds the learning rate it set.
        callbacks = model.training_callbacks("val_loss" if validation is not None else "loss") if hasattr(model, "training_callbacks") else []
        callbacks.append(_EpochCheckpoint(manager, epoch, write=chief))
        if monitor is not None and monitor.every > 0 and chief:
            callbacks.append(_monitor(model, splits, monitor, getattr(model, "export_image_size", data.image_size), log_dir, train.seed, initial_epoch))
        callbacks.append(keras.callbacks.TensorBoard(log_dir=log_dir, update_freq="epoch"))
        if initial_epoch == 0 and chief:
            callbacks.append(_SummaryImages(pool[:8], log_dir, train.seed))
        if hasattr(model, "epoch_images") and chief:
            callbacks.append(_EpochImages(val_images[:4] if val_images is not None else pool[:4], log_dir, initial_epoch))
        started = time.time()
        fit = model.fit(
            dataset,
            epochs=train.epochs,
            initial_epoch=initial_epoch,
            steps_per_epoch=steps,
            validation_data=validation,
            callbacks=callbacks,
            verbose=train.verbose,
        )
        history = fit.history
        log.info("trained epochs %d..%d in %.1f s", initial_epoch + 1, train.epochs, time.time() - started)

    exports = {}
    if chief:
        export_size = getattr(model, "export_image_size", data.image_size)
        metadata = {
            "pretext": train.pretext,
            "backbone": dataclasses.asdict(backbone) if getattr(module, "USES_BACKBONE", True) else None,
            "epochs_trained": train.epochs,
            "seed": train.seed,
            "dataset": data.dataset,
            "split_fingerprint": splits.stats.get("split_fingerprint"),
            "run_config": summary,
        }
        for suffix, encoder in model.exportable_encoders().items():
            full_name = default_export_name(train, data, backbone, suffix)
            extras = model.export_extras(suffix) if hasattr(model, "export_extras") else None
            exports[full_name] = export_lib.export_encoder(
                encoder, train.export_dir, full_name, export_size, {**metadata, "encoder_part": suffix or None}, extras
            )
            log.info("exported %s to %s", full_name, exports[full_name])
        if hasattr(model, "predict_classes") and exports:  # a classifier (PMG): its own test report
            name = default_export_name(train, data, backbone)
            from fgssl_tf.evaluation import classifier_report

            model_root, version = os.path.split(exports[name])
            dataset_name = data.dataset.split(":", 1)[0]
            output_dir = os.path.join(model_root, "evaluations", f"v{version}-{dataset_name}-classifier-labels100")
            report = classifier_report(model.predict_classes, splits, data.dataset, data.image_size, f"{name} (trained classifier)", metadata, train.seed, output_dir)
            log.info("classifier report: %s/report.json", report["output_dir"])
    return PretrainResult(model, history, exports, initial_epoch, splits)
