"""absl flag definitions shared by the entry points, and their conversion to configs.

Only entry points import this module; the library never reads flags.
"""

from __future__ import annotations

import os

from absl import flags

from fgssl_tf.config import BACKBONES, STRATEGIES, BackboneConfig, DataConfig, TrainConfig
from fgssl_tf.errors import FgsslError
from fgssl_tf.pretext.settings import config_from_values, not_a_file_error, weights_choice_error  # noqa: F401 (tools)

FLAGS = flags.FLAGS


def validate(name: str, check, flag_values=FLAGS) -> None:
    """Register `check(value)` as the validator of flag `name`: it returns an error message
    or None, or raises FgsslError (the library's checks) with the message."""

    def checker(value):
        try:
            error = check(value)
        except FgsslError as err:  # the library's own check, raising its message
            error = str(err)
        if error:
            raise flags.ValidationError(error)
        return True

    flags.register_validator(name, checker, flag_values=flag_values)


def dataset_error(value: str):
    if value in ("elpv", "cassava"):
        return None
    if value.startswith("folder:"):
        path = value[len("folder:") :]
        return (
            None if os.path.isdir(path) else f"folder {path!r} does not exist; pass folder:PATH with PATH/<label>/*.jpg"
        )
    return f"unknown --dataset={value!r}; choose one of elpv, cassava, folder:PATH"


def missing_path_error(hint: str):
    """A validator: None for an unset or existing path, else that it does not exist and `hint`."""
    return lambda value: None if value is None or os.path.exists(value) else f"{value!r} does not exist; {hint}"


def existing_dir_error(value):
    return None if value is None or os.path.isdir(value) else f"{value!r} is not an existing folder"


def name_error(value):
    if value is not None and (not value or os.sep in value or value.startswith(".")):
        return f"{value!r} is not a plain name (no '/', not starting with '.')"
    return None


def check_pretext_flags(flag_values=FLAGS) -> None:
    """Refuse, before any work, a flag set explicitly (command line or flagfile) that
    only another pretext reads: it would be silently ignored."""
    readers: dict[str, list[str]] = {}
    for pretext, names in pretext_flag_names().items():
        for name in names:
            readers.setdefault(name, []).append(pretext)
    wrong = [
        name for name, pretexts in readers.items() if flag_values.pretext not in pretexts and flag_values[name].present
    ]
    if wrong:
        users = sorted({p for name in wrong for p in readers[name]})
        raise FgsslError(
            f"{', '.join('--' + n for n in wrong)} only apply to --pretext={'/'.join(users)}, "
            f"not --pretext={flag_values.pretext}; remove them or change --pretext"
        )
    from fgssl_tf.pretext import pretext_spec

    check = pretext_spec(flag_values.pretext).check_flags  # checks across the pretext's own flags
    if check is not None:
        check(flag_values.flag_values_dict())


def define_data_flags(flag_values=FLAGS) -> None:
    flags.DEFINE_string(
        "dataset",
        "elpv",
        "elpv (offline default), cassava (TFDS) or folder:PATH (PATH/<label>/*.jpg).",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "image_size",
        64,
        "Images are squash-resized to this many pixels a side.",
        lower_bound=8,
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "source_size",
        None,
        f"{'/'.join(spec.name for spec in _registered_specs() if spec.uses_source_size)}: "
        "cut the random crops from images cached at this larger size (as RandomResizedCrop cuts from the original), "
        "then resize them to --image_size.",
        lower_bound=8,
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "unlabeled_dir",
        None,
        "Folder of extra unlabelled images for pretraining (val/test duplicates dropped).",
        flag_values=flag_values,
    )
    flags.DEFINE_string("tfds_data_dir", None, "TFDS data directory (cassava).", flag_values=flag_values)
    flags.DEFINE_float(
        "val_fraction",
        0.2,
        "Share carved out of train for validation when a folder has no val split.",
        lower_bound=0.01,
        upper_bound=0.45,
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "max_images_per_split",
        None,
        "Use a stratified subset of at most this many images per split (smoke runs).",
        lower_bound=2,
        flag_values=flag_values,
    )
    flags.DEFINE_float(
        "max_cache_gb",
        None,
        "Memory allowed for decoded images; default half the RAM.",
        lower_bound=0.01,
        flag_values=flag_values,
    )
    flags.DEFINE_boolean(
        "allow_unseen_classes",
        False,
        "Folder datasets: leave out (and count) val/test images "
        "of classes that train lacks, instead of stopping with an error naming them.",
        flag_values=flag_values,
    )
    validate("dataset", dataset_error, flag_values)
    validate("unlabeled_dir", existing_dir_error, flag_values)
    validate("tfds_data_dir", not_a_file_error, flag_values)


