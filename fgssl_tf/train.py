"""Pretrain an encoder: `python -m fgssl_tf.train --pretext=simclr --dataset=elpv`.

Re-running the same command with the same --model_dir resumes from the last
epoch's checkpoint. At the end the encoder is exported to --export_dir.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from fgssl_tf import cli  # noqa: E402
from fgssl_tf import flags as fgssl_flags  # noqa: E402

FLAGS = flags.FLAGS
fgssl_flags.define_data_flags()
fgssl_flags.define_backbone_flags()
fgssl_flags.define_train_flags()


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    fgssl_flags.check_pretext_flags()  # before any data is loaded (each flag's own validator ran at parsing)
    from fgssl_tf import distribute, trainer  # TensorFlow imports only after flags are valid

    distribute.make_strategy(
        FLAGS.strategy
    )  # first: a multi-worker cluster must be joined before TensorFlow's first op

    result = trainer.run(fgssl_flags.run_config())  # the flags resolved once into one RunConfig
    for name, path in result.exports.items():
        print(f"exported {name}: {path}")


def run():
    cli.run(main)


if __name__ == "__main__":
    run()
