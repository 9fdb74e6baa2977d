"""Where does a model look? Grad-CAM heat maps over images, as PNG and TensorBoard images.

    python tools/gradcam.py --model=savedmodels/NAME/evaluations/v1-elpv-finetune-labels100 --images=photos/
    python tools/gradcam.py --model=reports/.../classifier.keras --dataset=elpv --split=test --max_images=8 --class=2
    python tools/gradcam.py --model=savedmodels/srgan_generator_elpv --layer=trunk_skip  # an encoder

--model is a classifier the evaluation tool wrote (`classifier.keras`, or the report
folder holding it: then class names and image size come from its report.json), or an
exported encoder (savedmodels/NAME[/VERSION]: its `encoder.keras`; without classes the
map explains the squared norm of the embedding). Images get the training preprocessing.
Writes one PNG per image (image | overlay) to --output_dir and, with --logdir, the
same pictures to TensorBoard.
"""

from __future__ import annotations

import glob
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from fgssl_tf import cli  # noqa: E402

FLAGS = cli.tool_flags()  # this tool's own flags: tests run it in-process
flags.DEFINE_string(
    "model",
    None,
    "classifier.keras, an evaluation report folder holding it, or an exported encoder savedmodels/NAME[/VERSION].",
    flag_values=FLAGS,
)
flags.DEFINE_list("images", [], "Image files, folders or globs; default: --split of --dataset.", flag_values=FLAGS)
flags.DEFINE_string(
    "dataset", "elpv", "Where images come from when --images is empty: elpv, cassava or folder:PATH.", flag_values=FLAGS
)
flags.DEFINE_enum("split", "test", ["train", "val", "test"], "Split of --dataset.", flag_values=FLAGS)
flags.DEFINE_integer(
    "max_images",
    8,
    "At most this many images (from --dataset: spread over the classes).",
    lower_bound=1,
    flag_values=FLAGS,
)
flags.DEFINE_string(
    "class", "predicted", "Class to explain: predicted, an index, or a class name (classifiers).", flag_values=FLAGS
)
flags.DEFINE_string(
    "layer",
    None,
    "Layer whose feature map is weighted; default: the last spatial layer (the last conv stage).",
    flag_values=FLAGS,
)
flags.DEFINE_enum("method", "gradcam", ["gradcam", "gradcam++"], "Grad-CAM or Grad-CAM++.", flag_values=FLAGS)
flags.DEFINE_integer(
    "image_size",
    None,
    "Model input size; default: from the report or the export's metadata.",
    lower_bound=8,
    flag_values=FLAGS,
)
flags.DEFINE_string("output_dir", "gradcam", "Where the PNG files go.", flag_values=FLAGS)
flags.DEFINE_string("logdir", None, "Also write the overlays to TensorBoard here.", flag_values=FLAGS)
flags.mark_flag_as_required("model", flag_values=FLAGS)


def _resolve_model(path: str):
    """(keras model, class names or None, image size or None, 'classifier' | 'encoder')."""
    import keras

    from fgssl_tf import export as export_lib
    from fgssl_tf.errors import FgsslError
    from fgssl_tf.evaluation import CLASSIFIER_FILE  # also registers the custom layers the files hold

    if os.path.isdir(path) and os.path.isfile(os.path.join(path, CLASSIFIER_FILE)):
        report_path = os.path.join(path, "report.json")
        report = json.load(open(report_path)) if os.path.isfile(report_path) else {}
        model = keras.saving.load_model(os.path.join(path, CLASSIFIER_FILE), compile=False)
        return model, report.get("class_names"), report.get("image_size"), "classifier"
    if path.endswith(".keras"):
        if not os.path.isfile(path):
            raise FgsslError(f"--model={path}: no such file")
        return keras.saving.load_model(path, compile=False), None, None, "classifier"
    if os.path.isdir(path):
        version = export_lib.resolve_version_dir(path)
        model = export_lib.load_keras_encoder(version)
        return model, None, export_lib.read_metadata(version).get("image_size"), "encoder"
    raise FgsslError(
        f"--model={path!r} is neither a classifier.keras, a report folder holding one (tools/evaluate.py writes them), "
        "nor an exported encoder savedmodels/NAME[/VERSION]"
    )


