"""Measure a pretext's training step on this machine, side by side in one run.

    python tools/benchmark.py --pretext=simclr
    python tools/benchmark.py --pretext=simclr,jigsaw,srgan,pmg      # one block each, data loaded once
    python tools/benchmark.py --pretext=srgan --image_size=96 --batch_size=16
    python tools/benchmark.py --recipe=flags/simclr_tuned.cfg -- --image_size=128 --source_size=256 --width=16
    python tools/benchmark.py --evaluation --encoders=savedmodels/NAME/1 --max_images_per_split=200

Every figure is the median of --repeats (default 5) interleaved repetitions (pipeline,
pre-made, pipeline, pre-made, ...), printed with its min and max.

Prints images/s of the full step (tf.data pipeline + on-device augmentation or
puzzles + forward/backward), the same step fed pre-made inputs (no pipeline, no
augmentation), their ratio, the achieved FLOP/s over a float32 matmul peak
measured in the same run, and the peak resident memory. Training FLOPs are
counted from the forward FLOPs TensorFlow's profiler reports for what the step runs:
for each forward-backward pass, the whole forward plus twice the forward of what that
pass's loss reaches (a backward pass costs about two forwards), so 3x the forward for
one pass (SimCLR: encoder and projection head on both views; Jigsaw: nine tiles and
the classifier; SRGAN: the generator on the LR crops, psnr stage, HR crop = the image
size, --width = the generator's channels). PMG makes four passes of the whole network
per batch, one per granularity, and the loss of pass k reaches only head k and the
stages below it; heads of 8 and 16 x --width channels, the paper's at 64. Each block's
last lines are `key=value`, one a figure (the median).

--recipe=FLAGFILE times the step of a training flagfile instead (flags/*.cfg: its pretext, network,
image and source sizes, views and batch, as `python -m fgssl_tf.train --flagfile=FLAGFILE` trains them);
training flags after `--` override the file's, as they would on the training command line.

--evaluation times tools/reproduce.py's evaluations instead (every protocol, label fraction
and seed of --budget, for the random-init baseline and each of --encoders): seconds per
encoder and protocol with every embedding, fit and trace recomputed per call and seed (as
before fgssl_tf/evaluation/cache.py) beside the same with them shared, each repetition of
each in a fresh process, interleaved; it fails if the two give different figures.
"""

from __future__ import annotations

import os
import resource
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from absl import flags  # noqa: E402

from fgssl_tf import cli  # noqa: E402
from fgssl_tf import flags as fgssl_flags  # noqa: E402
from fgssl_tf.config import BACKBONES  # noqa: E402
from fgssl_tf.errors import FgsslError  # noqa: E402
from fgssl_tf.pretext import PRETEXTS, pretext_spec  # noqa: E402

FLAGS = cli.tool_flags()  # this tool's own flags: tests run it in-process
flags.DEFINE_list(
    "pretext",
    ["simclr"],
    f"Pretexts to measure, one after the other (a comma list of {', '.join(PRETEXTS)}).",
    flag_values=FLAGS,
)
flags.register_validator(
    "pretext",
    lambda names: bool(names) and set(names) <= set(PRETEXTS),
    f"choose a comma list of {', '.join(PRETEXTS)}",
    flag_values=FLAGS,
)
flags.DEFINE_integer("width", 64, "Channels of the first ResNet stage.", lower_bound=4, flag_values=FLAGS)
flags.DEFINE_enum("backbone", "resnet18", list(BACKBONES), "Encoder.", flag_values=FLAGS)
flags.DEFINE_integer("image_size", 64, "Image size.", lower_bound=8, flag_values=FLAGS)
flags.DEFINE_integer("batch_size", 64, "Global batch size.", lower_bound=2, flag_values=FLAGS)
flags.DEFINE_integer("steps", 12, "Timed steps per measurement (after warm-up).", lower_bound=2, flag_values=FLAGS)
flags.DEFINE_integer("warmup", 3, "Untimed steps first (tracing, allocation).", lower_bound=1, flag_values=FLAGS)
flags.DEFINE_boolean("jit_compile", False, fgssl_flags.jit_compile_help(), flag_values=FLAGS)
flags.DEFINE_enum(
    "mixed_precision",
    "none",
    ["none", "bfloat16"],
    "Compute dtype of the layers (weights stay float32).",
    flag_values=FLAGS,
)
flags.DEFINE_string("dataset", "elpv", "Images for the real-pipeline measurement.", flag_values=FLAGS)
flags.DEFINE_integer(
    "peak_matrix",
    2048,
    "Side of the matrices whose product measures the float32 peak.",
    lower_bound=64,
    flag_values=FLAGS,
)
# Each pretext's own sizes (PretextSpec.benchmark_flags), listed in this tool's --help.
BENCHMARK_FLAGS = [flag for name in PRETEXTS for flag in pretext_spec(name).benchmark_flags]
fgssl_flags.define_flag_specs(BENCHMARK_FLAGS, FLAGS)
for flag in BENCHMARK_FLAGS:
    flags.declare_key_flag(flag.name, flag_values=FLAGS)
