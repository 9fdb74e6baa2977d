"""Write what a pretext feeds its network, as PNG grids, for a few images.

    python tools/show_augmentations.py --flagfile=flags/simclr_gamma.cfg --output=gamma.png
    python tools/show_augmentations.py --pretext=jigsaw --output=puzzles.png

Takes the training flags (so a flagfile shows exactly what that run will train on)
and writes the same grids training sends to TensorBoard at its start: SimCLR rows of
original | view 1 | view 2; Jigsaw one image per shuffled puzzle.
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
fgssl_flags.define_data_flags(FLAGS)
fgssl_flags.define_backbone_flags(FLAGS)
fgssl_flags.define_train_flags(FLAGS)
flags.DEFINE_string(
    "output",
    "augmentations.png",
    "PNG to write; a pretext with several grids adds _<name> before .png.",
    flag_values=FLAGS,
)
flags.DEFINE_integer("num_images", 4, "How many images to show.", lower_bound=1, upper_bound=64, flag_values=FLAGS)


def write_grids(grids: dict, output: str) -> list[str]:
    from PIL import Image

    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    stem, ext = os.path.splitext(output)
    paths = []
    for tag, grid in grids.items():
        path = output if len(grids) == 1 else f"{stem}_{tag}{ext or '.png'}"
        Image.fromarray(grid).save(path, format="PNG")
        paths.append(path)
    return paths


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    import dataclasses
    import tempfile

    from fgssl_tf import trainer
    from fgssl_tf.data import load_splits
    from fgssl_tf.pretext import check_pretext

    check_pretext(FLAGS.pretext)
    run = fgssl_flags.run_config(FLAGS)
    # Nothing of the run's model_dir is touched: the model is built in a scratch folder.
    scratch = tempfile.mkdtemp(prefix="show_augmentations_")
    model = trainer.build_model(dataclasses.replace(run, train=dataclasses.replace(run.train, model_dir=scratch)))
    images = load_splits(run.data).pretraining_pool()[: FLAGS.num_images]
    for path in write_grids(model.summary_images(images, run.train.seed), FLAGS.output):
        print(f"wrote {path}")


if __name__ == "__main__":
    cli.run(main, FLAGS)
