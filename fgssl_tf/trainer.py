"""Pretraining a pretext task end to end: data, strategy, checkpoints, logs, export.

`run(run_config)` is what `python -m fgssl_tf.train` calls with the `RunConfig` it resolved
once from the flags (`fgssl_tf.run_config`); it trains the run as given. `pretrain(...)` takes
the dataclass configs, resolves them and runs them, for tests and notebooks.

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
import re
import time

import keras
import numpy as np
import tensorflow as tf

from fgssl_tf import export as export_lib
from fgssl_tf.callbacks import (
    _Checkpointing,
    _EpochImages,
    _NonFiniteWatch,
    _position,
    _StopSignal,
    _SummaryImages,
)
from fgssl_tf.config import BackboneConfig, DataConfig, TrainConfig
from fgssl_tf.data import Splits, load_splits, pipeline
from fgssl_tf.distribute import check_workers_agree, is_chief, make_strategy, wait_for_workers
from fgssl_tf.errors import FgsslError
from fgssl_tf.monitor import Monitor, MonitorConfig
from fgssl_tf.optim import check_schedule, set_schedule_length
from fgssl_tf.pretext import pretext_spec
from fgssl_tf.run_config import RUN_CONFIG_FILE, SECTIONS, RunConfig, resolve_run

log = logging.getLogger(__name__)

MONITOR_FILE = "monitor.json"  # the monitor's readings, one entry each (epoch, step, train_seconds, signals)
MIXED_PRECISION_POLICIES = {"none": "float32", "bfloat16": "mixed_bfloat16"}
# The settings a resumed run may change, named as in run_config.json: they change how a run
# is run, watched or exported, not what it trains. Every other field of the saved configs
# (train, data, backbone, pretext, however many fields they grow) must match to resume.
# docs/reliability.md ("What a resumed run may change") lists the same, with the reasons.
RESUMABLE_CHANGES = {
    "train.epochs": "train on, or stop sooner (a cosine --lr_schedule then follows the new length's curve "
    "from the step it resumes at)",
    "train.verbose": "console output only",
    "train.model_dir": "the run's folder, moved or copied",
    "train.export": "whether the encoder is exported at the end",
    "train.export_dir": "where it is exported",
    "train.export_name": "under which name",
    "train.checkpoints_to_keep": "how many old checkpoints stay on disk",
    "train.nan_policy": "the NaN stop's own advice: resume with --nan_policy=skip_batch",
    "train.strategy": "the global batch, data order and augmentation do not depend on it, and automatic "
    "synchronized batch norm keeps the statistics over the global batch",
    "data.max_cache_gb": "a memory limit for the same images",
    "data.tfds_data_dir": "where the same TFDS data is kept",
}
# Filled in by the trainer from the data (a supervised pretext's class count): compared once the data is loaded.
_SET_FROM_DATA = ("pretext_config.num_classes",)


@dataclasses.dataclass
class PretrainResult:
    model: keras.Model
    history: dict
    exports: dict  # encoder name -> export directory
    initial_epoch: int
    splits: Splits


def _settings(summary: dict) -> dict:
    """The compared part of a run summary (`RunConfig.to_json()` or a saved run_config.json), flattened to
    {"section.field[.field]": value}, with values as JSON stores them (tuples are lists)."""
    flat = {}

    def walk(value, prefix):
        if isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{prefix}.{key}")
        else:
            flat[prefix] = value

    normalised = json.loads(json.dumps({k: summary.get(k) for k in SECTIONS}, default=str))
    for section, value in normalised.items():
        walk(value, section)
    return flat


def _default_settings(pretext_config) -> dict:
    """What each setting was before it existed: a run saved before a field was added trained as its default."""
    try:
        defaults = type(pretext_config)()
    except TypeError:  # a pretext config without defaults for every field
        defaults = pretext_config
    return _settings(RunConfig(TrainConfig(), DataConfig(), BackboneConfig(), defaults).to_json())


def _check_resumable(run: RunConfig, not_yet: tuple = ()) -> None:
    """Refuse to continue a model_dir's run with other settings: every saved setting must
    match, except RESUMABLE_CHANGES (and `not_yet`, settings still to be filled in)."""
    model_dir = run.train.model_dir
    path = os.path.join(model_dir, RUN_CONFIG_FILE)
    if not os.path.isfile(path):
        return
    try:  # the stored file as it is: a setting it lacks is told apart from one at its default
        with open(path) as f:
            previous = json.load(f)
        stored = _settings(previous)
    except (OSError, ValueError, AttributeError) as err:
        raise FgsslError(
            f"{path} cannot be read ({err}); it records the settings of the run in "
            f"--model_dir={model_dir}: restore it, or use a new --model_dir"
        ) from err
    new, defaults = _settings(run.to_json()), _default_settings(run.pretext)
    missing = object()
    changed = []
    for key in sorted(new):  # a setting only the stored run has no longer exists: nothing to compare it with
        if key in RESUMABLE_CHANGES or key in not_yet:
            continue
        before = stored.get(key, defaults.get(key, missing))
        if before != new[key]:
            changed.append(f"{key}: {'(not recorded)' if before is missing else repr(before)} -> {new[key]!r}")
    if changed:
        raise FgsslError(
            f"--model_dir={model_dir} holds a run with other settings ({'; '.join(changed)}); use a new --model_dir, "
            f"or the run's own settings to resume it (what may change: docs/reliability.md)"
        )


def _check_same_data(model_dir: str, stats: dict) -> None:
    """The same settings over other images (a folder that gained or lost files) is another run too:
    the split sizes and fingerprint saved with the run must match the data loaded now."""
    path = os.path.join(model_dir, RUN_CONFIG_FILE)
    if not os.path.isfile(path):
        return
    with open(path) as f:
        previous = json.load(f).get("data_stats") or {}
    changed = [
        f"{key}: {previous[key]!r} -> {stats.get(key)!r}"
        for key in ("split_sizes", "split_fingerprint")
        if key in previous and json.loads(json.dumps(stats.get(key))) != previous[key]
    ]
    if changed:
        raise FgsslError(
            f"--model_dir={model_dir} holds a run on other data ({'; '.join(changed)}); the dataset's "
            "files changed since it was trained: use a new --model_dir, or restore the data to resume it"
        )


def _check_writable_folder(path: str, flag: str) -> None:
    """Refuse, before any work, a folder that cannot be made or written (under a file, read-only)."""
    probe = os.path.abspath(path)
    while not os.path.lexists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise FgsslError(f"{flag}={path} cannot be made: {probe} is not a folder; choose another {flag}")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise FgsslError(
            f"{flag}={path} cannot be written: {probe} is not writable by this user; choose another {flag}"
        )


def build_model(run: RunConfig) -> keras.Model:
    """The pretext model of a resolved run (`resolve_run`), compiled, with optimizer variables created
    (so restore is exact)."""
    keras.utils.set_random_seed(run.train.seed)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(
        MIXED_PRECISION_POLICIES[run.train.mixed_precision]
    )  # layers keep the policy they are made with
    try:
        model = run.spec.build(run.train, run.data, run.backbone, run.pretext)
    finally:
        keras.config.set_dtype_policy(previous)
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    return model


def build_pretext_model(
    train: TrainConfig, data: DataConfig, backbone: BackboneConfig, pretext_config=None
) -> keras.Model:
    """The pretext model of these configs (resolved by `resolve_run`), as `build_model`."""
    return build_model(resolve_run(train, data, backbone, pretext_config))


def _write_data_stats(log_dir: str, stats: dict, step: int) -> None:
    """The data's counts (skipped unreadable files, dropped duplicates, split sizes) to TensorBoard `data/`."""
    with tf.summary.create_file_writer(os.path.join(log_dir, "data")).as_default():
        for key, value in stats.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                tf.summary.scalar(f"data/{key}", value, step=step)
        skipped = stats.get("skipped_paths") or []
        lines = [f"{stats.get('skipped_files', 0)} unreadable image files skipped"] + [f"- {p}" for p in skipped[:100]]
        tf.summary.text("data/skipped_paths", "\n".join(lines), step=step)


