"""The exported SavedModel: TF Serving layout, plain-TensorFlow reload, input checks."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fgssl_tf import export
from fgssl_tf.errors import FgsslError


def test_layout_and_keras_copy(trained_encoder):
    _, path = trained_encoder
    assert os.path.basename(path) == "1"
    for name in ("saved_model.pb", "variables", export.KERAS_FILE, export.METADATA_FILE):
        assert os.path.exists(os.path.join(path, name)), name
    assert not [d for d in os.listdir(os.path.dirname(path)) if d.startswith(".staging")]
    metadata = export.read_metadata(path)
    assert metadata["image_size"] == 32 and metadata["pretext"] == "simclr" and metadata["seed"] == 0


def test_reloads_with_plain_tensorflow_and_matches_keras(trained_encoder, elpv_small, tmp_path):
    result, path = trained_encoder
    images = elpv_small.test_images[:5]
    expected = result.model.encoder(export.preprocess(tf.constant(images), 32), training=False).numpy()
    np.save(tmp_path / "images.npy", images)
    script = (
        "import sys, numpy as np, tensorflow as tf\n"
        f"model = tf.saved_model.load({path!r})\n"
        f"out = model.signatures['serving_default'](images=tf.constant(np.load({str(tmp_path / 'images.npy')!r})))\n"
        f"np.save({str(tmp_path / 'out.npy')!r}, out['embedding'].numpy())\n"
        "assert not [m for m in sys.modules if m.startswith('fgssl_tf')]\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=str(tmp_path), env={**os.environ, "PYTHONPATH": ""})
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), expected, rtol=1e-4, atol=1e-5)


def test_saved_model_cli_lists_the_signature(trained_encoder):
    _, path = trained_encoder
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    out = subprocess.run(
        [cli, "show", "--dir", path, "--tag_set", "serve", "--signature_def", "serving_default"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "inputs['images']" in out and "DT_UINT8" in out and "outputs['embedding']" in out


def test_any_size_gray_and_rgba_batches(trained_encoder):
    encoder = export.ServingEncoder(trained_encoder[1])
    rng = np.random.RandomState(0)
    rgb = encoder(rng.randint(0, 255, (1, 57, 91, 3)).astype(np.uint8))
    gray = encoder(rng.randint(0, 255, (3, 20, 20, 1)).astype(np.uint8))
    rgba = encoder(rng.randint(0, 255, (2, 40, 40, 4)).astype(np.uint8))
    assert rgb.shape == (1, 8 * 8) and gray.shape == (3, 64) and rgba.shape == (2, 64)
    # A gray image is the RGB image with equal channels.
    one = rng.randint(0, 255, (1, 32, 32, 1)).astype(np.uint8)
    np.testing.assert_allclose(encoder(one), encoder(np.repeat(one, 3, axis=-1)), atol=1e-5)


def test_wrong_input_gives_a_clear_error(trained_encoder):
    path = trained_encoder[1]
    encoder = export.ServingEncoder(path)
    with pytest.raises(FgsslError, match="uint8"):
        encoder(np.zeros((1, 32, 32, 3), np.float32))
    with pytest.raises(FgsslError, match="batch"):
        encoder(np.zeros((32, 32), np.uint8))
    # A serving client calling the signature directly gets the same explanations.
    signature = tf.saved_model.load(path).signatures["serving_default"]
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"shape \[batch, height, width, channels\]"):
        signature(images=tf.zeros((4, 5), tf.uint8))
    with pytest.raises(tf.errors.InvalidArgumentError, match="1 \\(gray\\), 3 \\(RGB\\) or 4"):
        signature(images=tf.zeros((1, 8, 8, 2), tf.uint8))
    with pytest.raises(tf.errors.InvalidArgumentError, match="uint8"):
        signature(images=tf.zeros((1, 8, 8, 3), tf.float32))
    with pytest.raises(FgsslError, match="saved_model.pb"):
        export.ServingEncoder(os.path.dirname(os.path.dirname(path)))


def test_model_root_resolves_to_the_newest_version(trained_encoder, tmp_path):
    result, path = trained_encoder
    root = os.path.dirname(path)
    assert export.resolve_version_dir(root) == path
    newer = export.export_encoder(result.model.encoder, os.path.dirname(root), os.path.basename(root), 32, {})
    assert os.path.basename(newer) == "2" and export.resolve_version_dir(root) == newer


def test_failed_export_leaves_no_version_behind(tmp_path, trained_encoder, monkeypatch):
    """A disk that fills half-way (here: the .keras write fails) leaves earlier versions alone."""
    result, _ = trained_encoder
    encoder = result.model.encoder
    first = export.export_encoder(encoder, str(tmp_path), "x", 32, {})

    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(type(encoder), "save", disk_full)
    with pytest.raises(
        FgsslError, match="version 2 failed .*No space left on device.*version 1 of x is intact.*re-run"
    ):
        export.export_encoder(encoder, str(tmp_path), "x", 32, {})
    assert sorted(os.listdir(tmp_path / "x")) == ["1"]
    assert export.ServingEncoder(first).image_size == 32


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    batch=st.integers(1, 5),
    height=st.integers(1, 120),
    width=st.integers(1, 120),
    channels=st.sampled_from([1, 2, 3, 4, 5]),
    rank_change=st.sampled_from([0, 0, 0, -1, 1]),
    dtype=st.sampled_from([tf.uint8, tf.uint8, tf.float32, tf.int32]),
)
def test_signature_embeds_every_valid_input_and_explains_every_invalid_one(
    trained_encoder, batch, height, width, channels, rank_change, dtype
):
    """What a TF Serving client can send: valid batches give finite embeddings of the
    export's size; a wrong dtype, rank or channel count gives an explanation, not a crash."""
    signature = _signature(trained_encoder[1])
    shape = (
        [batch, height, width, channels][: 4 + rank_change] if rank_change <= 0 else [batch, height, width, channels, 1]
    )
    images = tf.cast(tf.random.stateless_uniform(shape, seed=[batch, height], maxval=255, dtype=tf.int32), dtype)
    if dtype != tf.uint8:
        with pytest.raises((tf.errors.InvalidArgumentError, TypeError, ValueError), match="uint8|dtype|type"):
            signature(images=images)
    elif rank_change or channels not in (1, 3, 4):
        with pytest.raises(
            tf.errors.InvalidArgumentError, match=r"\[batch, height, width, channels\]|1 \(gray\), 3 \(RGB\) or 4"
        ):
            signature(images=images)
    else:
        embedding = signature(images=images)["embedding"].numpy()
        assert embedding.shape == (batch, 64) and np.all(np.isfinite(embedding))


