"""Jigsaw puzzles (Noroozi & Favaro 2016) as the paper ran them (docs/paper_fidelity.md, "Jigsaw").

An image is centre-cropped, cut into a 3x3 grid of tiles, each tile randomly
cropped (the gap stops the network from matching edges) and brightness-jittered,
and the tiles are shuffled by one of N fixed permutations; the network names
which. One shared encoder embeds all nine tiles in one batched call, the nine
feature vectors are concatenated in slot order, and a linear classifier over the
N permutations follows.

Paper sizes: 256 px images, 225 px puzzle, 75 px tiles, 64 px tile crops, so
`puzzle_fraction` = 225/256 and `tile_crop_fraction` = 64/75 scale to any image size.

Differences from the paper's code, on purpose (codes of docs/paper_fidelity.md, "Jigsaw"):
- J1: dropout runs only in training (the paper's `F.dropout` was on at eval too);
- J6: the permutation set is seeded and saved beside the checkpoints; `maxhamming`
  is the greedy max-min Hamming selection the paper's README cites (its code drew
  random fully-different pairs, kept here as `paper`). Label ids follow the order
  of selection, not the paper's Python `set` order;
- gradient clipping uses the norm of the gradient summed over replicas;
- one epoch is one pass with a fresh permutation per image, instead of the
  paper's 10 copies of the data each tied to a block of 10 permutations.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os

import keras
import numpy as np
import tensorflow as tf

from fgssl_tf.augment import VALIDATION_STREAM, step_seed
from fgssl_tf.config import BackboneConfig, DataConfig, TrainConfig
from fgssl_tf.data import preprocess
from fgssl_tf.distribute import is_chief
from fgssl_tf.errors import FgsslError
from fgssl_tf.grid import join_grid, split_grid
from fgssl_tf.models import build_resnet
from fgssl_tf.objectives import global_batch_position
from fgssl_tf.optim import FiniteMean, FusedSGD, add_coupled_weight_decay, clip_by_global_norm_across_replicas, guard
from fgssl_tf.pretext.base import PretextModel, PretextSpec, config_from_dict, config_to_dict, deserialize_parts
from fgssl_tf.pretext.settings import FlagSpec

log = logging.getLogger(__name__)

GRID = 3
TILES = GRID * GRID
PERMUTATION_METHODS = ("maxhamming", "paper")
PERMUTATION_FILE = "jigsaw_permutations.json"
MIN_TILE_CROP = 8  # pixels; below this a tile holds too little to recognise
DEFAULT_LEARNING_RATE = 1e-2  # SGD, as the paper
DEFAULT_WEIGHT_DECAY = 5e-4


@dataclasses.dataclass(frozen=True)
class JigsawConfig:
    permutations: str = "maxhamming"  # maxhamming | paper
    num_permutations: int = 100
    puzzle_fraction: float = 225 / 256  # centre crop of the image that is cut into tiles
    tile_crop_fraction: float = 64 / 75  # random crop inside each tile
    brightness: float = 0.5  # per-tile brightness factor in [1 - b, 1 + b]
    normalize_tiles: bool = False  # per-tile, per-channel mean/std (off in the paper)
    dropout: float = 0.5
    pool_grid: int = 2  # AdaptiveAvgPool2d((2, 2)) after the last stage, as the paper
    momentum: float = 0.9
    clip_norm: float = 4.0  # global gradient norm
    plateau_patience: int = 2  # ReduceLROnPlateau on the validation loss
    plateau_factor: float = 0.1
    min_learning_rate: float = 1e-5


FLAGS = (
    FlagSpec(
        "jigsaw_permutations",
        "permutations",
        "enum",
        "maxhamming",
        "Permutation set: greedy max-min Hamming, or the paper's random fully-different pairs.",
        choices=("maxhamming", "paper"),
    ),
    FlagSpec(
        "jigsaw_num_permutations",
        "num_permutations",
        "integer",
        100,
        "Number of permutations (classes); the paper used 100.",
        lower_bound=2,
        upper_bound=362879,
    ),
    FlagSpec(
        "jigsaw_brightness",
        "brightness",
        "float",
        0.5,
        "Per-tile brightness factor drawn from [1-b, 1+b].",
        lower_bound=0.0,
        upper_bound=1.0,
    ),
    FlagSpec(
        "jigsaw_normalize_tiles",
        "normalize_tiles",
        "boolean",
        False,
        "Normalise each tile to zero mean, unit variance per channel (off in the paper).",
    ),
    FlagSpec(
        "jigsaw_dropout",
        "dropout",
        "float",
        0.5,
        "Dropout before the permutation classifier (training only).",
        lower_bound=0.0,
        upper_bound=0.99,
    ),
    FlagSpec(
        "jigsaw_pool_grid",
        "pool_grid",
        "integer",
        2,
        "Average-pool the last stage to a g x g grid (the paper: 2); 1 = global pooling.",
        lower_bound=1,
        upper_bound=8,
    ),
    FlagSpec("clip_norm", "clip_norm", "float", 4.0, "Global gradient-norm clipping (jigsaw).", lower_bound=1e-6),
    FlagSpec(
        "plateau_patience",
        "plateau_patience",
        "integer",
        2,
        "Epochs without improvement before the learning rate drops 10x (jigsaw).",
        lower_bound=1,
    ),
)


# --- permutation sets -------------------------------------------------------------


def all_permutations(n: int = TILES) -> np.ndarray:
    """Every permutation of range(n), lexicographic: row 0 is the identity."""
    return np.array(list(itertools.permutations(range(n))), dtype=np.int8)


def hamming_distances(permutations: np.ndarray) -> np.ndarray:
    """[N, N] number of positions where two permutations differ."""
    return (permutations[:, None, :] != permutations[None, :, :]).sum(-1)


def permutation_stats(permutations: np.ndarray) -> dict:
    distances = hamming_distances(permutations)[np.triu_indices(len(permutations), 1)]
    return {"min_hamming": int(distances.min()), "mean_hamming": float(distances.mean())}


def maxhamming_permutations(count: int, seed: int) -> np.ndarray:
    """Greedy max-min Hamming selection (Noroozi & Favaro): start from a random
    permutation, then repeatedly add the one farthest from the set (largest minimum
    distance; ties to the largest total distance, then at random). Identity excluded."""
    candidates = all_permutations()
    rng = np.random.RandomState(seed)
    min_distance = np.full(len(candidates), TILES + 1, np.int64)
    total_distance = np.zeros(len(candidates), np.int64)
    available = np.ones(len(candidates), bool)
    available[0] = False  # the identity: an unshuffled puzzle
    chosen = [rng.randint(1, len(candidates))]
    while True:
        available[chosen[-1]] = False
        distance = (candidates != candidates[chosen[-1]]).sum(1)
        np.minimum(min_distance, distance, out=min_distance)
        total_distance += distance
        if len(chosen) == count:
            return candidates[chosen]
        score = np.where(available, min_distance * (TILES * count + 1) + total_distance, -1)
        best = np.flatnonzero(score == score.max())
        chosen.append(int(best[rng.randint(len(best))]))


def paper_permutations(count: int, seed: int) -> np.ndarray:
    """The paper's procedure (docs/paper_fidelity.md, "Jigsaw", J6), seeded: draw two random non-identity
    permutations; keep both if they differ in all 9 positions and neither is taken."""
    if count % 2:
        raise FgsslError(
            f"--jigsaw_permutations=paper adds permutations in pairs: --jigsaw_num_permutations={count} must be even"
        )
    candidates = all_permutations()
    rng = np.random.RandomState(seed)
    chosen: list[int] = []
    while len(chosen) < count:
        x, y = rng.randint(1, len(candidates), size=2)
        if x != y and x not in chosen and y not in chosen and np.all(candidates[x] != candidates[y]):
            chosen += [int(x), int(y)]
    return candidates[chosen]


def make_permutations(method: str, count: int, seed: int) -> np.ndarray:
    if method not in PERMUTATION_METHODS:
        raise FgsslError(f"unknown --jigsaw_permutations={method!r}; choose one of {', '.join(PERMUTATION_METHODS)}")
    if not 2 <= count < len(all_permutations()):
        raise FgsslError(f"--jigsaw_num_permutations={count} must be between 2 and 9! - 1")
    return (maxhamming_permutations if method == "maxhamming" else paper_permutations)(count, seed)


def load_or_create_permutations(model_dir: str, method: str, count: int, seed: int, write: bool = True) -> np.ndarray:
    """The run's permutation set: read from model_dir if a run saved one (resume), else made and saved."""
    path = os.path.join(model_dir, PERMUTATION_FILE)
    if os.path.isfile(path):
        with open(path) as f:
            saved = json.load(f)
        if (saved["method"], saved["count"]) != (method, count):
            raise FgsslError(
                f"{path} holds {saved['count']} '{saved['method']}' permutations, but this run asks for "
                f"{count} '{method}'; use a new --model_dir, or the same settings to resume"
            )
        permutations = np.array(saved["permutations"], np.int8)
        log.info("jigsaw permutations reloaded from %s", path)
    else:
        permutations = make_permutations(method, count, seed)
        if write:
            os.makedirs(model_dir, exist_ok=True)
            record = {"method": method, "count": count, "seed": seed, **permutation_stats(permutations)}
            with open(path + ".tmp", "w") as f:
                json.dump({**record, "permutations": permutations.tolist()}, f)
            os.replace(path + ".tmp", path)
    stats = permutation_stats(permutations)
    log.info(
        "jigsaw: %d '%s' permutations, min Hamming %d, mean %.2f",
        count,
        method,
        stats["min_hamming"],
        stats["mean_hamming"],
    )
    return permutations


