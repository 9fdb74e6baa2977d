"""SRGAN (Ledig et al. 2017) as the paper's pretext (docs/paper_fidelity.md, "SRGAN"): learn to super-resolve
unlabelled images, then reuse the generator *and* the discriminator as encoders.

Pretext: a random high-resolution (HR) crop of each image is shrunk by bicubic
resampling to a low-resolution (LR) input; an SRResNet generator restores it
(9x9 PReLU stem, residual blocks with BN and PReLU, global skip, pixel-shuffle
upsampling x2 per block, 9x9 output conv) and a VGG-style discriminator (eight
3x3 convs with LeakyReLU, BN after all but the first, a dense head) tells
restored crops from real ones. Two stages, as Lornatang/SRGAN-PyTorch:
- `psnr`: the generator alone, pixel MSE;
- `gan`: each step updates the discriminator (BCE on real and restored crops),
  then the generator on MSE + 0.006 perceptual + 0.001 adversarial, the
  perceptual term a feature MSE through Keras' VGG19 up to `block5_conv4`.
  It starts from a `psnr` run's generator (`generator_init`); the learning rates
  drop tenfold halfway (StepLR(epochs // 2)).
- `both` (the default): one run, the first half of the epochs `psnr`, the rest `gan`.
Validation reports PSNR and SSIM of the restored crops beside the PSNR of plain
bicubic upsampling of the same crops, the bar the generator has to clear.

Downstream (docs/paper_fidelity.md, "SRGAN", the table of trials): the exported encoders are the generator trunk
(everything before upsampling, average-pooled: 64 features) and the
discriminator's conv stack (average-pooled: 512). The full networks are saved
beside them, so the evaluation tool can run the paper's variants: generator with
residual blocks removed, the paper's heads with dropout, discriminator with conv
blocks removed (`fgssl_tf.evaluation.srgan_variants`).

Differences from the paper's and Lornatang's code, on purpose:
- the VGG19 input is what Keras' ImageNet weights were trained on (Caffe: BGR,
  0-255, mean removed); Lornatang fed [0, 1] RGB to torchvision's VGG. The
  features are scaled by 1/12.75 (Ledig et al.) so the 0.006 weight keeps its size;
- scale x2, x4 and x8 (the paper's README claimed these; its code had x4 only);
- downstream (bugs S3-S8 of docs/paper_fidelity.md, "SRGAN"): every head is built before its
  optimizer, so it trains; dropout goes into the model that is trained; class
  weights, when asked for, are inverse to the class frequency; inputs stay in
  [0, 1] as in pretraining.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os

import keras
import tensorflow as tf
from keras import layers

from fgssl_tf.augment import step_seed
from fgssl_tf.config import BackboneConfig, DataConfig, TrainConfig
from fgssl_tf.errors import FgsslError
from fgssl_tf.models.layers import CaffePreprocess, Conv2D, FixedInputSize, PixelShuffle, batch_norm
from fgssl_tf.objectives import global_batch_position, replica_info
from fgssl_tf.optim import FusedAdam, add_coupled_weight_decay, guard
from fgssl_tf.pretext.base import PretextModel, PretextSpec, config_from_dict, config_to_dict, deserialize_parts
from fgssl_tf.pretext.settings import FlagSpec, not_a_file_error, weights_choice_error

log = logging.getLogger(__name__)

DEFAULT_LEARNING_RATE = 1e-4  # Adam for both networks, as Lornatang
DEFAULT_WEIGHT_DECAY = 0.0
STAGES = ("both", "psnr", "gan")
SCALES = (2, 4, 8)
PERCEPTUAL_LAYER = "block5_conv4"  # torchvision VGG19 features[:36]: conv5_4 and its ReLU
PERCEPTUAL_HELP = (
    "--perceptual_weights=imagenet (Keras' ImageNet VGG19, downloaded once), a path to a weights file, "
    "none (no perceptual term), "
    "or auto (imagenet when it can be had, else none with a warning)"
)
# Discriminator convs: (channels as a multiple of its width, stride), as SRGAN.
DISCRIMINATOR_CONVS = ((1, 1), (1, 2), (2, 1), (2, 2), (4, 1), (4, 2), (8, 1), (8, 2))
GENERATOR_FILE = "generator.keras"  # saved beside the exported encoders, for the paper's variants
DISCRIMINATOR_FILE = "discriminator.keras"


@dataclasses.dataclass(frozen=True)
class SRGANConfig:
    stage: str = "both"  # both (psnr, then gan) | psnr | gan
    scale: int = 4  # 2, 4 or 8
    hr_size: int = 96  # side of the HR crop (Lornatang: 96); LR = hr_size / scale
    residual_blocks: int = 16
    width: int = 64  # generator channels
    discriminator_width: int = 64  # channels of the first conv; doubled at every other conv
    discriminator_dense: int = 1024
    pixel_weight: float = 1.0
    perceptual_weight: float = 0.006
    adversarial_weight: float = 0.001
    perceptual_weights: str = "auto"  # auto | imagenet | none | PATH
    perceptual_scale: float = 1 / 12.75  # VGG features are multiplied by this (Ledig et al.)
    generator_init: str | None = None  # gan stage: model_dir of the psnr run to start from
    beta_1: float = 0.9
    beta_2: float = 0.999

    @property
    def lr_size(self) -> int:
        return self.hr_size // self.scale

    @property
    def uses_perceptual(self) -> bool:
        return self.stage != "psnr" and self.perceptual_weight > 0 and self.perceptual_weights != "none"

    def check(self, image_size: int) -> None:
        if self.stage not in STAGES:
            raise FgsslError(
                f"unknown --srgan_stage={self.stage!r}; choose both, psnr (pixel loss, first) or gan (second)"
            )
        if self.scale not in SCALES:
            raise FgsslError(f"--srgan_scale={self.scale}: choose 2, 4 or 8")
        if self.hr_size % self.scale or self.lr_size < 4:
            raise FgsslError(
                f"--srgan_hr_size={self.hr_size} must be a multiple of --srgan_scale={self.scale} "
                "with at least 4 px left after dividing"
            )
        if self.hr_size < 16:
            raise FgsslError(
                f"--srgan_hr_size={self.hr_size}: the discriminator (4 halvings), SSIM and VGG "
                "need crops of at least 16 px"
            )
        if self.hr_size > image_size:
            raise FgsslError(
                f"--srgan_hr_size={self.hr_size} is larger than --image_size={image_size}; "
                "crops come from the resized images"
            )
        if self.residual_blocks < 1:
            raise FgsslError("--srgan_residual_blocks must be at least 1")


FLAGS = (
    FlagSpec(
        "srgan_stage",
        "stage",
        "enum",
        "both",
        "SRGAN stage: psnr (generator, pixel MSE), gan (adversarial and perceptual, from a psnr run), "
        "or both in one run (half the epochs each).",
        choices=STAGES,
    ),
    FlagSpec(
        "srgan_scale",
        "scale",
        "enum",
        "4",
        "Super-resolution factor (the paper: 4).",
        choices=tuple(str(scale) for scale in SCALES),
        convert=int,
    ),
    FlagSpec(
        "srgan_hr_size",
        "hr_size",
        "integer",
        None,
        "Side of the high-resolution crops (at most --image_size; default min(96, --image_size)); "
        "the encoders' input size.",
        lower_bound=16,
    ),
    FlagSpec("srgan_residual_blocks", "residual_blocks", "integer", 16, "Generator residual blocks.", lower_bound=1),
    FlagSpec("srgan_width", "width", "integer", 64, "Generator channels.", lower_bound=1),
    FlagSpec(
        "srgan_discriminator_width",
        "discriminator_width",
        "integer",
        64,
        "Discriminator channels of the first conv (doubled every other conv).",
        lower_bound=1,
    ),
    FlagSpec(
        "srgan_discriminator_dense",
        "discriminator_dense",
        "integer",
        1024,
        "Discriminator hidden dense units.",
        lower_bound=1,
    ),
    FlagSpec("pixel_weight", "pixel_weight", "float", 1.0, "SRGAN: weight of the pixel MSE.", lower_bound=0.0),
    FlagSpec(
        "perceptual_weight",
        "perceptual_weight",
        "float",
        0.006,
        "SRGAN gan stage: weight of the VGG19 feature MSE.",
        lower_bound=0.0,
    ),
    FlagSpec(
        "adversarial_weight",
        "adversarial_weight",
        "float",
        0.001,
        "SRGAN gan stage: weight of the adversarial loss.",
        lower_bound=0.0,
    ),
    FlagSpec(
        "perceptual_weights",
        "perceptual_weights",
        "string",
        "auto",
        "SRGAN VGG19: imagenet (Keras' weights, downloads once), a path to a weights file, none (no perceptual term), "
        "or auto (imagenet if it can be had, else none, with a warning).",
        check=weights_choice_error(("auto", "imagenet", "none")),
    ),
    FlagSpec(
        "perceptual_scale",
        "perceptual_scale",
        "float",
        1 / 12.75,
        "SRGAN: VGG features are multiplied by this before the MSE (Ledig et al.).",
        lower_bound=0.0,
    ),
    FlagSpec(
        "srgan_generator_init",
        "generator_init",
        "string",
        None,
        "SRGAN gan stage: the --model_dir of the psnr run whose generator it starts from.",
        check=not_a_file_error,  # a run made later; its absence is reported when the gan stage starts
    ),
)


def finish_flags(config: SRGANConfig, values) -> SRGANConfig:
    """`PretextSpec.finish`: --srgan_hr_size defaults to min(96, --image_size), a multiple of the scale."""
    if values["srgan_hr_size"]:
        return config
    return dataclasses.replace(config, hr_size=min(96, values["image_size"]) // config.scale * config.scale)


def check_flags(values) -> None:
    """`PretextSpec.check_flags`: a generator to start from is for the gan stage only."""
    if values["srgan_generator_init"] and values["srgan_stage"] != "gan":
        raise FgsslError("--srgan_generator_init is for --srgan_stage=gan (it starts from a psnr run's generator)")


# tools/benchmark.py's own flag for SRGAN (its other sizes follow the tool's --image_size and --width).
BENCHMARK_FLAGS = (
    FlagSpec(
        "srgan_residual_blocks", "residual_blocks", "integer", 16, "SRGAN: generator residual blocks.", lower_bound=1
    ),
)


def benchmark_config(config: SRGANConfig, image_size: int, width: int, num_classes: int, values) -> SRGANConfig:
    """`PretextSpec.benchmark_config`: the HR crop is the whole image, --width the generator's channels."""
    return dataclasses.replace(config, hr_size=image_size, width=width, residual_blocks=values["srgan_residual_blocks"])


