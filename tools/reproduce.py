"""One command reproduces the paper's comparison on one honest protocol.

    python tools/reproduce.py --dataset=elpv --budget=small --results=docs/RESULTS.md
    python tools/reproduce.py --budget=tiny --output_dir=/tmp/repro          # a minute: two methods, one seed
    python tools/reproduce.py --budget=paper --dataset=cassava                 # a GPU machine with internet

Every method runs from its flagfile (flags/*.cfg), read once into a run configuration, with
the budget's image size, width, batch and number of images seen put on top
(`fgssl_tf.reproduce.budget_run`), on splits loaded once; then every encoder
and baseline goes through the same protocols, label fractions and seeds. Re-running the
command resumes: finished runs and reports are kept. Writes RESULTS.md (mean ± std from
the reports, beside the paper's numbers) and label_efficiency.png.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from fgssl_tf import cli  # noqa: E402
from fgssl_tf import flags as fgssl_flags  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = cli.tool_flags()  # this tool's own flags: tests run it in-process
fgssl_flags.define_data_flags(FLAGS)
fgssl_flags.define_backbone_flags(FLAGS)
fgssl_flags.define_train_flags(FLAGS)
flags.DEFINE_enum(
    "budget",
    "small",
    ["tiny", "small", "medium", "paper"],
    "tiny: a minute (tests); small: the paper's methods, about 31 minutes on a 2-core CPU; "
    "medium: the faithful and tuned recipes, 3 pretraining seeds, under 3 hours on a 2-core CPU; "
    "paper: the paper's sizes, a GPU.",
    flag_values=FLAGS,
)
flags.DEFINE_string(
    "output_dir", None, "Runs, exports and reports; default reproduce/<dataset>-<budget>.", flag_values=FLAGS
)
flags.DEFINE_string(
    "results",
    None,
    "Where RESULTS.md goes (default <output_dir>/RESULTS.md); the plot goes beside it.",
    flag_values=FLAGS,
)
flags.DEFINE_list("methods", [], "A subset of the budget's methods (default: all of them).", flag_values=FLAGS)
flags.DEFINE_list(
    "protocols", [], "A subset of the budget's protocols, e.g. linear,knn (default: all of them).", flag_values=FLAGS
)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from fgssl_tf import reproduce, trainer
    from fgssl_tf.config import DataConfig
    from fgssl_tf.data import load_splits
    from fgssl_tf.errors import FgsslError

    started = time.perf_counter()
    budget = reproduce.BUDGETS[FLAGS.budget]
    dataset = FLAGS.dataset
    dataset_name = dataset.split(":", 1)[0]
    output_dir = FLAGS.output_dir or os.path.join("reproduce", f"{dataset_name}-{budget.name}")
    results = FLAGS.results or os.path.join(output_dir, "RESULTS.md")
    methods = tuple(FLAGS.methods) or budget.methods
    unknown = [m for m in methods if m not in reproduce.METHODS]
    if unknown:
        raise FgsslError(f"unknown --methods {', '.join(unknown)}; choose from {', '.join(reproduce.METHODS)}")
    unknown = [p for p in FLAGS.protocols if p not in budget.protocols]
    if unknown:
        raise FgsslError(
            f"unknown --protocols {', '.join(unknown)}; the {budget.name} budget has {', '.join(budget.protocols)}"
        )
    if FLAGS.protocols:
        budget = dataclasses.replace(budget, protocols=tuple(p for p in budget.protocols if p in FLAGS.protocols))
    command = "python tools/reproduce.py " + " ".join(a for a in sys.argv[1:])
    machine = reproduce.machine_description()
    resumed = os.path.isfile(os.path.join(output_dir, "timings.json"))
    splits = load_splits(
        DataConfig(
            dataset=dataset,
            image_size=budget.image_size,
            max_images_per_split=budget.max_images_per_split,
            tfds_data_dir=FLAGS.tfds_data_dir,
        )
    )

    method_runs = {}  # method name -> its RunConfig, parsed from its flagfile once

    def method_run(method):
        if method.name not in method_runs:
            FLAGS.unparse_flags()
            FLAGS(["reproduce", f"--flagfile={os.path.join(REPO, 'flags', method.flagfile)}"])
            fgssl_flags.check_pretext_flags(FLAGS)
            method_runs[method.name] = fgssl_flags.run_config(FLAGS)
        return method_runs[method.name]

    def pretrain(method, seed, stage):
        """The method's run on the budget's footing: train it (or resume, or skip it when finished)."""
        run = reproduce.budget_run(
            budget, method, method_run(method), dataset, output_dir, seed, stage, len(splits.pretraining_pool())
        )
        train = run.train
        wanted = [s for s in method.encoders if stage != "psnr" or s in ("", "generator")]
        names = {suffix: f"{train.export_name}_{suffix}" if suffix else train.export_name for suffix in wanted}
        exports = {suffix: os.path.join(train.export_dir, name, "1") for suffix, name in names.items()}
        if all(os.path.isfile(os.path.join(path, "saved_model.pb")) for path in exports.values()):
            return exports  # finished before: exports are written only after the last epoch
        for name in names.values():  # a half-written export of an interrupted run
            shutil.rmtree(os.path.join(train.export_dir, name), ignore_errors=True)
        result = trainer.run(run, splits=splits)
        return {suffix: result.exports[name] for suffix, name in names.items()}

    rows = reproduce.run_comparison(budget, dataset, output_dir, splits, pretrain, methods)
    os.makedirs(os.path.dirname(os.path.abspath(results)), exist_ok=True)
    wall_clock = reproduce.wall_clock_line(time.perf_counter() - started, machine, resumed)
    markdown = reproduce.results_markdown(budget, dataset, rows, output_dir, command, machine, wall_clock)
    plot = reproduce.label_efficiency_png(
        rows,
        "linear",
        os.path.join(os.path.dirname(os.path.abspath(results)), "label_efficiency.png"),
        f"{dataset} ({budget.name} budget): linear probe accuracy against labels",
    )
    if plot:
        markdown += f"\n![label efficiency]({os.path.basename(plot)})\n"
    with open(results, "w") as f:
        f.write(markdown)
    print(markdown)
    print(f"results: {results}")
    print(wall_clock)


if __name__ == "__main__":
    cli.run(main, FLAGS)
