"""Shipping a trained classifier (an evaluation report's `classifier.keras`) for TF Serving and phones.

Layout (one TF Serving model version, `--model_base_path=savedmodels/NAME`):

    NAME/VERSION/saved_model.pb, variables/   serving_default: images -> probabilities, class_index, class_name
                                              predict: the same, plus logits and embedding
    NAME/VERSION/classifier.keras             [0, 1] RGB at the image size -> logits (stock Keras layers)
    NAME/VERSION/classifier_float32.tflite    float32 [B, S, S, 3] in [0, 1] -> probabilities
    NAME/VERSION/classifier_int8.tflite       the same, int8 post-training quantised (calibrated on training images)
    NAME/VERSION/tflite_metadata.json         what an app needs: input size and layout, class names
    NAME/VERSION/fgssl_metadata.json          class names, image size, the report, TFLite sizes and accuracies

The SavedModel takes uint8 images of any size, as the encoder exports do (fgssl_tf/export.py).
A TFLite model has one fixed input size: an app squash-resizes to S x S and scales to [0, 1].
`load_classifier` opens any of them (and a report folder) behind one interface, used by
tools/predict.py.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import warnings

import keras
import numpy as np
import tensorflow as tf

from fgssl_tf import export as export_lib
from fgssl_tf.data import preprocess
from fgssl_tf.data.images import to_rgb
from fgssl_tf.errors import FgsslError

log = logging.getLogger(__name__)

REPORT_FILE = "report.json"
CLASSIFIER_FILE = "classifier.keras"  # as fgssl_tf.evaluation writes it
TFLITE_FLOAT_FILE = "classifier_float32.tflite"
TFLITE_INT8_FILE = "classifier_int8.tflite"
TFLITE_METADATA_FILE = "tflite_metadata.json"
PREDICT_SIGNATURE = "predict"
OUTPUTS = ("probabilities", "class_index", "class_name")


@dataclasses.dataclass(frozen=True)
class ClassifierExportConfig:
    report_dir: str  # a folder tools/evaluate.py wrote: report.json and classifier.keras
    export_path: str  # savedmodels/NAME: the version goes in savedmodels/NAME/VERSION
    tflite: bool = True  # also write the float32 and int8 TFLite models
    calibration_images: int = 200  # training images the int8 quantisation is calibrated on
    max_test_images: int | None = None  # test images the TFLite accuracies are measured on (None: all)
    batch_size: int = 64
    tfds_data_dir: str | None = None


def read_report(report_dir: str) -> dict:
    """The report's fields a classifier export needs, checked; every problem is one error line."""
    report_path = os.path.join(report_dir, REPORT_FILE)
    if not os.path.isfile(report_path):
        raise FgsslError(
            f"{report_dir!r} is not an evaluation report folder (no {REPORT_FILE}); pass the folder "
            "tools/evaluate.py wrote, e.g. savedmodels/NAME/evaluations/v1-elpv-finetune-labels100"
        )
    with open(report_path) as f:
        report = json.load(f)
    missing = [key for key in ("class_names", "image_size") if not report.get(key)]
    if missing:
        raise FgsslError(
            f"{report_path} has no {' and no '.join(missing)}: a classifier export needs both to name its "
            "outputs and size its inputs; re-run tools/evaluate.py to write a complete report"
        )
    names = report["class_names"]
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise FgsslError(f"{report_path}: class_names must be a list of non-empty strings, got {names!r}")
    if not isinstance(report["image_size"], int) or report["image_size"] < 1:
        raise FgsslError(f"{report_path}: image_size must be a positive integer, got {report['image_size']!r}")
    if not os.path.isfile(os.path.join(report_dir, CLASSIFIER_FILE)):
        raise FgsslError(
            f"{report_dir!r} holds no {CLASSIFIER_FILE} (a kNN report, or a trained classifier's report, "
            "saves none); run tools/evaluate.py with --protocol=finetune or --protocol=linear"
        )
    return report


