"""Embeddings of a split, as a 2-D map PNG coloured by class and as TensorBoard's projector.

    python tools/embeddings.py --encoder=savedmodels/simclr_resnet18_elpv --dataset=elpv --split=test
    tensorboard --logdir savedmodels/simclr_resnet18_elpv/evaluations/embeddings-test   # the projector tab

The encoder runs as served (the SavedModel's signature: training preprocessing,
inference mode). Default output: beside the encoder, in evaluations/.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from fgssl_tf import cli  # noqa: E402

FLAGS = cli.tool_flags()  # this tool's own flags: tests run it in-process
flags.DEFINE_string("encoder", None, "Exported encoder: savedmodels/NAME[/VERSION].", flag_values=FLAGS)
flags.DEFINE_string("dataset", "elpv", "elpv, cassava or folder:PATH.", flag_values=FLAGS)
flags.DEFINE_enum("split", "test", ["train", "val", "test"], "Which split to embed.", flag_values=FLAGS)
flags.DEFINE_integer(
    "max_images", None, "A stratified subset of at most this many images.", lower_bound=10, flag_values=FLAGS
)
flags.DEFINE_enum(
    "method",
    "tsne",
    ["tsne", "umap", "pca"],
    "2-D map: t-SNE (scikit-learn), UMAP (if umap-learn is installed) or PCA.",
    flag_values=FLAGS,
)
flags.DEFINE_integer(
    "thumbnail", 32, "Projector sprite thumbnail size in pixels.", lower_bound=8, upper_bound=128, flag_values=FLAGS
)
flags.DEFINE_integer("seed", 0, "Seed of the map and the subset.", flag_values=FLAGS)
flags.DEFINE_string("output_dir", None, "Default: <encoder>/../evaluations/embeddings-<split>.", flag_values=FLAGS)
flags.DEFINE_string("tfds_data_dir", None, "TFDS data directory (cassava).", flag_values=FLAGS)
flags.mark_flag_as_required("encoder", flag_values=FLAGS)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    import numpy as np

    from fgssl_tf import embeddings, plots
    from fgssl_tf.config import DataConfig
    from fgssl_tf.data import load_splits, stratified_at_most
    from fgssl_tf.export import ServingEncoder

    encoder = ServingEncoder(FLAGS.encoder)
    splits = load_splits(
        DataConfig(dataset=FLAGS.dataset, image_size=encoder.image_size or 64, tfds_data_dir=FLAGS.tfds_data_dir)
    )
    images, labels = splits.split(FLAGS.split)
    if FLAGS.max_images:
        chosen = stratified_at_most(labels, FLAGS.max_images, FLAGS.seed)
        images, labels = images[chosen], np.asarray(labels)[chosen]
    features = encoder.embed(images)
    output_dir = FLAGS.output_dir or os.path.join(
        os.path.dirname(encoder.path), "evaluations", f"embeddings-{FLAGS.split}"
    )
    os.makedirs(output_dir, exist_ok=True)
    points = embeddings.project_2d(features, FLAGS.method, FLAGS.seed)
    name = os.path.basename(os.path.dirname(encoder.path))
    png = plots.embedding_map_png(
        points,
        labels,
        splits.class_names,
        os.path.join(output_dir, f"{FLAGS.method}.png"),
        f"{name} v{os.path.basename(encoder.path)}: {FLAGS.dataset} {FLAGS.split}, "
        f"{len(labels)} images, {FLAGS.method}",
    )
    embeddings.write_projector(output_dir, features, labels, splits.class_names, images, FLAGS.thumbnail)
    print(f"map: {png}")
    print(f"projector: tensorboard --logdir {output_dir}")


if __name__ == "__main__":
    cli.run(main, FLAGS)