# --- networks ---------------------------------------------------------------------


def _prelu(name):
    # PyTorch nn.PReLU(): one shared slope, initially 0.25.
    return layers.PReLU(alpha_initializer=keras.initializers.Constant(0.25), shared_axes=[1, 2, 3], name=name)


def _bn(name):
    return batch_norm(name)  # PyTorch momentum 0.1, eps 1e-5; synchronized over several replicas


def _generator_graph(x, layer, width: int, blocks: int, upsample_blocks: int, until: str):
    """The SRResNet graph on tensor `x`; `layer(name, make)` returns the layer called `name`
    (made by `make(name)` when building, taken from a trained generator when rebuilding).
    until: 'trunk' (after the global skip), 'upsampled' (before the output conv) or 'output'."""

    def conv(filters, kernel, bias=False):
        return lambda name: Conv2D(filters, kernel, padding="same", use_bias=bias, name=name)

    stem = layer("stem_prelu", _prelu)(layer("stem_conv", conv(width, 9, bias=True))(x))
    y = stem
    for i in range(1, blocks + 1):
        r = layer(f"block{i}_prelu", _prelu)(layer(f"block{i}_bn1", _bn)(layer(f"block{i}_conv1", conv(width, 3))(y)))
        r = layer(f"block{i}_bn2", _bn)(layer(f"block{i}_conv2", conv(width, 3))(r))
        y = layer(f"block{i}_add", lambda name: layers.Add(name=name))([y, r])
    y = layer("trunk_bn", _bn)(layer("trunk_conv", conv(width, 3))(y))
    y = layer("trunk_skip", lambda name: layers.Add(name=name))([stem, y])
    if until == "trunk":
        return y
    for j in range(1, upsample_blocks + 1):
        y = layer(f"upsample{j}_conv", conv(4 * width, 3))(y)
        y = layer(f"upsample{j}_prelu", _prelu)(
            layer(f"upsample{j}_shuffle", lambda name: PixelShuffle(2, name=name))(y)
        )
    if until == "upsampled":
        return y
    return layer("output_conv", conv(3, 9, bias=True))(y)


