"""Shipping the classifier: SavedModel for TF Serving, TFLite float32 and int8, .keras files that load
without fgssl_tf, and tools/predict.py. The classifier is the trained_encoder fine-tuned for one epoch."""

import json
import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import TINY_BACKBONE, write_image

from fgssl_tf import export
from fgssl_tf import export_classifier as ship
from fgssl_tf.errors import FgsslError
from fgssl_tf.evaluation import EvalConfig, evaluate
from fgssl_tf.models import build_resnet
from fgssl_tf.models import layers as fgssl_layers


@pytest.fixture(scope="module")
def shipped(trained_encoder, elpv_small, elpv_splits, tmp_path_factory):
    """(export summary, report folder): fine-tuned on elpv_small, TFLite measured on the whole elpv test split."""
    tmp_path = tmp_path_factory.mktemp("ship")
    config = EvalConfig(
        encoder=trained_encoder[1],
        protocol="finetune",
        finetune_epochs=1,
        finetune_learning_rate=1e-3,
        output_dir=str(tmp_path / "report"),
    )
    report = evaluate(config, splits=elpv_small)
    export_path = str(tmp_path / "savedmodels" / "elpv_classifier")
    summary = ship.export_classifier(ship.ClassifierExportConfig(report["output_dir"], export_path), splits=elpv_splits)
    print("\n".join(ship.summary_lines(summary)))
    return summary, report["output_dir"]


def _keras_probabilities(path, images):
    model = keras.saving.load_model(path, compile=False)
    return tf.nn.softmax(export.call(model, export.preprocess(tf.constant(images), 32))).numpy()


def test_layout_and_class_names_inside_the_model(shipped, elpv_splits):
    summary, _ = shipped
    version = summary["saved_model"]
    assert os.path.basename(version) == "1"
    for name in (
        "saved_model.pb",
        "variables",
        ship.CLASSIFIER_FILE,
        ship.TFLITE_FLOAT_FILE,
        ship.TFLITE_INT8_FILE,
        ship.TFLITE_METADATA_FILE,
        export.METADATA_FILE,
    ):
        assert os.path.exists(os.path.join(version, name)), name
    metadata = export.read_metadata(version)
    assert metadata["kind"] == "classifier" and metadata["image_size"] == 32
    assert metadata["class_names"] == list(elpv_splits.class_names) and metadata["tflite"]["image_size"] == 32
    loaded = tf.saved_model.load(version)
    assert [n.decode() for n in loaded.class_names.numpy()] == list(elpv_splits.class_names)
    outputs = loaded.signatures["predict"](images=tf.constant(elpv_splits.test_images[:3]))
    assert outputs["embedding"].shape == (3, 64) and outputs["logits"].shape == (3, 4)
    names = [n.decode() for n in outputs["class_name"].numpy()]
    assert names == [elpv_splits.class_names[i] for i in outputs["class_index"].numpy()]


def test_saved_model_equals_the_keras_classifier_on_the_whole_test_split(shipped, elpv_splits):
    summary, report_dir = shipped
    images = elpv_splits.test_images  # all 524
    served = ship.load_classifier(os.path.dirname(summary["saved_model"])).probabilities(images)
    for folder in (report_dir, summary["saved_model"]):
        keras_file = os.path.join(folder, ship.CLASSIFIER_FILE)
        expected = _keras_probabilities(keras_file, images)
        assert np.array_equal(np.argmax(served, 1), np.argmax(expected, 1))
        np.testing.assert_allclose(served, expected, atol=1e-5, rtol=0)


def test_tflite_float32_agrees_and_int8_stays_within_two_points(shipped, elpv_splits):
    """On the tiny 1-epoch model most images go to the majority class, which makes the int8 bar
    easier than on a trained model; the figures are printed (pytest -s) with the sizes."""
    summary, _ = shipped
    info = summary["tflite_report"]
    images, labels = elpv_splits.test_images, elpv_splits.test_labels
    assert info["test_images"] == len(labels) == 524
    keras_file = os.path.join(summary["saved_model"], ship.CLASSIFIER_FILE)
    keras_classes = np.argmax(_keras_probabilities(keras_file, images), 1)
    float_classes = np.argmax(ship.load_classifier(summary["tflite_float32"]).probabilities(images), 1)
    int8_classes = np.argmax(ship.load_classifier(summary["tflite_int8"]).probabilities(images), 1)
    assert np.mean(float_classes == keras_classes) >= 0.995
    float_accuracy, int8_accuracy = np.mean(float_classes == labels), np.mean(int8_classes == labels)
    assert abs(int8_accuracy - float_accuracy) <= 0.02
    assert info["float32"]["test_accuracy"] == pytest.approx(float_accuracy)
    assert info["int8"]["test_accuracy"] == pytest.approx(int8_accuracy)
    assert info["int8"]["size_bytes"] < info["float32"]["size_bytes"] / 2
    lines = "\n".join(ship.summary_lines(summary))
    assert f"{info['float32']['size_bytes']} bytes, accuracy {float_accuracy:.4f}" in lines
    assert f"{info['int8']['size_bytes']} bytes, accuracy {int8_accuracy:.4f}" in lines


