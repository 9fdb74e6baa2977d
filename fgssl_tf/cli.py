"""What every entry point does around its main: quiet logs, and one-line user errors."""

from __future__ import annotations

import logging
import os
import sys
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ banner out of the console

from fgssl_tf.errors import FgsslError  # noqa: E402


def run_main(main, argv) -> None:
    """Run main(argv); a FgsslError becomes `error: <message>` on stderr and exit code 2."""
    import tensorflow as tf

    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)  # TensorFlow internals log through absl
    tf.get_logger().setLevel(logging.WARNING)
    logging.getLogger("fgssl_tf").setLevel(logging.INFO)
    # Our datasets are shuffled by (seed, epoch) on purpose; Keras' hint does not apply.
    warnings.filterwarnings("ignore", message=".*`shuffle=True` was passed.*")
    try:
        main(argv)
    except FgsslError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
