"""The training run's Keras callbacks: checkpoints (also on SIGTERM / SIGINT), the non-finite
step watch, and the pretext's pictures to TensorBoard. `trainer.pretrain` installs them."""

from __future__ import annotations

import logging
import os
import signal

import keras
import numpy as np
import tensorflow as tf

from fgssl_tf.errors import FgsslError, Interrupted
from fgssl_tf.optim import nonfinite_steps

log = logging.getLogger(__name__)


class _StopSignal:
    """Records SIGTERM (what schedulers send before pre-empting) and SIGINT during training,
    so the batch in flight finishes and a checkpoint is written before the run exits."""

    SIGNALS = ("SIGTERM", "SIGINT")

    def __init__(self):
        self.received: str | None = None
        self._previous: dict = {}

    def __enter__(self):
        for name in self.SIGNALS:
            try:
                self._previous[name] = signal.signal(getattr(signal, name), self._handle)
            except ValueError:  # not the main thread: leave the signals alone
                pass
        return self

    def _handle(self, signum, frame):
        if self.received:  # a second signal: stop at once
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name
        log.warning("%s received: finishing this batch, saving a checkpoint, then stopping", self.received)

    def __exit__(self, *exc):
        for name, handler in self._previous.items():
            signal.signal(getattr(signal, name), handler)


class _Checkpointing(keras.callbacks.Callback):
    """Saves model, optimizer and position (epoch, batches done in it) at each epoch end,
    and in the middle of an epoch when the run is asked to stop (SIGTERM, SIGINT).

    Nothing is saved over a good checkpoint if a weight is NaN or Inf (batch-norm
    statistics can turn non-finite on a bad batch even where the guard refused its step).
    Checkpoints are numbered by batches trained, so mid-epoch ones sort in place.
    """

    def __init__(
        self,
        manager: tf.train.CheckpointManager,
        epoch: tf.Variable,
        step: tf.Variable,
        steps_per_epoch: int,
        first_step: int,
        write: bool,
        stop_signal: _StopSignal,
    ):
        super().__init__()
        self.manager, self.epoch, self.step, self.steps_per_epoch = manager, epoch, step, steps_per_epoch
        self.first_step, self.write, self.stop_signal = first_step, write, stop_signal
        self.current_epoch = 0

    def _save(self, epoch: int, step: int) -> str | None:
        self.epoch.assign(epoch)
        self.step.assign(step)
        if not self.write:
            return None
        bad = [v.path for v in self.model.variables if "float" in str(v.dtype) and not np.all(np.isfinite(v.numpy()))]
        if bad:
            raise FgsslError(
                f"after epoch {epoch} (batch {step}) {len(bad)} model variables hold NaN or Inf (e.g. {bad[0]}); "
                "nothing was saved over "
                f"the last good checkpoint {self.manager.latest_checkpoint}; re-run with --nan_policy=skip_batch to "
                "resume from it, or start over in a new --model_dir with a lower --learning_rate"
            )
        try:
            return self.manager.save(checkpoint_number=epoch * self.steps_per_epoch + step)
        except (
            OSError,
            tf.errors.OpError,
        ) as err:  # a full disk, a quota: the state file still names the last good one
            raise FgsslError(
                f"could not write a checkpoint after epoch {epoch} (batch {step}): {str(err).splitlines()[0][:200]}; "
                f"the last good checkpoint {self.manager.latest_checkpoint} is kept; "
                "free space and re-run to resume from it"
            ) from err

    def on_epoch_begin(self, epoch, logs=None):
        self.current_epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.stop_signal.received:
            step = self.first_step + batch + 1
            path = self._save(self.current_epoch, step)
            raise Interrupted(
                f"stopped by {self.stop_signal.received} {_position(self.current_epoch, step, self.steps_per_epoch)}; "
                f"saved {path}; re-run the same command to resume from there"
            )

    def on_epoch_end(self, epoch, logs=None):
        self.first_step = 0  # only a resumed partial epoch starts past batch 0
        self._save(epoch + 1, 0)