BAD_INPUTS = {
    "dtype": (np.zeros((1, 32, 32, 3), np.float32), "uint8 images"),
    "rank": (np.zeros((32, 32, 3), np.uint8), r"batch \[batch, height, width, 1\|3\|4\]"),
    "channels": (np.zeros((1, 32, 32, 2), np.uint8), r"batch \[batch, height, width, 1\|3\|4\]"),
    "empty batch": (np.zeros((0, 32, 32, 3), np.uint8), "empty batch"),
}


@pytest.mark.parametrize("kind", ["saved_model", "tflite_float32", "tflite_int8", "keras"])
@pytest.mark.parametrize("problem", list(BAD_INPUTS))
def test_bad_input_to_each_export_is_a_clear_message(shipped, kind, problem):
    summary = shipped[0]
    path = os.path.join(summary["saved_model"], ship.CLASSIFIER_FILE) if kind == "keras" else summary[kind]
    images, message = BAD_INPUTS[problem]
    with pytest.raises(FgsslError, match=message):
        ship.load_classifier(path).probabilities(images)


@pytest.mark.parametrize("problem", list(BAD_INPUTS))
def test_bad_input_to_the_serving_signature_is_a_clear_message(shipped, problem):
    """What a TF Serving client calling the signature directly gets."""
    signature = tf.saved_model.load(shipped[0]["saved_model"]).signatures["serving_default"]
    images, _ = BAD_INPUTS[problem]
    message = {
        "dtype": "uint8",
        "rank": r"shape \[batch, height, width, channels\]",
        "channels": r"1 \(gray\), 3 \(RGB\) or 4",
        "empty batch": "empty batch",
    }[problem]
    with pytest.raises((tf.errors.InvalidArgumentError, TypeError, ValueError), match=message):
        signature(images=tf.constant(images))


@pytest.mark.parametrize("missing", ["class_names", "image_size"])
def test_export_refuses_a_report_without_class_names_or_image_size(shipped, tmp_path, missing, run_tool):
    report_dir = tmp_path / "report"
    shutil.copytree(shipped[1], report_dir)
    report = json.loads((report_dir / "report.json").read_text())
    del report[missing]
    (report_dir / "report.json").write_text(json.dumps(report))
    with pytest.raises(FgsslError, match=f"has no {missing}"):
        ship.export_classifier(ship.ClassifierExportConfig(report_dir=str(report_dir), export_path=str(tmp_path / "x")))
    assert not (tmp_path / "x").exists()
    if missing == "class_names":  # the command says it in one line
        run = run_tool("export_classifier", [f"--report={report_dir}", f"--export={tmp_path / 'x'}"], cwd=tmp_path)
        errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
        assert run.returncode == 2 and len(errors) == 1 and "has no class_names" in errors[0], run.stderr
        assert "Traceback" not in run.stderr


