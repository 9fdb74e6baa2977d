"""One honest protocol for every encoder: fixed splits, selection on validation,
a single report on test, several seeds (each seed draws the label subset and
initialises the classifier).

`evaluate(EvalConfig)` returns the report and writes `report.json` and
`report.md`; `tools/evaluate.py` is the command-line front end.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os

import keras
import numpy as np

from fgssl_tf import export as export_lib
from fgssl_tf.config import BackboneConfig, DataConfig
from fgssl_tf.data import Splits, label_fraction_subset, load_splits, preprocess
from fgssl_tf.errors import FgsslError
from fgssl_tf.evaluation import cache, protocols, variants
from fgssl_tf.evaluation.metrics import METRIC_NAMES, classification_metrics, majority_class_rate
from fgssl_tf.evaluation.srgan_variants import HEADS  # noqa: F401  the import registers SRGAN's variants
from fgssl_tf.models import build_resnet

log = logging.getLogger(__name__)

PROTOCOLS = ("linear", "knn", "finetune")
BASELINES = ("random_init", "supervised")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    encoder: str | None = None  # an export version directory, savedmodels/NAME/VERSION
    baseline: str | None = None  # random_init | supervised (instead of an encoder)
    dataset: str = "elpv"
    protocol: str = "linear"
    label_fraction: float = 1.0
    seeds: tuple = (0,)
    output_dir: str | None = None
    image_size: int | None = None  # default: the encoder's; needed for baselines
    backbone: BackboneConfig = dataclasses.field(default_factory=BackboneConfig)  # for baselines
    pool_grid: int = 1  # baselines: 2 matches a Jigsaw encoder's 2x2 pooled features
    # Baselines: the architecture (and image size) of this export's encoder.keras at fresh random weights,
    # instead of `backbone`: any encoder, SRGAN's generator and discriminator too, against itself untrained.
    architecture_from: str | None = None
    # Baselines: the seed of the random weights (None: the first of `seeds`; fine-tuning: each seed's own).
    # A comparison over several pretraining seeds draws random encoders per seed, as each pretraining does
    # (fine-tuning from init_seed: 1000 x init_seed + seed).
    init_seed: int | None = None
    selection_metric: str = "accuracy"
    finetune_epochs: int = 10
    finetune_learning_rate: float = 1e-4
    trainable_from: str = "all"  # finetune: first trainable stage (all, none, stem, block1..block4)
    class_weights: str = "none"  # none | inverse (N / (K n_c)): the finetune loss, the probe's loss, kNN's votes
    finetune_augment: str = "flip"  # finetune: flip | strong (protocols.finetune_augmentation)
    # finetune: the dense head starts random, or as the linear probe of the frozen encoder on the same labels
    # (LP-FT, protocols.fit_head_on_frozen_features).
    finetune_head_init: str = "random"
    # SRGAN encoders: the paper's downstream variants (docs/paper_fidelity.md, "SRGAN"), owned by the variant
    # registered in fgssl_tf/evaluation/srgan_variants.py.
    head: str = "linear"  # finetune: linear | paper (the paper's head for the generator or discriminator)
    head_dropout: float = 0.0  # the paper's head: 0.5, 0.7, 0.9
    keep_residual_blocks: int | None = None  # generator: keep the first N residual blocks (16 -> 14/12/10/8)
    remove_conv_blocks: int = 0  # discriminator: drop the last K conv blocks
    batch_size: int = 64
    max_images_per_split: int | None = None
    tfds_data_dir: str | None = None
    allow_unseen_classes: bool = False  # val/test classes that train lacks: left out and counted, not an error


def _validate(config: EvalConfig) -> None:
    if config.protocol not in PROTOCOLS:
        raise FgsslError(f"unknown --protocol={config.protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    if (config.encoder is None) == (config.baseline is None):
        raise FgsslError("pass exactly one of --encoder=savedmodels/NAME/VERSION or --baseline=random_init|supervised")
    if config.baseline is not None and config.baseline not in BASELINES:
        raise FgsslError(f"unknown --baseline={config.baseline!r}; choose one of {', '.join(BASELINES)}")
    if config.baseline == "supervised" and config.protocol != "finetune":
        raise FgsslError("--baseline=supervised trains the backbone on the labels: use it with --protocol=finetune")
    if config.architecture_from is not None:
        _validate_architecture_from(config)
    elif config.baseline is not None and not config.image_size:
        raise FgsslError("a baseline needs --image_size (an encoder's export records its own)")
    if config.selection_metric not in METRIC_NAMES:
        raise FgsslError(
            f"unknown --selection_metric={config.selection_metric!r}; choose one of {', '.join(METRIC_NAMES)}"
        )
    for name, value, default in (
        ("trainable_from", config.trainable_from, "all"),
        ("finetune_augment", config.finetune_augment, "flip"),
        ("finetune_head_init", config.finetune_head_init, "random"),
    ):
        if value != default and config.protocol != "finetune":
            raise FgsslError(f"--{name}={value} only applies to --protocol=finetune")
    if config.class_weights not in ("none", "inverse"):
        raise FgsslError(f"unknown --class_weights={config.class_weights!r}; choose none or inverse")
    if config.finetune_augment not in protocols.FINETUNE_AUGMENTATIONS:
        choices = ", ".join(protocols.FINETUNE_AUGMENTATIONS)
        raise FgsslError(f"unknown --finetune_augment={config.finetune_augment!r}; choose one of {choices}")
    if config.finetune_head_init not in protocols.HEAD_INITS:
        choices = ", ".join(protocols.HEAD_INITS)
        raise FgsslError(f"unknown --finetune_head_init={config.finetune_head_init!r}; choose one of {choices}")
    if config.finetune_head_init != "random" and config.head != "linear":
        raise FgsslError(
            f"--finetune_head_init={config.finetune_head_init} fits a linear head: use it with --head=linear"
        )
    for variant in variants.registered():
        variant.validate(config)
    if not config.seeds:
        raise FgsslError("--seeds needs at least one seed")
    if not 0.0 < config.label_fraction <= 1.0:
        raise FgsslError(f"--label_fraction={config.label_fraction} must be in (0, 1]")


def _validate_architecture_from(config: EvalConfig) -> None:
    if config.baseline is None:
        raise FgsslError(
            "--architecture_from gives a baseline its architecture: use it with --baseline=random_init or "
            "--baseline=supervised (an --encoder brings its own)"
        )
    if config.pool_grid != 1:
        raise FgsslError("--pool_grid shapes a ResNet baseline; with --architecture_from the export's pooling is used")
    recorded = _architecture_image_size(config)
    if config.image_size and config.image_size != recorded:
        raise FgsslError(
            f"--image_size={config.image_size} differs from the {recorded} px that {config.architecture_from} "
            "was exported at; leave --image_size out"
        )


def _architecture_image_size(config: EvalConfig) -> int:
    """The image size the export named by --architecture_from records."""
    version_dir = export_lib.resolve_version_dir(config.architecture_from)
    size = export_lib.read_metadata(version_dir).get("image_size")
    if not size:
        raise FgsslError(f"{version_dir} records no image size (metadata.json); pass an export this package wrote")
    return int(size)


def protocol_label(config: EvalConfig) -> str:
    """The protocol's name and every setting that changes it,
    e.g. 'finetune-from-none-keep14blocks-paperhead-dropout0.5', 'knn-inverseweights-select_balanced_accuracy'."""
    parts = [config.protocol]
    if config.trainable_from != "all":
        parts.append(f"from-{config.trainable_from}")
    for variant in variants.registered():
        parts += variant.label_parts(config)
    if config.class_weights != "none":
        parts.append(f"{config.class_weights}weights")
    if config.finetune_augment != "flip":
        parts.append(f"{config.finetune_augment}aug")
    if config.finetune_head_init != "random":
        parts.append("lpft")
    if config.selection_metric != "accuracy":  # another selection is another protocol: its own folder and row
        parts.append(f"select_{config.selection_metric}")
    return "-".join(parts)


def default_output_dir(config: EvalConfig, image_size: int) -> str:
    labels = f"labels{int(round(config.label_fraction * 100))}"
    dataset = config.dataset.split(":", 1)[0]
    protocol = protocol_label(config)
    if config.encoder:
        version_dir = os.path.normpath(config.encoder)
        model_root, version = os.path.split(version_dir)
        # Non-numeric folders beside the versions are ignored by TF Serving.
        return os.path.join(model_root, "evaluations", f"v{version}-{dataset}-{protocol}-{labels}")
    # A baseline's network is drawn from its seeds: another seed is another network, so another folder.
    seeds = "seeds" + "_".join(str(seed) for seed in config.seeds)
    if len(config.seeds) > 2 and list(config.seeds) == list(range(config.seeds[0], config.seeds[-1] + 1)):
        seeds = f"seeds{config.seeds[0]}to{config.seeds[-1]}"  # a long run of seeds stays a short name
    if config.init_seed is not None:
        seeds += f"-init{config.init_seed}"
    if config.architecture_from:  # beside the export whose architecture it is, next to that encoder's reports
        model_root, version = os.path.split(os.path.normpath(config.architecture_from))
        return os.path.join(
            model_root, "evaluations", f"v{version}-{config.baseline}-{dataset}-{protocol}-{labels}-{seeds}"
        )
    backbone = config.backbone
    network = f"{backbone.name}-w{backbone.width}{'-smallstem' if backbone.resolved_small_stem(image_size) else ''}"
    if config.pool_grid != 1:
        network += f"-grid{config.pool_grid}"
    return os.path.join("reports", f"{config.baseline}-{network}-{image_size}px-{dataset}-{protocol}-{labels}-{seeds}")


def _random_encoder(config: EvalConfig, image_size: int, seed: int) -> keras.Model:
    if config.architecture_from:
        template = export_lib.load_keras_encoder(config.architecture_from)
        keras.utils.set_random_seed(seed)
        return keras.models.clone_model(template)  # every layer built afresh from its config: new random weights
    keras.utils.set_random_seed(seed)
    return build_resnet(config.backbone, image_size, pool_grid=config.pool_grid)


def _keras_features(encoder: keras.Model, images: np.ndarray, image_size: int, batch_size: int) -> np.ndarray:
    return protocols.keras_features(encoder, images, lambda batch: preprocess(batch, image_size), batch_size)


def _frozen_features(config: EvalConfig, serving, splits: Splits, image_size: int) -> dict:
    """{split: embeddings} of the frozen encoder, computed once per encoder and split in this process."""
    variant = variants.selected(config)
    if variant is not None:
        key = (*cache.export_key(config.encoder), variant.name, *(getattr(config, f) for f in variant.fields))

        def build():
            return variant.build(config, serving, splits.num_classes, False)[0]

    elif serving is None:
        backbone = json.dumps(dataclasses.asdict(config.backbone), sort_keys=True)
        architecture = cache.export_key(config.architecture_from) if config.architecture_from else None
        key = ("random_init", backbone, architecture, config.pool_grid, _init_seed(config))

        def build():
            return _random_encoder(config, image_size, _init_seed(config))

    else:
        key, build = cache.export_key(config.encoder), None
    built = []  # the Keras encoder, built for the first split the cache lacks

    def compute(images):
        if build is None:
            return serving.embed(images, config.batch_size)
        if not built:
            built.append(build())
        return _keras_features(built[0], images, image_size, config.batch_size)

    key = (*key, image_size, config.batch_size)
    return {name: cache.embeddings(key, splits.split(name)[0], compute) for name in ("train", "val", "test")}


def evaluate(config: EvalConfig, splits: Splits | None = None) -> dict:
    _validate(config)
    if config.encoder:
        config = dataclasses.replace(config, encoder=export_lib.resolve_version_dir(config.encoder))
    if config.architecture_from:
        config = dataclasses.replace(config, architecture_from=export_lib.resolve_version_dir(config.architecture_from))
    serving = export_lib.ServingEncoder(config.encoder) if config.encoder else None
    image_size = config.image_size or (serving.image_size if serving else None)
    if config.architecture_from:
        image_size = _architecture_image_size(config)
    if not image_size:
        raise FgsslError(f"{config.encoder} records no image size; pass --image_size")
    if splits is None:
        splits = load_splits(
            DataConfig(
                dataset=config.dataset,
                image_size=image_size,
                max_images_per_split=config.max_images_per_split,
                tfds_data_dir=config.tfds_data_dir,
                allow_unseen_classes=config.allow_unseen_classes,
            )
        )
    num_classes = splits.num_classes
    train_images, train_labels = splits.split("train")
    val_images, val_labels = splits.split("val")
    test_images, test_labels = splits.split("test")

    features = None
    if config.protocol in ("linear", "knn"):
        features = _frozen_features(config, serving, splits, image_size)

    per_seed = []
    # finetune: the first seed's compiled model, trained again from each later seed's weights (see cache.py)
    compiled = {} if cache.enabled() else None
    fits = {}  # linear and knn, by label subset: neither draws anything at random (see cache.py)
    classifier = None  # the first seed's, as a Keras model on [0, 1] images (for Grad-CAM)
    for seed in config.seeds:
        subset = label_fraction_subset(train_labels, config.label_fraction, seed)
        if config.protocol == "finetune":
            head = None
            variant = variants.selected(config)
            if variant is not None:
                keras.utils.set_random_seed(seed)
                encoder, head = variant.build(config, serving, num_classes, True)
                encoder = export_lib.fast_layers(
                    encoder
                )  # the shipped files hold stock Conv2D; train with the fast one
            elif config.encoder:
                encoder = export_lib.load_keras_encoder(config.encoder)
            else:  # with init_seed, each pretraining seed's baseline starts from weights of its own
                init = seed if config.init_seed is None else 1000 * config.init_seed + seed
                encoder = _random_encoder(config, image_size, init)
            result = protocols.finetune(
                encoder,
                lambda x: preprocess(x, image_size),
                (train_images[subset], train_labels[subset]),
                (val_images, val_labels),
                (test_images, test_labels),
                num_classes,
                seed,
                config.selection_metric,
                config.finetune_epochs,
                config.finetune_learning_rate,
                config.batch_size,
                config.trainable_from,
                head,
                config.class_weights,
                compiled,
                config.finetune_augment,
                config.finetune_head_init,
            )
        elif cache.enabled() and subset.tobytes() in fits:  # the same labels as an earlier seed: the same fit
            result = fits[subset.tobytes()]
        else:
            run = protocols.linear_probe if config.protocol == "linear" else protocols.knn
            result = run(
                (features["train"][subset], train_labels[subset]),
                (features["val"], val_labels),
                (features["test"], test_labels),
                num_classes,
                seed,
                config.selection_metric,
                config.class_weights,
            )
            fits[subset.tobytes()] = result
        if classifier is None and config.protocol == "finetune":
            classifier = result.classifier
        elif classifier is None and config.protocol == "linear":
            classifier = protocols.linear_probe_as_keras(
                _linear_encoder(config, serving, num_classes, image_size), result.classifier
            )
        scores = classification_metrics(test_labels, result.test_predictions, num_classes)
        per_seed.append(
            {
                "seed": seed,
                "train_images": int(len(subset)),
                f"val_{config.selection_metric}": result.val_score,
                "selected": result.selected,
                **scores,
            }
        )
        log.info(
            "seed %d: test accuracy %.4f, balanced %.4f, macro-F1 %.4f (selected %s)",
            seed,
            scores["accuracy"],
            scores["balanced_accuracy"],
            scores["macro_f1"],
            result.selected,
        )

    report = {
        "encoder": config.encoder,
        "baseline": config.baseline,
        "dataset": config.dataset,
        "protocol": protocol_label(config),
        "label_fraction": config.label_fraction,
        "seeds": list(config.seeds),
        "selection": f"best val {config.selection_metric}; reported once on test",
        "image_size": image_size,
        "class_names": list(splits.class_names),
        "split_sizes": splits.stats["split_sizes"],
        "split_fingerprint": splits.stats["split_fingerprint"],
        "unseen_classes": splits.stats.get("unseen_classes", {}),  # left out with --allow_unseen_classes
        "unseen_class_files": splits.stats.get("unseen_class_files", 0),
        "majority_class_rate": majority_class_rate(train_labels, test_labels),
        "encoder_metadata": _subject_metadata(config, serving),
        "config": dataclasses.asdict(config),
    }
    return write_report(report, per_seed, config.output_dir or default_output_dir(config, image_size), classifier)


def _subject_metadata(config: EvalConfig, serving) -> dict:
    if serving:
        return serving.metadata
    if config.architecture_from:
        return {
            "architecture_from": config.architecture_from,
            "architecture": export_lib.read_metadata(config.architecture_from),
        }
    return {"backbone": dataclasses.asdict(config.backbone), "pool_grid": config.pool_grid}


def _linear_encoder(config: EvalConfig, serving, num_classes: int, image_size: int) -> keras.Model:
    """The Keras encoder whose features the linear probe saw."""
    variant = variants.selected(config)
    if variant is not None:
        return variant.build(config, serving, num_classes, False)[0]
    if config.encoder:
        return export_lib.load_keras_encoder(config.encoder)
    return _random_encoder(config, image_size, _init_seed(config))


def _init_seed(config: EvalConfig) -> int:
    return config.seeds[0] if config.init_seed is None else config.init_seed


def classifier_report(
    predict, splits: Splits, dataset: str, image_size: int, subject: str, metadata: dict, seed: int, output_dir: str
) -> dict:
    """The report of a model trained on the labels (PMG): its own predictions on the same
    test split, the same metrics as every encoder. `predict` maps uint8 images to classes."""
    num_classes = splits.num_classes
    train_labels, test_labels = splits.train_labels, splits.test_labels
    val_accuracy = classification_metrics(splits.val_labels, predict(splits.val_images), num_classes)["accuracy"]
    scores = classification_metrics(test_labels, predict(splits.test_images), num_classes)
    per_seed = [
        {
            "seed": seed,
            "train_images": int(len(train_labels)),
            "val_accuracy": val_accuracy,
            "selected": {"epoch": "last"},
            **scores,
        }
    ]
    report = {
        "encoder": subject,
        "baseline": None,
        "dataset": dataset,
        "protocol": "classifier",
        "label_fraction": 1.0,
        "seeds": [seed],
        "selection": "the model after the last epoch; validation accuracy reported, not used",
        "image_size": image_size,
        "class_names": list(splits.class_names),
        "split_sizes": splits.stats["split_sizes"],
        "split_fingerprint": splits.stats["split_fingerprint"],
        "majority_class_rate": majority_class_rate(train_labels, test_labels),
        "encoder_metadata": metadata,
        "config": {},
    }
    log.info(
        "%s: test accuracy %.4f, balanced %.4f, macro-F1 %.4f",
        subject,
        scores["accuracy"],
        scores["balanced_accuracy"],
        scores["macro_f1"],
    )
    return write_report(report, per_seed, output_dir)


def trained_classifier_report(
    predict, name: str, version_dir: str, splits: Splits, data: DataConfig, metadata: dict, seed: int
) -> dict:
    """`classifier_report` of a pretext trained on the labels (PMG) whose encoder `name` was exported to
    `version_dir`: written beside it, under evaluations/ as the evaluation tool's reports."""
    model_root, version = os.path.split(version_dir)
    dataset_name = data.dataset.split(":", 1)[0]
    output_dir = os.path.join(model_root, "evaluations", f"v{version}-{dataset_name}-classifier-labels100")
    report = classifier_report(
        predict, splits, data.dataset, data.image_size, f"{name} (trained classifier)", metadata, seed, output_dir
    )
    log.info("classifier report: %s/report.json", report["output_dir"])
    return report


