"""The paper's fine-grained augmentations and the SimCLR variants built from them."""

import os
import random

import numpy as np
import pytest
import tensorflow as tf
from conftest import IMAGE_SIZE, REPO, TINY_BACKBONE, tiny_train_config

from fgssl_tf import fine_grained as fg
from fgssl_tf import trainer
from fgssl_tf.config import AugmentConfig, DataConfig
from fgssl_tf.data import pipeline
from fgssl_tf.errors import FgsslError
from fgssl_tf.pretext import simclr

CONFIG = fg.FineGrainedConfig()
SEED = tf.constant([7, 1], tf.int64)


def _run(name, images, seed=SEED, config=CONFIG):
    side = {"centroids": tf.constant(fg.corner_centroids(np.asarray(images)))} if name in fg.NEEDS_CENTROIDS else None
    params = fg.sample(name, seed, images.shape[0], images.shape[1], config)
    return fg.apply(name, tf.constant(images), params, config, side)


@pytest.mark.parametrize("name", list(fg.OPS))
def test_ops_keep_shape_and_dtype_and_repeat_under_a_seed(name, elpv_splits):
    images = elpv_splits.train_images[:6]
    out = _run(name, images)
    assert out.shape == images.shape and out.dtype == tf.uint8
    floats = tf.image.convert_image_dtype(images, tf.float32)
    out_float = _run(name, floats)
    assert out_float.dtype == tf.float32
    np.testing.assert_array_equal(out_float.numpy(), _run(name, floats).numpy())
    assert not np.array_equal(out_float.numpy(), _run(name, floats, tf.constant([8, 1], tf.int64)).numpy())
    assert not np.array_equal(out.numpy(), images)


@pytest.mark.parametrize("name", ["patch_swap", "random_jigsaw"])
def test_moving_ops_keep_the_pixel_multiset(name, elpv_splits):
    images = elpv_splits.train_images[:6]
    out = _run(name, images).numpy()
    for before, after in zip(images, out):
        np.testing.assert_array_equal(np.sort(before, axis=None), np.sort(after, axis=None))


def test_dcl_only_moves_pixels_of_the_border_cropped_image(elpv_splits):
    images = tf.image.convert_image_dtype(elpv_splits.train_images[:6], tf.float32)
    mosaic = fg.dcl_mosaic(images, fg.sample("dcl", SEED, 6, IMAGE_SIZE, CONFIG), CONFIG).numpy()
    border = fg._px(CONFIG.dcl_border, IMAGE_SIZE, 0)
    side = mosaic.shape[1]
    cropped = images.numpy()[:, border : border + side, border : border + side]
    assert side == (IMAGE_SIZE - 2 * border) // CONFIG.dcl_grid * CONFIG.dcl_grid
    for before, after in zip(cropped, mosaic):
        np.testing.assert_array_equal(np.sort(before, axis=None), np.sort(after, axis=None))
    assert not np.array_equal(cropped, mosaic)


def test_random_jigsaw_is_pmg_jigsaw_generator():
    order = fg.sample_random_jigsaw(SEED, 50, 64, CONFIG)["order"].numpy()
    ours = fg.jigsaw_generator_permutation(tf.constant(order)).numpy()
    for cells, result in zip(order, ours):
        blocks = list(range(16))  # PMG: for each (x, y) in the shuffled list, swap block (0, 0) with it
        for c in cells:
            blocks[0], blocks[c] = blocks[c], blocks[0]
        assert blocks == list(result)
    # PMG's training loop used one order for the whole batch.
    images = tf.random.uniform([3, 32, 32, 3], seed=0)
    shared = fg.random_jigsaw(images, SEED, grid=4, same_for_batch=True)
    first = fg.split_grid(shared, 4, 8)[0]
    sources = [
        int(np.argmin([np.abs(first[s] - fg.split_grid(images, 4, 8)[0][k]).sum() for k in range(16)]))
        for s in range(16)
    ]
    for b in (1, 2):
        np.testing.assert_array_equal(
            fg.split_grid(shared, 4, 8)[b].numpy(), tf.gather(fg.split_grid(images, 4, 8)[b], sources).numpy()
        )


