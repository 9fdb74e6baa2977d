"""Evaluate an exported encoder (or a baseline) on one honest protocol.

    python tools/evaluate.py --encoder=savedmodels/NAME/VERSION --dataset=elpv --protocol=linear
    python tools/evaluate.py --encoder=... --protocol=knn --label_fraction=0.1 --seeds=0,1,2
    python tools/evaluate.py --baseline=supervised --protocol=finetune --image_size=64
    python tools/evaluate.py --baseline=random_init --architecture_from=savedmodels/NAME   (NAME's network untrained)
    python tools/evaluate.py --flagfile=flags/eval_srgan_generator_dropout05.cfg   (an SRGAN paper variant)
    python tools/evaluate.py --encoder=... --protocol=finetune --export_classifier=savedmodels/my_classifier

Writes <output_dir>/report.json and report.md (default: beside the encoder, in
savedmodels/NAME/evaluations/). --export_classifier also ships the report's classifier:
a TF Serving SavedModel in savedmodels/NAME/VERSION with TFLite models beside it
(fgssl_tf/export_classifier.py; tools/export_classifier.py does it for an existing report).
"""

from __future__ import annotations

import os
import re
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from fgssl_tf import cli  # noqa: E402
from fgssl_tf import flags as fgssl_flags  # noqa: E402