def _graph_checks(images: tf.Tensor) -> tf.Tensor:
    """The encoder export's rank and channel checks, then a non-empty batch; RGB out."""
    images = export_lib._check_and_convert(images)
    batch = tf.shape(images)[0]
    batch_check = tf.debugging.Assert(batch > 0, ["images is an empty batch (batch size 0); send at least one image"])
    with tf.control_dependencies([batch_check]):
        return tf.identity(images)


def _embedding_and_logits(classifier: keras.Model) -> keras.Model | None:
    """[embedding, logits] from the classifier: the embedding is what its last layer (the head) takes."""
    head_input = classifier.layers[-1].input
    if not isinstance(head_input, keras.KerasTensor):
        return None
    return keras.Model(classifier.inputs, [head_input, classifier.outputs[0]], name="classifier_with_embedding")


def _tflite_model(classifier: keras.Model, image_size: int, calibration: np.ndarray | None) -> bytes:
    """TensorFlow's own converter on float32 [B, S, S, 3] -> probabilities; with `calibration`
    ([N, S, S, 3] float32 training images), int8 post-training quantisation (float fallback)."""

    @tf.function(input_signature=[tf.TensorSpec([None, image_size, image_size, 3], tf.float32, name="images")])
    def probabilities(images):
        return {"probabilities": tf.nn.softmax(tf.cast(export_lib.call(classifier, images), tf.float32))}

    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    # Weights frozen into constants: the int8 calibrator cannot read resource variables. The frozen
    # function holds no state, so an empty module is all the converter's current path has to track.
    frozen = convert_variables_to_constants_v2(probabilities.get_concrete_function())
    converter = tf.lite.TFLiteConverter.from_concrete_functions([frozen], tf.Module())
    if calibration is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([image[None]] for image in calibration)
    with warnings.catch_warnings():  # float32 inputs and outputs are meant: no input statistics to give
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected")
        return converter.convert()


def _float_images(images: np.ndarray, image_size: int) -> np.ndarray:
    return preprocess(to_rgb(tf.constant(images)), image_size).numpy()


def _calibration_images(splits, count: int, image_size: int) -> np.ndarray:
    """A stratified, fixed draw of training images (seed 0), as the model sees them."""
    from fgssl_tf.data import label_fraction_subset

    images, labels = splits.split("train")
    subset = label_fraction_subset(labels, min(1.0, count / len(labels)), 0)[:count]
    return _float_images(images[subset], image_size)


