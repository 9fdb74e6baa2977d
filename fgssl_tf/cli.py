"""What every entry point does around its main: logging, and one-line user errors."""

from __future__ import annotations

import logging
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ banner out of the console

from fgssl_tf.errors import FgsslError  # noqa: E402


def run_main(main, argv) -> None:
    """Run main(argv); a FgsslError becomes `error: <message>` on stderr and exit code 2."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)
    try:
        main(argv)
    except FgsslError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
