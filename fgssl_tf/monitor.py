"""Is pretraining learning anything? Cheap signals every few epochs, for every pretext.

On a bounded, stratified subset of the labelled training split (the memory bank)
and of the validation split (the queries), with the encoder in inference mode:
- kNN accuracy and balanced accuracy: cosine, k = 20, majority vote, as the SSL
  literature monitors it (balanced accuracy leads on imbalanced fine-grained data);
- an online linear probe: one dense layer kept for the whole run and trained at
  every monitor step for a few epochs on the encoder's current features (features
  are computed without gradients, so the encoder never sees the labels), its
  validation accuracy reported: SimCLR's `lineareval_while_pretraining` at epoch
  granularity;
- collapse signals: the standard deviation per dimension of L2-normalised embeddings,
  times sqrt(dimension) (about 1 for spread embeddings, 0 for a collapsed encoder,
  Chen & He 2021), and the effective rank of the embedding matrix (exp of the
  entropy of its normalised singular values, Roy & Vetterli 2007; RankMe).
The first values are taken before training (the random-init reference). All go to
TensorBoard (`logs/monitor`), the console, and `monitor.json` in the run's folder (one
entry per reading, with the optimizer step and the seconds of training so far), which
`tools/compare_runs.py` tabulates.
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
from sklearn.metrics import balanced_accuracy_score
from sklearn.neighbors import KNeighborsClassifier

from fgssl_tf.data import preprocess
from fgssl_tf.optim import FusedAdam

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class MonitorConfig:
    every: int = 0  # epochs between monitor steps; 0 = off (the training flag defaults to 1)
    max_bank_images: int = 1000  # labelled training images (memory bank, probe training)
    max_query_images: int = 500  # validation images
    k: int = 20
    probe_epochs: int = 10
    probe_learning_rate: float = 1e-2
    batch_size: int = 128


def embedding_stats(embeddings: np.ndarray) -> dict:
    """{'embedding_std': mean per-dimension std of L2-normalised rows x sqrt(d),
    'effective_rank': exp(H(sigma / |sigma|_1))}."""
    x = np.asarray(embeddings, np.float64).reshape(len(embeddings), -1)
    normalised = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    spread = float(normalised.std(axis=0).mean() * np.sqrt(x.shape[1]))
    singular = np.linalg.svd(x, compute_uv=False)
    p = singular / max(singular.sum(), 1e-12) + 1e-12
    return {"embedding_std": spread, "effective_rank": float(np.exp(-(p * np.log(p)).sum()))}


def knn_predict(bank, bank_labels, queries, k: int) -> np.ndarray:
    model = KNeighborsClassifier(n_neighbors=min(k, len(bank_labels)), metric="cosine")
    model.fit(bank, bank_labels)
    return model.predict(queries)


def knn_accuracy(bank, bank_labels, queries, query_labels, k: int) -> float:
    return float(np.mean(knn_predict(bank, bank_labels, queries, k) == query_labels))


def _scores(predictions, labels, prefix: str) -> dict:
    return {
        f"{prefix}_accuracy": float(np.mean(predictions == labels)),
        f"{prefix}_balanced_accuracy": float(balanced_accuracy_score(labels, predictions)),
    }


class LinearProbe:
    """One dense layer trained on frozen features, kept across monitor steps."""

    def __init__(self, num_classes: int, config: MonitorConfig, seed: int):
        self.config, self.seed = config, seed
        self.model = keras.Sequential([keras.layers.Dense(num_classes)])
        self.model.compile(
            FusedAdam(config.probe_learning_rate),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )

    def update(self, features, labels, val_features, val_labels) -> np.ndarray:
        # Standardised with the current bank's statistics: the encoder's scale drifts during training.
        mean, std = features.mean(axis=0), features.std(axis=0) + 1e-6
        order = np.random.RandomState(self.seed).permutation(len(labels))
        self.model.fit(
            (features[order] - mean) / std, labels[order], epochs=self.config.probe_epochs, batch_size=64, verbose=0
        )
        return np.argmax(self.model.predict((val_features - mean) / std, verbose=0), axis=1)


class Monitor(keras.callbacks.Callback):
    """Runs the signals before training and every `config.every` epochs; adds `monitor_*` to the epoch logs."""

    def __init__(
        self,
        encoder: keras.Model,
        input_size: int,
        bank,
        query,
        num_classes: int,
        config: MonitorConfig,
        log_dir: str,
        seed: int = 0,
        initial_epoch: int = 0,
        history_path: str | None = None,
    ):
        super().__init__()
        self.history_path = history_path
        self.train_seconds = 0.0  # training time so far (monitor time excluded), carried over a resume
        self._segment_start: float | None = None
        if history_path and os.path.isfile(history_path) and initial_epoch > 0:
            with open(history_path) as f:
                kept = [e for e in json.load(f) if e["epoch"] <= initial_epoch]
            self.history_from_before = kept
            self.train_seconds = kept[-1].get("train_seconds", 0.0) if kept else 0.0
        else:
            self.history_from_before = []
        self.encoder, self.input_size, self.config = encoder, input_size, config
        self.bank, self.query = bank, query  # (uint8 images, labels)
        self.probe = LinearProbe(num_classes, config, seed)
        self.writer = tf.summary.create_file_writer(os.path.join(log_dir, "monitor"))
        self.initial_epoch = initial_epoch
        self.history: list[dict] = []

        @tf.function
        def embed(batch):
            return self.encoder(preprocess(batch, self.input_size), training=False)

        self._embed = embed

    def _features(self, images):
        size = self.config.batch_size
        return np.concatenate(
            [
                self._embed(tf.constant(images[i : i + size])).numpy().reshape(min(size, len(images) - i), -1)
                for i in range(0, len(images), size)
            ]
        )

    def measure(self, epoch: int) -> dict:
        started = time.perf_counter()
        bank, queries = self._features(self.bank[0]), self._features(self.query[0])
        values = {
            **_scores(knn_predict(bank, self.bank[1], queries, self.config.k), self.query[1], "knn"),
            **_scores(self.probe.update(bank, self.bank[1], queries, self.query[1]), self.query[1], "linear_probe"),
            **embedding_stats(queries),
        }
        values["seconds"] = time.perf_counter() - started
        with self.writer.as_default():
            for name, value in values.items():
                tf.summary.scalar(name, value, step=epoch)
        self.writer.flush()
        log.info("monitor after epoch %d: %s", epoch, ", ".join(f"{k} {v:.4g}" for k, v in values.items()))
        model = getattr(self, "_model", None)  # the trained model, once Keras has set it
        step = int(model.optimizer.iterations.numpy()) if model is not None and model.optimizer is not None else 0
        self.history.append({"epoch": epoch, "step": step, "train_seconds": round(self.train_seconds, 1), **values})
        self._write_history()
        return values

    def _write_history(self) -> None:
        if not self.history_path:
            return
        temporary = self.history_path + ".tmp"
        with open(temporary, "w") as f:
            json.dump(self.history_from_before + self.history, f, indent=1)
        os.replace(temporary, self.history_path)  # never a half-written file

    def on_epoch_begin(self, epoch, logs=None):
        self._segment_start = time.perf_counter()

    def on_train_begin(self, logs=None):
        if self.initial_epoch == 0:
            self.measure(0)  # the random-init reference

    def on_epoch_end(self, epoch, logs=None):
        if self._segment_start is not None:
            self.train_seconds += time.perf_counter() - self._segment_start
        last = self.params.get("epochs") if isinstance(getattr(self, "params", None), dict) else None
        if (epoch + 1) % self.config.every == 0 or epoch + 1 == last:  # the last epoch is always read
            values = self.measure(epoch + 1)
            if logs is not None:
                logs.update({f"monitor_{name}": value for name, value in values.items()})