class _NonFiniteWatch(keras.callbacks.Callback):
    """Reads the guarded optimizers' count of refused (non-finite) steps after each batch.

    nan_policy "stop": the first one ends the run with the step named; the weights and
    the checkpoints hold only finite values, since the guard never applied that step.
    "skip_batch": the run goes on; the count is logged each epoch (and a whole epoch of
    refused steps still stops it: nothing is being learnt).
    """

    def __init__(self, policy: str, steps_per_epoch: int, first_step: int):
        super().__init__()
        self.policy, self.steps_per_epoch, self.first_step = policy, steps_per_epoch, first_step
        self.seen = self.bad_batches = self.current_epoch = 0

    def on_train_begin(self, logs=None):
        self.seen = nonfinite_steps(self.model)

    def on_epoch_begin(self, epoch, logs=None):
        self.current_epoch = epoch
        self.bad_batches = 0

    def on_train_batch_end(self, batch, logs=None):
        count = nonfinite_steps(self.model)  # refused updates: a pretext may make several per batch (PMG: 8)
        if count > self.seen:
            self.bad_batches += 1
            if self.policy == "stop":
                step = self.first_step + batch + 1
                raise FgsslError(
                    f"non-finite loss or gradients in epoch {self.current_epoch + 1}, batch {step} "
                    f"(step {self.current_epoch * self.steps_per_epoch + step}); "
                    "that step was not applied and the last good "
                    "checkpoint is kept; re-run with --nan_policy=skip_batch to resume skipping such batches, "
                    "or start over in a new --model_dir with a lower --learning_rate"
                )
        self.seen = count

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["skipped_nonfinite_steps"] = float(self.bad_batches)
        if self.bad_batches:
            log.warning("epoch %d: skipped %d batches with a non-finite loss or gradients", epoch + 1, self.bad_batches)
        if self.bad_batches and self.bad_batches >= self.steps_per_epoch - self.first_step:
            raise FgsslError(
                f"every batch of epoch {epoch + 1} had a non-finite loss or gradients; the run learns "
                "nothing; start over in a new --model_dir with a lower --learning_rate"
            )
        self.first_step = 0


class _SummaryImages(keras.callbacks.Callback):
    """At the start of training: the pretext's pictures of its inputs (view pairs, puzzles) to TensorBoard."""

    def __init__(self, images: np.ndarray, log_dir: str, seed: int):
        super().__init__()
        self.images, self.log_dir, self.seed = images, log_dir, seed

    def on_train_begin(self, logs=None):
        pictures = self.model.summary_images(self.images, self.seed)
        if not pictures:  # a pretext with none writes no log folder
            return
        with tf.summary.create_file_writer(os.path.join(self.log_dir, "inputs")).as_default():
            for tag, grid in pictures.items():
                tf.summary.image(tag, grid[None], step=0)


class _EpochImages(keras.callbacks.Callback):
    """The pretext's pictures of its outputs (SRGAN: bicubic | SR | HR) at the start and after every epoch."""

    def __init__(self, images: np.ndarray, log_dir: str, initial_epoch: int):
        super().__init__()
        self.images, self.log_dir, self.initial_epoch = images, log_dir, initial_epoch

    def _write(self, step):
        pictures = self.model.epoch_images(self.images)
        if not pictures:  # a pretext with none writes no log folder
            return
        with tf.summary.create_file_writer(os.path.join(self.log_dir, "outputs")).as_default():
            for tag, picture in pictures.items():
                tf.summary.image(tag, picture[None], step=step)

    def on_train_begin(self, logs=None):
        self._write(self.initial_epoch)

    def on_epoch_end(self, epoch, logs=None):
        self._write(epoch + 1)


def _position(epoch: int, step: int, steps: int) -> str:
    """Where a checkpoint was saved, worded the same when stopping and when resuming."""
    return f"in epoch {epoch + 1}, batch {step} of {steps}" if step else f"after epoch {epoch}"
