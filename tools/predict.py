"""Classify your own images with an exported classifier: file, class, probability.

    python tools/predict.py --model=savedmodels/elpv_classifier --images=my_photos/
    python tools/predict.py --model=savedmodels/elpv_classifier/1/classifier_int8.tflite --images=a.png,b.jpg \
        --output=pred.csv

--model: a classifier export (savedmodels/NAME or NAME/VERSION), a .tflite or .keras file
written beside it, or an evaluation report folder. Images are decoded and squash-resized
to the model's size as in training; an unreadable file is skipped with a counted warning.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from fgssl_tf import cli  # noqa: E402
from fgssl_tf import flags as fgssl_flags  # noqa: E402

FLAGS = cli.tool_flags()  # this tool's own flags: tests run it in-process
flags.DEFINE_string(
    "model", None, "savedmodels/NAME[/VERSION], a .tflite or .keras classifier, or a report folder.", flag_values=FLAGS
)
flags.DEFINE_list(
    "images", None, "Image folders (searched recursively) and/or files, comma-separated.", flag_values=FLAGS
)
flags.DEFINE_string("output", None, "Also write the rows to this CSV file.", flag_values=FLAGS)
flags.DEFINE_integer("batch_size", 64, "Images per model call.", lower_bound=1, flag_values=FLAGS)
flags.mark_flags_as_required(["model", "images"], flag_values=FLAGS)
fgssl_flags.validate(
    "output", lambda v: f"{v!r} is a folder; pass a .csv name" if v and os.path.isdir(v) else None, FLAGS
)


def image_paths(entries: list[str]) -> list[str]:
    from fgssl_tf.data.images import list_image_files
    from fgssl_tf.errors import FgsslError

    paths = []
    for entry in entries:
        if os.path.isdir(entry):
            paths += list_image_files(entry)[0]
        elif os.path.isfile(entry):
            paths.append(entry)
        else:
            raise FgsslError(f"--images: {entry!r} is neither a file nor a folder")
    if not paths:
        raise FgsslError(f"--images={','.join(entries)} holds no image files (.jpg, .jpeg, .png, .bmp, .gif)")
    return paths


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    import csv
    import logging

    import numpy as np

    from fgssl_tf.data.images import decode_files
    from fgssl_tf.export_classifier import load_classifier

    model = load_classifier(FLAGS.model)
    paths = image_paths(FLAGS.images)
    images_log = logging.getLogger("fgssl_tf.data.images")
    level = images_log.level
    images_log.setLevel(logging.ERROR)  # each skipped file is reported below
    try:
        decoded = decode_files(paths, model.image_size)
    finally:
        images_log.setLevel(level)  # as it was: a caller in the same process (tests) keeps its warnings
    for number, path in enumerate(decoded.skipped, 1):
        print(f"warning: skipped unreadable image {number} of {len(decoded.skipped)}: {path}", file=sys.stderr)
    rows = []
    if len(decoded.kept):
        probabilities = model.probabilities(decoded.images, FLAGS.batch_size)
        classes = np.argmax(probabilities, axis=1)
        rows = [(paths[i], model.class_names[c], float(p[c])) for i, c, p in zip(decoded.kept, classes, probabilities)]
    print("file,class,probability")
    for path, name, probability in rows:
        print(f"{path},{name},{probability:.4f}")
    if FLAGS.output:
        os.makedirs(os.path.dirname(os.path.abspath(FLAGS.output)), exist_ok=True)
        with open(FLAGS.output, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["file", "class", "probability"])
            writer.writerows((path, name, f"{probability:.6f}") for path, name, probability in rows)
    skipped = f", {len(decoded.skipped)} unreadable skipped" if decoded.skipped else ""
    written = f"; rows in {FLAGS.output}" if FLAGS.output else ""
    print(f"{len(rows)} images classified by {model.path}{skipped}{written}", file=sys.stderr)


if __name__ == "__main__":
    cli.run(main, FLAGS)