flags.DEFINE_string(
    "recipe",
    None,
    "A training flagfile (flags/*.cfg): time the step of that run (its pretext, network, image and source sizes, "
    "views and batch) in place of one sized by --pretext, --backbone, --width, --image_size and --batch_size. "
    "Training flags after `--` override the file's: --recipe=flags/simclr_tuned.cfg -- --image_size=128.",
    flag_values=FLAGS,
)
flags.DEFINE_boolean(
    "evaluation",
    False,
    "Time tools/reproduce.py's evaluations of each encoder instead of a training step: seconds per encoder "
    "and protocol with every embedding, fit and trace recomputed per call and seed (as before the evaluation "
    "cache) beside the same with them shared (fgssl_tf/evaluation/cache.py), each run in a fresh process.",
    flag_values=FLAGS,
)
flags.DEFINE_enum(
    "budget", "small", ["tiny", "small", "medium", "paper"], "--evaluation: the reproduce budget.", flag_values=FLAGS
)
flags.DEFINE_list(
    "encoders",
    [],
    "--evaluation: export dirs (savedmodels/NAME/VERSION, at the budget's image size) to time.",
    flag_values=FLAGS,
)
flags.DEFINE_boolean(
    "random_init", True, "--evaluation: also time the random-init baseline of the budget's width.", flag_values=FLAGS
)
flags.DEFINE_integer(
    "max_images_per_split", None, "--evaluation: a stratified subset of each split.", lower_bound=1, flag_values=FLAGS
)
flags.DEFINE_list(
    "protocols", [], "--evaluation: a subset of the budget's protocols (default: all).", flag_values=FLAGS
)
flags.DEFINE_enum(
    "evaluation_mode", "", ["", "recomputed", "shared"], "Internal: one timed run, as JSON.", flag_values=FLAGS
)
flags.DEFINE_integer(
    "repeats",
    5,
    "Repetitions of each measurement, interleaved (pipeline, pre-made, pipeline, ...; --evaluation: recomputed, "
    "shared, ...); every figure is their median, printed with its min and max.",
    lower_bound=1,
    flag_values=FLAGS,
)


class _Timer:
    """Times the steps after warm-up: a Keras callback."""

    def __init__(self, warmup):
        import keras

        class Callback(keras.callbacks.Callback):
            def on_train_batch_end(cb, batch, logs=None):
                if batch + 1 == warmup:
                    self.start = time.perf_counter()
                self.end = time.perf_counter()

        self.callback = Callback()
        self.start = self.end = None


class Spread:
    """The median, min and max of repeated measurements."""

    def __init__(self, values):
        self.values = sorted(float(v) for v in values)
        self.median, self.min, self.max = float(np.median(self.values)), self.values[0], self.values[-1]

    def scaled(self, factor: float) -> Spread:
        return Spread([v * factor for v in self.values])

    def text(self, digits: int) -> str:
        return f"{self.median:.{digits}f} [{self.min:.{digits}f}, {self.max:.{digits}f}]"