def build_generator(config: SRGANConfig) -> keras.Model:
    """SRResNet: [B, h, w, 3] in [0, 1] -> [B, h s, w s, 3] (unclipped, as the paper)."""
    inputs = keras.Input((None, None, 3), name="images")
    outputs = _generator_graph(
        inputs,
        lambda name, make: make(name),
        config.width,
        config.residual_blocks,
        int(math.log2(config.scale)),
        "output",
    )
    return keras.Model(inputs, outputs, name="srgan_generator")


def _generator_shape(generator: keras.Model) -> tuple[int, int, int]:
    """(width, residual blocks, upsample blocks) of a built generator, read from its layer names."""
    names = [layer.name for layer in generator.layers]
    blocks = sum(1 for n in names if n.startswith("block") and n.endswith("_conv1"))
    upsample = sum(1 for n in names if n.startswith("upsample") and n.endswith("_conv"))
    return generator.get_layer("stem_conv").filters, blocks, upsample


def generator_features(
    generator: keras.Model,
    residual_blocks: int | None = None,
    until: str = "trunk",
    pooled: bool = True,
    input_size: int | None = None,
) -> keras.Model:
    """The trained generator's layers re-wired as an encoder: its first `residual_blocks`
    blocks (the paper's "Remove N ResBlocks": 16 -> 14, 12, 10, 8), then the trunk conv
    and the global skip; `until='upsampled'` also runs the upsampling (the input of the
    paper's generator head, which flattens, so it needs a fixed `input_size`).
    Layers are shared, not copied: the weights are the trained ones."""
    width, blocks, upsample = _generator_shape(generator)
    keep = blocks if residual_blocks is None else residual_blocks
    if not 1 <= keep <= blocks:
        raise FgsslError(
            f"--keep_residual_blocks={residual_blocks}: this generator has {blocks} residual blocks; keep 1 to {blocks}"
        )
    inputs = keras.Input((input_size, input_size, 3), name="images")
    features = _generator_graph(inputs, lambda name, make: generator.get_layer(name), width, keep, upsample, until)
    if pooled:
        features = layers.GlobalAveragePooling2D(name="avg_pool")(features)
    return keras.Model(inputs, features, name=f"srgan_generator_{until}_{keep}blocks")


