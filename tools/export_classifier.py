"""Ship the classifier of an evaluation report: TF Serving SavedModel, .keras, TFLite float32 and int8.

    python tools/export_classifier.py --report=savedmodels/NAME/evaluations/v1-elpv-finetune-labels100 \\
        --export=savedmodels/elpv_classifier

Writes savedmodels/elpv_classifier/VERSION/ (layout: fgssl_tf/export_classifier.py) and prints
the test accuracy of the .keras, float32 TFLite and int8 TFLite models and their sizes in bytes.
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
    "report", None, "A report folder of tools/evaluate.py: report.json and classifier.keras.", flag_values=FLAGS
)
flags.DEFINE_string(
    "export", None, "savedmodels/NAME: the classifier goes in savedmodels/NAME/VERSION.", flag_values=FLAGS
)
flags.DEFINE_boolean("tflite", True, "Also write the float32 and int8 TFLite models.", flag_values=FLAGS)
flags.DEFINE_integer(
    "calibration_images", 200, "Training images the int8 model is calibrated on.", lower_bound=1, flag_values=FLAGS
)
flags.DEFINE_integer(
    "max_test_images",
    None,
    "Stratified test subset for the TFLite accuracies (default: all).",
    lower_bound=1,
    flag_values=FLAGS,
)
flags.DEFINE_string("tfds_data_dir", None, "TFDS data directory (cassava).", flag_values=FLAGS)
flags.mark_flags_as_required(["report", "export"], flag_values=FLAGS)
fgssl_flags.validate(
    "report",
    lambda v: (
        None
        if v is None or os.path.isdir(v)
        else f"{v!r} is not a folder; pass the report folder tools/evaluate.py wrote"
    ),
    FLAGS,
)
fgssl_flags.validate("export", fgssl_flags.not_a_file_error, FLAGS)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from fgssl_tf.export_classifier import ClassifierExportConfig, export_classifier, summary_lines

    summary = export_classifier(
        ClassifierExportConfig(
            report_dir=FLAGS.report,
            export_path=FLAGS.export,
            tflite=FLAGS.tflite,
            calibration_images=FLAGS.calibration_images,
            max_test_images=FLAGS.max_test_images,
            tfds_data_dir=FLAGS.tfds_data_dir,
        )
    )
    print("\n".join(summary_lines(summary)))


if __name__ == "__main__":
    cli.run(main, FLAGS)