def matmul_peak_flops(size=2048, repeats=10) -> float:
    import tensorflow as tf

    a = tf.random.normal([size, size])
    b = tf.random.normal([size, size])

    @tf.function
    def chain(a, b):
        x = a
        for _ in range(repeats):
            x = tf.matmul(x, b) * 1e-3
        return x

    chain(a, b).numpy()
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        chain(a, b).numpy()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 * repeats / best


def forward_flops(forward, input_shape, output: int | None = None) -> int:
    """FLOPs of `forward` on float32 inputs of `input_shape`; with `output`, only of the ops
    its output number `output` depends on."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    concrete = tf.function(forward).get_concrete_function(tf.TensorSpec(input_shape, tf.float32))
    frozen = convert_variables_to_constants_v2(concrete)
    graph = frozen.graph
    if output is not None:
        graph_def = tf.compat.v1.graph_util.extract_sub_graph(graph.as_graph_def(), [frozen.outputs[output].op.name])
        graph = tf.Graph()
        with graph.as_default():
            tf.graph_util.import_graph_def(graph_def, name="")
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    profile = tf.compat.v1.profiler.profile(graph=graph, run_meta=tf.compat.v1.RunMetadata(), cmd="op", options=options)
    return profile.total_float_ops


def training_flops(forward, input_shape, losses_reach: tuple) -> int:
    """One training step's FLOPs: per forward-backward pass, the whole forward plus twice the
    forward FLOPs of the output its loss reaches (None: all of them)."""
    whole = forward_flops(forward, input_shape)
    return sum(
        whole + 2 * (whole if output is None else forward_flops(forward, input_shape, output))
        for output in losses_reach
    )


def premade_inputs(model, pretext: str, batch: int, size: int):
    """Replace the model's on-device input making with fixed tensors; return (the forward
    the step runs, its input shape, the output each forward-backward pass's loss reaches)
    for FLOP counting: the pretext's own `benchmark_inputs` hook (fgssl_tf/pretext/base.py)."""
    return model.benchmark_inputs(batch, size)


def evaluation_runs(budget, protocols: tuple, subjects: dict, splits, dataset: str, output_dir: str) -> dict:
    """Run tools/reproduce.py's evaluations (every protocol, label fraction and seed of `budget`)
    of each subject ({name: export dir or None for random init}) in this process, timing each.
    Returns {"seconds": {subject: {protocol: s}}, "figures": {subject/protocol/fraction: per-seed figures}}."""
    from fgssl_tf.config import BackboneConfig
    from fgssl_tf.evaluation import EvalConfig, evaluate

    seconds, figures = {}, {}
    for name, export in subjects.items():
        for protocol in protocols:
            for fraction in budget.label_fractions:
                config = EvalConfig(
                    encoder=export,
                    baseline=None if export else "random_init",
                    dataset=dataset,
                    protocol=protocol,
                    label_fraction=fraction,
                    seeds=budget.seeds,
                    output_dir=os.path.join(output_dir, f"{name}-{protocol}-{fraction}"),
                    image_size=None if export else budget.image_size,
                    backbone=BackboneConfig(width=budget.width),
                    finetune_epochs=budget.finetune_epochs,
                    batch_size=budget.batch_size,
                )
                started = time.perf_counter()
                report = evaluate(config, splits=splits)
                seconds.setdefault(name, {}).setdefault(protocol, 0.0)
                seconds[name][protocol] += time.perf_counter() - started
                figures[f"{name}/{protocol}/{fraction}"] = [
                    {k: s[k] for k in ("accuracy", "balanced_accuracy", "macro_f1", "selected")}
                    for s in report["per_seed"]
                ]
    return {"seconds": seconds, "figures": figures}