def build_discriminator(config: SRGANConfig) -> keras.Model:
    """VGG-style critic of HR crops: [B, hr, hr, 3] in [0, 1] -> one logit (the sigmoid is in the loss).

    Strided convs pad explicitly, so sizes halve as PyTorch's (88 -> 44 -> 22 -> 11 -> 6);
    the dense head fixes the input size, and other sizes are refused by name.
    """
    inputs = keras.Input((None, None, 3), name="images")
    x = FixedInputSize(
        config.hr_size,
        "the SRGAN discriminator",
        hint=f" (--srgan_hr_size={config.hr_size}); crop or resize images to that size",
        name="input_size",
    )(inputs)
    for i, (multiple, stride) in enumerate(DISCRIMINATOR_CONVS, start=1):
        if stride > 1:
            x = layers.ZeroPadding2D(1, name=f"conv{i}_pad")(x)
        # A bias only where no BN follows (the first conv).
        x = Conv2D(
            config.discriminator_width * multiple,
            3,
            stride,
            padding="same" if stride == 1 else "valid",
            use_bias=i == 1,
            name=f"conv{i}_conv",
        )(x)
        if i > 1:
            x = _bn(f"conv{i}_bn")(x)
        x = layers.LeakyReLU(0.2, name=f"conv{i}_lrelu")(x)
    x = layers.Flatten(name="head_flatten")(x)
    x = layers.LeakyReLU(0.2, name="head_lrelu")(layers.Dense(config.discriminator_dense, name="head_dense")(x))
    return keras.Model(inputs, layers.Dense(1, name="head_logit")(x), name="srgan_discriminator")


def discriminator_features(discriminator: keras.Model, remove_conv_blocks: int = 0, pooled: bool = True) -> keras.Model:
    """The discriminator's conv stack without its last `remove_conv_blocks` (conv, BN, LeakyReLU)
    units (the paper's "Remove N ConvBlocks"), average-pooled or as a feature map."""
    convs = sum(1 for layer in discriminator.layers if layer.name.endswith("_conv") and layer.name.startswith("conv"))
    if not 0 <= remove_conv_blocks < convs:
        raise FgsslError(
            f"--remove_conv_blocks={remove_conv_blocks}: this discriminator has {convs} conv blocks; "
            f"remove 0 to {convs - 1}"
        )
    features = discriminator.get_layer(f"conv{convs - remove_conv_blocks}_lrelu").output
    if pooled:
        features = layers.GlobalAveragePooling2D(name="avg_pool")(features)
    name = f"srgan_discriminator_minus{remove_conv_blocks}"
    return keras.Model(discriminator.inputs, features, name=name)