def _load_images(image_size: int):
    """(uint8 images at image_size, names, labels or None)."""
    import numpy as np

    from fgssl_tf.config import DataConfig
    from fgssl_tf.data import load_splits, stratified_at_most
    from fgssl_tf.data.images import decode_files, list_image_files
    from fgssl_tf.errors import FgsslError

    if FLAGS.images:
        paths = []
        for entry in FLAGS.images:
            if os.path.isdir(entry):
                paths += list_image_files(entry)[0]
            else:
                matches = sorted(glob.glob(entry))
                if not matches:
                    raise FgsslError(f"--images={entry}: no such file, folder or matching files")
                paths += matches
        decoded = decode_files(paths[: FLAGS.max_images], image_size)
        if not len(decoded.images):
            raise FgsslError(
                f"none of the {len(paths[: FLAGS.max_images])} files in --images could be decoded as an image"
            )
        names = [os.path.splitext(os.path.basename(paths[i]))[0] for i in decoded.kept]
        return decoded.images, names, None
    splits = load_splits(DataConfig(dataset=FLAGS.dataset, image_size=image_size))
    images, labels = splits.split(FLAGS.split)
    chosen = stratified_at_most(labels, FLAGS.max_images, 0)[: FLAGS.max_images]
    names = [f"{FLAGS.split}{i}_{splits.class_names[labels[i]]}" for i in chosen]
    return images[chosen], names, np.asarray(labels)[chosen]


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    import numpy as np
    import tensorflow as tf
    from PIL import Image

    from fgssl_tf import gradcam
    from fgssl_tf.errors import FgsslError

    model, class_names, image_size, kind = _resolve_model(FLAGS.model)
    image_size = FLAGS.image_size or image_size
    if not image_size:
        raise FgsslError(f"{FLAGS.model} records no image size; pass --image_size (the size it was trained at)")
    target = getattr(FLAGS, "class")
    if kind == "encoder":
        if target != "predicted":
            raise FgsslError(
                "an exported encoder has no classes: leave --class out (the map explains the embedding's norm), "
                "or pass a classifier"
            )
        target = "embedding"
    elif target == "predicted":
        target = None
    elif target.isdigit():
        target = int(target)
    elif class_names and target in class_names:
        target = class_names.index(target)
    else:
        raise FgsslError(
            f"--class={target!r}: use predicted, a class index, "
            f"or one of {', '.join(class_names or ['(no class names recorded)'])}"
        )

    images, names, labels = _load_images(image_size)
    heatmaps, predictions, layer = gradcam.grad_cam(
        model, tf.image.convert_image_dtype(images, tf.float32), target, FLAGS.layer, FLAGS.method
    )
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    pictures = []
    for i, (image, heatmap, name) in enumerate(zip(images, heatmaps, names)):
        picture = gradcam.overlay(image, heatmap)
        label = "" if predictions[i] < 0 else f"_pred-{class_names[predictions[i]] if class_names else predictions[i]}"
        file_name = gradcam.file_name_part(f"{i:03d}_{name}{label}") + ".png"  # class names may hold '/'
        path = os.path.join(FLAGS.output_dir, file_name)

        Image.fromarray(picture).save(path)
        pictures.append(picture)
        print(
            f"{path}  layer={layer}"
            + ("" if predictions[i] < 0 else f" predicted={predictions[i]}")
            + ("" if labels is None else f" true={labels[i]}")
        )
    if FLAGS.logdir:
        with tf.summary.create_file_writer(FLAGS.logdir).as_default():
            tf.summary.image(f"{FLAGS.method}/{layer}", np.stack(pictures), step=0, max_outputs=len(pictures))
        print(f"TensorBoard: tensorboard --logdir {FLAGS.logdir}")


if __name__ == "__main__":
    cli.run(main, FLAGS)