def test_large_batches_embed_like_single_images(trained_encoder):
    signature = _signature(trained_encoder[1])
    images = tf.constant(np.random.RandomState(1).randint(0, 255, (300, 32, 32, 3)).astype(np.uint8))
    together = signature(images=images)["embedding"].numpy()
    alone = np.concatenate([signature(images=images[i : i + 1])["embedding"].numpy() for i in (0, 150, 299)])
    np.testing.assert_allclose(together[[0, 150, 299]], alone, rtol=1e-4, atol=1e-5)


_LOADED: dict = {}


def _signature(path):
    """The export's serving signature, loaded once (the loaded object is kept alive with it)."""
    if path not in _LOADED:
        _LOADED[path] = tf.saved_model.load(path)
    return _LOADED[path].signatures["serving_default"]


def test_an_empty_image_gets_the_signatures_message(trained_encoder):
    path = trained_encoder[1]
    signature = tf.saved_model.load(path).signatures["serving_default"]
    for shape in ((1, 0, 0, 3), (2, 5, 0, 1)):
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"images must be at least 1 x 1 pixels"):
            signature(images=tf.zeros(shape, tf.uint8))
    with pytest.raises(FgsslError, match="at least 1 x 1; got shape"):
        export.ServingEncoder(path)(np.zeros((1, 0, 0, 3), np.uint8))