def _load_perceptual(weights: str) -> keras.Model | None:
    """VGG19 up to block5_conv4, frozen, on [0, 1] RGB input; 'auto' gives None when ImageNet's cannot be had."""
    if weights == "auto":
        try:
            return _load_perceptual("imagenet")
        except FgsslError as err:
            log.warning(
                "no VGG19 ImageNet weights (%s): the perceptual term is off. Pass --perceptual_weights=PATH "
                "(a local copy) to have it, or --perceptual_weights=imagenet to make its absence an error",
                err,
            )
            return None
    if weights != "imagenet" and not os.path.isfile(weights):
        raise FgsslError(f"--perceptual_weights={weights!r}: no such file; use {PERCEPTUAL_HELP}")
    try:
        vgg = keras.applications.VGG19(include_top=False, weights=weights, input_shape=(None, None, 3))
    except Exception as err:  # no internet, a truncated or mismatched file
        raise FgsslError(
            f"could not load the VGG19 weights {weights!r} ({type(err).__name__}: {err}); use {PERCEPTUAL_HELP}"
        ) from err
    inputs = keras.Input((None, None, 3), name="images")
    trunk = keras.Model(vgg.input, vgg.get_layer(PERCEPTUAL_LAYER).output, name="vgg19_block5_conv4")
    model = keras.Model(inputs, trunk(CaffePreprocess(name="caffe_preprocess")(inputs)), name="perceptual")
    model.trainable = False
    return model


class _Untracked:
    """Holds a model out of checkpoints (Keras and TF track attributes that are layers)."""

    def __init__(self, model):
        self.model = model


# --- pretext model ----------------------------------------------------------------


