"""The paper's comparison on one honest protocol: every method pretrained for the same
number of images at the same image size and backbone width, on the same splits, then
measured by the same evaluation protocols over several seeds.

`run_comparison` pretrains what is missing, evaluates what has no report yet (so an
interrupted run resumes where it stopped) and writes a Markdown table whose every
figure is read back from the evaluation reports, beside the paper's own numbers, and a
label-efficiency plot. Method settings come from the flagfiles (`flags/*.cfg`); the
entry point (`tools/reproduce.py`) turns each into a `RunConfig` once, which `budget_run`
puts on the budget's footing, so this module needs no absl.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import time
from collections.abc import Callable

import numpy as np

from fgssl_tf.config import BackboneConfig
from fgssl_tf.data import Splits
from fgssl_tf.evaluation import EvalConfig, evaluate
from fgssl_tf.monitor import MonitorConfig
from fgssl_tf.run_config import RunConfig, resolve_run

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Method:
    name: str
    flagfile: str | None  # flags/<file>.cfg for a pretext; None for a baseline
    paper: str  # the paper's reported accuracy on cassava (its text; docs/RESULTS.md), "" when none
    encoders: tuple = ("",)  # export suffixes to evaluate (SRGAN: generator, discriminator)
    # Its encoders are not the budget's ResNet: each also gets a row of its own network at random init.
    own_random_init: bool = False


METHODS = {
    m.name: m
    for m in (
        Method("simclr_original", "simclr_original.cfg", "73"),
        Method("simclr_gamma", "simclr_gamma.cfg", "73.8"),
        Method("simclr_coarse_dropout", "simclr_coarse_dropout.cfg", ""),
        Method("simclr_random_swapping", "simclr_random_swapping.cfg", ""),
        Method("simclr_cropped_regions", "simclr_cropped_regions.cfg", ""),
        Method("simclr_random_jigsaw", "simclr_random_jigsaw.cfg", ""),
        Method("simclr_dcl_jigsaw", "simclr_dcl_jigsaw.cfg", ""),
        Method("simclr_tuned", "simclr_tuned.cfg", ""),
        Method("vicreg_tuned", "vicreg_tuned.cfg", ""),
        Method("jigsaw", "jigsaw.cfg", "~68"),
        Method("srgan", "srgan_psnr.cfg", "83 (generator + dropout head)", ("generator", "discriminator"), True),
        Method("pmg", "pmg_small.cfg", "88 (supervised)"),
        Method("random_init", None, ""),
        Method("supervised", None, ""),
    )
}


@dataclasses.dataclass(frozen=True)
class Budget:
    name: str
    image_size: int
    width: int  # the ResNet's first-stage channels, for every method that has a ResNet
    batch_size: int
    images_seen: int  # per pretext (SRGAN: half in each stage)
    seeds: tuple  # evaluation seeds (label subsets, heads)
    pretrain_seeds: tuple
    protocols: tuple
    label_fractions: tuple
    finetune_epochs: int
    methods: tuple
    srgan_blocks: int = 16
    srgan_width: int = 64
    max_images_per_split: int | None = None
    perceptual_weights: str = "none"  # offline budgets have no ImageNet VGG19
    machine: str = ""
    # Whole passes over the pretraining pool (images_seen rounded to them), so warm-up and decay
    # measured in epochs mean what they say; off: one long epoch of images_seen (tiny, small).
    whole_epochs: bool = False
    monitor_readings: int = 0  # monitor readings per run (monitor.json: the ablation curve); 0: off
    backbone: str = "resnet18"  # every method that has a ResNet (PMG's paper ResNet-50 too)


ALL = tuple(m for m in METHODS if not m.endswith("_tuned"))  # the paper's comparison
# The faithful SimCLR beside the tuned one, and the baselines (docs/tuning.md); vicreg_tuned by --methods.
TUNED = ("simclr_original", "simclr_tuned", "random_init", "supervised")
BUDGETS = {
    "tiny": Budget(
        "tiny",
        32,
        8,
        16,
        64,
        (0,),
        (0,),
        ("linear",),
        (1.0,),
        1,
        ("simclr_original", "random_init"),
        srgan_blocks=2,
        srgan_width=8,
        max_images_per_split=96,
        backbone="resnet10",  # a plumbing check: half the layers to trace
    ),
    "small": Budget(
        "small",
        32,
        16,
        32,
        32 * 240,
        (0, 1, 2),
        (0,),
        ("linear", "knn", "finetune"),
        (1.0, 0.1),
        2,
        ALL,
        srgan_blocks=4,
        srgan_width=32,
        machine="a 2-core CPU",
    ),
    "medium": Budget(
        "medium",
        64,
        32,
        64,
        64 * 24 * 150,  # 150 epochs: the tuned SimCLR led random init after 150, not after 30-100 (docs/tuning.md)
        (0, 1, 2),
        (0, 1, 2),
        ("linear", "knn", "finetune"),
        (1.0, 0.1),
        10,
        TUNED,
        machine="a 2-core CPU",
        whole_epochs=True,
        monitor_readings=6,
    ),
    "paper": Budget(
        "paper",
        224,
        64,
        64,
        64 * 24 * 500,
        (0, 1, 2),
        (0, 1, 2),
        ("linear", "knn", "finetune"),
        (1.0, 0.1, 0.01),
        30,
        ALL,
        perceptual_weights="imagenet",
        machine="a GPU with internet (ImageNet weights)",
    ),
}


def budget_run(
    budget: Budget,
    method: Method,
    run: RunConfig,
    dataset: str,
    output_dir: str,
    seed: int,
    stage: str = "",
    pool_size: int = 0,
) -> RunConfig:
    """`run`, the method's configuration (from its flagfile), put on the budget's common footing: its
    image size, width, batch, images seen, seed, folders, the monitor (`pool_size`: the pretraining
    pool's images, for budgets counted in whole epochs). SRGAN's `stage` gan starts from its psnr run."""
    steps = max(1, budget.images_seen // budget.batch_size // (2 if method.name == "srgan" else 1))
    length = {"epochs": 1, "steps_per_epoch": steps}
    monitor_every = 0
    if budget.whole_epochs:
        steps_per_epoch = max(1, pool_size // budget.batch_size)
        epochs = max(1, round(steps / steps_per_epoch))
        length = {"epochs": epochs}  # steps_per_epoch as the flagfile has it
        monitor_every = max(1, epochs // budget.monitor_readings) if budget.monitor_readings else 0
    name = f"{method.name}{'_' + stage if stage else ''}-seed{seed}"
    train = dataclasses.replace(
        run.train,
        **length,
        batch_size=budget.batch_size,
        seed=seed,
        verbose=0,
        validate=False,
        model_dir=os.path.join(output_dir, "runs", name),
        export_dir=os.path.join(output_dir, "savedmodels"),
        export_name=name,
    )
    data = dataclasses.replace(
        run.data,
        dataset=dataset,
        image_size=budget.image_size,
        max_images_per_split=budget.max_images_per_split or run.data.max_images_per_split,
    )
    backbone = dataclasses.replace(run.backbone, name=budget.backbone, width=budget.width)
    if method.name.startswith("jigsaw"):  # the stem follows the budget's tile crops
        backbone = dataclasses.replace(backbone, small_stem=None)
    pretext = run.pretext
    if method.name == "srgan":
        pretext = dataclasses.replace(
            pretext,
            hr_size=budget.image_size,
            residual_blocks=budget.srgan_blocks,
            width=budget.srgan_width,
            discriminator_width=budget.srgan_width,
            perceptual_weights=budget.perceptual_weights,
        )
        if stage == "gan":
            init = os.path.join(output_dir, "runs", f"srgan_psnr-seed{seed}")
            pretext = dataclasses.replace(pretext, stage="gan", generator_init=init)
    monitor = dataclasses.replace(run.monitor or MonitorConfig(), every=monitor_every)
    return resolve_run(train, data, backbone, pretext, monitor)


def _report_path(output_dir: str, label: str) -> str:
    return os.path.join(output_dir, "evaluations", label, "report.json")


def run_comparison(
    budget: Budget,
    dataset: str,
    output_dir: str,
    splits: Splits,
    pretrain: Callable[[Method, int, str], dict],
    methods: tuple | None = None,
) -> dict:
    """Pretrain (through `pretrain(method, seed, stage) -> {suffix: export dir}`, which
    resumes or skips finished runs), evaluate every encoder, baseline, protocol and label
    fraction that has no report yet. Returns {row label: {column: report path}}."""
    methods = methods or budget.methods
    timings_path = os.path.join(output_dir, "timings.json")
    timings = json.load(open(timings_path)) if os.path.isfile(timings_path) else {}
    rows: dict = {}
    for name in methods:
        method = METHODS[name]
        for seed in budget.pretrain_seeds:
            started = time.time()
            if method.flagfile is None:
                exports = {"": None}
            elif method.name == "srgan":  # two stages: the gan stage starts from the psnr stage's generator
                pretrain(method, seed, "psnr")
                exports = pretrain(method, seed, "gan")
            else:
                exports = pretrain(method, seed, "")
            if method.flagfile is not None and f"{name}-seed{seed}" not in timings:
                timings[f"{name}-seed{seed}"] = round(time.time() - started, 1)
            for suffix in method.encoders:
                row = f"{name}_{suffix}" if suffix else name
                encoder = exports.get(suffix) if method.flagfile else None
                subjects = [(row, encoder, None)]
                if method.own_random_init:  # not the budget's ResNet: also against its own network untrained
                    subjects.append((f"{row}_random_init", None, encoder))
                for subject, subject_encoder, architecture in subjects:
                    _evaluate_subject(
                        budget,
                        dataset,
                        output_dir,
                        splits,
                        timings,
                        rows,
                        method,
                        seed,
                        row=subject,
                        encoder=subject_encoder,
                        architecture=architecture,
                    )
    return rows


def _evaluate_subject(
    budget: Budget,
    dataset: str,
    output_dir: str,
    splits: Splits,
    timings: dict,
    rows: dict,
    method: Method,
    seed: int,
    *,
    row: str,
    encoder: str | None,
    architecture: str | None,
) -> None:
    """Every protocol and label fraction of one table row that has no report yet: an exported `encoder`, the
    method's baseline (no flagfile), or the `architecture` of an export at random init (frozen protocols only:
    training that network from scratch would add minutes a row to the budget)."""
    timings_path = os.path.join(output_dir, "timings.json")
    for protocol in budget.protocols:
        if method.name == "supervised" and protocol != "finetune":
            continue  # trained on the labels: fine-tuning only
        if architecture and protocol == "finetune":
            continue  # frozen protocols only (above)
        for fraction in budget.label_fractions:
            column = f"{protocol}@{int(round(fraction * 100))}%"
            label = f"{row}-pretrain{seed}-{protocol}-labels{int(round(fraction * 100))}"
            path = _report_path(output_dir, label)
            rows.setdefault(row, {}).setdefault(column, []).append(path)
            if os.path.isfile(path):
                continue
            baseline = "random_init" if architecture else (method.name if method.flagfile is None else None)
            config = EvalConfig(
                encoder=encoder,
                baseline=baseline,
                architecture_from=architecture,
                # a baseline per pretraining seed draws its own weights; an architecture's, the pretraining seed's
                init_seed=seed if architecture or (baseline and len(budget.pretrain_seeds) > 1) else None,
                dataset=dataset,
                protocol=protocol,
                label_fraction=fraction,
                seeds=budget.seeds,
                output_dir=os.path.dirname(path),
                image_size=budget.image_size if baseline and not architecture else None,
                backbone=BackboneConfig(name=budget.backbone, width=budget.width),
                finetune_epochs=budget.finetune_epochs,
                batch_size=budget.batch_size,
            )
            started = time.time()
            evaluate(config, splits=splits)
            timings[label] = round(time.time() - started, 1)
            os.makedirs(output_dir, exist_ok=True)
            with open(timings_path, "w") as f:
                json.dump(timings, f, indent=2)


def _values(paths: list[str], metric: str) -> list[float]:
    """Every evaluation seed's figure of every pretraining seed, read from the reports."""
    values = []
    for path in paths:
        with open(path) as f:
            values += [s[metric] for s in json.load(f)["per_seed"]]
    return values