CLASSIFIER_FILE = "classifier.keras"


def write_report(report: dict, per_seed: list, output_dir: str, classifier: keras.Model | None = None) -> dict:
    """Add the mean and std over seeds of every metric to `report`; write report.json,
    report.md, confusion_matrix.png, recall.png and, when given, the first seed's
    classifier (`classifier.keras`: [0, 1] images at the report's size in, logits out)."""
    for name in METRIC_NAMES:
        values = [s[name] for s in per_seed]
        report[name] = float(np.mean(values))
        report[f"{name}_std"] = float(np.std(values))
    report["per_class_recall"] = np.mean([s["per_class_recall"] for s in per_seed], axis=0).tolist()
    report["confusion_matrix"] = np.sum([s["confusion_matrix"] for s in per_seed], axis=0).tolist()
    report["per_seed"] = per_seed
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "report.json"), "w") as f:
        json.dump(report, f, indent=2, default=str)
    with open(os.path.join(output_dir, "report.md"), "w") as f:
        f.write(markdown_report(report))
    from fgssl_tf import plots

    title = f"{report['protocol']}, seeds {report['seeds']}"
    plots.confusion_matrix_png(
        report["confusion_matrix"],
        report["class_names"],
        os.path.join(output_dir, "confusion_matrix.png"),
        f"{title}: confusion matrix",
    )
    plots.recall_bars_png(
        report["per_class_recall"],
        report["class_names"],
        os.path.join(output_dir, "recall.png"),
        f"{title}: recall per class",
    )
    if classifier is not None:  # stock Keras layers: the file loads without fgssl_tf
        export_lib.stock_layers(classifier, probe_size=report["image_size"]).save(
            os.path.join(output_dir, CLASSIFIER_FILE)
        )
    report["output_dir"] = output_dir
    return report


