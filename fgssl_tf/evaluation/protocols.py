"""The evaluation protocols. Each trains on `train`, selects on `val`, predicts `test`.

- linear: frozen features, a logistic regression; L2 strength chosen on val.
- knn: frozen L2-normalised features, cosine k-NN; k chosen on val.
  With class_weights="inverse", the logistic loss and the neighbours' votes weigh each class by
  N / (K n_c), so a rare class counts as much as a common one (what balanced accuracy asks for).
- finetune: the encoder (all of it, its stages from `trainable_from` on, or none
  of it) plus a head (linear, or one given: the SRGAN paper's), trained end to
  end; the epoch with the best val score is kept. The head is always trained
  (the paper's Jigsaw fine-tune froze it by mistake, its SRGAN heads too).
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import tensorflow as tf
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from fgssl_tf.errors import FgsslError
from fgssl_tf.evaluation.metrics import classification_metrics
from fgssl_tf.optim import FusedAdam

LINEAR_C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0)
KNN_K_GRID = (1, 5, 10, 20, 50)


@dataclasses.dataclass
class ProtocolResult:
    test_predictions: np.ndarray
    val_score: float
    selected: dict
    classifier: object = None  # finetune: a keras.Model on [0, 1] images; linear: the sklearn pipeline


def _score(metric: str, y_true, y_pred, num_classes: int) -> float:
    return classification_metrics(y_true, y_pred, num_classes)[metric]


def linear_probe(
    train, val, test, num_classes: int, seed: int, metric: str, class_weights: str = "none"
) -> ProtocolResult:
    """train/val/test: (features, labels)."""
    weights = inverse_class_weights(train[1], num_classes) if class_weights == "inverse" else None
    best = None
    for c in LINEAR_C_GRID:
        # lbfgs (sklearn's default, named because cache.py relies on it) uses no randomness: random_state
        # only matters to the sag, saga and liblinear solvers.
        logistic = LogisticRegression(C=c, max_iter=2000, solver="lbfgs", random_state=seed, class_weight=weights)
        model = make_pipeline(StandardScaler(), logistic)
        model.fit(*train)
        score = _score(metric, val[1], model.predict(val[0]), num_classes)
        if best is None or score > best[0]:
            best = (score, c, model)
    score, c, model = best
    return ProtocolResult(model.predict(test[0]), score, {"C": c}, classifier=model)


def knn(train, val, test, num_classes: int, seed: int, metric: str, class_weights: str = "none") -> ProtocolResult:
    def normalise(x):
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    weights = inverse_class_weights(train[1], num_classes) if class_weights == "inverse" else None

    def predict(model, features):
        if weights is None:
            return model.predict(normalise(features))
        votes = model.predict_proba(normalise(features))  # distance-weighted vote shares, per model.classes_
        return model.classes_[np.argmax(votes * np.array([weights[c] for c in model.classes_]), axis=1)]

    best = None
    for k in KNN_K_GRID:
        if k > len(train[1]):
            break
        model = KNeighborsClassifier(n_neighbors=k, metric="cosine", weights="distance")
        model.fit(normalise(train[0]), train[1])
        score = _score(metric, val[1], predict(model, val[0]), num_classes)
        if best is None or score > best[0]:
            best = (score, k, model)
    score, k, model = best
    return ProtocolResult(predict(model, test[0]), score, {"k": k})


def encoder_stages(encoder: keras.Model) -> list[str]:
    """Stage names in order, from layer names `<stage>_...` (ResNet: stem, block1..block4)."""
    stages: list[str] = []
    for layer in encoder.layers:
        stage = layer.name.split("_", 1)[0]
        if layer.weights and stage not in stages:
            stages.append(stage)
    return stages


def freeze_before(encoder: keras.Model, trainable_from: str) -> None:
    """Freeze every stage before `trainable_from` ('all' trains everything, 'none' nothing).

    A frozen Keras BatchNormalization runs in inference mode (its statistics stay
    put); PyTorch's frozen BN in train() mode still updated them (docs/paper_fidelity.md, "Jigsaw").
    """
    if trainable_from == "all":
        return
    if trainable_from == "none":
        encoder.trainable = False
        return
    stages = encoder_stages(encoder)
    if trainable_from not in stages:
        raise FgsslError(
            f"--trainable_from={trainable_from!r} is not a stage of this encoder; "
            f"choose all, none or one of {', '.join(stages)}"
        )
    first = stages.index(trainable_from)
    for layer in encoder.layers:
        if layer.weights:
            layer.trainable = stages.index(layer.name.split("_", 1)[0]) >= first


def inverse_class_weights(labels: np.ndarray, num_classes: int) -> dict:
    """{class: N / (K n_c)}: every class carries the same total weight; absent classes get 0."""
    counts = np.bincount(labels, minlength=num_classes)
    return {c: float(len(labels) / (num_classes * n)) if n else 0.0 for c, n in enumerate(counts)}


class _KeepBest(keras.callbacks.Callback):
    """Scores val after each epoch and restores the best epoch's weights at the end. With `score_start`,
    the weights before the first step are a candidate too (epoch 0): a fitted head's starting point."""

    def __init__(self, predict_val, val_labels, num_classes, metric, score_start=False):
        super().__init__()
        self.predict_val, self.val_labels = predict_val, val_labels
        self.num_classes, self.metric, self.score_start = num_classes, metric, score_start
        # best_epoch is Keras' 0-based epoch; -1 is the start (reported as epoch 0 = best_epoch + 1).
        self.best_score, self.best_epoch, self.best_weights = -1.0, -1, None

    def on_train_begin(self, logs=None):
        if self.score_start:
            self.on_epoch_end(-1)

    def on_epoch_end(self, epoch, logs=None):
        score = _score(self.metric, self.val_labels, self.predict_val(), self.num_classes)
        if logs is not None:
            logs[f"val_{self.metric}"] = score
        if score > self.best_score:
            self.best_score, self.best_epoch = score, epoch
            self.best_weights = self.model.get_weights()

    def on_train_end(self, logs=None):
        if self.best_weights is not None:
            self.model.set_weights(self.best_weights)