def define_backbone_flags(flag_values=FLAGS) -> None:
    flags.DEFINE_enum("backbone", "resnet18", list(BACKBONES), "Encoder architecture.", flag_values=flag_values)
    flags.DEFINE_enum(
        "small_stem",
        "auto",
        ["auto", "true", "false"],
        "3x3 stem without max-pool; auto: on for encoder inputs of 32 px and less (images; jigsaw: tile crops).",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "width", 64, "Channels of the first ResNet stage (64 = standard).", lower_bound=4, flag_values=flag_values
    )
    flags.DEFINE_enum(
        "sync_bn",
        "auto",
        ["auto", "true", "false"],
        "Batch-norm statistics over the global batch across replicas; auto: whenever there are several.",
        flag_values=flag_values,
    )


def data_config(flag_values=FLAGS) -> DataConfig:
    return DataConfig(
        dataset=flag_values.dataset,
        image_size=flag_values.image_size,
        source_size=flag_values.source_size,
        unlabeled_dir=flag_values.unlabeled_dir,
        tfds_data_dir=flag_values.tfds_data_dir,
        val_fraction=flag_values.val_fraction,
        max_images_per_split=flag_values.max_images_per_split,
        max_cache_gb=flag_values.max_cache_gb,
        allow_unseen_classes=flag_values.allow_unseen_classes,
    )


def backbone_config(flag_values=FLAGS) -> BackboneConfig:
    choice = {"auto": None, "true": True, "false": False}
    return BackboneConfig(
        name=flag_values.backbone,
        small_stem=choice[flag_values.small_stem],
        synchronized_bn=choice[flag_values.sync_bn],
        width=flag_values.width,
    )


