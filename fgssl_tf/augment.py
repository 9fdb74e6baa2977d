"""SimCLR view augmentation as one batched Keras layer that runs on the device.

Every random number is drawn for the *global* batch from a stateless seed, and
each replica slices out its own rows. So the view of image i at step t is the
same on 1 replica or on 8, and a resumed run draws what an uninterrupted run
would: the seed is derived from (run seed, optimizer step).

Semantics follow torchvision, as the paper used it (docs/paper_fidelity.md, "SimCLR"):
`RandomResizedCrop` (10 tries, then the centre fallback), `ColorJitter` in a
random order per image, `RandomGrayscale` and a Gaussian blur of kernel ~S/10.
"""

from __future__ import annotations

import dataclasses
import math

import keras
import tensorflow as tf

from fgssl_tf.config import AugmentConfig

_CROP_TRIES = 10
# A seed stream for validation inputs that never meets a training step's.
VALIDATION_STREAM = 2**31 - 1


def step_seed(run_seed: int, stream) -> tf.Tensor:
    """The [2] stateless seed of one step: (run seed, optimizer step or VALIDATION_STREAM)."""
    return tf.stack([tf.constant(run_seed, tf.int64), tf.cast(stream, tf.int64)])


def _uniform(seed, shape, low=0.0, high=1.0):
    return tf.random.stateless_uniform(shape, seed=seed, minval=low, maxval=high)


