"""What every entry point does around its main: quiet logs, and one-line user errors."""

from __future__ import annotations

import logging
import os
import sys
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ banner out of the console

from fgssl_tf.errors import FgsslError, Interrupted  # noqa: E402


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
        print(f"{'stopped' if isinstance(err, Interrupted) else 'error'}: {err}", file=sys.stderr)
        sys.exit(143 if isinstance(err, Interrupted) else 2)  # 143: 128 + SIGTERM, what schedulers expect


def _non_finite_float_flags(flag_values) -> list[str]:
    """`--x=nan` or `--x=inf` passes absl's bounds (every comparison with NaN is false):
    refused here, for every float flag."""
    import math

    from absl.flags import _argument_parser as parsers

    bad = []
    for name in sorted(flag_values):
        flag = flag_values[name]
        if name != flag.name or not isinstance(flag.parser, parsers.FloatParser):
            continue  # a short alias, or not a float
        if isinstance(flag.value, float) and not math.isfinite(flag.value):
            bad.append(f"flag --{name}={flag.value}: not a finite number")
    return bad


def parse_flags(argv):
    """absl's parsing, with a bad flag (unknown, invalid value, failed validator, NaN or Inf
    in a number, a missing flagfile) reported as one `error:` line and exit code 2, like every
    other user error."""
    from absl import flags

    try:
        remaining = flags.FLAGS(argv)
    except flags.CantOpenFlagFileError as err:  # absl's own text starts "ERROR:: "
        print(f"error: {str(err).replace('ERROR:: ', '', 1)}", file=sys.stderr)
        sys.exit(2)
    except flags.Error as err:  # several failed validators give one line each: keep them on one
        print("error: " + "; ".join(line for line in str(err).splitlines() if line.strip()), file=sys.stderr)
        sys.exit(2)
    bad = _non_finite_float_flags(flags.FLAGS)
    if bad:
        print("error: " + "; ".join(bad), file=sys.stderr)
        sys.exit(2)
    return remaining


def run(main) -> None:
    """What an entry point's `if __name__ == "__main__"` calls."""
    from absl import app

    app.run(lambda argv: run_main(main, argv), flags_parser=parse_flags)