def _monitor(
    model, splits: Splits, config: MonitorConfig, input_size: int, log_dir: str, seed: int, initial_epoch: int
) -> Monitor:
    """The monitor on the pretext's first exportable encoder, over stratified subsets of train (bank)
    and val (queries)."""
    from fgssl_tf.data import stratified_at_most

    def subset(name, limit):
        images, labels = splits.split(name)
        chosen = stratified_at_most(labels, limit, seed)
        return images[chosen], np.asarray(labels)[chosen]

    encoder = next(iter(model.exportable_encoders().values()))
    return Monitor(
        encoder,
        input_size,
        subset("train", config.max_bank_images),
        subset("val", config.max_query_images),
        splits.num_classes,
        config,
        log_dir,
        seed,
        initial_epoch,
        history_path=os.path.join(os.path.dirname(log_dir), MONITOR_FILE),
    )


def _recover_checkpoint_state(directory: str) -> None:
    """Checkpoint files present but the `checkpoint` state file deleted, emptied or naming none
    of them: rebuild it from the files, so the run resumes instead of restarting from epoch 1
    and overwriting them."""
    if not os.path.isdir(directory):
        return
    found = [re.fullmatch(r"ckpt-(\d+)\.index", name) for name in os.listdir(directory)]
    numbers = sorted(int(match.group(1)) for match in found if match)
    if not numbers:
        return
    present = [f"ckpt-{n}" for n in numbers]
    try:
        state = tf.train.get_checkpoint_state(directory)
    except Exception:  # an empty or garbled state file: TensorFlow raises ValueError or a parse error
        state = None
    if state is not None and any(os.path.basename(p) in present for p in state.all_model_checkpoint_paths):
        return
    # The state file is a text proto; the manager forgets paths without a timestamp newer than last_preserved_timestamp.
    times = [os.path.getmtime(os.path.join(directory, f"{name}.index")) for name in present]
    lines = [f'model_checkpoint_path: "{present[-1]}"'] + [f'all_model_checkpoint_paths: "{name}"' for name in present]
    lines += [f"all_model_checkpoint_timestamps: {t!r}" for t in times]
    lines.append(f"last_preserved_timestamp: {min(times) - 1.0!r}")
    with open(os.path.join(directory, "checkpoint.recovered"), "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(os.path.join(directory, "checkpoint.recovered"), os.path.join(directory, "checkpoint"))
    log.warning(
        "the checkpoint state file %s was missing, empty or named no checkpoint present; rebuilt it from "
        "the %d checkpoint files there (newest %s)",
        os.path.join(directory, "checkpoint"),
        len(present),
        present[-1],
    )


def _restore_newest_readable(checkpoint: tf.train.Checkpoint, manager: tf.train.CheckpointManager) -> str | None:
    """Restore the newest checkpoint that reads back whole; an unreadable one (a torn
    write, a full disk) is reported and the one before it is used, so one bad file never
    costs the whole run. Returns the path restored (None: nothing to resume)."""
    error = None
    for path in reversed(manager.checkpoints):
        try:
            checkpoint.restore(path).assert_existing_objects_matched()
        except Exception as err:  # a torn file fails in the reader with IndexError, DataLossError, ...
            error = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
            log.warning("checkpoint %s is unreadable (%s); trying the one before it", path, error)
            continue
        return path
    if manager.checkpoints:
        raise FgsslError(
            f"no checkpoint under {manager.directory} could be read (last: {error}); "
            "move that folder away to start over"
        )
    return None


def _validation_data(splits: Splits, batch_size: int, replicas: int, supervised: bool):
    """(batches, images) of the validation split: full batches; a split smaller than one batch is
    validated as one smaller batch (a multiple of the replicas), said in the log; None if too small."""
    available = len(splits.val_images)
    if available >= batch_size:
        count, val_batch = available // batch_size * batch_size, batch_size
    else:
        count = val_batch = available // replicas * replicas
        if count < 2 * replicas:  # a contrastive or batch-norm loss needs two images a replica
            log.warning(
                "the validation split has %d images, too few to validate on %d replica(s): no validation loss "
                "this run (pass --novalidate to say so, or use a larger split)",
                available,
                replicas,
            )
            return None, None
        log.warning(
            "the validation split has %d images, fewer than --batch_size=%d: validating on one batch of %d",
            available,
            batch_size,
            count,
        )
    val_images = splits.val_images[:count]
    val_side = splits.val_labels[:count] if supervised else np.arange(count)
    return pipeline.ordered_batches(val_images, val_side, val_batch), val_images


def default_export_name(train: TrainConfig, data: DataConfig, backbone: BackboneConfig, suffix: str = "") -> str:
    """<export_name>[_suffix], else <pretext>_<backbone>_<dataset>[_suffix]; a pretext with its
    own networks (SRGAN) gives <pretext>_<suffix>_<dataset>, e.g. srgan_generator_elpv."""
    dataset = data.dataset.split(":", 1)[0]
    if train.export_name:
        return f"{train.export_name}_{suffix}" if suffix else train.export_name
    if not pretext_spec(train.pretext).uses_backbone:
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
    """Train `train.pretext` on `data`, resume from `train.model_dir` if it holds a checkpoint, export:
    `run(resolve_run(...))`. `monitor` (every > 0) adds kNN, online linear probe and collapse signals
    during training."""
    return run(resolve_run(train, data, backbone, pretext_config, monitor), splits)


def pretraining_inputs(run_config: RunConfig, splits: Splits) -> tuple[np.ndarray, np.ndarray]:
    """The images a run trains on and what each batch carries beside them: the training split and its labels
    for a supervised pretext (PMG), else the pretraining pool and image ids (per-image tables are indexed by
    them), cut from images cached at --source_size when views come from larger images."""
    if run_config.spec.supervised:
        return splits.split("train")
    data = run_config.data
    pool = splits.pretraining_pool()
    if data.source_size and data.source_size != data.image_size:
        pool = load_splits(dataclasses.replace(data, image_size=data.source_size)).pretraining_pool()
    return pool, np.arange(len(pool))


def with_classes_from(run_config: RunConfig, splits: Splits) -> RunConfig:
    """A supervised pretext (PMG) sizes its heads from the labels: the run with the data's number of classes."""
    if not run_config.spec.supervised:
        return run_config
    return dataclasses.replace(
        run_config, pretext=dataclasses.replace(run_config.pretext, num_classes=splits.num_classes)
    )


def run(run_config: RunConfig, splits: Splits | None = None) -> PretrainResult:
    """Train a resolved run (`resolve_run`) as it is given, resume from its model_dir if that holds a
    checkpoint, export. `splits`: the data already loaded (else loaded from `run_config.data`)."""
    strategy = make_strategy(
        run_config.train.strategy
    )  # first: a multi-worker cluster must be joined before TensorFlow's first op
    spec = run_config.spec
    supervised = spec.supervised
    # Before any work (before the data where possible): a model_dir holding another run, unwritable folders.
    _check_resumable(run_config, not_yet=_SET_FROM_DATA if supervised else ())
    _check_writable_folder(run_config.train.model_dir, "--model_dir")
    if run_config.train.export:
        _check_writable_folder(run_config.train.export_dir, "--export_dir")
    if supervised:  # a supervised "pretext" (PMG) sizes its heads from the labels
        splits = splits or load_splits(run_config.data)
        run_config = with_classes_from(run_config, splits)
        _check_resumable(run_config)
    train, data, backbone = run_config.train, run_config.data, run_config.backbone

    if train.batch_size % strategy.num_replicas_in_sync:
        raise FgsslError(
            f"--batch_size={train.batch_size} does not split evenly over {strategy.num_replicas_in_sync} replicas"
        )
    chief = is_chief(strategy)
    with strategy.scope():  # before the data: a setting the model refuses fails fast
        model = build_model(run_config)
    check_schedule(model, train)
    export_size = model.export_image_size or data.image_size  # the encoders' input size (SRGAN: its HR crop)
    splits = splits or load_splits(data)
    _check_same_data(train.model_dir, splits.stats)
    pool, pool_side = pretraining_inputs(run_config, splits)
    if len(pool) < train.batch_size:
        raise FgsslError(f"the pretraining pool has {len(pool)} images, fewer than --batch_size={train.batch_size}")
    steps = train.steps_per_epoch or len(pool) // train.batch_size
    set_schedule_length(model, steps, train.epochs)

    epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
    step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step_in_epoch")  # > 0: saved mid-epoch
    checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer, epoch=epoch, step_in_epoch=step)
    checkpoint_dir = os.path.join(train.model_dir, "checkpoints")
    _recover_checkpoint_state(checkpoint_dir)  # first: the manager reads the state file when made
    manager = tf.train.CheckpointManager(checkpoint, checkpoint_dir, max_to_keep=max(2, train.checkpoints_to_keep))
    restored = _restore_newest_readable(checkpoint, manager)
    initial_epoch, initial_step = int(epoch.numpy()), int(step.numpy())
    if restored:
        log.info("resumed from %s, saved %s", restored, _position(initial_epoch, initial_step, steps))
    if initial_step >= steps:  # stopped after an epoch's last batch, before its end: that epoch is done
        initial_epoch, initial_step = initial_epoch + 1, 0
    check_workers_agree(
        strategy, initial_epoch * steps + initial_step, "the batches already trained (the checkpoint to resume from)"
    )
    if chief:
        run_config.save(train.model_dir, data_stats=splits.stats)

    history: dict = {}
    if initial_epoch < train.epochs:
        validation, val_images = None, None
        if train.validate:
            replicas = strategy.num_replicas_in_sync
            validation, val_images = _validation_data(splits, train.batch_size, replicas, supervised)
        model.prepare_data(pool, val_images)
        log_dir = os.path.join(train.model_dir, "logs")
        if chief:
            _write_data_stats(log_dir, splits.stats, initial_epoch)
        stop_signal = _StopSignal()
        # The pretext's schedule first, so the checkpoint holds the learning rate it set.
        callbacks = list(model.training_callbacks("val_loss" if validation is not None else "loss"))
        callbacks.append(_NonFiniteWatch(train.nan_policy, steps, initial_step))
        callbacks.append(_Checkpointing(manager, epoch, step, steps, initial_step, chief, stop_signal))
        if run_config.monitor is not None and run_config.monitor.every > 0 and chief:
            callbacks.append(
                _monitor(model, splits, run_config.monitor, export_size, log_dir, train.seed, initial_epoch)
            )
        if chief:  # one writer per run: the other workers' logs would repeat the chief's
            callbacks.append(keras.callbacks.TensorBoard(log_dir=log_dir, update_freq="epoch"))
        if initial_epoch == 0 and initial_step == 0 and chief:
            callbacks.append(_SummaryImages(pool[:8], log_dir, train.seed))
        if chief:
            callbacks.append(
                _EpochImages(val_images[:4] if val_images is not None else pool[:4], log_dir, initial_epoch)
            )
        started = time.time()
        # A run stopped mid-epoch first finishes that epoch's remaining batches (the
        # batch order is a function of (seed, epoch), so skipping the done ones is exact).
        segments = [(initial_epoch, train.epochs, initial_step)]
        if initial_step:
            segments = [(initial_epoch, initial_epoch + 1, initial_step), (initial_epoch + 1, train.epochs, 0)]
        with stop_signal:
            for first, last, skip in segments:
                if first >= last:
                    continue
                dataset = pipeline.epoch_batches(
                    pool, pool_side, train.batch_size, train.seed, first, last, steps
                ).skip(skip)
                fit = model.fit(
                    dataset,
                    epochs=last,
                    initial_epoch=first,
                    steps_per_epoch=steps - skip,
                    validation_data=validation,
                    callbacks=callbacks,
                    verbose=train.verbose,
                )
                for key, values in fit.history.items():
                    history.setdefault(key, []).extend(values)
        log.info("trained epochs %d..%d in %.1f s", initial_epoch + 1, train.epochs, time.time() - started)

    exports = {}
    if chief and train.export:
        metadata = {
            "pretext": train.pretext,
            "backbone": dataclasses.asdict(backbone) if spec.uses_backbone else None,
            "epochs_trained": train.epochs,
            "seed": train.seed,
            "dataset": data.dataset,
            "split_fingerprint": splits.stats.get("split_fingerprint"),
            "run_config": run_config.to_json(),
        }
        for suffix, encoder in model.exportable_encoders().items():
            full_name = default_export_name(train, data, backbone, suffix)
            extras = model.export_extras(suffix) or None
            exports[full_name] = export_lib.export_encoder(
                encoder, train.export_dir, full_name, export_size, {**metadata, "encoder_part": suffix or None}, extras
            )
            log.info("exported %s to %s", full_name, exports[full_name])
        name = default_export_name(train, data, backbone)
        if name in exports:  # e.g. a classifier (PMG) writes its own test report beside its export
            model.after_export(name, exports[name], splits, data, metadata, train.seed)
    wait_for_workers(strategy)
    return PretrainResult(model, history, exports, initial_epoch, splits)