def blur_kernel_size(image_size: int) -> int:
    """Odd kernel of about 10% of the image: 51 at 512 px (the paper's cv2 kernel)."""
    return max(3, int(image_size / 10) // 2 * 2 + 1)


def sample_view_params(seed, batch: int, height: int, width: int, config: AugmentConfig) -> dict:
    """Random parameters of one view for `batch` images, each a [batch, ...] tensor."""
    seeds = tf.unstack(tf.random.experimental.stateless_split(seed, num=12))
    # Random resized crop: first valid of ten tries, as torchvision.
    area = float(height * width)
    scale = _uniform(seeds[0], [batch, _CROP_TRIES], config.crop_scale_min, 1.0)
    log_ratio = _uniform(
        seeds[1], [batch, _CROP_TRIES], math.log(config.crop_ratio_min), math.log(config.crop_ratio_max)
    )
    ratio = tf.exp(log_ratio)
    crop_w = tf.round(tf.sqrt(area * scale * ratio))
    crop_h = tf.round(tf.sqrt(area * scale / ratio))
    valid = (crop_w > 0) & (crop_h > 0) & (crop_w <= width) & (crop_h <= height)
    first = tf.argmax(tf.cast(valid, tf.int32), axis=1, output_type=tf.int32)
    any_valid = tf.reduce_any(valid, axis=1)
    crop_w = tf.gather(crop_w, first, batch_dims=1)
    crop_h = tf.gather(crop_h, first, batch_dims=1)
    in_ratio = width / height
    if in_ratio < config.crop_ratio_min:
        fallback_w, fallback_h = float(width), round(width / config.crop_ratio_min)
    elif in_ratio > config.crop_ratio_max:
        fallback_w, fallback_h = round(height * config.crop_ratio_max), float(height)
    else:
        fallback_w, fallback_h = float(width), float(height)
    crop_w = tf.where(any_valid, crop_w, fallback_w)
    crop_h = tf.where(any_valid, crop_h, fallback_h)
    top = tf.floor(_uniform(seeds[2], [batch]) * (height - crop_h + 1))
    left = tf.floor(_uniform(seeds[3], [batch]) * (width - crop_w + 1))
    top = tf.where(any_valid, top, tf.round((height - crop_h) / 2))
    left = tf.where(any_valid, left, tf.round((width - crop_w) / 2))
    # crop_and_resize maps 0..1 onto pixel centres 0..size-1.
    boxes = tf.stack(
        [top / (height - 1), left / (width - 1), (top + crop_h - 1) / (height - 1), (left + crop_w - 1) / (width - 1)],
        axis=1,
    )
    if not config.random_crop:
        boxes = tf.tile(tf.constant([[0.0, 0.0, 1.0, 1.0]]), [batch, 1])
    s = config.color_jitter_strength
    # Drawn from a stream of their own, so the ten draws above stay what they were before these options.
    flip_stream = tf.random.experimental.stateless_fold_in(seed, 1)
    flip_seeds = tf.unstack(tf.random.experimental.stateless_split(flip_stream, num=2))
    turns = {}
    if config.rotate90:
        turns["quarter_turns"] = tf.cast(tf.floor(_uniform(flip_seeds[1], [batch], 0.0, 4.0)), tf.int32)
    params = {
        **turns,
        "vertical_flip": _uniform(flip_seeds[0], [batch]) < (0.5 if config.vertical_flip else 0.0),
        "boxes": boxes,
        "flip": _uniform(seeds[4], [batch]) < (0.5 if config.horizontal_flip else 0.0),
        "jitter": _uniform(seeds[5], [batch]) < config.color_jitter_prob,
        "jitter_factors": _uniform(seeds[6], [batch, 3], max(0.0, 1.0 - s), 1.0 + s),
        "hue_shift": _uniform(seeds[7], [batch], -s / 4.0, s / 4.0),
        # One order per batch (torchvision draws one per image): a per-image order would
        # compute all four ops four times, and made augmentation cost as much as the step.
        "jitter_order": tf.argsort(_uniform(seeds[8], [4])),
        "grayscale": _uniform(seeds[9], [batch]) < config.grayscale_prob,
        "blur": _uniform(seeds[10], [batch]) < config.blur_prob,
        "blur_sigma": _uniform(seeds[11], [batch], config.blur_sigma_min, config.blur_sigma_max),
    }
    # An op of probability 0 leaves every image as it is: its parameters are left out, and apply_view skips
    # the op instead of computing it for all images and keeping none (the same views, bit for bit; at 128 px
    # the blur alone cost 9% of a view).
    for probability, keys in (
        (config.color_jitter_prob, ("jitter", "jitter_factors", "hue_shift", "jitter_order")),
        (config.grayscale_prob, ("grayscale",)),
        (config.blur_prob, ("blur", "blur_sigma")),
    ):
        if probability <= 0:
            for key in keys:
                del params[key]
    return params


def _per_image(mask, rank=4):
    return tf.reshape(mask, [-1] + [1] * (rank - 1))


def _select(mask, if_true, if_false):
    """Per image, `if_true` where `mask` [B] holds, else `if_false`. The same as tf.where with a [B, 1, 1, 1]
    mask, bit for bit, at half its cost: TensorFlow's broadcasting select on the CPU is slower than stacking
    both and gathering one image of each pair."""
    return tf.gather(tf.stack([if_false, if_true], axis=1), tf.cast(mask, tf.int32), batch_dims=1)


def _gray(x):
    return tf.image.rgb_to_grayscale(x)


def _color_jitter(x, params):
    """torchvision ColorJitter: brightness, contrast, saturation, hue, in a random order."""
    factors = params["jitter_factors"]
    brightness, contrast, saturation = (_per_image(factors[:, i]) for i in range(3))
    hue = _per_image(params["hue_shift"])

    def apply(op, y):
        if op == 0:
            return y * brightness
        if op == 1:
            mean = tf.reduce_mean(_gray(y), axis=[1, 2, 3], keepdims=True)
            return contrast * y + (1.0 - contrast) * mean
        if op == 2:
            return saturation * y + (1.0 - saturation) * _gray(y)
        hsv = tf.image.rgb_to_hsv(y)
        shifted = tf.math.floormod(hsv[..., :1] + hue, 1.0)
        return tf.image.hsv_to_rgb(tf.concat([shifted, hsv[..., 1:]], axis=-1))

    def step(position, y):
        branches = [lambda op=op: tf.clip_by_value(apply(op, y), 0.0, 1.0) for op in range(4)]
        return position + 1, tf.switch_case(params["jitter_order"][position], branches)

    # A loop over the 4 positions traces each op once, not once per position (a faster start, the same kernels).
    _, y = tf.while_loop(lambda position, _: position < 4, step, (tf.constant(0), x))
    return _select(params["jitter"], y, x)


def _gaussian_blur(x, sigma, apply_mask, kernel_size):
    """Separable blur with a different sigma per image (reflect padding, as cv2)."""
    batch, height, width = tf.shape(x)[0], tf.shape(x)[1], tf.shape(x)[2]
    radius = kernel_size // 2
    offsets = tf.cast(tf.range(-radius, radius + 1), tf.float32)
    kernel = tf.exp(-tf.square(offsets)[None, :] / (2.0 * tf.square(sigma)[:, None]))
    kernel = kernel / tf.reduce_sum(kernel, axis=1, keepdims=True)
    identity = tf.one_hot(radius, kernel_size)[None, :]
    kernel = tf.where(apply_mask[:, None], kernel, identity)  # [B, k]
    kernel = tf.repeat(kernel, 3, axis=0)  # one per (image, channel)
    # Fold the batch into channels so one depthwise conv applies per-image kernels.
    folded = tf.reshape(tf.transpose(x, [1, 2, 0, 3]), [1, height, width, batch * 3])
    folded = tf.pad(folded, [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="REFLECT")
    horizontal = tf.transpose(kernel)[None, :, :, None]  # [1, k, B*3, 1]
    vertical = tf.transpose(kernel)[:, None, :, None]  # [k, 1, B*3, 1]
    folded = tf.nn.depthwise_conv2d(folded, horizontal, [1, 1, 1, 1], "VALID")
    folded = tf.nn.depthwise_conv2d(folded, vertical, [1, 1, 1, 1], "VALID")
    return tf.transpose(tf.reshape(folded, [height, width, batch, 3]), [2, 0, 1, 3])


def _rotate_quarter_turns(x, turns):
    """Each image turned by its own multiple of 90 degrees (square images)."""
    turned = [x, tf.image.rot90(x, 1), tf.image.rot90(x, 2), tf.image.rot90(x, 3)]
    return tf.gather(tf.stack(turned, axis=1), turns, batch_dims=1)


def apply_view(images, params: dict, image_size: int):
    """float [B, H, W, 3] in [0, 1] -> one augmented view [B, S, S, 3]. From images larger
    than the view, the crop is resized at a multiple of S and area-averaged down (an
    antialiased resize, as the cached images were made), not sampled at S points."""
    batch = tf.shape(images)[0]
    factor = max(1, min(4, (images.shape[1] or image_size) // image_size))
    x = tf.image.crop_and_resize(images, params["boxes"], tf.range(batch), [image_size * factor, image_size * factor])
    if factor > 1:
        x = tf.nn.avg_pool2d(x, factor, factor, "VALID")
    x = _select(params["flip"], tf.reverse(x, axis=[2]), x)
    x = _select(params["vertical_flip"], tf.reverse(x, axis=[1]), x)
    if "quarter_turns" in params:
        x = _rotate_quarter_turns(x, params["quarter_turns"])
    if "jitter" in params:
        x = _color_jitter(x, params)
    if "grayscale" in params:
        x = _select(params["grayscale"], tf.repeat(_gray(x), 3, axis=-1), x)
    if "blur" in params:
        x = _gaussian_blur(x, params["blur_sigma"], params["blur"], blur_kernel_size(image_size))
    return tf.clip_by_value(x, 0.0, 1.0)


@keras.saving.register_keras_serializable(package="fgssl_tf")
class SimCLRAugmentation(keras.layers.Layer):
    """uint8 or float images -> one random view, parameters drawn for the global batch.

    call(images, seed, offset=0, global_batch=None): `seed` is a [2] int tensor,
    `offset` the index of this replica's first image in the global batch.
    """

    def __init__(self, image_size: int, config: AugmentConfig | None = None, **kwargs):
        super().__init__(**kwargs)
        self.image_size = image_size
        self.config = config or AugmentConfig()

    def call(self, images, seed, offset=0, global_batch=None):
        x = tf.image.convert_image_dtype(images, tf.float32) if images.dtype == tf.uint8 else images
        local_batch = tf.shape(x)[0]
        if global_batch is None:
            global_batch = local_batch
        height, width = x.shape[1], x.shape[2]
        params = sample_view_params(seed, global_batch, height, width, self.config)
        params = {
            key: value if key == "jitter_order" else value[offset : offset + local_batch]
            for key, value in params.items()
        }
        return apply_view(x, params, self.image_size)

    def get_config(self):
        config = super().get_config()
        config.update(image_size=self.image_size, config=dataclasses.asdict(self.config))
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["config"] = AugmentConfig(**config["config"])
        return cls(**config)