def _cell(paths: list[str], metric: str) -> tuple[str, float | None]:
    """'mean ± std' over every evaluation seed of every pretraining seed, read from the reports."""
    values = _values(paths, metric)
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}", float(np.mean(values))


BASELINE_ROWS = ("random_init", "supervised")
LEAD_AIMED_AT = 0.03  # the bar of docs/tuning.md: 3 points ahead, and separated by a std on each side


def yardstick(row: str, column: str, rows: dict) -> str | None:
    """The row a pretrained encoder's cell is judged against: on the frozen protocols its own network at random
    init where the table has one (SRGAN's), else the budget's ResNet at random init; fine-tuning, the ResNet
    trained from scratch. None for a baseline row, or when the table lacks that cell."""
    if row in BASELINE_ROWS or row.endswith("_random_init"):
        return None
    if column.startswith("finetune@"):
        reference = "supervised"
    else:
        reference = f"{row}_random_init" if f"{row}_random_init" in rows else "random_init"
    return reference if column in rows.get(reference, {}) else None


def lead_cell(paths: list[str], reference_paths: list[str], metric: str) -> str:
    """The lead over the yardstick in points, and whether it meets the bar: at least 3 points, and the encoder's
    mean minus its std above the yardstick's mean plus its std (both over every seed's figure)."""
    ours, theirs = _values(paths, metric), _values(reference_paths, metric)
    lead = np.mean(ours) - np.mean(theirs)
    separated = np.mean(ours) - np.std(ours) > np.mean(theirs) + np.std(theirs)
    text = f"{100 * lead:+.1f}"
    if lead >= LEAD_AIMED_AT and separated:
        return f"**{text}, met**"
    return text + (", separated" if separated else "")