def export_classifier(config: ClassifierExportConfig, splits=None) -> dict:
    """Write a new version of the classifier of `config.report_dir`; return a summary (paths,
    sizes in bytes, test accuracies of the .keras and TFLite models, their argmax agreement)."""
    report = read_report(config.report_dir)
    class_names, image_size = list(report["class_names"]), int(report["image_size"])
    trained = keras.saving.load_model(os.path.join(config.report_dir, CLASSIFIER_FILE), compile=False)
    if trained.output_shape[-1] != len(class_names):
        raise FgsslError(
            f"{config.report_dir}: the classifier has {trained.output_shape[-1]} outputs but the report "
            f"names {len(class_names)} classes; re-run tools/evaluate.py"
        )
    classifier = export_lib.stock_layers(trained, probe_size=image_size)
    with_embedding = _embedding_and_logits(classifier)
    if config.tflite and splits is None:
        from fgssl_tf.config import DataConfig
        from fgssl_tf.data import load_splits

        data = DataConfig(dataset=report["dataset"], image_size=image_size, tfds_data_dir=config.tfds_data_dir)
        splits = load_splits(data)
    if splits is not None and list(splits.class_names) != class_names:
        raise FgsslError(
            f"the {report['dataset']} classes {list(splits.class_names)} differ from the report's {class_names}"
        )
    names = tf.constant(class_names)

    def outputs(images, with_extras: bool):
        x = preprocess(_graph_checks(images), image_size)
        if with_embedding:
            embedding, logits = export_lib.call(with_embedding, x)
        else:
            embedding, logits = None, export_lib.call(classifier, x)
        logits = tf.cast(logits, tf.float32)
        index = tf.argmax(logits, axis=-1)
        result = {"probabilities": tf.nn.softmax(logits), "class_index": index, "class_name": tf.gather(names, index)}
        if with_extras:
            result.update(logits=logits, embedding=tf.cast(embedding, tf.float32))
        return result

    summary = {"report_dir": config.report_dir, "class_names": class_names, "image_size": image_size}
    metadata = {
        "kind": "classifier",
        "class_names": class_names,
        "image_size": image_size,
        "signatures": {
            export_lib.SIGNATURE: "images: uint8 [batch, height, width, 1|3|4] -> probabilities, class_index, "
            "class_name",
            **({PREDICT_SIGNATURE: "the same, plus logits and embedding (the head's input)"} if with_embedding else {}),
        },
        "keras_file": f"{CLASSIFIER_FILE}: float32 RGB in [0, 1] at {image_size}x{image_size} -> logits",
        "report": {
            k: report.get(k)
            for k in (
                "dataset",
                "protocol",
                "label_fraction",
                "seeds",
                "split_fingerprint",
                "accuracy",
                "balanced_accuracy",
                "macro_f1",
                "encoder",
            )
        },
        "report_dir": os.path.abspath(config.report_dir),
        "encoder_metadata": report.get("encoder_metadata", {}),
    }

    def write(staging, version):
        archive = keras.export.ExportArchive()
        archive.track(with_embedding or classifier)
        spec = [tf.TensorSpec(None, tf.uint8, name=export_lib.INPUT_NAME)]
        archive.add_endpoint(export_lib.SIGNATURE, lambda images: outputs(images, False), input_signature=spec)
        if with_embedding:
            archive.add_endpoint(PREDICT_SIGNATURE, lambda images: outputs(images, True), input_signature=spec)
        # Readable as tf.saved_model.load(path).class_names; ExportArchive saves this object (Keras 3.15).
        archive._tf_trackable.class_names = tf.Variable(class_names, trainable=False, name="class_names")
        archive.write_out(staging, verbose=False)
        classifier.save(os.path.join(staging, CLASSIFIER_FILE))
        custom = export_lib.custom_layers(classifier)
        extra = {"keras_files_need_fgssl_tf": custom} if custom else {}
        if config.tflite:
            extra["tflite"] = _write_tflite(classifier, staging, class_names, image_size, splits, config, summary)
        name = os.path.basename(os.path.normpath(config.export_path))
        with open(os.path.join(staging, export_lib.METADATA_FILE), "w") as f:
            json.dump({"name": name, "version": version, **metadata, **extra}, f, indent=2, default=str)

    export_path = os.path.normpath(config.export_path)
    version_dir = export_lib.write_version(
        os.path.dirname(export_path) or ".",
        os.path.basename(export_path),
        write,
        "free space and re-run the same command",
    )
    summary["saved_model"] = version_dir
    if config.tflite:
        summary["tflite_float32"] = os.path.join(version_dir, TFLITE_FLOAT_FILE)
        summary["tflite_int8"] = os.path.join(version_dir, TFLITE_INT8_FILE)
    return summary