# --- puzzles ----------------------------------------------------------------------


def puzzle_geometry(image_size: int, config: JigsawConfig) -> tuple[int, int]:
    """(tile, tile crop) in pixels for images of image_size."""
    tile = int(round(image_size * config.puzzle_fraction)) // GRID
    crop = int(round(tile * config.tile_crop_fraction))
    if crop < MIN_TILE_CROP or crop > tile:
        raise FgsslError(
            f"--image_size={image_size} gives {tile} px tiles and {crop} px tile crops; the Jigsaw pretext needs "
            f"tile crops of at least {MIN_TILE_CROP} px: use --image_size of at least "
            f"{int(np.ceil(GRID * MIN_TILE_CROP / config.tile_crop_fraction / config.puzzle_fraction))}"
        )
    return tile, crop


def cut_tiles(images: tf.Tensor, tile: int) -> tf.Tensor:
    """[B, S, S, C] -> the centre 3x3 grid of tiles, row-major: [B, 9, tile, tile, C]."""
    top = (images.shape[1] - GRID * tile) // 2
    return split_grid(images, GRID, tile, top, top)


def assemble_tiles(tiles: tf.Tensor, gap: int = 0, fill: float = 1.0) -> tf.Tensor:
    """[B, 9, t, t, C] -> [B, 3t + 2 gap, 3t + 2 gap, C], slot order row-major."""
    return join_grid(tiles, GRID, gap, fill)


