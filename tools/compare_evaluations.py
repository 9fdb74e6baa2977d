"""Evaluation reports side by side, the first as the reference: differences and whether seeds separate them.

    python tools/compare_evaluations.py savedmodels/NAME/evaluations/v1-supervised-elpv-finetune-labels10 \
        savedmodels/NAME/evaluations/v1-elpv-finetune-labels10 [--markdown=table.md]   # baseline first

Each argument is a report.json written by tools/evaluate.py, or its folder. Reports of another
test split are refused (fgssl_tf/evaluation/compare.py).
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from fgssl_tf import cli  # noqa: E402

FLAGS = cli.tool_flags()  # this tool's own flags: tests run it in-process
flags.DEFINE_string("markdown", None, "Also write the table to this file.", flag_values=FLAGS)


def main(argv):
    from fgssl_tf.evaluation.compare import comparison_table, load_report

    if len(argv) < 2:
        raise app.UsageError("pass one or more evaluation reports (report.json files or their folders)")
    cli.print_markdown(comparison_table([load_report(path) for path in argv[1:]]), FLAGS.markdown)


if __name__ == "__main__":
    cli.run(main, FLAGS)