def _write_tflite(classifier, staging, class_names, image_size, splits, config, summary) -> dict:
    """Both TFLite models, measured on the test split against the .keras classifier."""
    calibration = _calibration_images(splits, config.calibration_images, image_size)
    test_images, test_labels = splits.split("test")
    if config.max_test_images and len(test_labels) > config.max_test_images:
        from fgssl_tf.data import label_fraction_subset

        keep = label_fraction_subset(test_labels, config.max_test_images / len(test_labels), 0)
        test_images, test_labels = test_images[keep], test_labels[keep]
    x = _float_images(test_images, image_size)
    keras_classes = np.concatenate(
        [
            np.argmax(export_lib.call(classifier, x[i : i + config.batch_size]), axis=-1)
            for i in range(0, len(x), config.batch_size)
        ]
    )
    info = {
        "input": f"images: float32 [batch, {image_size}, {image_size}, 3], RGB scaled to [0, 1] (pixel / 255), "
        f"squash-resized to {image_size}x{image_size} (bilinear, antialiased)",
        "output": f"probabilities: float32 [batch, {len(class_names)}], in the order of class_names",
        "image_size": image_size,
        "class_names": class_names,
        "calibration": f"{len(calibration)} training images, stratified, seed 0",
        "test_images": int(len(test_labels)),
        "keras_test_accuracy": float(np.mean(keras_classes == test_labels)),
    }
    for kind, filename, images in (("float32", TFLITE_FLOAT_FILE, None), ("int8", TFLITE_INT8_FILE, calibration)):
        path = os.path.join(staging, filename)
        with open(path, "wb") as f:
            f.write(_tflite_model(classifier, image_size, images))
        model = TFLiteClassifier(path, class_names)
        classes = np.argmax(model.probabilities_of_float(x, config.batch_size), axis=-1)
        info[kind] = {
            "file": filename,
            "size_bytes": os.path.getsize(path),
            "test_accuracy": float(np.mean(classes == test_labels)),
            "argmax_agreement_with_keras": float(np.mean(classes == keras_classes)),
        }
    with open(os.path.join(staging, TFLITE_METADATA_FILE), "w") as f:
        json.dump(info, f, indent=2)
    summary["tflite_report"] = info
    return info


def summary_lines(summary: dict) -> list[str]:
    lines = [
        f"classifier exported to {summary['saved_model']} ({len(summary['class_names'])} classes, "
        f"{summary['image_size']} px): serving_default takes uint8 images of any size"
    ]
    info = summary.get("tflite_report")
    if info:
        lines.append(f"test split ({info['test_images']} images): .keras accuracy {info['keras_test_accuracy']:.4f}")
        for kind in ("float32", "int8"):
            t = info[kind]
            lines.append(
                f"TFLite {kind}: {t['size_bytes']} bytes, accuracy {t['test_accuracy']:.4f}, "
                f"argmax agrees with .keras on {100 * t['argmax_agreement_with_keras']:.2f}% ({t['file']})"
            )
    return lines


# Loading any export behind one interface.