def wall_clock_line(seconds: float, machine: str, resumed: bool) -> str:
    """The run's total, said plainly: one run from nothing, or this invocation of a resumed one."""
    how = "this invocation, resuming kept runs and reports" if resumed else "one run from nothing"
    return f"Wall-clock total: {seconds / 60:.1f} minutes ({machine}; {how})"


def results_markdown(
    budget: Budget,
    dataset: str,
    rows: dict,
    output_dir: str,
    command: str,
    machine: str,
    wall_clock: str = "",
) -> str:
    columns = sorted(
        {c for cells in rows.values() for c in cells},
        key=lambda c: (c.split("@")[0] != "linear", c.split("@")[0], -float(c.split("@")[1][:-1])),
    )
    timings_path = os.path.join(output_dir, "timings.json")
    timings = json.load(open(timings_path)) if os.path.isfile(timings_path) else {}
    any_report = next(p for cells in rows.values() for paths in cells.values() for p in paths)
    with open(any_report) as f:
        sample = json.load(f)
    lines = [
        f"# Results: the paper's comparison on {dataset}, budget `{budget.name}`",
        "",
        f"Produced by `{command}` on {machine}; every figure below is read from the evaluation",
        f"reports under `{output_dir}/evaluations/` (`report.json`), none typed in.",
        "",
        f"- data: `{dataset}`, split fingerprint `{sample['split_fingerprint']}`, sizes {sample['split_sizes']}, "
        f"{budget.image_size} px; majority class on test {sample['majority_class_rate']:.3f}",
        f"- every pretext: {budget.images_seen} images seen (batch {budget.batch_size}; SRGAN half per stage), "
        f"{budget.backbone.replace('resnet', 'ResNet-')} of width {budget.width} where the method has a ResNet "
        f"(SRGAN: {budget.srgan_blocks} blocks of {budget.srgan_width}; "
        f"perceptual weights: {budget.perceptual_weights}), pretraining seeds {list(budget.pretrain_seeds)}",
        f"- evaluation: protocols {list(budget.protocols)}, label fractions {list(budget.label_fractions)}, "
        f"seeds {list(budget.seeds)}, "
        f"selection on validation, one report on test; fine-tuning {budget.finetune_epochs} epochs",
        "- cells: mean ± std over seeds; the paper's numbers are accuracies on cassava from its text "
        "(no notebook shows them)",
        "",
    ]
    for metric in ("accuracy", "balanced_accuracy", "macro_f1"):
        lines += [
            f"## Test {metric.replace('_', ' ')}",
            "",
            "| method | " + " | ".join(columns) + " | paper (cassava) |",
            "|---" * (len(columns) + 2) + "|",
        ]
        for row, cells in rows.items():
            values = [_cell(cells[c], metric)[0] if c in cells else "" for c in columns]
            paper = _paper_figure(row) if metric == "accuracy" else ""
            lines.append(f"| {row} | " + " | ".join(values) + f" | {paper} |")
        lines.append("")
    leads = [(row, [(c, yardstick(row, c, rows)) for c in columns]) for row in rows]
    leads = [(row, cells) for row, cells in leads if any(reference for _, reference in cells)]  # no baseline rows
    if leads:
        lines += [
            "## Against no pretraining (test balanced accuracy)",
            "",
            "Each encoder's lead in points over the same protocol without pretraining: its own network at random "
            "init where the table has that row, else the ResNet at random init (frozen protocols) or from scratch "
            "(fine-tuning). **met**: at least 3 points ahead, and its mean minus its std above the yardstick's mean "
            "plus its std, over every seed's figure.",
            "",
            "| method | " + " | ".join(columns) + " |",
            "|---" * (len(columns) + 1) + "|",
        ]
        for row, cells in leads:
            values = [
                lead_cell(rows[row][c], rows[reference][c], "balanced_accuracy") if reference and c in rows[row] else ""
                for c, reference in cells
            ]
            lines.append(f"| {row} | " + " | ".join(values) + " |")
        lines.append("")
    if wall_clock:
        lines += [wall_clock, ""]
    if timings:
        lines += (
            ["## Time (seconds)", "", "| step | s |", "|---|---|"]
            + [f"| {k} | {v} |" for k, v in timings.items()]
            + [""]
        )
    return "\n".join(lines)


def _paper_figure(row: str) -> str:
    """The paper's figure for a table row: its method's, none for an encoder's network at random init."""
    if row in METHODS:
        return METHODS[row].paper
    if row.endswith("_random_init"):
        return ""
    return METHODS[row.rsplit("_", 1)[0]].paper  # srgan_generator -> srgan


def label_efficiency_png(rows: dict, protocol: str, path: str, title: str) -> str | None:
    """Test accuracy against the share of labels, one line per method (from the reports)."""
    from fgssl_tf import plots

    series = {}
    for row, cells in rows.items():
        points = sorted(
            (float(c.split("@")[1][:-1]), _cell(paths, "accuracy")[1])
            for c, paths in cells.items()
            if c.startswith(protocol + "@")
        )
        if points:
            series[row] = points
    if not series or max(len(p) for p in series.values()) < 2:
        return None
    return plots.lines_png(series, path, title, "labels used (% of the training split)", "test accuracy")


def machine_description() -> str:
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    gpu_text = f" and {len(gpus)} GPU" if gpus else ", no GPU"
    return f"{platform.machine()} with {os.cpu_count()} CPU cores{gpu_text}, TensorFlow {tf.__version__}"