def evaluation_main() -> None:
    """Runs this command once per mode and repetition, interleaved, each in a fresh process;
    prints seconds per encoder and protocol side by side and whether the figures agree."""
    import json
    import subprocess

    from fgssl_tf import reproduce

    budget = reproduce.BUDGETS[FLAGS.budget]
    protocols = tuple(p for p in budget.protocols if not FLAGS.protocols or p in FLAGS.protocols)
    if FLAGS.protocols and set(FLAGS.protocols) - set(budget.protocols):
        raise FgsslError(f"unknown --protocols; the {budget.name} budget has {', '.join(budget.protocols)}")
    if not FLAGS.encoders and not FLAGS.random_init:
        raise FgsslError("nothing to time: pass --encoders=savedmodels/NAME/VERSION or keep --random_init")
    if FLAGS.evaluation_mode:
        import tempfile

        from fgssl_tf.config import DataConfig
        from fgssl_tf.data import load_splits
        from fgssl_tf.evaluation import cache
        from fgssl_tf.export import resolve_version_dir

        subjects = {"random_init": None} if FLAGS.random_init else {}
        for path in FLAGS.encoders:
            version_dir = resolve_version_dir(path)
            subjects[os.path.basename(os.path.dirname(os.path.normpath(version_dir)))] = version_dir
        splits = load_splits(
            DataConfig(
                dataset=FLAGS.dataset,
                image_size=budget.image_size,
                max_images_per_split=FLAGS.max_images_per_split or budget.max_images_per_split,
            )
        )
        with tempfile.TemporaryDirectory() as output_dir:
            if FLAGS.evaluation_mode == "recomputed":
                with cache.disabled():
                    result = evaluation_runs(budget, protocols, subjects, splits, FLAGS.dataset, output_dir)
            else:
                result = evaluation_runs(budget, protocols, subjects, splits, FLAGS.dataset, output_dir)
        print("evaluation_json=" + json.dumps(result))
        return

    runs = {"recomputed": [], "shared": []}
    for _ in range(FLAGS.repeats):
        for mode in runs:
            command = [sys.executable, os.path.abspath(__file__), *sys.argv[1:], f"--evaluation_mode={mode}"]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                raise FgsslError(f"the {mode} run failed: {done.stderr.strip().splitlines()[-1:]}")
            line = next(x for x in done.stdout.splitlines() if x.startswith("evaluation_json="))
            runs[mode].append(json.loads(line.split("=", 1)[1]))
    first = runs["recomputed"][0]
    print(
        f"evaluation: budget={budget.name} dataset={FLAGS.dataset} image_size={budget.image_size} "
        f"width={budget.width} max_images_per_split={FLAGS.max_images_per_split} protocols={','.join(protocols)} "
        f"fractions={','.join(map(str, budget.label_fractions))} seeds={','.join(map(str, budget.seeds))} "
        f"finetune_epochs={budget.finetune_epochs} cpus={os.cpu_count()}"
    )
    print(f"seconds per encoder and protocol (all fractions and seeds): median of {FLAGS.repeats} [min, max]")
    print("| encoder | protocol | recomputed (before) | shared (after) | speed-up |")
    print("|---|---|---|---|---|")
    totals = {mode: [0.0] * FLAGS.repeats for mode in runs}
    for subject, by_protocol in first["seconds"].items():
        for protocol in by_protocol:
            cells = {}
            for mode, results in runs.items():
                values = [r["seconds"][subject][protocol] for r in results]
                totals[mode] = [t + v for t, v in zip(totals[mode], values)]
                cells[mode] = Spread(values)
            speedup = cells["recomputed"].median / cells["shared"].median
            print(
                f"| {subject} | {protocol} | {cells['recomputed'].text(1)} | {cells['shared'].text(1)} "
                f"| {speedup:.2f}x |"
            )
    before, after = Spread(totals["recomputed"]), Spread(totals["shared"])
    print(f"| total | | {before.text(1)} | {after.text(1)} | {before.median / after.median:.2f}x |")
    same = all(r["figures"] == first["figures"] for results in runs.values() for r in results)
    print(f"figures_equal={'yes' if same else 'no'}")  # every run's per-seed figures and selections
    if not same:
        raise FgsslError("the shared and recomputed runs gave different figures: a cache bug")