def check_images(images, what: str) -> np.ndarray:
    """uint8 [batch > 0, H, W, 1|3|4] or one clear error naming the problem."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise FgsslError(f"{what} takes uint8 images (0..255); got dtype {images.dtype}")
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        raise FgsslError(
            f"{what} takes a batch [batch, height, width, 1|3|4] of uint8 images; got shape {images.shape}"
        )
    if images.shape[0] == 0:
        raise FgsslError(f"{what} got an empty batch (shape {images.shape}); pass at least one image")
    return images


class _Classifier:
    kind = "classifier"
    class_names: list
    image_size: int

    def probabilities(self, images, batch_size: int = 64) -> np.ndarray:
        """uint8 [B, H, W, 1|3|4] of any size -> [B, classes]."""
        images = check_images(images, f"the {self.kind} classifier {self.path}")
        batches = range(0, len(images), batch_size)
        return np.concatenate([self._probabilities(images[i : i + batch_size]) for i in batches])

    def _probabilities(self, images: np.ndarray) -> np.ndarray:
        return self.probabilities_of_float(_float_images(images, self.image_size))


class SavedModelClassifier(_Classifier):
    kind = "SavedModel"

    def __init__(self, path: str):
        self.path = export_lib.resolve_version_dir(path)
        metadata = export_lib.read_metadata(self.path)
        if metadata.get("kind") != "classifier":
            raise FgsslError(
                f"{self.path} is an encoder export (embeddings out), not a classifier; export one with "
                "tools/evaluate.py --export_classifier or tools/export_classifier.py"
            )
        self.class_names, self.image_size = metadata["class_names"], int(metadata["image_size"])
        self._loaded = tf.saved_model.load(self.path)
        self._signature = self._loaded.signatures[export_lib.SIGNATURE]

    def _probabilities(self, images):
        return self._signature(**{export_lib.INPUT_NAME: tf.constant(images)})["probabilities"].numpy()


class KerasClassifier(_Classifier):
    kind = ".keras"

    def __init__(self, path: str, class_names: list, image_size: int):
        self.path, self.class_names, self.image_size = path, class_names, image_size
        self._model = keras.saving.load_model(path, compile=False)

    def probabilities_of_float(self, x: np.ndarray) -> np.ndarray:
        return tf.nn.softmax(tf.cast(export_lib.call(self._model, x), tf.float32)).numpy()


def tflite_interpreter(path: str):
    """LiteRT's interpreter (pip install ai-edge-litert), else TensorFlow's own if this TensorFlow still has it."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        Interpreter = getattr(tf.lite, "Interpreter", None)
        if Interpreter is None:
            raise FgsslError("running a .tflite model needs LiteRT's interpreter: pip install ai-edge-litert") from None
    return Interpreter(model_path=path)


class TFLiteClassifier(_Classifier):
    kind = "TFLite"

    def __init__(self, path: str, class_names: list):
        self.path, self.class_names = path, class_names
        self._interpreter = tflite_interpreter(path)
        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]
        self.image_size = int(self._input["shape"][1])
        self._batch = None

    def probabilities_of_float(self, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
        return np.concatenate([self._run(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])

    def _run(self, x: np.ndarray) -> np.ndarray:
        if self._batch != len(x):
            self._interpreter.resize_tensor_input(self._input["index"], [len(x), self.image_size, self.image_size, 3])
            self._interpreter.allocate_tensors()
            self._batch = len(x)
        self._interpreter.set_tensor(self._input["index"], np.ascontiguousarray(x, np.float32))
        self._interpreter.invoke()
        return self._interpreter.get_tensor(self._output["index"]).copy()


def _names_and_size_beside(path: str) -> tuple[list, int]:
    """Class names and image size from the metadata or report next to a model file."""
    folder = os.path.dirname(os.path.abspath(path))
    for filename in (TFLITE_METADATA_FILE, export_lib.METADATA_FILE, REPORT_FILE):
        candidate = os.path.join(folder, filename)
        if os.path.isfile(candidate):
            with open(candidate) as f:
                data = json.load(f)
            if data.get("class_names") and data.get("image_size"):
                return list(data["class_names"]), int(data["image_size"])
    raise FgsslError(
        f"no class names beside {path}: keep it in the folder it was exported to (with "
        f"{TFLITE_METADATA_FILE}, {export_lib.METADATA_FILE} or {REPORT_FILE})"
    )


def load_classifier(path: str) -> _Classifier:
    """A SavedModel classifier export (savedmodels/NAME[/VERSION]), a .tflite or .keras file
    written beside it, or an evaluation report folder (its classifier.keras)."""
    if not os.path.exists(path):
        raise FgsslError(
            f"{path!r} does not exist; pass savedmodels/NAME, a .tflite or .keras file, or a report folder"
        )
    if path.endswith(".tflite"):
        return TFLiteClassifier(path, _names_and_size_beside(path)[0])
    if path.endswith(".keras"):
        return KerasClassifier(path, *_names_and_size_beside(path))
    if os.path.isfile(os.path.join(path, REPORT_FILE)):
        report = read_report(path)
        return KerasClassifier(os.path.join(path, CLASSIFIER_FILE), report["class_names"], report["image_size"])
    return SavedModelClassifier(path)