def define_train_flags(flag_values=FLAGS) -> None:
    specs = _registered_specs()
    names = [spec.name + (" (the supervised baseline)" if spec.supervised else "") for spec in specs]
    flags.DEFINE_string(
        "pretext", "simclr", f"Pretext task: {', '.join(names[:-1])}, or {names[-1]}.", flag_values=flag_values
    )
    flags.DEFINE_string(
        "model_dir",
        None,
        "Checkpoints and TensorBoard logs; default runs/<pretext>_<dataset>.",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "export_dir", "savedmodels", "Where encoders are exported (NAME/VERSION).", flag_values=flag_values
    )
    flags.DEFINE_string(
        "export_name", None, "Export name; default <pretext>_<backbone>_<dataset>.", flag_values=flag_values
    )
    flags.DEFINE_boolean(
        "export",
        True,
        "Export the encoder after training (--noexport: checkpoints only, e.g. runs of a sweep).",
        flag_values=flag_values,
    )
    flags.DEFINE_integer("epochs", 10, "Training epochs.", lower_bound=1, flag_values=flag_values)
    flags.DEFINE_integer(
        "batch_size", 64, "Global batch size (split over replicas).", lower_bound=2, flag_values=flag_values
    )
    flags.DEFINE_integer(
        "steps_per_epoch",
        None,
        "Steps per epoch; default one pass over the pretraining pool.",
        lower_bound=1,
        flag_values=flag_values,
    )
    flags.DEFINE_float(
        "learning_rate",
        None,
        "Initial learning rate; default the paper's for the pretext "
        f"({', '.join(f'{s.name}: {s.optimizer} {_number(s.default_learning_rate)}' for s in specs)}).",
        lower_bound=0.0,
        flag_values=flag_values,
    )
    flags.DEFINE_enum(
        "lr_schedule",
        "constant",
        ["constant", "cosine"],
        "constant: the paper's; cosine: linear warm-up (--warmup_epochs) to --learning_rate, then "
        f"cosine decay to 0 ({', '.join(s.name for s in specs if s.cosine_schedule)}; "
        f"{_and(s.name for s in specs if not s.cosine_schedule)} keep the paper's schedules).",
        flag_values=flag_values,
    )
    flags.DEFINE_float(
        "warmup_epochs",
        0.0,
        "Epochs of linear warm-up of --lr_schedule=cosine.",
        lower_bound=0.0,
        flag_values=flag_values,
    )
    flags.DEFINE_float(
        "weight_decay",
        None,
        "Coupled L2 weight decay, as PyTorch; default the paper's "
        f"({', '.join(f'{s.name} {_number(s.default_weight_decay)}' for s in specs)}).",
        lower_bound=0.0,
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "seed", 0, "Seed of data order, augmentation and initialisation.", lower_bound=0, flag_values=flag_values
    )
    flags.DEFINE_enum(
        "strategy",
        "auto",
        list(STRATEGIES),
        "tf.distribute strategy; auto = mirrored over several GPUs.",
        flag_values=flag_values,
    )
    flags.DEFINE_boolean(
        "validate", True, "Compute the pretext loss on the validation split after each epoch.", flag_values=flag_values
    )
    flags.DEFINE_enum(
        "mixed_precision",
        "none",
        ["none", "bfloat16"],
        "bfloat16: layers compute in bfloat16, weights and losses stay float32 (GPUs from Ampere on, TPUs; "
        "slower on most CPUs). float16 is not offered: it needs loss scaling, which would fight the NaN guard.",
        flag_values=flag_values,
    )
    flags.DEFINE_boolean("jit_compile", False, jit_compile_help(), flag_values=flag_values)
    flags.DEFINE_integer(
        "monitor_every",
        1,
        "Every this many epochs: kNN accuracy, online linear probe and collapse signals on held-out labels (0: off).",
        lower_bound=0,
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "monitor_images",
        1000,
        "Labelled training images the monitor uses (validation queries: half as many).",
        lower_bound=10,
        flag_values=flag_values,
    )
    flags.DEFINE_enum(
        "nan_policy",
        "stop",
        ["stop", "skip_batch"],
        "A NaN or Inf loss: stop naming the step (weights and checkpoints keep their last finite values), "
        "or skip that batch and go on.",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "verbose",
        1,
        "Keras progress output: 0 silent, 1 progress bar, 2 a line per epoch.",
        lower_bound=0,
        upper_bound=2,
        flag_values=flag_values,
    )

    def pretext_error(value):
        from fgssl_tf.pretext import check_pretext

        check_pretext(value)

    validate("pretext", pretext_error, flag_values)
    validate("model_dir", not_a_file_error, flag_values)
    validate("export_dir", not_a_file_error, flag_values)
    validate("export_name", name_error, flag_values)
    define_pretext_flags(flag_values)  # each pretext's own, declared in its module


def train_config(flag_values=FLAGS) -> TrainConfig:
    dataset = flag_values.dataset.split(":", 1)[0]
    return TrainConfig(
        pretext=flag_values.pretext,
        model_dir=flag_values.model_dir or f"runs/{flag_values.pretext}_{dataset}",
        export_dir=flag_values.export_dir,
        export_name=flag_values.export_name,
        export=flag_values.export,
        epochs=flag_values.epochs,
        batch_size=flag_values.batch_size,
        steps_per_epoch=flag_values.steps_per_epoch,
        learning_rate=flag_values.learning_rate,
        lr_schedule=flag_values.lr_schedule,
        warmup_epochs=flag_values.warmup_epochs,
        weight_decay=flag_values.weight_decay,
        seed=flag_values.seed,
        strategy=flag_values.strategy,
        jit_compile=flag_values.jit_compile,
        mixed_precision=flag_values.mixed_precision,
        validate=flag_values.validate,
        verbose=flag_values.verbose,
        nan_policy=flag_values.nan_policy,
    )


