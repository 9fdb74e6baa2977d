"""Looking inside: Grad-CAM finds evidence where it was put; the evaluation tool's classifiers,
plots, the Grad-CAM tool and the embeddings tool work end to end."""

import os

import keras
import numpy as np
import pytest
from conftest import TINY_BACKBONE
from PIL import Image

from fgssl_tf import gradcam
from fgssl_tf.errors import FgsslError
from fgssl_tf.evaluation import EvalConfig, evaluate, protocols
from fgssl_tf.models.resnet import stage_output_names


def _quadrant_data(count, seed):
    """Noise images; class 1 carries a bright 6x6 square somewhere in the top-left quadrant, class 0 none."""
    rng = np.random.RandomState(seed)
    images = rng.uniform(0.0, 0.4, size=(count, 32, 32, 3)).astype(np.float32)
    labels = rng.randint(0, 2, size=count)
    for image, label in zip(images, labels):
        if label:
            top, left = rng.randint(0, 11, size=2)
            image[top : top + 6, left : left + 6] = 1.0
    return images, labels


@pytest.fixture(scope="module")
def quadrant_cnn():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1")(inputs)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    model = keras.Model(inputs, keras.layers.Dense(2, name="logits")(x), name="quadrant_cnn")
    model.compile(
        keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"]
    )
    images, labels = _quadrant_data(512, 0)
    model.fit(images, labels, epochs=8, batch_size=32, verbose=0)
    return model


@pytest.mark.parametrize("method", gradcam.METHODS)
def test_grad_cam_mass_lies_in_the_quadrant_that_holds_the_evidence(quadrant_cnn, method):
    images, labels = _quadrant_data(64, 1)
    positives = images[labels == 1]
    assert np.mean(np.argmax(quadrant_cnn.predict(images, verbose=0), axis=1) == labels) > 0.9  # it learned the task
    heatmaps, predictions, layer = gradcam.grad_cam(quadrant_cnn, positives, target=1, method=method)
    assert layer == "conv2" and heatmaps.shape == positives.shape[:3]
    assert heatmaps.min() >= 0.0 and heatmaps.max() <= 1.0 + 1e-6
    masses = np.array([gradcam.quadrant_mass(h) for h in heatmaps])
    assert masses[:, 0].mean() > 0.6, masses.mean(axis=0)  # top-left: where the square is
    assert (masses.argmax(axis=1) == 0).mean() > 0.8


def test_unknown_layer_lists_the_valid_names(quadrant_cnn):
    with pytest.raises(FgsslError, match="--layer='layer4' is not a spatial layer.*valid names: conv1, conv2"):
        gradcam.grad_cam(quadrant_cnn, np.zeros([1, 32, 32, 3], np.float32), layer_name="layer4")
    with pytest.raises(FgsslError, match="out of range: the model has 2 outputs"):
        gradcam.grad_cam(quadrant_cnn, np.zeros([1, 32, 32, 3], np.float32), target=5)


def test_linear_probe_folded_into_keras_predicts_as_sklearn(trained_encoder, elpv_small):
    from fgssl_tf import export as export_lib

    _, version = trained_encoder
    serving = export_lib.ServingEncoder(version)
    encoder = export_lib.load_keras_encoder(version)
    features = {name: serving.embed(elpv_small.split(name)[0]) for name in ("train", "val", "test")}
    result = protocols.linear_probe(
        (features["train"], elpv_small.train_labels),
        (features["val"], elpv_small.val_labels),
        (features["test"], elpv_small.test_labels),
        4,
        0,
        "accuracy",
    )
    classifier = protocols.linear_probe_as_keras(encoder, result.classifier)
    x = export_lib.preprocess(elpv_small.test_images, 32)
    keras_predictions = np.argmax(classifier.predict(x, verbose=0), axis=1)
    assert np.mean(keras_predictions == result.test_predictions) > 0.99


def test_report_plots_classifier_and_the_grad_cam_tool(trained_encoder, elpv_small, tmp_path, run_tool):
    _, version = trained_encoder
    report = evaluate(
        EvalConfig(encoder=version, protocol="linear", output_dir=str(tmp_path / "report")), splits=elpv_small
    )
    folder = report["output_dir"]
    for name in ("confusion_matrix.png", "recall.png"):
        with Image.open(os.path.join(folder, name)) as picture:
            assert picture.format == "PNG" and picture.size[0] > 200 and picture.size[1] > 200
    assert os.path.isfile(os.path.join(folder, "classifier.keras"))

    out = tmp_path / "cams"
    result = run_tool(
        "gradcam",
        [
            f"--model={folder}",
            "--dataset=elpv",
            "--max_images=4",
            f"--output_dir={out}",
            f"--logdir={tmp_path / 'tb'}",
            "--method=gradcam++",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    pngs = sorted(os.listdir(out))
    assert len(pngs) == 4 and all("_pred-" in name for name in pngs)
    for name in pngs:
        with Image.open(out / name) as picture:
            assert picture.size == (64, 32)  # image | overlay, at the report's 32 px
    assert os.listdir(tmp_path / "tb")
    bad = run_tool("gradcam", [f"--model={folder}", "--layer=nope", f"--output_dir={out}"], cwd=tmp_path)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    last_stage = stage_output_names(TINY_BACKBONE.name)[-1]  # the last spatial layer, Grad-CAM's default
    assert "valid names: " in bad.stderr.strip().splitlines()[-1] and last_stage in bad.stderr


def test_embeddings_tool_writes_the_map_and_the_projector(trained_encoder, tmp_path, run_tool):
    _, version = trained_encoder
    out = tmp_path / "emb"
    result = run_tool(
        "embeddings",
        [f"--encoder={version}", "--max_images=100", f"--output_dir={out}", "--thumbnail=16"],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with Image.open(out / "tsne.png") as picture:
        assert picture.size == (700, 600)
    lines = (out / "metadata.tsv").read_text().splitlines()
    count = len(lines) - 1
    assert lines[0] == "index\tclass" and 90 <= count <= 100
    side = int(np.ceil(np.sqrt(count)))
    with Image.open(out / "sprite.png") as picture:
        assert picture.size == (side * 16, side * 16)
    config = (out / "projector_config.pbtxt").read_text()
    assert "sprite.png" in config and "metadata.tsv" in config


def test_grad_cam_file_names_hold_any_class_name(tmp_path):
    """tools/gradcam.py names its files after images and classes; a '/' in one made a path that does not exist."""
    for name in ("000_test3_good/bad_pred-a/b", "../../escape", ".hidden", "", "x" * 300, "nul\0byte", "é ü"):
        part = gradcam.file_name_part(name)
        assert part and "/" not in part and "\0" not in part and not part.startswith(".") and len(part) <= 80
        path = tmp_path / (part + ".png")
        Image.new("RGB", (2, 2)).save(path)
        assert path.parent == tmp_path and path.is_file()