def main(argv):
    from fgssl_tf.config import DataConfig
    from fgssl_tf.data import load_splits

    if FLAGS.evaluation:
        evaluation_main()
        return
    if len(argv) > 1 and not FLAGS.recipe:
        raise FgsslError(f"unexpected arguments {' '.join(argv[1:])}: training flags after -- need --recipe=FLAGFILE")
    if FLAGS.recipe:
        from fgssl_tf import trainer

        sizing = [name for name in SIZING_FLAGS if FLAGS[name].present]
        if sizing:
            listed = ", ".join("--" + name for name in sizing)
            raise FgsslError(f"{listed} size the tool's own run, not --recipe's: put them after -- as training flags")
        run = recipe_run(FLAGS.recipe, argv[1:])
        splits = load_splits(run.data)
        benchmark(trainer.with_classes_from(run, splits), splits, matmul_peak_flops(FLAGS.peak_matrix))
        return
    splits = load_splits(DataConfig(dataset=FLAGS.dataset, image_size=FLAGS.image_size))
    peak = matmul_peak_flops(FLAGS.peak_matrix)
    for pretext in dict.fromkeys(FLAGS.pretext):
        benchmark(sized_run(pretext, splits), splits, peak)


# The tool's own run (no --recipe) is sized by these; a recipe takes its sizes from the file and the flags after --.
SIZING_FLAGS = ("pretext", "backbone", "width", "image_size", "batch_size", "dataset", "jit_compile", "mixed_precision")


def recipe_run(path: str, overrides: list):
    """The run a training flagfile describes (`--recipe`), as `python -m fgssl_tf.train --flagfile=PATH
    OVERRIDES` resolves it: the training flags are parsed here, in a flag set of their own."""
    import dataclasses
    import tempfile

    if not os.path.isfile(path):
        raise FgsslError(f"--recipe={path} is not a file; pass a training flagfile such as flags/simclr_tuned.cfg")
    values = flags.FlagValues()
    fgssl_flags.define_data_flags(values)
    fgssl_flags.define_backbone_flags(values)
    fgssl_flags.define_train_flags(values)
    try:
        leftover = cli.checked_parse(["train", f"--flagfile={path}", *overrides], values)[1:]
    except FgsslError as err:
        raise FgsslError(f"--recipe={path}: {err}") from None
    if leftover:
        raise FgsslError(f"--recipe={path}: unexpected arguments {' '.join(leftover)}; pass training flags after --")
    fgssl_flags.check_pretext_flags(values)
    run = fgssl_flags.run_config(values)
    # Nothing is written where the recipe would train; the steps are timed silently.
    return dataclasses.replace(run, train=dataclasses.replace(run.train, model_dir=tempfile.mkdtemp(), verbose=0))


def sized_run(pretext: str, splits):
    """The run of `pretext` sized by this tool's --image_size, --width, --backbone and --batch_size."""
    import tempfile

    from fgssl_tf.config import BackboneConfig, DataConfig, TrainConfig
    from fgssl_tf.pretext import get_pretext
    from fgssl_tf.run_config import resolve_run

    size = FLAGS.image_size
    train = TrainConfig(
        pretext=pretext,
        model_dir=tempfile.mkdtemp(),
        batch_size=FLAGS.batch_size,
        jit_compile=FLAGS.jit_compile,
        mixed_precision=FLAGS.mixed_precision,
        verbose=0,
    )
    data = DataConfig(dataset=FLAGS.dataset, image_size=size)
    config = get_pretext(pretext).Config()
    spec = pretext_spec(pretext)
    if spec.benchmark_config is not None:  # sized with --image_size and --width (PretextSpec.benchmark_config)
        config = spec.benchmark_config(config, size, FLAGS.width, splits.num_classes, FLAGS.flag_values_dict())
    return resolve_run(train, data, BackboneConfig(name=FLAGS.backbone, width=FLAGS.width), config)