def _dcl_reference(rng: random.Random, n: int) -> list:
    """JDAI-CV/DCL `swap` on cell indices, ported line by line (k = 1, RAN = 2)."""
    cells = list(range(n * n))
    tmpx, tmpy, count_x, count_y = [], [], 0, 0
    for i in range(n * n):
        tmpx.append(cells[i])
        count_x += 1
        tmp = tmpx[count_x - 2 : count_x]
        rng.shuffle(tmp)
        tmpx[count_x - 2 : count_x] = tmp
        if count_x == n:
            tmpy.append(tmpx)
            count_x, count_y, tmpx = 0, count_y + 1, []
        if len(tmpy) >= 1:
            tmp2 = tmpy[count_y - 2 : count_y]
            rng.shuffle(tmp2)
            tmpy[count_y - 2 : count_y] = tmp2
    return [c for row in tmpy for c in row]


def _displacements(orders: np.ndarray, n: int):
    slots = np.arange(n * n)[None, :]
    return slots // n - orders // n, slots % n - orders % n  # row and column moves of each cell


def test_dcl_displacements_match_the_reference_algorithm():
    n, draws = 7, 3000
    ours = fg.dcl_cell_order(fg.sample("dcl", SEED, draws, 64, CONFIG), n).numpy()
    rng = random.Random(0)
    reference = np.array([_dcl_reference(rng, n) for _ in range(draws)])
    assert all(sorted(o) == list(range(n * n)) for o in ours[:50])  # a permutation
    for ours_moves, reference_moves in zip(_displacements(ours, n), _displacements(reference, n)):
        assert ours_moves.min() >= -1 and reference_moves.min() >= -1  # back by at most one cell or row
        for move in range(-1, n):
            assert np.mean(ours_moves == move) == pytest.approx(np.mean(reference_moves == move), abs=0.015), move


def test_gamma_fixes_black_and_white_and_is_monotonic():
    ramp = np.tile(np.arange(256, dtype=np.uint8)[None, :, None], [256, 1, 3])[None].repeat(8, axis=0)
    params = fg.sample("gamma", SEED, 8, 256, CONFIG)
    out = fg.apply("gamma", tf.constant(ramp), params, CONFIG).numpy()[:, 0, :, 0].astype(int)
    assert (out[:, 0] == 0).all() and (out[:, 255] == 255).all()
    assert (np.diff(out, axis=1) >= 0).all()
    gammas = params["gamma"].numpy()
    assert ((gammas >= 0.5) & (gammas <= 2.5)).all() and np.allclose(gammas * 100, np.round(gammas * 100))
    assert len(set(gammas.tolist())) > 1


def test_coarse_dropout_zeroes_between_the_smallest_and_largest_hole_area():
    size, batch = 128, 64
    images = tf.ones([batch, size, size, 3])
    out = fg.apply("coarse_dropout", images, fg.sample("coarse_dropout", SEED, batch, size, CONFIG), CONFIG).numpy()
    zeroed = (out[..., 0] == 0).sum(axis=(1, 2))
    smallest = fg._px(CONFIG.dropout_size_min, size) ** 2
    largest = CONFIG.dropout_holes_max * fg._px(CONFIG.dropout_size_max, size) ** 2
    assert (zeroed >= smallest).all() and (zeroed <= largest).all(), (zeroed.min(), zeroed.max())
    assert (out[out != 0] == 1).all()  # nothing else touched