def _signature(model: keras.Model) -> list:
    return [(type(layer).__name__, layer.trainable) for layer in model._flatten_layers()] + [
        (tuple(v.shape), v.dtype, v.trainable) for v in model.variables
    ]


def _compiled_twin(model: keras.Model, learning_rate: float, compiled: dict | None) -> keras.Model:
    """The model to train: `model` compiled, or the same architecture compiled for an earlier
    seed, given `model`'s every variable (weights, BN statistics, random-flip and dropout seed
    states) and its optimizer's starting state. Same values through the same graph: the same
    training as a fresh model, without tracing the train step again (seconds per seed on CPU)."""
    if compiled and compiled["signature"] == _signature(model):
        twin = compiled["model"]
        for variable, value in zip(twin.variables, model.variables):
            variable.assign(value)
        for variable, value in zip(twin.optimizer.variables, compiled["optimizer_start"]):
            variable.assign(value)
        return twin
    model.compile(
        optimizer=FusedAdam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.optimizer.build(model.trainable_variables)  # what fit would build: zero moments, step 0
    if compiled is not None:
        compiled.update(
            model=model,
            signature=_signature(model),
            optimizer_start=[np.array(v.numpy()) for v in model.optimizer.variables],
        )
    return model


FINETUNE_AUGMENTATIONS = ("flip", "strong")


def finetune_augmentation(name: str, seed: int) -> list[keras.layers.Layer]:
    """Layers that change [0, 1] training images while fine-tuning (they pass images through at inference).
    flip: a horizontal flip, the protocol's default. strong: flips both ways, a small rotation, zoom and
    shift with reflected borders, brightness and contrast; for data whose labels do not depend on
    orientation (cells, leaves, tissue), what fine-tuning small labelled sets usually needs."""
    if name == "flip":
        return [keras.layers.RandomFlip("horizontal", seed=seed, name="flip")]
    if name == "strong":
        return [
            keras.layers.RandomFlip("horizontal_and_vertical", seed=seed, name="flip"),
            keras.layers.RandomRotation(0.05, seed=seed + 1, name="rotate"),  # +-18 degrees
            keras.layers.RandomZoom((-0.2, 0.0), seed=seed + 2, name="zoom"),  # up to 20% closer
            keras.layers.RandomTranslation(0.1, 0.1, seed=seed + 3, name="shift"),
            keras.layers.RandomBrightness(0.2, value_range=(0.0, 1.0), seed=seed + 4, name="brightness"),
            keras.layers.RandomContrast(0.2, value_range=(0.0, 1.0), seed=seed + 5, name="contrast"),
        ]
    raise FgsslError(f"unknown --finetune_augment={name!r}; choose one of {', '.join(FINETUNE_AUGMENTATIONS)}")


def finetune(
    encoder: keras.Model,
    preprocess,
    train,
    val,
    test,
    num_classes: int,
    seed: int,
    metric: str,
    epochs: int,
    learning_rate: float,
    batch_size: int,
    trainable_from: str = "all",
    head: keras.layers.Layer | None = None,
    class_weights: str = "none",
    compiled: dict | None = None,
    augment: str = "flip",
    head_init: str = "random",
) -> ProtocolResult:
    """train/val/test: (uint8 images, labels). `preprocess` maps uint8 batches to encoder input.
    `head` maps encoder output to logits (default: one dense layer); `class_weights`
    'inverse' weighs each class by N / (K n_c) in the loss (the paper's SRGAN
    weights were proportional to n_c by mistake, bug S3 of docs/paper_fidelity.md,
    "SRGAN"). `augment`: see `finetune_augmentation`; `head_init`: see `fit_head_on_frozen_features`.
    `compiled`: a dict the caller keeps across the seeds of one evaluation, so the train and predict steps
    are traced once, not once per seed (see `_compiled_twin`)."""
    keras.utils.set_random_seed(seed)
    freeze_before(encoder, trainable_from)
    inputs = keras.Input(shape=train[0].shape[1:], dtype="uint8", name="images")
    x = keras.layers.Lambda(preprocess, name="preprocess")(inputs)
    for layer in finetune_augmentation(augment, seed):
        x = layer(x)
    head = head or keras.layers.Dense(num_classes, name="classifier")
    logits = head(encoder(x))
    model = keras.Model(inputs, logits)
    if head_init == "linear_probe":
        fit_head_on_frozen_features(head, encoder, preprocess, train, val, num_classes, seed, metric, batch_size)
    trained = _compiled_twin(model, learning_rate, compiled)

    def predict(images):
        return np.argmax(trained.predict(images, batch_size=batch_size, verbose=0), axis=1)

    keep_best = _KeepBest(lambda: predict(val[0]), val[1], num_classes, metric, score_start=head_init != "random")
    order = np.random.RandomState(seed).permutation(len(train[1]))
    dataset = tf.data.Dataset.from_tensor_slices((train[0][order], train[1][order]))
    dataset = dataset.shuffle(len(order), seed=seed).batch(batch_size).prefetch(tf.data.AUTOTUNE)
    trained.fit(
        dataset,
        epochs=epochs,
        callbacks=[keep_best],
        class_weight=inverse_class_weights(train[1], num_classes) if class_weights == "inverse" else None,
        verbose=0,
    )
    if trained is not model:  # the best epoch's weights back into this seed's own layers
        for variable, value in zip(model.variables, trained.variables):
            variable.assign(value)
    classifier = keras.Model(
        encoder.inputs, head(encoder.outputs[0]), name="classifier"
    )  # [0, 1] images in, logits out
    if compiled is not None and compiled["model"] is model:  # later seeds train these layers: keep a copy
        detached = keras.models.clone_model(classifier, recursive=True)
        detached.set_weights(classifier.get_weights())
        classifier = detached
    return ProtocolResult(
        predict(test[0]), keep_best.best_score, {"epoch": keep_best.best_epoch + 1}, classifier=classifier
    )


def _folded_linear(pipeline) -> tuple[np.ndarray, np.ndarray]:
    """A fitted StandardScaler + LogisticRegression as one dense layer's kernel [features, classes] and bias:
    logits = W ((f - mean) / scale) + b = (W / scale) f + (b - W mean / scale)."""
    scaler, logistic = pipeline[0], pipeline[-1]
    coef = logistic.coef_ / scaler.scale_
    bias = logistic.intercept_ - coef @ scaler.mean_
    if coef.shape[0] == 1:  # binary: sklearn keeps one row; logits (0, z) give the same argmax and softmax
        coef, bias = np.concatenate([np.zeros_like(coef), coef]), np.concatenate([[0.0], bias])
    return coef.T.astype(np.float32), bias.astype(np.float32)


HEAD_INITS = ("random", "linear_probe")


def keras_features(encoder: keras.Model, images: np.ndarray, prepare, batch_size: int) -> np.ndarray:
    """The frozen encoder's embeddings of uint8 `images`, `prepare` mapping a batch to its input."""

    @tf.function
    def embed(batch):
        return encoder(prepare(batch), training=False)  # BN statistics untouched

    return np.concatenate(
        [embed(tf.constant(images[i : i + batch_size])).numpy() for i in range(0, len(images), batch_size)]
    )


def fit_head_on_frozen_features(head, encoder, preprocess, train, val, num_classes, seed, metric, batch_size):
    """LP-FT (Kumar et al., ICLR 2022): the dense head starts as the linear probe of the frozen encoder
    (`linear_probe`, its C chosen on val), fitted on the same labelled images, before the whole network
    trains. A random head's first gradients are noise that fine-tuning spends the encoder's features
    on; with few labels that is most of the run. Selection on val then also weighs the fitted probe
    itself, before any step (reported as epoch 0), so fine-tuning is kept only where it helps on val.
    The probe is fitted without class weights even under --class_weights=inverse (which then weighs the
    fine-tuning loss only), unlike --protocol=linear, which weighs it."""
    train_features, val_features = (keras_features(encoder, x, preprocess, batch_size) for x, _ in (train, val))
    fitted = linear_probe(
        (train_features, train[1]), (val_features, val[1]), (val_features, val[1]), num_classes, seed, metric
    )
    kernel, bias = _folded_linear(fitted.classifier)
    if kernel.shape[1] != num_classes:  # classes missing from a small label subset
        full_kernel = np.zeros((kernel.shape[0], num_classes), np.float32)
        full_bias = np.full(num_classes, -1e3, np.float32)  # never predicted, as the probe never does
        classes = fitted.classifier[-1].classes_
        full_kernel[:, classes], full_bias[classes] = kernel, bias
        kernel, bias = full_kernel, full_bias
    head.set_weights([kernel, bias])


def linear_probe_as_keras(encoder: keras.Model, pipeline) -> keras.Model:
    """The fitted StandardScaler + LogisticRegression folded into one dense layer on the encoder."""
    kernel, bias = _folded_linear(pipeline)
    dense = keras.layers.Dense(kernel.shape[1], name="classifier")
    outputs = dense(encoder.outputs[0])
    dense.set_weights([kernel, bias])
    return keras.Model(encoder.inputs, outputs, name="classifier")