def test_keras_files_load_in_a_process_that_never_imports_fgssl_tf(shipped, trained_encoder, elpv_splits, tmp_path):
    summary, report_dir = shipped
    files = {
        "encoder": os.path.join(trained_encoder[1], export.KERAS_FILE),
        "report_classifier": os.path.join(report_dir, ship.CLASSIFIER_FILE),
        "exported_classifier": os.path.join(summary["saved_model"], ship.CLASSIFIER_FILE),
    }
    x = export.preprocess(tf.constant(elpv_splits.test_images[:8]), 32).numpy()
    np.save(tmp_path / "x.npy", x)
    script = (
        "import sys, keras, numpy as np\n"
        f"x = np.load({str(tmp_path / 'x.npy')!r})\n"
        f"for name, path in {files!r}.items():\n"
        "    model = keras.saving.load_model(path, compile=False)\n"
        "    np.save(name + '.npy', np.asarray(model([x] if isinstance(model.input, list) else x, training=False)))\n"
        "assert not [m for m in sys.modules if m.startswith('fgssl_tf')]\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=str(tmp_path), env={**os.environ, "PYTHONPATH": ""})
    for name, path in files.items():
        expected = export.call(keras.saving.load_model(path, compile=False), x)
        np.testing.assert_allclose(np.load(tmp_path / f"{name}.npy"), expected, atol=1e-5)
    expected = trained_encoder[0].model.encoder(x, training=False)  # the trained encoder, fgssl_tf's Conv2D
    np.testing.assert_allclose(np.load(tmp_path / "encoder.npy"), expected, rtol=1e-4, atol=1e-5)
    assert "keras_files_need_fgssl_tf" not in export.read_metadata(trained_encoder[1])


def test_stock_layers_swap_conv_and_caffe_and_name_what_stays_custom():
    encoder = build_resnet(TINY_BACKBONE, 32, pool_grid=2)
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, encoder(fgssl_layers.CaffePreprocess()(inputs)))  # nested, as PMG's
    shipped = export.stock_layers(model, probe_size=32)  # checks the outputs itself
    x = np.random.RandomState(0).uniform(size=(2, 40, 24, 3)).astype(np.float32)  # another size than the probe
    np.testing.assert_allclose(export.call(shipped, x), export.call(model, x), rtol=1e-4, atol=1e-4)
    found = {type(layer) for layer in export._iter_layers(shipped)}
    assert fgssl_layers.Conv2D not in found and fgssl_layers.CaffePreprocess not in found
    assert set(export.custom_layers(shipped)) == {"fgssl_tf>GridAveragePooling"}
    assert "any image size" in export.custom_layers(shipped)["fgssl_tf>GridAveragePooling"]
    fast = export.fast_layers(shipped)  # what fine-tuning trains
    assert fgssl_layers.Conv2D in {type(layer) for layer in export._iter_layers(fast)}
    np.testing.assert_allclose(export.call(fast, x), export.call(model, x), rtol=1e-4, atol=1e-4)


def test_predict_tool_on_a_folder_prints_rows_and_writes_csv(shipped, elpv_splits, tmp_path, run_tool):
    summary, _ = shipped
    folder = tmp_path / "photos"
    for i in range(5):
        write_image(str(folder / f"cell{i}.png"), elpv_splits.test_images[i])
    (folder / "broken.jpg").write_bytes(b"not an image")
    model_root = os.path.dirname(summary["saved_model"])
    run = run_tool(
        "predict", [f"--model={model_root}", f"--images={folder}", f"--output={tmp_path / 'out.csv'}"], cwd=tmp_path
    )
    assert run.returncode == 0, run.stderr
    rows = [line.split(",") for line in run.stdout.splitlines() if line.startswith(str(folder))]
    assert len(rows) == 5
    assert [line for line in run.stderr.splitlines() if line.startswith("warning:")] == [
        f"warning: skipped unreadable image 1 of 1: {folder / 'broken.jpg'}"
    ]
    expected = ship.load_classifier(summary["saved_model"]).probabilities(elpv_splits.test_images[:5])
    assert [r[1] for r in rows] == [elpv_splits.class_names[c] for c in np.argmax(expected, 1)]
    np.testing.assert_allclose([float(r[2]) for r in rows], expected.max(1), atol=1e-4)
    csv_lines = (tmp_path / "out.csv").read_text().splitlines()
    assert csv_lines[0] == "file,class,probability" and len(csv_lines) == 6


def test_evaluate_exports_the_classifier_and_refuses_knn(trained_encoder, tmp_path, run_tool):
    run = run_tool(
        "evaluate",
        [f"--encoder={trained_encoder[1]}", "--protocol=knn", f"--export_classifier={tmp_path / 'c'}"],
        cwd=tmp_path,
    )
    assert run.returncode == 2 and "--protocol=finetune or --protocol=linear" in run.stderr
    run = run_tool(
        "evaluate",
        [
            f"--encoder={trained_encoder[1]}",
            "--protocol=linear",
            "--max_images_per_split=60",
            f"--output_dir={tmp_path / 'r'}",
            f"--export_classifier={tmp_path / 'c'}",
            "--noexport_tflite",
        ],
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    metadata = export.read_metadata(str(tmp_path / "c" / "1"))
    assert metadata["kind"] == "classifier" and metadata["report"]["protocol"] == "linear"