def test_cropped_regions_centre_on_corners_on_a_white_canvas():
    size = 96
    image = np.full((1, size, size, 3), 128, np.uint8)
    yy, xx = np.mgrid[0:24, 0:24]
    image[0, 60:84, 56:80] = ((yy // 6 + xx // 6) % 2 * 255)[..., None]  # corners only down right
    centroid = fg.corner_centroids(image)[0]
    assert 58 <= centroid[0] <= 86 and 54 <= centroid[1] <= 82
    params = fg.sample("cropped_regions", SEED, 1, size, CONFIG)
    out = fg.apply(
        "cropped_regions", tf.constant(image), params, CONFIG, {"centroids": tf.constant([centroid])}
    ).numpy()[0]
    offset = fg._px(CONFIG.crop_offset, size, 0)
    height, width = int(params["height"][0]), int(params["width"][0])
    window = out[offset : offset + height, offset : offset + width]
    top = int(np.clip(round(centroid[0]) - height // 2, 0, size - height))
    left = int(np.clip(round(centroid[1]) - width // 2, 0, size - width))
    np.testing.assert_array_equal(window, image[0, top : top + height, left : left + width])
    outside = np.ones((size, size), bool)
    outside[offset : offset + height, offset : offset + width] = False
    assert (out[outside] == 255).all()


# --- SimCLR views ---------------------------------------------------------------------

PLAIN = AugmentConfig(random_crop=False, color_jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0)


def _model(tmp_path, learning_rate=None, **config):
    train = tiny_train_config(tmp_path, learning_rate=learning_rate)
    return trainer.build_pretext_model(
        train, DataConfig(image_size=IMAGE_SIZE), TINY_BACKBONE, simclr.SimCLRConfig(**config)
    )


def _gammas(view1, view2):
    """Per image, the gamma that maps view 1 onto view 2 (read off mid-grey pixels)."""
    x, y = view1.numpy(), view2.numpy()
    mask = (x > 0.2) & (x < 0.8) & (y > 0.01)
    return np.array([np.median(np.log(y[i][mask[i]]) / np.log(x[i][mask[i]])) for i in range(len(x))])


def test_views_pair_by_identity_and_offline_draws_stay_per_image(tmp_path, elpv_splits):
    images = elpv_splits.train_images[:8]
    model = _model(tmp_path, augment=PLAIN, view2_pre=("gamma",), extra_mode="offline")
    model.prepare_data(images)
    table = model.image_tables["train"]["view2_pre_0"]["gamma"].numpy()
    ids = tf.range(8)
    view1, view2 = model.views(tf.constant(images), tf.constant([1, 5], tf.int64), ids)
    np.testing.assert_allclose(view1.numpy(), tf.image.convert_image_dtype(images, tf.float32).numpy(), atol=1e-6)
    np.testing.assert_allclose(_gammas(view1, view2), table, atol=0.02)  # image i got its own gamma
    order = np.array([3, 1, 7, 0, 2, 6, 5, 4])  # another step, another batch order: the same gamma per image
    view1, view2 = model.views(tf.constant(images[order]), tf.constant([1, 6], tf.int64), tf.constant(order))
    np.testing.assert_allclose(_gammas(view1, view2), table[order], atol=0.02)
    online = _model(tmp_path / "online", augment=PLAIN, view2_pre=("gamma",), extra_mode="online")
    first = _gammas(*online.views(tf.constant(images), tf.constant([1, 5], tf.int64), ids))
    second = _gammas(*online.views(tf.constant(images), tf.constant([1, 6], tf.int64), ids))
    assert np.abs(first - second).max() > 0.05


def test_bad_variant_settings_are_refused_before_training(tmp_path):
    with pytest.raises(FgsslError, match="unknown augmentation 'sepia'"):
        _model(tmp_path, view2_pre=("sepia",))
    with pytest.raises(FgsslError, match="view2_pre_ops"):
        _model(tmp_path, view2_post=("cropped_regions",))
    with pytest.raises(FgsslError, match="half the image side"):
        _model(tmp_path, view2_pre=("patch_swap",), fine_grained=fg.FineGrainedConfig(swap_patch=0.7))


VARIANTS = {
    "original": {},
    "gamma": dict(
        augment=AugmentConfig(horizontal_flip=True, color_jitter_prob=0.3, blur_prob=0.0),
        view2_pre=("gamma",),
        extra_mode="offline",
    ),
    "coarse_dropout": dict(
        augment=AugmentConfig(random_crop=False, horizontal_flip=True, color_jitter_prob=0.3, blur_prob=0.0),
        view2_pre=("coarse_dropout",),
        extra_mode="offline",
    ),
    "random_swapping": dict(
        augment=AugmentConfig(random_crop=False, horizontal_flip=True, color_jitter_prob=0.3, blur_prob=0.0),
        view2_pre=("patch_swap",),
        extra_mode="offline",
    ),
    "cropped_regions": dict(
        augment=AugmentConfig(random_crop=False, horizontal_flip=True, color_jitter_prob=0.3, blur_prob=0.0),
        view2_pre=("cropped_regions",),
        extra_mode="offline",
    ),
    "random_jigsaw": dict(
        augment=AugmentConfig(random_crop=False, color_jitter_prob=0.4, blur_prob=0.0), view1_post=("random_jigsaw",)
    ),
    "dcl_jigsaw": dict(
        augment=AugmentConfig(random_crop=False, color_jitter_prob=0.4, blur_prob=0.0), view1_pre=("dcl",)
    ),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_each_variant_trains_with_a_falling_loss(variant, tmp_path, elpv_small):
    """60 steps on one batch of 32 real images: the NT-Xent of fixed views of those images falls.
    (On held-out images the gamma variant needs far longer than a test can wait: gamma in
    [0.5, 2.5] hides the brightness an untrained encoder matches grey solar cells by.)"""
    model = _model(tmp_path, learning_rate=3e-3, projection_dim=64, hidden_dim=64, **VARIANTS[variant])
    images = elpv_small.train_images[:32]
    model.prepare_data(images)

    def fixed_view_loss():
        views = model.views(tf.constant(images), tf.constant([123, 0], tf.int64), tf.range(32))
        return float(model._loss(*views, training=True)[0])

    before = fixed_view_loss()
    model.fit(pipeline.epoch_batches(images, np.arange(32), 32, 0, 0, 1, 60), epochs=1, steps_per_epoch=60, verbose=0)
    after = fixed_view_loss()
    assert after < before - 0.05, (before, after)


SHOWN = ["gamma", "cropped_regions", "dcl_jigsaw"]


@pytest.fixture(scope="module")
def shown_grids(tmp_path_factory):
    """tools/show_augmentations.py with each variant's flagfile, in this process: {variant: (exit code, stderr)}.
    Its flags are parsed afresh for each, as `python tools/show_augmentations.py --flagfile=...` parses them."""
    import contextlib
    import io

    from conftest import load_tool

    from fgssl_tf import cli

    tool = load_tool("show_augmentations")
    tmp_path = tmp_path_factory.mktemp("show_augmentations")
    results, cwd = {}, os.getcwd()
    os.chdir(tmp_path)
    try:
        for variant in SHOWN:
            flagfile = os.path.join(REPO, "flags", f"simclr_{variant}.cfg")
            grid = os.path.join(tmp_path, variant, "grid.png")
            args = [f"--flagfile={flagfile}", f"--output={grid}", "--num_images=3", "--max_images_per_split=40"]
            stderr = io.StringIO()
            with contextlib.redirect_stderr(stderr):
                code = cli.invoke(tool.main, tool.FLAGS, ["show_augmentations.py", *args, "--image_size=48"])
            results[variant] = (code, stderr.getvalue())
    finally:
        os.chdir(cwd)
    return results, tmp_path


@pytest.mark.slow
@pytest.mark.parametrize("variant", SHOWN)
def test_show_augmentations_writes_the_flagfile_grid(variant, shown_grids):
    from PIL import Image

    results, tmp_path = shown_grids
    output = tmp_path / variant / "grid.png"
    code, stderr = results[variant]
    assert code == 0, stderr[-2000:]
    with Image.open(output) as grid:
        assert grid.size == (3 * 48, 3 * 48)  # rows: images; columns: original | view 1 | view 2


def test_ops_run_inside_tf_data_as_keras_layers(elpv_splits):
    import keras

    layer = fg.FineGrainedAugmentation("dcl", fg.FineGrainedConfig(dcl_grid=3))
    restored = fg.FineGrainedAugmentation.from_config(layer.get_config())
    assert restored.op == "dcl" and restored.config.dcl_grid == 3
    dataset = tf.data.Dataset.from_tensor_slices(elpv_splits.train_images[:8]).batch(4)
    dataset = dataset.map(lambda x: layer(x, seed=tf.constant([3, 0], tf.int64)))
    batches = list(dataset.as_numpy_iterator())
    assert [b.shape for b in batches] == [(4, IMAGE_SIZE, IMAGE_SIZE, 3)] * 2 and batches[0].dtype == np.uint8
    direct = layer(tf.constant(elpv_splits.train_images[:4]), seed=tf.constant([3, 0], tf.int64))
    np.testing.assert_array_equal(batches[0], direct.numpy())
    assert keras.saving.get_registered_object("fgssl_tf>FineGrainedAugmentation") is fg.FineGrainedAugmentation