FLAGS = cli.tool_flags()  # this tool's own flags: tests run it in-process
flags.DEFINE_string(
    "encoder", None, "Exported encoder: a version directory savedmodels/NAME/VERSION.", flag_values=FLAGS
)
flags.DEFINE_enum(
    "baseline", None, ["random_init", "supervised"], "Evaluate a reference instead of an encoder.", flag_values=FLAGS
)
flags.DEFINE_string(
    "architecture_from",
    None,
    "Baselines: the architecture and image size of this export (savedmodels/NAME[/VERSION]) at fresh random "
    "weights, instead of --backbone and --width: any encoder against itself untrained.",
    flag_values=FLAGS,
)
flags.DEFINE_string("dataset", "elpv", "elpv, cassava or folder:PATH.", flag_values=FLAGS)
flags.DEFINE_enum("protocol", "linear", ["linear", "knn", "finetune"], "Evaluation protocol.", flag_values=FLAGS)
flags.DEFINE_float(
    "label_fraction",
    1.0,
    "Share of training labels used (stratified, drawn per seed).",
    lower_bound=0.0,
    upper_bound=1.0,
    flag_values=FLAGS,
)
flags.DEFINE_list("seeds", ["0"], "Comma-separated seeds; mean and std are reported.", flag_values=FLAGS)
flags.DEFINE_string("output_dir", None, "Where report.json and report.md go.", flag_values=FLAGS)
flags.DEFINE_integer(
    "image_size", None, "Image size (baselines; an encoder's export records its own).", lower_bound=8, flag_values=FLAGS
)
flags.DEFINE_enum(
    "selection_metric",
    "accuracy",
    ["accuracy", "balanced_accuracy", "macro_f1"],
    "Chosen on validation.",
    flag_values=FLAGS,
)
flags.DEFINE_integer("finetune_epochs", 10, "Epochs of fine-tuning.", lower_bound=1, flag_values=FLAGS)
flags.DEFINE_float(
    "finetune_learning_rate", 1e-4, "Adam learning rate for fine-tuning.", lower_bound=0.0, flag_values=FLAGS
)
flags.DEFINE_string(
    "trainable_from",
    "all",
    "Fine-tune from this stage on (e.g. block4: the last block, block3: the last two); all: everything; "
    "none: a frozen encoder. The head always trains.",
    flag_values=FLAGS,
)
flags.DEFINE_enum(
    "class_weights",
    "none",
    ["none", "inverse"],
    "Weights per class: none, or inverse to the class frequency (N / (K n_c)), in the fine-tuning loss, "
    "the linear probe's loss or the kNN votes.",
    flag_values=FLAGS,
)
flags.DEFINE_enum(
    "finetune_augment",
    "flip",
    ["flip", "strong"],
    "Fine-tuning augmentation: a horizontal flip, or strong: flips both ways, small rotation, zoom, shift, "
    "brightness and contrast (for labels that do not depend on orientation).",
    flag_values=FLAGS,
)
flags.DEFINE_enum(
    "finetune_head_init",
    "random",
    ["random", "linear_probe"],
    "Fine-tuning: the dense head starts random, or as the linear probe of the frozen encoder on the same "
    "labels (LP-FT; with few labels the encoder's features survive the first steps).",
    flag_values=FLAGS,
)
flags.DEFINE_enum(
    "head",
    "linear",
    ["linear", "paper"],
    "Fine-tuning head: one dense layer, or the SRGAN paper's head (SRGAN encoders).",
    flag_values=FLAGS,
)
flags.DEFINE_float(
    "head_dropout",
    0.0,
    "Dropout in the paper's SRGAN head (the paper: 0.5, 0.7, 0.9).",
    lower_bound=0.0,
    upper_bound=0.99,
    flag_values=FLAGS,
)
flags.DEFINE_integer(
    "keep_residual_blocks",
    None,
    "SRGAN generator encoders: keep the first N residual blocks (the paper: 14, 12, 10, 8 of 16).",
    lower_bound=1,
    flag_values=FLAGS,
)
flags.DEFINE_integer(
    "remove_conv_blocks",
    0,
    "SRGAN discriminator encoders: drop the last K conv blocks (the paper: 1, 2, 3).",
    lower_bound=0,
    upper_bound=7,
    flag_values=FLAGS,
)
flags.DEFINE_integer(
    "pool_grid",
    1,
    "Baselines: average-pool the last stage to a g x g grid (2 matches a Jigsaw encoder).",
    lower_bound=1,
    upper_bound=8,
    flag_values=FLAGS,
)
flags.DEFINE_integer("batch_size", 64, "Batch size for features and fine-tuning.", lower_bound=1, flag_values=FLAGS)
flags.DEFINE_integer(
    "max_images_per_split", None, "Stratified subset per split (quick checks).", lower_bound=2, flag_values=FLAGS
)
flags.DEFINE_string("tfds_data_dir", None, "TFDS data directory (cassava).", flag_values=FLAGS)
flags.DEFINE_string(
    "export_classifier",
    None,
    "Also export the trained classifier (finetune or linear) to savedmodels/NAME: "
    "a TF Serving version, classifier.keras, TFLite float32 and int8.",
    flag_values=FLAGS,
)
flags.DEFINE_boolean(
    "export_tflite", True, "With --export_classifier: also write the TFLite models.", flag_values=FLAGS
)
flags.DEFINE_integer(
    "calibration_images",
    200,
    "Training images the int8 TFLite model is calibrated on.",
    lower_bound=1,
    flag_values=FLAGS,
)
flags.DEFINE_boolean(
    "allow_unseen_classes",
    False,
    "Folder datasets: leave out (and count in the report) val/test images of classes train lacks, instead of an error.",
    flag_values=FLAGS,
)
fgssl_flags.define_backbone_flags(FLAGS)
fgssl_flags.validate(
    "encoder", fgssl_flags.missing_path_error("pass savedmodels/NAME or savedmodels/NAME/VERSION"), FLAGS
)
fgssl_flags.validate(
    "architecture_from",
    fgssl_flags.missing_path_error("pass the export whose network to draw afresh, savedmodels/NAME[/VERSION]"),
    FLAGS,
)
fgssl_flags.validate("dataset", fgssl_flags.dataset_error, FLAGS)
fgssl_flags.validate(
    "seeds",
    lambda v: (
        None
        if v and all(s.strip().isdigit() for s in v)
        else f"--seeds must be comma-separated integers of 0 or more, got {','.join(v)!r}"
    ),
    FLAGS,
)
fgssl_flags.validate("output_dir", fgssl_flags.not_a_file_error, FLAGS)
fgssl_flags.validate(
    "trainable_from",
    lambda v: (
        None if re.fullmatch(r"all|none|[a-z]+[0-9]*", v) else f"{v!r} is not all, none or a stage name such as block4"
    ),
    FLAGS,
)
fgssl_flags.validate("tfds_data_dir", fgssl_flags.not_a_file_error, FLAGS)
fgssl_flags.validate("export_classifier", fgssl_flags.not_a_file_error, FLAGS)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from fgssl_tf.errors import FgsslError
    from fgssl_tf.evaluation import EvalConfig, evaluate

    try:
        seeds = tuple(int(s) for s in FLAGS.seeds)
    except ValueError as err:
        raise FgsslError(f"--seeds must be comma-separated integers, got {','.join(FLAGS.seeds)}") from err
    if FLAGS.export_classifier and FLAGS.protocol == "knn":
        raise FgsslError(
            "--export_classifier ships a trained classifier: use it with --protocol=finetune or --protocol=linear "
            "(kNN keeps no model)"
        )
    report = evaluate(
        EvalConfig(
            encoder=FLAGS.encoder,
            baseline=FLAGS.baseline,
            architecture_from=FLAGS.architecture_from,
            dataset=FLAGS.dataset,
            protocol=FLAGS.protocol,
            label_fraction=FLAGS.label_fraction,
            seeds=seeds,
            output_dir=FLAGS.output_dir,
            image_size=FLAGS.image_size,
            backbone=fgssl_flags.backbone_config(FLAGS),
            pool_grid=FLAGS.pool_grid,
            selection_metric=FLAGS.selection_metric,
            finetune_epochs=FLAGS.finetune_epochs,
            finetune_learning_rate=FLAGS.finetune_learning_rate,
            trainable_from=FLAGS.trainable_from,
            class_weights=FLAGS.class_weights,
            finetune_augment=FLAGS.finetune_augment,
            finetune_head_init=FLAGS.finetune_head_init,
            head=FLAGS.head,
            head_dropout=FLAGS.head_dropout,
            keep_residual_blocks=FLAGS.keep_residual_blocks,
            remove_conv_blocks=FLAGS.remove_conv_blocks,
            batch_size=FLAGS.batch_size,
            max_images_per_split=FLAGS.max_images_per_split,
            tfds_data_dir=FLAGS.tfds_data_dir,
            allow_unseen_classes=FLAGS.allow_unseen_classes,
        )
    )
    print(
        f"test accuracy {report['accuracy']:.4f} ± {report['accuracy_std']:.4f}, "
        f"balanced {report['balanced_accuracy']:.4f}, macro-F1 {report['macro_f1']:.4f} "
        f"(majority class {report['majority_class_rate']:.4f}); report: {report['output_dir']}/report.json"
    )
    if FLAGS.export_classifier:
        from fgssl_tf.export_classifier import ClassifierExportConfig, export_classifier, summary_lines

        summary = export_classifier(
            ClassifierExportConfig(
                report_dir=report["output_dir"],
                export_path=FLAGS.export_classifier,
                tflite=FLAGS.export_tflite,
                calibration_images=FLAGS.calibration_images,
                batch_size=FLAGS.batch_size,
                tfds_data_dir=FLAGS.tfds_data_dir,
            )
        )
        print("\n".join(summary_lines(summary)))


if __name__ == "__main__":
    cli.run(main, FLAGS)
