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


def parse_flags(argv, flag_values=None):
    """absl's parsing, with a bad flag (unknown, invalid value, failed validator, NaN or Inf
    in a number, a missing flagfile) reported as one `error:` line and exit code 2, like every
    other user error. A tool passes its own `flag_values` (`tool_flags()`), so that tools can run
    in one process beside the training flags."""
    from absl import flags

    flag_values = flags.FLAGS if flag_values is None else flag_values
    if flag_values is not flags.FLAGS:
        if any(arg in ("-h", "-?", "--help", "--helpshort", "--helpfull") for arg in argv[1:]):
            doc = getattr(sys.modules["__main__"], "__doc__", None) or f"usage: {argv[0]} [flags]\n"
            print(f"{doc}\n{flag_values}")  # the tool's own flags (absl's --help would list only its own)
            sys.exit(0)
        flags.FLAGS.mark_as_parsed()  # absl's own flags keep their defaults; absl.app expects them parsed
    try:
        return checked_parse(argv, flag_values)
    except FgsslError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


def checked_parse(argv, flag_values):
    """Parse `argv` into `flag_values`; a bad flag (unknown, invalid value, failed validator, NaN or Inf in a
    number, a missing flagfile) raises one FgsslError line. Returns the arguments that are not flags."""
    from absl import flags

    try:
        remaining = flag_values(argv)
    except flags.CantOpenFlagFileError as err:  # absl's own text starts "ERROR:: "
        raise FgsslError(str(err).replace("ERROR:: ", "", 1)) from None
    except flags.Error as err:  # several failed validators give one line each: keep them on one
        raise FgsslError("; ".join(line for line in str(err).splitlines() if line.strip())) from None
    bad = _non_finite_float_flags(flag_values)
    if bad:
        raise FgsslError("; ".join(bad))
    return remaining


def tool_flags():
    """A tool's own flag set (absl `FlagValues`): its flags may share names with the training ones
    (--dataset, --image_size) and with other tools', and tests run it in the test's process (`invoke`)."""
    from absl import flags

    return flags.FlagValues()


def print_markdown(markdown: str, path: str | None) -> None:
    """A table tool's output: printed, and also written to `path` (its --markdown flag) when one is given."""
    print(markdown)
    if path:
        with open(path, "w") as f:
            f.write(markdown)


def run(main, flag_values=None) -> None:
    """What an entry point's `if __name__ == "__main__"` calls; a tool passes its `tool_flags()`."""
    from absl import app

    app.run(lambda argv: run_main(main, argv), flags_parser=lambda argv: parse_flags(argv, flag_values))


def invoke(main, flag_values, argv) -> int:
    """Run an entry point as `python TOOL ARGV[1:]` would, in this process: its exit code (0 when
    main returns). Flags are parsed afresh, as a new process would parse them."""
    from absl import app

    flag_values.unparse_flags()
    saved_argv, sys.argv = sys.argv, list(argv)  # what the tool's own process would see
    try:
        run_main(main, parse_flags(list(argv), flag_values))
    except app.UsageError as err:  # absl.app prints the usage and exits 1
        print(f"{os.path.basename(argv[0])}: {err}", file=sys.stderr)
        return 1
    except SystemExit as stopped:
        return stopped.code if isinstance(stopped.code, int) else (0 if stopped.code is None else 1)
    finally:
        sys.argv = saved_argv
    return 0