@keras.saving.register_keras_serializable(package="fgssl_tf")
class SRGANModel(PretextModel):
    """LR crops -> super-resolved crops; `train_step` runs the configured stage.

    `fgssl_tf.SRGAN(config=SRGANConfig(), generator=None, discriminator=None, perceptual="config",
    seed=0, weight_decay=0.0, learning_rate=1e-4)`: SRGAN learns from pixels, so it takes no
    encoder: its own generator (SRResNet) and discriminator (default: built from `config`) are
    what it exports (`exportable_encoders`). Batches are uint8 images of at least
    `config.hr_size` px. `perceptual`: the frozen VGG19 of the gan stage's perceptual term, loaded
    as `config.perceptual_weights` says ("config"), or None for none. `compile()` gives each network
    an Adam at `learning_rate`; `training_callbacks('loss')` gives the stage switch (`both`) and
    the gan stage's step decay.
    """

    def __init__(
        self,
        generator=None,
        discriminator=None,
        config: SRGANConfig | None = None,
        perceptual="config",
        seed: int = 0,
        weight_decay: float = 0.0,
        learning_rate: float = DEFAULT_LEARNING_RATE,
        **kwargs,
    ):
        super().__init__(**kwargs)
        config = SRGANConfig() if config is None else config
        if isinstance(perceptual, str):  # "config": as the config says
            perceptual = _load_perceptual(config.perceptual_weights) if config.uses_perceptual else None
        generator = build_generator(config) if generator is None else generator
        discriminator = build_discriminator(config) if discriminator is None else discriminator
        self.base_learning_rate = learning_rate
        self.discriminator_optimizer = None  # set by compile
        self.generator, self.discriminator = generator, discriminator
        self.srgan_config, self.seed, self.weight_decay = config, seed, weight_decay
        self._perceptual = _Untracked(perceptual)  # rebuilt from its weights file, not saved with the run
        self.built = True
        # The stage the train step is traced for; `both` switches from psnr to gan at an epoch (_Schedule).
        self.active_stage = "gan" if config.stage == "gan" else "psnr"
        names = ["loss", "pixel_loss"]
        if config.stage != "psnr":
            names += ["perceptual_loss", "adversarial_loss", "d_loss", "d_real_accuracy", "d_fake_accuracy"]
        self.trackers = self.make_trackers(*names, "psnr", "ssim", "bicubic_psnr")

    @property
    def metrics(self):
        return list(self.trackers.values())

    @property
    def perceptual(self):
        return self._perceptual.model

    def call(self, low_resolution, training=False):
        return self.generator(low_resolution, training=training)

    def crop_pairs(self, images, seed=None):
        """uint8 or float images -> (HR crops, bicubic LR inputs) in [0, 1]; random crops
        drawn for the global batch when `seed` is given, centre crops otherwise."""
        config = self.srgan_config
        x = tf.image.convert_image_dtype(images, tf.float32)
        size, local = config.hr_size, tf.shape(x)[0]
        room_h, room_w = tf.shape(x)[1] - size, tf.shape(x)[2] - size
        if seed is None:
            corners = tf.tile(tf.stack([room_h // 2, room_w // 2])[None], [local, 1])
        else:
            position = global_batch_position(local)
            unit = tf.random.stateless_uniform([position["global_batch"], 2], seed)[
                position["offset"] : position["offset"] + local
            ]
            corners = tf.cast(tf.floor(unit * tf.cast(tf.stack([room_h + 1, room_w + 1]), tf.float32)), tf.int32)
        span = tf.range(size)
        x = tf.gather(x, corners[:, :1] + span, axis=1, batch_dims=1)
        hr = tf.ensure_shape(tf.gather(x, corners[:, 1:] + span, axis=2, batch_dims=1), [None, size, size, 3])
        lr = tf.image.resize(hr, [config.lr_size, config.lr_size], method="bicubic", antialias=True)
        return hr, tf.clip_by_value(lr, 0.0, 1.0)

    def bicubic_upscale(self, lr):
        size = self.srgan_config.hr_size
        return tf.clip_by_value(tf.image.resize(lr, [size, size], method="bicubic"), 0.0, 1.0)

    def _bce(self, logits, target: float):
        logits = tf.cast(logits, tf.float32)
        labels = tf.fill(tf.shape(logits), target)
        return self.global_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits))

    def _apply(self, optimizer, tape, loss, variables):
        gradients = add_coupled_weight_decay(tape.gradient(loss, variables), variables, self.weight_decay)
        optimizer.apply(gradients, variables)

    def train_step(self, data):
        images, _ = self.unpack_batch(data)
        hr, lr = self.crop_pairs(images, step_seed(self.seed, self.optimizer.iterations))
        config = self.srgan_config
        _, replicas, _ = replica_info()
        generator_variables = self.generator.trainable_variables
        with tf.GradientTape() as generator_tape:
            sr = tf.cast(self.generator(lr, training=True), tf.float32)  # float32 losses under mixed precision
            pixel = self.global_mean(tf.square(sr - hr))
            loss = config.pixel_weight * pixel
            if self.active_stage == "gan":
                with generator_tape.stop_recording():  # the critic first, on a detached SR batch
                    with tf.GradientTape() as discriminator_tape:
                        real_logits = self.discriminator(hr, training=True)
                        fake_logits = self.discriminator(tf.stop_gradient(sr), training=True)
                        d_loss = self._bce(real_logits, 1.0) + self._bce(fake_logits, 0.0)
                    self._apply(
                        self.discriminator_optimizer, discriminator_tape, d_loss, self.discriminator.trainable_variables
                    )
                adversarial = self._bce(self.discriminator(sr, training=True), 1.0)  # against the updated critic
                perceptual = tf.constant(0.0)
                if self.perceptual is not None:
                    scale = config.perceptual_scale
                    target = tf.stop_gradient(self.perceptual(hr, training=False)) * scale
                    perceptual = self.global_mean(
                        tf.square(
                            tf.cast(self.perceptual(sr, training=False), tf.float32) * scale
                            - tf.cast(target, tf.float32)
                        )
                    )
                loss += config.perceptual_weight * perceptual + config.adversarial_weight * adversarial
        self._apply(self.optimizer, generator_tape, loss, generator_variables)
        self.track_summed(self.trackers["loss"], loss, replicas)
        self.track_summed(self.trackers["pixel_loss"], pixel, replicas)
        if self.active_stage == "gan":
            self.track_summed(self.trackers["perceptual_loss"], perceptual, replicas)
            self.track_summed(self.trackers["adversarial_loss"], adversarial, replicas)
            self.track_summed(self.trackers["d_loss"], d_loss, replicas)
            self.trackers["d_real_accuracy"].update_state(tf.cast(real_logits > 0, tf.float32))
            self.trackers["d_fake_accuracy"].update_state(tf.cast(fake_logits < 0, tf.float32))
        shown = (
            ("loss", "pixel_loss")
            if self.active_stage == "psnr"
            else [n for n in self.trackers if n not in ("psnr", "ssim", "bicubic_psnr")]
        )
        return {name: self.trackers[name].result() for name in shown}

    def test_step(self, data):
        """Centre crops: pixel loss, PSNR and SSIM of the restored crops, PSNR of bicubic upsampling."""
        images, _ = self.unpack_batch(data)
        hr, lr = self.crop_pairs(images)
        sr = tf.cast(self.generator(lr, training=False), tf.float32)
        _, replicas, _ = replica_info()
        self.track_summed(self.trackers["loss"], self.global_mean(tf.square(sr - hr)), replicas)
        restored = tf.clip_by_value(sr, 0.0, 1.0)
        self.trackers["psnr"].update_state(tf.image.psnr(restored, hr, 1.0))
        self.trackers["ssim"].update_state(tf.image.ssim(restored, hr, 1.0))
        self.trackers["bicubic_psnr"].update_state(tf.image.psnr(self.bicubic_upscale(lr), hr, 1.0))
        return {name: self.trackers[name].result() for name in ("loss", "psnr", "ssim", "bicubic_psnr")}

    def epoch_images(self, images) -> dict:
        """For TensorBoard after each epoch: (bicubic input | SR output | HR target) per image."""
        hr, lr = self.crop_pairs(tf.constant(images[:4]))
        sr = tf.clip_by_value(self.generator(lr, training=False), 0.0, 1.0)
        triplets = tf.concat([self.bicubic_upscale(lr), sr, hr], axis=2)
        return {f"bicubic_sr_hr{i}": img for i, img in enumerate(tf.cast(tf.round(triplets * 255.0), tf.uint8).numpy())}

    def benchmark_inputs(self, batch: int, size: int) -> tuple:
        """Fixed (HR, LR) pairs; the generator's forward is the one counted."""
        lr_size = self.srgan_config.lr_size
        pairs = (tf.random.uniform([batch, size, size, 3]), tf.random.uniform([batch, lr_size, lr_size, 3]))
        self.crop_pairs = lambda images, *args, **kwargs: pairs
        return (lambda x: self.generator(x, training=False)), [batch, lr_size, lr_size, 3], (None,)

    def exportable_encoders(self) -> dict:
        """The generator trunk, and the discriminator's convs once it has been trained
        (not after a psnr stage alone)."""
        encoders = {"generator": generator_features(self.generator)}
        if int(self.discriminator_optimizer.iterations.numpy()) > 0:
            encoders["discriminator"] = discriminator_features(self.discriminator)
        return encoders

    def export_extras(self, suffix: str) -> dict:
        """Full networks saved beside each encoder, for the paper's downstream variants."""
        return {
            "generator": {GENERATOR_FILE: self.generator},
            "discriminator": {DISCRIMINATOR_FILE: self.discriminator},
        }[suffix]

    @property
    def export_image_size(self) -> int:
        return self.srgan_config.hr_size

    def training_callbacks(self, monitor: str) -> list:
        return [] if self.srgan_config.stage == "psnr" else [_Schedule(self)]

    def _adam(self, name: str):
        config = self.srgan_config
        return guard(FusedAdam(self.base_learning_rate, config.beta_1, config.beta_2, name=name))

    def default_optimizer(self):
        return self._adam("generator_adam")

    def compile(self, optimizer=None, discriminator_optimizer=None, **kwargs):
        """The generator's optimizer (`optimizer`) and the discriminator's, each built on its network."""
        if discriminator_optimizer is not None or self.discriminator_optimizer is None:  # else: the one set before
            self.discriminator_optimizer = discriminator_optimizer or self._adam("discriminator_adam")
        super().compile(optimizer=optimizer, **kwargs)
        for network, network_optimizer in (
            (self.generator, self.optimizer),
            (self.discriminator, self.discriminator_optimizer),
        ):
            if not network_optimizer.built:
                network_optimizer.build(network.trainable_variables)

    def compiled_optimizers(self) -> dict:
        return {"optimizer": self.optimizer, "discriminator_optimizer": self.discriminator_optimizer}

    def get_config(self):
        return {
            "name": self.name,
            "generator": keras.saving.serialize_keras_object(self.generator),
            "discriminator": keras.saving.serialize_keras_object(self.discriminator),
            "config": config_to_dict(self.srgan_config),
            "seed": self.seed,
            "weight_decay": self.weight_decay,
            "learning_rate": self.base_learning_rate,
        }

    @classmethod
    def from_config(cls, config):
        config = deserialize_parts(config, ("generator", "discriminator"))
        return cls(**{**config, "config": config_from_dict(SRGANConfig, config["config"])})


class _Schedule(keras.callbacks.Callback):
    """Set from the epoch, so a resumed run does the same: `both` switches to the gan stage
    after the first ceil(epochs / 2) epochs (re-tracing the train step); in the gan stage,
    Lornatang's StepLR(step_size=gan epochs // 2, gamma=0.1) on both optimizers."""

    def __init__(self, model: SRGANModel):
        super().__init__()
        self.srgan = model

    def on_epoch_begin(self, epoch, logs=None):
        epochs = self.params["epochs"]
        gan_start = -(-epochs // 2) if self.srgan.srgan_config.stage == "both" else 0
        stage = "gan" if epoch >= gan_start else "psnr"
        if stage != self.srgan.active_stage:
            self.srgan.active_stage = stage
            self.srgan.make_train_function(force=True)
            log.info("SRGAN: gan stage from epoch %d", epoch + 1)
        if stage == "gan":
            step = max(1, (epochs - gan_start) // 2)
            rate = self.srgan.base_learning_rate * 0.1 ** ((epoch - gan_start) // step)
            self.srgan.optimizer.learning_rate.assign(rate)
            self.srgan.discriminator_optimizer.learning_rate.assign(rate)


def load_generator_from_run(generator: keras.Model, model_dir: str) -> str:
    """Copy the generator weights of another run's latest checkpoint (the psnr stage) into `generator`."""
    path = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
    if path is None:
        raise FgsslError(
            f"--srgan_generator_init={model_dir}: no checkpoint under {model_dir}/checkpoints; "
            "run the psnr stage first (flags/srgan_psnr.cfg)"
        )
    reader = tf.train.load_checkpoint(path)
    prefix = "model/generator/"
    saved = {key for key in reader.get_variable_to_shape_map() if key.startswith(prefix)}
    if not saved:
        raise FgsslError(
            f"{path} holds no SRGAN generator; --srgan_generator_init takes the --model_dir of a --pretext=srgan run"
        )
    status = tf.train.Checkpoint(model=tf.train.Checkpoint(generator=generator)).read(path)
    try:
        status.assert_existing_objects_matched()
    except AssertionError as err:
        raise FgsslError(
            f"the generator in {path} does not match this one "
            f"(residual blocks, width and scale must be the same): {err}"
        ) from err
    return path


def build(config: SRGANConfig, learning_rate: float, seed: int = 0, weight_decay: float = 0.0) -> SRGANModel:
    """Generator and discriminator with an Adam each (`SRGANModel.compile`)."""
    model = SRGANModel(config=config, seed=seed, weight_decay=weight_decay, learning_rate=learning_rate, name="srgan")
    model.compile(jit_compile=False)
    return model


def build_model(train: TrainConfig, data: DataConfig, backbone: BackboneConfig, config: SRGANConfig) -> SRGANModel:
    """Generator and discriminator with an Adam each; the gan stage starts from `generator_init`."""
    config.check(data.image_size)
    model = build(config, train.learning_rate, train.seed, train.weight_decay)
    if config.stage != "psnr" and config.generator_init:
        load_generator_from_run(model.generator, config.generator_init)
    return model


def __getattr__(name: str):
    """The paper's downstream variants moved to fgssl_tf.evaluation.srgan_variants (evaluation code);
    still importable from here. Imported lazily: the evaluation package imports this module."""
    if name in ("downstream_network", "paper_generator_head", "paper_discriminator_head"):
        from fgssl_tf.evaluation import srgan_variants

        return getattr(srgan_variants, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


Config = SRGANConfig

SPEC = PretextSpec(
    "srgan",
    SRGANConfig,
    DEFAULT_LEARNING_RATE,
    DEFAULT_WEIGHT_DECAY,
    build_model,
    uses_backbone=False,
    flags=FLAGS,
    finish=finish_flags,
    check_flags=check_flags,
    benchmark_config=benchmark_config,
    benchmark_flags=BENCHMARK_FLAGS,
    model_class=SRGANModel,
)
