"""SimCLR view augmentation: shapes, seeds, replica slicing, and the paper's semantics."""

import os

import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO

from fgssl_tf.augment import SimCLRAugmentation, blur_kernel_size, sample_view_params
from fgssl_tf.config import AugmentConfig

IDENTITY = AugmentConfig(
    crop_scale_min=1.0,
    crop_ratio_min=1.0,
    crop_ratio_max=1.0,
    color_jitter_prob=0.0,
    grayscale_prob=0.0,
    blur_prob=0.0,
    horizontal_flip=False,
)


@pytest.fixture(scope="module")
def images(elpv_splits):
    return elpv_splits.train_images[:16]


def seed(a, b=0):
    return tf.constant([a, b], tf.int64)


def test_view_shape_dtype_and_range(images):
    view = SimCLRAugmentation(24)(images, seed=seed(1))
    assert view.shape == (16, 24, 24, 3) and view.dtype == tf.float32
    assert float(tf.reduce_min(view)) >= 0.0 and float(tf.reduce_max(view)) <= 1.0


def test_same_seed_same_view_other_seed_other_view(images):
    aug = SimCLRAugmentation(32)
    a, b, c = aug(images, seed=seed(5)), aug(images, seed=seed(5)), aug(images, seed=seed(6))
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).mean() > 1e-3


def test_replica_slice_equals_global_batch(images):
    aug = SimCLRAugmentation(32)
    full = aug(images, seed=seed(9))
    second_half = aug(images[8:], seed=seed(9), offset=8, global_batch=16)
    np.testing.assert_allclose(full[8:], second_half, atol=1e-6)


def test_identity_settings_return_the_image(images):
    view = SimCLRAugmentation(32, IDENTITY)(images, seed=seed(2))
    np.testing.assert_allclose(view.numpy(), images / 255.0, atol=1e-5)


def test_grayscale_always_gives_equal_channels(images):
    colour = (np.random.RandomState(0).rand(4, 32, 32, 3) * 255).astype(np.uint8)
    config = AugmentConfig(grayscale_prob=1.0, color_jitter_prob=0.0, blur_prob=0.0)
    view = SimCLRAugmentation(32, config)(colour, seed=seed(3)).numpy()
    np.testing.assert_allclose(view[..., 0], view[..., 1], atol=1e-6)
    assert np.abs(view[..., 0] - view[..., 2]).max() < 1e-6


def test_blur_smooths_and_keeps_mean():
    noise = (np.random.RandomState(1).rand(4, 32, 32, 3) * 255).astype(np.uint8)
    config = AugmentConfig(**{**IDENTITY.__dict__, "blur_prob": 1.0, "blur_sigma_min": 1.5, "blur_sigma_max": 2.0})
    blurred = SimCLRAugmentation(32, config)(noise, seed=seed(4)).numpy()
    original = noise / 255.0
    assert blurred.std() < 0.6 * original.std()
    assert blurred.mean() == pytest.approx(original.mean(), abs=0.01)


def test_blur_kernel_is_ten_percent_of_the_image():
    assert blur_kernel_size(512) == 51  # the paper's cv2 kernel at 512 px
    assert blur_kernel_size(64) % 2 == 1 and blur_kernel_size(16) == 3


def test_random_resized_crop_follows_torchvision_bounds():
    config = AugmentConfig()
    params = sample_view_params(seed(11), 2000, 64, 64, config)
    boxes = params["boxes"].numpy()
    height = (boxes[:, 2] - boxes[:, 0]) * 63 + 1
    width = (boxes[:, 3] - boxes[:, 1]) * 63 + 1
    area = height * width / 64**2
    ratio = width / height
    assert boxes.min() >= 0.0 and boxes.max() <= 1.0 + 1e-6
    assert area.min() >= 0.07 and area.max() <= 1.0 + 1e-6
    assert np.percentile(ratio, 5) >= 0.7 and np.percentile(ratio, 95) <= 1.45
    # Colour jitter applies with the paper's probability 0.4, grayscale with 0.2.
    assert params["jitter"].numpy().mean() == pytest.approx(0.4, abs=0.04)
    assert params["grayscale"].numpy().mean() == pytest.approx(0.2, abs=0.03)


def test_layer_config_round_trips():
    layer = SimCLRAugmentation(48, AugmentConfig(blur_prob=0.25), name="views")
    clone = SimCLRAugmentation.from_config(layer.get_config())
    assert clone.image_size == 48 and clone.config.blur_prob == 0.25


def test_reference_loop_view_is_a_simclr_view(images):
    """tools/reference_loop.py's per-image view (the baseline of the speed comparison): the
    output size, values in [0, 1], and a different view on each call."""
    import importlib.util

    from fgssl_tf.config import AugmentConfig

    spec = importlib.util.spec_from_file_location("reference_loop", os.path.join(REPO, "tools", "reference_loop.py"))
    reference_loop = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reference_loop)
    tf.random.set_seed(0)
    views = [reference_loop.reference_view(tf.constant(images[0]), 24, AugmentConfig()).numpy() for _ in range(4)]
    assert all(v.shape == (24, 24, 3) and v.dtype == np.float32 and 0.0 <= v.min() and v.max() <= 1.0 for v in views)
    assert min(np.abs(a - b).mean() for i, a in enumerate(views) for b in views[i + 1 :]) > 1e-3


def test_per_image_select_equals_a_broadcast_where():
    from fgssl_tf.augment import _select

    rng = np.random.RandomState(5)
    a, b = (tf.constant(rng.rand(6, 4, 5, 3), tf.float32) for _ in range(2))
    mask = tf.constant([True, False, False, True, True, False])
    np.testing.assert_array_equal(_select(mask, a, b), tf.where(tf.reshape(mask, [-1, 1, 1, 1]), a, b))


@pytest.mark.parametrize("zero", ["color_jitter_prob", "grayscale_prob", "blur_prob"])
def test_an_op_of_probability_zero_is_skipped_and_the_view_is_the_same_bit_for_bit(images, zero):
    """With probability 0 an op's parameters are left out and apply_view skips it; running the op with
    its every-image mask false (what the views computed before) gives the same pixels exactly."""
    from fgssl_tf.augment import apply_view

    config = AugmentConfig(**{zero: 0.0}, rotate90=True, vertical_flip=True)
    skipped = sample_view_params(seed(12), 16, 32, 32, config)
    computed = sample_view_params(
        seed(12), 16, 32, 32, AugmentConfig(**{zero: 1e-9}, rotate90=True, vertical_flip=True)
    )
    mask = {"color_jitter_prob": "jitter", "grayscale_prob": "grayscale", "blur_prob": "blur"}[zero]
    assert mask not in skipped and not computed[mask].numpy().any()
    x = tf.image.convert_image_dtype(images, tf.float32)
    np.testing.assert_array_equal(apply_view(x, skipped, 24), apply_view(x, computed, 24))