def run_config(flag_values=FLAGS):
    """The run the flags describe, resolved once (`fgssl_tf.run_config.resolve_run`): what the trainer runs."""
    from fgssl_tf.run_config import resolve_run

    return resolve_run(
        train_config(flag_values),
        data_config(flag_values),
        backbone_config(flag_values),
        pretext_config(flag_values),
        monitor_config(flag_values),
    )


def monitor_config(flag_values=FLAGS):
    from fgssl_tf.monitor import MonitorConfig

    return MonitorConfig(
        every=flag_values.monitor_every,
        max_bank_images=flag_values.monitor_images,
        max_query_images=max(5, flag_values.monitor_images // 2),
    )


_DEFINE = {
    "integer": flags.DEFINE_integer,
    "float": flags.DEFINE_float,
    "boolean": flags.DEFINE_boolean,
    "string": flags.DEFINE_string,
    "enum": flags.DEFINE_enum,
    "list": flags.DEFINE_list,
}


def _registered_specs():
    from fgssl_tf.pretext import PRETEXTS, pretext_spec

    return [pretext_spec(name) for name in PRETEXTS]


def jit_compile_help() -> str:
    """--jit_compile's help: which pretexts refuse XLA and why (`PretextSpec.jit_compile_refused`)."""
    refused: dict = {}  # reason -> the pretexts that refuse XLA for it
    for spec in _registered_specs():
        if spec.jit_compile_refused:
            refused.setdefault(spec.jit_compile_refused, []).append(spec.name)
    notes = "; ".join(f"not yet for {'/'.join(names)}: {reason}" for reason, names in refused.items())
    return "XLA-compile the train step" + (f" ({notes})." if notes else ".")


def _number(value: float) -> str:
    """1e-3 for 0.001, 2e-3, 0: the pretexts' defaults as the help texts write them."""
    if value == 0:
        return "0"
    mantissa, exponent = f"{value:e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def _and(names) -> str:
    names = list(names)
    return " and ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)


def pretext_flag_names() -> dict:
    """{pretext: names of the flags only it reads}, from each pretext's `PretextSpec.flags`."""
    return {spec.name: tuple(flag.name for flag in spec.flags) for spec in _registered_specs()}


def define_pretext_flags(flag_values=FLAGS) -> None:
    """Every registered pretext's flags (`fgssl_tf.pretext.settings.FlagSpec`) as absl flags with their
    validators; a flag that several pretexts share (the two-view methods' view flags) is defined once."""
    define_flag_specs([flag for spec in _registered_specs() for flag in spec.flags], flag_values)


def define_flag_specs(flag_specs, flag_values=FLAGS) -> None:
    """`FlagSpec`s as absl flags with their validators; a name declared several times (the two-view
    methods' view flags) is defined once, and must be declared alike."""
    defined: dict = {}
    for flag in flag_specs:
        if flag.name in defined:
            if defined[flag.name] != flag:
                raise ValueError(f"pretexts declare --{flag.name} differently: {defined[flag.name]} vs {flag}")
            continue
        defined[flag.name] = flag
        bounds = {"lower_bound": flag.lower_bound, "upper_bound": flag.upper_bound}
        extra = {key: value for key, value in bounds.items() if value is not None}
        if flag.kind == "enum":
            _DEFINE["enum"](flag.name, flag.default, list(flag.choices), flag.help, flag_values=flag_values)
        else:
            _DEFINE[flag.kind](flag.name, flag.default, flag.help, flag_values=flag_values, **extra)
    for flag in defined.values():
        if flag.check is not None:
            validate(flag.name, flag.check, flag_values)


def pretext_config(flag_values=FLAGS):
    """The dataclass config of --pretext, from its flags (`PretextSpec.flags`, then `PretextSpec.finish`)."""
    from fgssl_tf.pretext import pretext_spec

    spec = pretext_spec(flag_values.pretext)
    values = flag_values.flag_values_dict()
    config = config_from_values(spec.config_class, spec.flags, values)
    return config if spec.finish is None else spec.finish(config, values)