def shuffle_tiles(tiles: tf.Tensor, permutations: tf.Tensor) -> tf.Tensor:
    """Tile i goes to slot perm[i] (the paper's convention); permutations: [B, 9]."""
    inverse = tf.argsort(permutations, axis=-1)  # slot s holds tile inverse[s]
    return tf.gather(tiles, inverse, axis=1, batch_dims=1)


def unshuffle_tiles(shuffled: tf.Tensor, permutations: tf.Tensor) -> tf.Tensor:
    """The inverse of shuffle_tiles: tile i is read back from slot perm[i]."""
    return tf.gather(shuffled, permutations, axis=1, batch_dims=1)


@keras.saving.register_keras_serializable(package="fgssl_tf")
class JigsawPuzzle(keras.layers.Layer):
    """uint8 or float images [B, S, S, C] -> (shuffled tiles [B, 9, c, c, C] float, permutation index [B]).

    call(images, seed, offset=0, global_batch=None): random numbers are drawn for
    the global batch and sliced at `offset`, so a puzzle does not depend on the
    number of replicas (as SimCLRAugmentation).
    """

    def __init__(self, image_size: int, permutations, config: JigsawConfig | None = None, **kwargs):
        super().__init__(**kwargs)
        self.image_size = image_size
        self.config = config or JigsawConfig()
        self.permutations = np.asarray(permutations, np.int32)
        self.tile, self.crop = puzzle_geometry(image_size, self.config)

    def call(self, images, seed, offset=0, global_batch=None):
        x = preprocess(images, self.image_size) if images.dtype == tf.uint8 else images
        local = tf.shape(x)[0]
        global_batch = local if global_batch is None else global_batch
        seeds = tf.unstack(tf.random.experimental.stateless_split(seed, num=4))
        count = len(self.permutations)

        def draw(seed, shape, **kwargs):
            return tf.random.stateless_uniform(shape, seed=seed, **kwargs)[offset : offset + local]

        labels = draw(seeds[0], [global_batch], minval=0, maxval=count, dtype=tf.int32)
        corners = draw(seeds[1], [global_batch, TILES, 2], minval=0, maxval=self.tile - self.crop + 1, dtype=tf.int32)
        brightness = draw(
            seeds[2],
            [global_batch, TILES, 1, 1, 1],
            minval=1.0 - self.config.brightness,
            maxval=1.0 + self.config.brightness,
        )

        tiles = cut_tiles(x, self.tile)
        span = tf.range(self.crop)
        rows = corners[..., 0:1] + span  # [B, 9, crop]
        cols = corners[..., 1:2] + span
        tiles = tf.gather(tiles, rows, axis=2, batch_dims=2)
        tiles = tf.gather(tiles, cols, axis=3, batch_dims=2)
        tiles = tf.clip_by_value(tiles * brightness, 0.0, 1.0)
        if self.config.normalize_tiles:
            mean, variance = tf.nn.moments(tiles, axes=[2, 3], keepdims=True)
            tiles = (tiles - mean) / tf.sqrt(variance + 1e-6)
        return shuffle_tiles(tiles, tf.gather(tf.constant(self.permutations), labels)), labels

    def get_config(self):
        return {
            **super().get_config(),
            "image_size": self.image_size,
            "permutations": self.permutations.tolist(),
            "config": dataclasses.asdict(self.config),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["config"] = JigsawConfig(**config["config"])
        return cls(**config)


# --- model ------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="fgssl_tf")
class JigsawModel(PretextModel):
    """Shuffled tiles -> shared encoder (9 tiles in one call) -> concat -> dropout -> N-way classifier.

    `fgssl_tf.Jigsaw(encoder, image_size, permutations=None, config=JigsawConfig(), seed=0,
    weight_decay=0.0)`: `encoder` is any Keras model from [0, 1] tiles to features [B, D]; it sees
    tile crops, not images (`puzzle_geometry(image_size, config)` gives their side, e.g. 17 px of
    64 px images), so it must take that size. `image_size` is the side of the images in the
    batches. `permutations` (default: `config.num_permutations` made by `config.permutations`,
    seeded) are the classes. `compile()` uses SGD at 1e-2 with momentum, non-finite steps skipped;
    `training_callbacks('loss')` gives the paper's ReduceLROnPlateau.
    """

    def __init__(
        self,
        encoder: keras.Model,
        image_size: int,
        permutations=None,
        config: JigsawConfig | None = None,
        seed: int = 0,
        weight_decay: float = 0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        config = JigsawConfig() if config is None else config
        if permutations is None:
            permutations = make_permutations(config.permutations, config.num_permutations, seed)
        self.encoder = encoder
        self.image_size = image_size
        self.jigsaw_config = config
        self.seed = seed
        self.weight_decay = weight_decay
        self.puzzle = JigsawPuzzle(
            image_size, permutations, config, name="puzzle", dtype="float32"
        )  # image ops in float32 under mixed precision
        self.dropout = keras.layers.Dropout(config.dropout, name="dropout")
        self.classifier = keras.layers.Dense(len(permutations), name="permutation_classifier")
        self.classifier.build((None, TILES * encoder.output_shape[-1]))
        # Weightless layers marked built, so Keras never traces `call` on raw images to build them.
        self.puzzle.built = self.dropout.built = self.built = True
        self.loss_tracker = FiniteMean(name="loss")
        self.accuracy_tracker = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
        self.gradient_norm_tracker = FiniteMean(name="gradient_norm")

    @property
    def metrics(self):
        return [self.loss_tracker, self.accuracy_tracker, self.gradient_norm_tracker]

    def benchmark_inputs(self, batch: int, size: int) -> tuple:
        """Fixed tiles and labels in place of the puzzles made on the device."""
        crop = self.puzzle.crop
        tiles = tf.random.uniform([batch, 9, crop, crop, 3])
        labels = tf.zeros([batch], tf.int32)
        self.puzzles = lambda images, *args, **kwargs: (tiles, labels)
        return (lambda x: self(x, training=False)), [batch, 9, crop, crop, 3], (None,)

    def exportable_encoders(self) -> dict:
        return {"": self.encoder}

    def default_optimizer(self):
        return guard(FusedSGD(DEFAULT_LEARNING_RATE, momentum=self.jigsaw_config.momentum))

    def get_config(self):
        return {
            "name": self.name,
            "encoder": keras.saving.serialize_keras_object(self.encoder),
            "image_size": self.image_size,
            "permutations": self.puzzle.permutations.tolist(),
            "config": config_to_dict(self.jigsaw_config),
            "seed": self.seed,
            "weight_decay": self.weight_decay,
        }

    @classmethod
    def from_config(cls, config):
        config = deserialize_parts(config, ("encoder",))
        return cls(**{**config, "config": config_from_dict(JigsawConfig, config["config"])})

    def call(self, tiles, training=False):
        crop, channels = tiles.shape[2], tiles.shape[-1]
        features = self.encoder(tf.reshape(tiles, [-1, crop, crop, channels]), training=training)
        features = tf.reshape(features, [-1, TILES * features.shape[-1]])  # slot order
        return self.classifier(self.dropout(features, training=training))

    def puzzles(self, images, seed):
        """This replica's puzzles, drawn for the global batch."""
        return self.puzzle(images, seed=seed, **global_batch_position(tf.shape(images)[0]))

    def _loss(self, tiles, labels, training):
        logits = tf.cast(self(tiles, training=training), tf.float32)  # float32 loss under mixed precision
        per_puzzle = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
        # The mean over the global batch; replicas' gradients are summed.
        return self.global_mean(per_puzzle), logits, self.replicas()

    def _track(self, loss, labels, logits, replicas):
        self.track_summed(self.loss_tracker, loss, replicas)
        self.accuracy_tracker.update_state(labels, logits)
        return self.results((self.loss_tracker, self.accuracy_tracker))

    def train_step(self, data):
        images, _ = self.unpack_batch(data)
        tiles, labels = self.puzzles(images, step_seed(self.seed, self.optimizer.iterations))
        with tf.GradientTape() as tape:
            loss, logits, replicas = self._loss(tiles, labels, training=True)
        variables = self.trainable_variables
        gradients = add_coupled_weight_decay(tape.gradient(loss, variables), variables, self.weight_decay)
        gradients, norm = clip_by_global_norm_across_replicas(gradients, self.jigsaw_config.clip_norm)
        self.optimizer.apply(gradients, variables)
        self.gradient_norm_tracker.update_state(norm)
        return {**self._track(loss, labels, logits, replicas), "gradient_norm": self.gradient_norm_tracker.result()}

    def test_step(self, data):
        images, _ = self.unpack_batch(data)
        tiles, labels = self.puzzles(images, step_seed(self.seed, VALIDATION_STREAM))
        loss, logits, replicas = self._loss(tiles, labels, training=False)
        return self._track(loss, labels, logits, replicas)

    def training_callbacks(self, monitor: str) -> list:
        """The paper's ReduceLROnPlateau (on the validation loss when there is one)."""
        config = self.jigsaw_config
        return [
            keras.callbacks.ReduceLROnPlateau(
                monitor=monitor,
                factor=config.plateau_factor,
                patience=config.plateau_patience,
                min_lr=config.min_learning_rate,
            )
        ]

    def summary_images(self, images, seed: int):
        """For TensorBoard: each puzzle as the network sees it (slots row-major), tagged with its permutation index."""
        tiles, labels = self.puzzle(tf.constant(images[:4]), seed=tf.constant([seed, 0], tf.int64))
        if self.jigsaw_config.normalize_tiles:
            low = tf.reduce_min(tiles, axis=[2, 3, 4], keepdims=True)
            tiles = (tiles - low) / (tf.reduce_max(tiles, axis=[2, 3, 4], keepdims=True) - low + 1e-6)
        grids = tf.cast(tf.round(assemble_tiles(tiles, gap=2) * 255.0), tf.uint8).numpy()
        return {f"puzzle{i}_permutation{int(k)}": grid for i, (grid, k) in enumerate(zip(grids, labels.numpy()))}


def build(encoder, image_size, permutations, config: JigsawConfig, seed: int, weight_decay: float) -> JigsawModel:
    return JigsawModel(encoder, image_size, permutations, config, seed=seed, weight_decay=weight_decay, name="jigsaw")


def resolve_backbone(backbone: BackboneConfig, data: DataConfig, config: JigsawConfig) -> BackboneConfig:
    """The encoder sees tiles, not images: an automatic small stem follows the tile crop size."""
    if backbone.small_stem is not None:
        return backbone
    _, crop = puzzle_geometry(data.image_size, config)
    return dataclasses.replace(backbone, small_stem=backbone.resolved_small_stem(crop))


def build_model(train: TrainConfig, data: DataConfig, backbone: BackboneConfig, config: JigsawConfig) -> JigsawModel:
    """The compiled pretext model: SGD with momentum, coupled L2, global-norm clipping (as the paper)."""
    if backbone.small_stem is None:  # not resolved (`fgssl_tf.run_config.resolve_run` settles it): settle it here
        backbone = resolve_backbone(backbone, data, config)
    if config.pool_grid < 1:
        raise FgsslError(f"--jigsaw_pool_grid={config.pool_grid} must be at least 1")
    permutations = load_or_create_permutations(
        train.model_dir,
        config.permutations,
        config.num_permutations,
        train.seed,
        write=is_chief(tf.distribute.get_strategy()),
    )
    encoder = build_resnet(backbone, data.image_size, pool_grid=config.pool_grid)
    model = build(encoder, data.image_size, permutations, config, train.seed, train.weight_decay)
    optimizer = guard(FusedSGD(train.learning_rate, momentum=config.momentum))
    model.compile(optimizer=optimizer, jit_compile=train.jit_compile)
    return model


Config = JigsawConfig

SPEC = PretextSpec(
    "jigsaw",
    JigsawConfig,
    DEFAULT_LEARNING_RATE,
    DEFAULT_WEIGHT_DECAY,
    build_model,
    resolve_backbone=resolve_backbone,
    flags=FLAGS,
    optimizer="SGD",
    model_class=JigsawModel,
)