def benchmark(run, splits, peak: float) -> None:
    """Prints one block of figures for the step of `run` (a RunConfig) on the loaded `splits`."""
    import tensorflow as tf

    from fgssl_tf import trainer
    from fgssl_tf.data import pipeline
    from fgssl_tf.optim import check_schedule, set_schedule_length

    pretext, size, batch = run.train.pretext, run.data.image_size, run.train.batch_size
    steps = FLAGS.warmup + FLAGS.steps

    def measure(model, dataset) -> float:
        timer = _Timer(FLAGS.warmup)
        model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0, callbacks=[timer.callback])
        return FLAGS.steps * batch / (timer.end - timer.start)

    # 1. The real thing, fed as the trainer feeds it: tf.data over the decoded pool (cut from --source_size
    # images where the views are), augmentation on device, the step.
    pool, pool_side = trainer.pretraining_inputs(run, splits)
    # A warm-up + cosine schedule needs the run's length, as the trainer gives it; the rate does not change the time.
    steps_per_epoch = run.train.steps_per_epoch or max(1, len(pool) // batch)
    model = trainer.build_model(run)
    check_schedule(model, run.train)
    set_schedule_length(model, steps_per_epoch, run.train.epochs)
    model.prepare_data(pool, None)  # offline per-image tables (fine-grained SimCLR variants)
    real = pipeline.epoch_batches(pool, pool_side, batch, 0, 0, 1, steps)

    # 2. The same step fed pre-made inputs: no input pipeline, no augmentation.
    premade_model = trainer.build_model(run)
    set_schedule_length(premade_model, steps_per_epoch, run.train.epochs)  # its pre-made views need no tables
    forward, input_shape, losses_reach = premade_inputs(premade_model, pretext, batch, size)
    images = tf.random.uniform([batch, size, size, 3])
    premade = tf.data.Dataset.from_tensors((images, tf.zeros([batch], tf.int64))).repeat()

    # Interleaved, so a change of load on the machine hits both alike; each fit after the first
    # reuses the traced step (the warm-up steps are still left out of every timing).
    real_runs, premade_runs = [], []
    for _ in range(FLAGS.repeats):
        real_runs.append(measure(model, real))
        premade_runs.append(measure(premade_model, premade))
    real_ips = Spread(real_runs)
    premade_ips = Spread(premade_runs)
    pipeline_ratio = Spread([r / p for r, p in zip(real_runs, premade_runs)])

    flops_per_image = training_flops(forward, input_shape, losses_reach) / batch
    achieved = Spread([r * flops_per_image for r in real_runs])
    flop_ratio = Spread([r * flops_per_image / peak for r in real_runs])
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    print(
        f"pretext={pretext} backbone={run.backbone.name} width={run.backbone.width} "
        f"small_stem={run.backbone.small_stem} image_size={size} source_size={run.data.source_size or size} "
        f"batch={batch} jit={run.train.jit_compile} mixed_precision={run.train.mixed_precision} "
        f"cpus={os.cpu_count()} gpus={len(tf.config.list_physical_devices('GPU'))} tf={tf.__version__}"
    )
    passes = (
        f"{len(losses_reach)} passes, each: forward + 2x the forward its loss reaches"
        if len(losses_reach) > 1
        else "3x forward"
    )
    print(f"pretraining pool: {len(pool)} images of {pool.shape[1]} px")  # views are cut from these
    print(f"training GFLOP per image ({passes}): {flops_per_image / 1e9:.3f}")
    print(f"matmul peak: {peak / 1e9:.1f} GFLOP/s; achieved: {achieved.median / 1e9:.1f} GFLOP/s")
    print(
        f"step with pipeline + augmentation: {real_ips.median:.1f} images/s; "
        f"with pre-made inputs: {premade_ips.median:.1f} images/s"
    )
    print(f"medians of {FLAGS.repeats} interleaved repetitions [min, max]:")
    for name, figure, digits in (
        ("images/s with pipeline", real_ips, 2),
        ("images/s with pre-made inputs", premade_ips, 2),
        ("achieved GFLOP/s", achieved.scaled(1e-9), 1),
        ("flop ratio", flop_ratio, 3),
        ("pipeline ratio", pipeline_ratio, 3),
    ):
        print(f"  {name}: {figure.text(digits)}")
    print(f"images_per_s={real_ips.median:.2f}")
    print(f"flop_ratio={flop_ratio.median:.3f}")
    print(f"pipeline_ratio={pipeline_ratio.median:.3f}")
    print(f"peak_rss_mb={rss_mb:.0f}")  # the process's peak so far: pretexts measured earlier count too


if __name__ == "__main__":
    cli.run(main, FLAGS)