def markdown_report(report: dict) -> str:
    subject = report["encoder"] or f"baseline: {report['baseline']}"
    if report.get("encoder_metadata", {}).get("architecture_from"):
        subject += f" (the architecture of {report['encoder_metadata']['architecture_from']})"
    lines = [
        f"# Evaluation of {subject}",
        "",
        f"- dataset `{report['dataset']}` (split fingerprint `{report['split_fingerprint']}`, "
        f"sizes {report['split_sizes']}), {report['image_size']} px",
        f"- protocol `{report['protocol']}`, label fraction {report['label_fraction']}, seeds {report['seeds']}",
        f"- selection: {report['selection']}",
        f"- majority-class rate on test: {report['majority_class_rate']:.4f}",
    ]
    if report.get("unseen_class_files"):
        lines.append(
            f"- left out: {report['unseen_class_files']} val/test images of classes train lacks "
            f"({report['unseen_classes']}; --allow_unseen_classes)"
        )
    lines += [
        "",
        "| metric | mean | std |",
        "|---|---|---|",
    ]
    for name in METRIC_NAMES:
        lines.append(f"| {name} | {report[name]:.4f} | {report[name + '_std']:.4f} |")
    lines += ["", "| class | recall |", "|---|---|"]
    lines += [f"| {c} | {r:.4f} |" for c, r in zip(report["class_names"], report["per_class_recall"])]
    lines += ["", "Confusion matrix (rows: true, columns: predicted, summed over seeds):", ""]
    lines.append("| | " + " | ".join(report["class_names"]) + " |")
    lines.append("|---" * (len(report["class_names"]) + 1) + "|")
    for name, row in zip(report["class_names"], report["confusion_matrix"]):
        lines.append(f"| {name} | " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines) + "\n"
