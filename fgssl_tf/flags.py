"""absl flag definitions shared by the entry points, and their conversion to configs.

Only entry points import this module; the library never reads flags.
"""

from __future__ import annotations

import os

from absl import flags

from fgssl_tf.config import AugmentConfig, BackboneConfig, DataConfig, TrainConfig
from fgssl_tf.distribute import STRATEGIES
from fgssl_tf.errors import FgsslError
from fgssl_tf.models import BACKBONES

FLAGS = flags.FLAGS

# Flags of the two-view methods' views (SimCLR, VICReg): the view transform and the fine-grained extras.
VIEW_FLAGS = (
    "crop_scale_min",
    "color_jitter_strength",
    "color_jitter_prob",
    "grayscale_prob",
    "blur_prob",
    "blur_sigma_max",
    "horizontal_flip",
    "vertical_flip",
    "rotate90",
    "random_crop",
    "view1_pre_ops",
    "view1_post_ops",
    "view2_pre_ops",
    "view2_post_ops",
    "extra_augmentation_mode",
    "gamma_min",
    "gamma_max",
    "dropout_holes_min",
    "dropout_holes_max",
    "dropout_size_min",
    "dropout_size_max",
    "dropout_fill",
    "swap_patch",
    "random_jigsaw_grid",
    "dcl_grid",
    "dcl_border",
    "region_crop_min",
    "region_crop_max",
)
# Flags that only some pretexts read; setting one with another --pretext is a mistake.
PRETEXT_FLAGS = {
    "simclr": ("temperature", "projection_dim", "projection_hidden_dim", *VIEW_FLAGS),
    "vicreg": (
        "vicreg_expander_dim",
        "vicreg_expander_layers",
        "invariance_weight",
        "variance_weight",
        "covariance_weight",
        *VIEW_FLAGS,
    ),
    "jigsaw": (
        "jigsaw_permutations",
        "jigsaw_num_permutations",
        "jigsaw_brightness",
        "jigsaw_normalize_tiles",
        "jigsaw_dropout",
        "jigsaw_pool_grid",
        "clip_norm",
        "plateau_patience",
    ),
    "srgan": (
        "srgan_stage",
        "srgan_scale",
        "srgan_hr_size",
        "srgan_residual_blocks",
        "srgan_width",
        "srgan_discriminator_width",
        "srgan_discriminator_dense",
        "pixel_weight",
        "perceptual_weight",
        "adversarial_weight",
        "perceptual_weights",
        "perceptual_scale",
        "srgan_generator_init",
    ),
    "pmg": ("backbone_weights", "backbone_lr_ratio", "pmg_feature_size", "pmg_head_channels"),
}


def validate(name: str, check) -> None:
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

    flags.register_validator(name, checker)


def dataset_error(value: str):
    if value in ("elpv", "cassava"):
        return None
    if value.startswith("folder:"):
        path = value[len("folder:") :]
        return (
            None if os.path.isdir(path) else f"folder {path!r} does not exist; pass folder:PATH with PATH/<label>/*.jpg"
        )
    return f"unknown --dataset={value!r}; choose one of elpv, cassava, folder:PATH"


def existing_dir_error(value):
    return None if value is None or os.path.isdir(value) else f"{value!r} is not an existing folder"


def not_a_file_error(value):
    return f"{value!r} is a file; a folder is expected" if value and os.path.isfile(value) else None


def name_error(value):
    if value is not None and (not value or os.sep in value or value.startswith(".")):
        return f"{value!r} is not a plain name (no '/', not starting with '.')"
    return None


def weights_choice_error(choices):
    def check(value):
        if value in choices or os.path.isfile(value):
            return None
        return f"{value!r}: no such file; use one of {', '.join(choices)}, or the path of a weights file"

    return check


def check_pretext_flags() -> None:
    """Refuse, before any work, a flag set explicitly (command line or flagfile) that
    only another pretext reads: it would be silently ignored."""
    readers: dict[str, list[str]] = {}
    for pretext, names in PRETEXT_FLAGS.items():
        for name in names:
            readers.setdefault(name, []).append(pretext)
    wrong = [name for name, pretexts in readers.items() if FLAGS.pretext not in pretexts and FLAGS[name].present]
    if wrong:
        users = sorted({p for name in wrong for p in readers[name]})
        raise FgsslError(
            f"{', '.join('--' + n for n in wrong)} only apply to --pretext={'/'.join(users)}, "
            f"not --pretext={FLAGS.pretext}; remove them or change --pretext"
        )
    if FLAGS.pretext == "srgan" and FLAGS.srgan_generator_init and FLAGS.srgan_stage != "gan":
        raise FgsslError("--srgan_generator_init is for --srgan_stage=gan (it starts from a psnr run's generator)")


def define_data_flags() -> None:
    flags.DEFINE_string(
        "dataset", "elpv", "elpv (offline default), cassava (TFDS) or folder:PATH (PATH/<label>/*.jpg)."
    )
    flags.DEFINE_integer("image_size", 64, "Images are squash-resized to this many pixels a side.", lower_bound=8)
    flags.DEFINE_integer(
        "source_size",
        None,
        "simclr/vicreg: cut the random crops from images cached at this "
        "larger size (as RandomResizedCrop cuts from the original), then resize them to --image_size.",
        lower_bound=8,
    )
    flags.DEFINE_string(
        "unlabeled_dir", None, "Folder of extra unlabelled images for pretraining (val/test duplicates dropped)."
    )
    flags.DEFINE_string("tfds_data_dir", None, "TFDS data directory (cassava).")
    flags.DEFINE_float(
        "val_fraction",
        0.2,
        "Share carved out of train for validation when a folder has no val split.",
        lower_bound=0.01,
        upper_bound=0.45,
    )
    flags.DEFINE_integer(
        "max_images_per_split",
        None,
        "Use a stratified subset of at most this many images per split (smoke runs).",
        lower_bound=2,
    )
    flags.DEFINE_float(
        "max_cache_gb", None, "Memory allowed for decoded images; default half the RAM.", lower_bound=0.01
    )
    flags.DEFINE_boolean(
        "allow_unseen_classes",
        False,
        "Folder datasets: leave out (and count) val/test images "
        "of classes that train lacks, instead of stopping with an error naming them.",
    )
    validate("dataset", dataset_error)
    validate("unlabeled_dir", existing_dir_error)
    validate("tfds_data_dir", not_a_file_error)


def define_backbone_flags() -> None:
    flags.DEFINE_enum("backbone", "resnet18", list(BACKBONES), "Encoder architecture.")
    flags.DEFINE_enum(
        "small_stem",
        "auto",
        ["auto", "true", "false"],
        "3x3 stem without max-pool; auto: on for encoder inputs of 32 px and less (images; jigsaw: tile crops).",
    )
    flags.DEFINE_integer("width", 64, "Channels of the first ResNet stage (64 = standard).", lower_bound=4)
    flags.DEFINE_enum(
        "sync_bn",
        "auto",
        ["auto", "true", "false"],
        "Batch-norm statistics over the global batch across replicas; auto: whenever there are several.",
    )


def data_config() -> DataConfig:
    return DataConfig(
        dataset=FLAGS.dataset,
        image_size=FLAGS.image_size,
        source_size=FLAGS.source_size,
        unlabeled_dir=FLAGS.unlabeled_dir,
        tfds_data_dir=FLAGS.tfds_data_dir,
        val_fraction=FLAGS.val_fraction,
        max_images_per_split=FLAGS.max_images_per_split,
        max_cache_gb=FLAGS.max_cache_gb,
        allow_unseen_classes=FLAGS.allow_unseen_classes,
    )


def backbone_config() -> BackboneConfig:
    small_stem = {"auto": None, "true": True, "false": False}[FLAGS.small_stem]
    return BackboneConfig(
        name=FLAGS.backbone,
        small_stem=small_stem,
        synchronized_bn={"auto": None, "true": True, "false": False}[FLAGS.sync_bn],
        width=FLAGS.width,
    )


def define_train_flags() -> None:
    flags.DEFINE_string(
        "pretext", "simclr", "Pretext task: simclr, vicreg, jigsaw, srgan, or pmg (the supervised baseline)."
    )
    flags.DEFINE_string("model_dir", None, "Checkpoints and TensorBoard logs; default runs/<pretext>_<dataset>.")
    flags.DEFINE_string("export_dir", "savedmodels", "Where encoders are exported (NAME/VERSION).")
    flags.DEFINE_string("export_name", None, "Export name; default <pretext>_<backbone>_<dataset>.")
    flags.DEFINE_integer("epochs", 10, "Training epochs.", lower_bound=1)
    flags.DEFINE_integer("batch_size", 64, "Global batch size (split over replicas).", lower_bound=2)
    flags.DEFINE_integer(
        "steps_per_epoch", None, "Steps per epoch; default one pass over the pretraining pool.", lower_bound=1
    )
    flags.DEFINE_float(
        "learning_rate",
        None,
        "Initial learning rate; default the paper's for the pretext "
        "(simclr: Adam 1e-3, jigsaw: SGD 1e-2, srgan: Adam 1e-4, pmg: SGD 2e-3).",
        lower_bound=0.0,
    )
    flags.DEFINE_enum(
        "lr_schedule",
        "constant",
        ["constant", "cosine"],
        "constant: the paper's; cosine: linear warm-up (--warmup_epochs) to --learning_rate, then "
        "cosine decay to 0 (simclr, vicreg; jigsaw, srgan and pmg keep the paper's schedules).",
    )
    flags.DEFINE_float("warmup_epochs", 0.0, "Epochs of linear warm-up of --lr_schedule=cosine.", lower_bound=0.0)
    flags.DEFINE_float(
        "weight_decay",
        None,
        "Coupled L2 weight decay, as PyTorch; default the paper's (simclr 1e-5, jigsaw 5e-4, srgan 0, pmg 5e-4).",
        lower_bound=0.0,
    )
    flags.DEFINE_integer("seed", 0, "Seed of data order, augmentation and initialisation.", lower_bound=0)
    flags.DEFINE_enum(
        "strategy", "auto", list(STRATEGIES), "tf.distribute strategy; auto = mirrored over several GPUs."
    )
    flags.DEFINE_boolean("validate", True, "Compute the pretext loss on the validation split after each epoch.")
    flags.DEFINE_enum(
        "mixed_precision",
        "none",
        ["none", "bfloat16"],
        "bfloat16: layers compute in bfloat16, weights and losses stay float32 (GPUs from Ampere on, TPUs; "
        "slower on most CPUs). float16 is not offered: it needs loss scaling, which would fight the NaN guard.",
    )
    flags.DEFINE_boolean(
        "jit_compile", False, "XLA-compile the train step (not yet for simclr: its augmentation has no XLA kernel)."
    )
    flags.DEFINE_integer(
        "monitor_every",
        1,
        "Every this many epochs: kNN accuracy, online linear probe and collapse signals on held-out labels (0: off).",
        lower_bound=0,
    )
    flags.DEFINE_integer(
        "monitor_images",
        1000,
        "Labelled training images the monitor uses (validation queries: half as many).",
        lower_bound=10,
    )
    flags.DEFINE_enum(
        "nan_policy",
        "stop",
        ["stop", "skip_batch"],
        "A NaN or Inf loss: stop naming the step (weights and checkpoints keep their last finite values), "
        "or skip that batch and go on.",
    )
    flags.DEFINE_integer(
        "verbose",
        1,
        "Keras progress output: 0 silent, 1 progress bar, 2 a line per epoch.",
        lower_bound=0,
        upper_bound=2,
    )
    # SimCLR
    flags.DEFINE_float("temperature", 0.5, "NT-Xent temperature.", lower_bound=1e-3)
    flags.DEFINE_integer("projection_dim", 512, "Output size of the projection head.", lower_bound=1)
    flags.DEFINE_integer("projection_hidden_dim", 512, "Hidden size of the projection head.", lower_bound=1)
    # VICReg
    flags.DEFINE_integer(
        "vicreg_expander_dim", 1024, "VICReg: width of the expander's layers (the paper: 8192).", lower_bound=1
    )
    flags.DEFINE_integer("vicreg_expander_layers", 3, "VICReg: dense layers of the expander.", lower_bound=1)
    flags.DEFINE_float(
        "invariance_weight", 25.0, "VICReg: weight of the two views' mean squared difference.", lower_bound=0.0
    )
    flags.DEFINE_float("variance_weight", 25.0, "VICReg: weight of the hinge on each dimension's std.", lower_bound=0.0)
    flags.DEFINE_float("covariance_weight", 1.0, "VICReg: weight of the off-diagonal covariance.", lower_bound=0.0)
    # Jigsaw
    flags.DEFINE_enum(
        "jigsaw_permutations",
        "maxhamming",
        ["maxhamming", "paper"],
        "Permutation set: greedy max-min Hamming, or the paper's random fully-different pairs.",
    )
    flags.DEFINE_integer(
        "jigsaw_num_permutations",
        100,
        "Number of permutations (classes); the paper used 100.",
        lower_bound=2,
        upper_bound=362879,
    )
    flags.DEFINE_float(
        "jigsaw_brightness", 0.5, "Per-tile brightness factor drawn from [1-b, 1+b].", lower_bound=0.0, upper_bound=1.0
    )
    flags.DEFINE_boolean(
        "jigsaw_normalize_tiles",
        False,
        "Normalise each tile to zero mean, unit variance per channel (off in the paper).",
    )
    flags.DEFINE_float(
        "jigsaw_dropout",
        0.5,
        "Dropout before the permutation classifier (training only).",
        lower_bound=0.0,
        upper_bound=0.99,
    )
    flags.DEFINE_integer(
        "jigsaw_pool_grid",
        2,
        "Average-pool the last stage to a g x g grid (the paper: 2); 1 = global pooling.",
        lower_bound=1,
        upper_bound=8,
    )
    flags.DEFINE_float("clip_norm", 4.0, "Global gradient-norm clipping (jigsaw).", lower_bound=1e-6)
    flags.DEFINE_integer(
        "plateau_patience", 2, "Epochs without improvement before the learning rate drops 10x (jigsaw).", lower_bound=1
    )
    # SRGAN
    flags.DEFINE_enum(
        "srgan_stage",
        "both",
        ["both", "psnr", "gan"],
        "SRGAN stage: psnr (generator, pixel MSE), gan (adversarial and perceptual, from a psnr run), "
        "or both in one run (half the epochs each).",
    )
    flags.DEFINE_enum("srgan_scale", "4", ["2", "4", "8"], "Super-resolution factor (the paper: 4).")
    flags.DEFINE_integer(
        "srgan_hr_size",
        None,
        "Side of the high-resolution crops (at most --image_size; default min(96, --image_size)); "
        "the encoders' input size.",
        lower_bound=16,
    )
    flags.DEFINE_integer("srgan_residual_blocks", 16, "Generator residual blocks.", lower_bound=1)
    flags.DEFINE_integer("srgan_width", 64, "Generator channels.", lower_bound=1)
    flags.DEFINE_integer(
        "srgan_discriminator_width",
        64,
        "Discriminator channels of the first conv (doubled every other conv).",
        lower_bound=1,
    )
    flags.DEFINE_integer("srgan_discriminator_dense", 1024, "Discriminator hidden dense units.", lower_bound=1)
    flags.DEFINE_float("pixel_weight", 1.0, "SRGAN: weight of the pixel MSE.", lower_bound=0.0)
    flags.DEFINE_float("perceptual_weight", 0.006, "SRGAN gan stage: weight of the VGG19 feature MSE.", lower_bound=0.0)
    flags.DEFINE_float("adversarial_weight", 0.001, "SRGAN gan stage: weight of the adversarial loss.", lower_bound=0.0)
    flags.DEFINE_string(
        "perceptual_weights",
        "auto",
        "SRGAN VGG19: imagenet (Keras' weights, downloads once), a path to a weights file, none (no perceptual term), "
        "or auto (imagenet if it can be had, else none, with a warning).",
    )
    flags.DEFINE_float(
        "perceptual_scale",
        1 / 12.75,
        "SRGAN: VGG features are multiplied by this before the MSE (Ledig et al.).",
        lower_bound=0.0,
    )
    flags.DEFINE_string(
        "srgan_generator_init", None, "SRGAN gan stage: the --model_dir of the psnr run whose generator it starts from."
    )
    # PMG
    flags.DEFINE_string(
        "backbone_weights",
        "auto",
        "PMG backbone: imagenet (Keras' ResNet-50, downloads once), none, a weights file, "
        "or auto (imagenet for resnet50, none for resnet18).",
    )
    flags.DEFINE_float(
        "backbone_lr_ratio",
        0.1,
        "PMG: the backbone's learning rate as a share of the heads' (the paper: 0.1).",
        lower_bound=0.0,
    )
    flags.DEFINE_integer(
        "pmg_feature_size",
        512,
        "PMG: channels of the heads' 1x1 convs and hidden size of their classifiers.",
        lower_bound=1,
    )
    flags.DEFINE_integer(
        "pmg_head_channels",
        1024,
        "PMG: channels of the heads' 3x3 convs (the pooled feature of each head).",
        lower_bound=1,
    )
    # Augmentation strengths (defaults: the paper's SimCLR_Original).
    flags.DEFINE_float(
        "crop_scale_min", 0.08, "Smallest area share of the random resized crop.", lower_bound=0.01, upper_bound=1.0
    )
    flags.DEFINE_float(
        "color_jitter_strength", 0.8, "Brightness/contrast/saturation strength; hue = strength/4.", lower_bound=0.0
    )
    flags.DEFINE_float("color_jitter_prob", 0.4, "Probability of colour jitter.", lower_bound=0.0, upper_bound=1.0)
    flags.DEFINE_float("grayscale_prob", 0.2, "Probability of grayscale.", lower_bound=0.0, upper_bound=1.0)
    flags.DEFINE_float(
        "blur_prob", 0.5, "Probability of Gaussian blur (kernel ~ image_size/10).", lower_bound=0.0, upper_bound=1.0
    )
    flags.DEFINE_float(
        "blur_sigma_max",
        2.0,
        "Largest Gaussian blur sigma in pixels (the paper's 2.0 was meant for 224-512 px images).",
        lower_bound=0.1,
    )
    flags.DEFINE_boolean("horizontal_flip", False, "Random horizontal flip (off in the paper's Original).")
    flags.DEFINE_boolean(
        "vertical_flip", False, "Random vertical flip, p = 0.5 (images with no up: cells, tissue, leaves from above)."
    )
    flags.DEFINE_boolean("rotate90", False, "Random rotation by a multiple of 90 degrees.")
    flags.DEFINE_boolean(
        "random_crop",
        True,
        "RandomResizedCrop in the view transform; off: the whole image (the paper's Resize-only variants).",
    )
    # SimCLR fine-grained variants: extra ops per view (gamma, coarse_dropout, patch_swap,
    # random_jigsaw, dcl, cropped_regions), before (pre) or after (post) the view transform.
    for view in ("view1", "view2"):
        for stage, where in (("pre", "before"), ("post", "after")):
            flags.DEFINE_list(
                f"{view}_{stage}_ops",
                [],
                f"Extra augmentations applied to {view.replace('view', 'view ')} {where} the view transform, in order.",
            )
    flags.DEFINE_enum(
        "extra_augmentation_mode",
        "online",
        ["online", "offline"],
        "online: extras drawn every step; offline: drawn once per image and kept (the paper).",
    )
    flags.DEFINE_float("gamma_min", 0.5, "Random gamma: smallest gamma.", lower_bound=0.01)
    flags.DEFINE_float("gamma_max", 2.5, "Random gamma: largest gamma.", lower_bound=0.01)
    flags.DEFINE_integer("dropout_holes_min", 5, "Coarse dropout: fewest holes.", lower_bound=1)
    flags.DEFINE_integer("dropout_holes_max", 20, "Coarse dropout: most holes.", lower_bound=1)
    flags.DEFINE_float(
        "dropout_size_min",
        10 / 512,
        "Coarse dropout: smallest hole side, a fraction of the image side.",
        lower_bound=0.0,
        upper_bound=1.0,
    )
    flags.DEFINE_float(
        "dropout_size_max",
        25 / 512,
        "Coarse dropout: largest hole side, a fraction of the image side.",
        lower_bound=0.0,
        upper_bound=1.0,
    )
    flags.DEFINE_float("dropout_fill", 0.0, "Coarse dropout: fill value in [0, 1].", lower_bound=0.0, upper_bound=1.0)
    flags.DEFINE_float(
        "swap_patch",
        200 / 512,
        "Patch swap: patch side, a fraction of the image side (at most 0.5).",
        lower_bound=0.0,
        upper_bound=0.5,
    )
    flags.DEFINE_integer(
        "random_jigsaw_grid", 4, "Random jigsaw: n x n blocks (PMG's jigsaw_generator).", lower_bound=1
    )
    flags.DEFINE_integer("dcl_grid", 7, "DCL region confusion: N x N cells.", lower_bound=2)
    flags.DEFINE_float(
        "dcl_border",
        10 / 512,
        "DCL: border cropped first, a fraction of the image side.",
        lower_bound=0.0,
        upper_bound=0.25,
    )
    flags.DEFINE_float(
        "region_crop_min",
        200 / 512,
        "Cropped regions: smallest window side, a fraction of the image side.",
        lower_bound=0.01,
        upper_bound=1.0,
    )
    flags.DEFINE_float(
        "region_crop_max",
        300 / 512,
        "Cropped regions: largest window side, a fraction of the image side.",
        lower_bound=0.01,
        upper_bound=1.0,
    )

    def pretext_error(value):
        from fgssl_tf.pretext import check_pretext

        check_pretext(value)

    def ops_error(names):
        if names:
            from fgssl_tf.fine_grained import check_ops

            check_ops(names)

    validate("pretext", pretext_error)
    validate("model_dir", not_a_file_error)
    validate("export_dir", not_a_file_error)
    validate("export_name", name_error)
    validate("perceptual_weights", weights_choice_error(("auto", "imagenet", "none")))
    validate("backbone_weights", weights_choice_error(("auto", "imagenet", "none")))
    validate(
        "srgan_generator_init", not_a_file_error
    )  # a run made later; its absence is reported when the gan stage starts
    for view in ("view1", "view2"):
        for stage in ("pre", "post"):
            validate(f"{view}_{stage}_ops", ops_error)


def train_config() -> TrainConfig:
    dataset = FLAGS.dataset.split(":", 1)[0]
    return TrainConfig(
        pretext=FLAGS.pretext,
        model_dir=FLAGS.model_dir or f"runs/{FLAGS.pretext}_{dataset}",
        export_dir=FLAGS.export_dir,
        export_name=FLAGS.export_name,
        epochs=FLAGS.epochs,
        batch_size=FLAGS.batch_size,
        steps_per_epoch=FLAGS.steps_per_epoch,
        learning_rate=FLAGS.learning_rate,
        lr_schedule=FLAGS.lr_schedule,
        warmup_epochs=FLAGS.warmup_epochs,
        weight_decay=FLAGS.weight_decay,
        seed=FLAGS.seed,
        strategy=FLAGS.strategy,
        jit_compile=FLAGS.jit_compile,
        mixed_precision=FLAGS.mixed_precision,
        validate=FLAGS.validate,
        verbose=FLAGS.verbose,
        nan_policy=FLAGS.nan_policy,
    )


def monitor_config():
    from fgssl_tf.monitor import MonitorConfig

    return MonitorConfig(
        every=FLAGS.monitor_every,
        max_bank_images=FLAGS.monitor_images,
        max_query_images=max(5, FLAGS.monitor_images // 2),
    )


def augment_config() -> AugmentConfig:
    return AugmentConfig(
        crop_scale_min=FLAGS.crop_scale_min,
        color_jitter_strength=FLAGS.color_jitter_strength,
        color_jitter_prob=FLAGS.color_jitter_prob,
        grayscale_prob=FLAGS.grayscale_prob,
        blur_prob=FLAGS.blur_prob,
        blur_sigma_max=FLAGS.blur_sigma_max,
        horizontal_flip=FLAGS.horizontal_flip,
        vertical_flip=FLAGS.vertical_flip,
        rotate90=FLAGS.rotate90,
        random_crop=FLAGS.random_crop,
    )


def fine_grained_config():
    from fgssl_tf.errors import FgsslError
    from fgssl_tf.fine_grained import FineGrainedConfig

    for low, high in (
        ("gamma_min", "gamma_max"),
        ("dropout_holes_min", "dropout_holes_max"),
        ("dropout_size_min", "dropout_size_max"),
        ("region_crop_min", "region_crop_max"),
    ):
        if getattr(FLAGS, low) > getattr(FLAGS, high):
            raise FgsslError(f"--{low}={getattr(FLAGS, low)} is larger than --{high}={getattr(FLAGS, high)}")
    return FineGrainedConfig(
        gamma_min=FLAGS.gamma_min,
        gamma_max=FLAGS.gamma_max,
        dropout_holes_min=FLAGS.dropout_holes_min,
        dropout_holes_max=FLAGS.dropout_holes_max,
        dropout_size_min=FLAGS.dropout_size_min,
        dropout_size_max=FLAGS.dropout_size_max,
        dropout_fill=FLAGS.dropout_fill,
        swap_patch=FLAGS.swap_patch,
        jigsaw_grid=FLAGS.random_jigsaw_grid,
        dcl_grid=FLAGS.dcl_grid,
        dcl_border=FLAGS.dcl_border,
        crop_min=FLAGS.region_crop_min,
        crop_max=FLAGS.region_crop_max,
    )


def pretext_config():
    """The dataclass config of --pretext, from its flags."""
    views = {}
    if FLAGS.pretext in ("simclr", "vicreg"):
        views = dict(
            augment=augment_config(),
            view1_pre=tuple(FLAGS.view1_pre_ops),
            view1_post=tuple(FLAGS.view1_post_ops),
            view2_pre=tuple(FLAGS.view2_pre_ops),
            view2_post=tuple(FLAGS.view2_post_ops),
            extra_mode=FLAGS.extra_augmentation_mode,
            fine_grained=fine_grained_config(),
        )
    if FLAGS.pretext == "simclr":
        from fgssl_tf.pretext import simclr

        return simclr.SimCLRConfig(
            projection_dim=FLAGS.projection_dim,
            hidden_dim=FLAGS.projection_hidden_dim,
            temperature=FLAGS.temperature,
            **views,
        )
    if FLAGS.pretext == "vicreg":
        from fgssl_tf.pretext import vicreg

        return vicreg.VICRegConfig(
            expander_dim=FLAGS.vicreg_expander_dim,
            expander_layers=FLAGS.vicreg_expander_layers,
            invariance_weight=FLAGS.invariance_weight,
            variance_weight=FLAGS.variance_weight,
            covariance_weight=FLAGS.covariance_weight,
            **views,
        )
    if FLAGS.pretext == "jigsaw":
        from fgssl_tf.pretext import jigsaw

        return jigsaw.JigsawConfig(
            permutations=FLAGS.jigsaw_permutations,
            num_permutations=FLAGS.jigsaw_num_permutations,
            brightness=FLAGS.jigsaw_brightness,
            normalize_tiles=FLAGS.jigsaw_normalize_tiles,
            dropout=FLAGS.jigsaw_dropout,
            pool_grid=FLAGS.jigsaw_pool_grid,
            clip_norm=FLAGS.clip_norm,
            plateau_patience=FLAGS.plateau_patience,
        )
    if FLAGS.pretext == "srgan":
        from fgssl_tf.pretext import srgan

        return srgan.SRGANConfig(
            stage=FLAGS.srgan_stage,
            scale=int(FLAGS.srgan_scale),
            hr_size=FLAGS.srgan_hr_size
            or (min(96, FLAGS.image_size) // int(FLAGS.srgan_scale) * int(FLAGS.srgan_scale)),
            residual_blocks=FLAGS.srgan_residual_blocks,
            width=FLAGS.srgan_width,
            discriminator_width=FLAGS.srgan_discriminator_width,
            discriminator_dense=FLAGS.srgan_discriminator_dense,
            pixel_weight=FLAGS.pixel_weight,
            perceptual_weight=FLAGS.perceptual_weight,
            adversarial_weight=FLAGS.adversarial_weight,
            perceptual_weights=FLAGS.perceptual_weights,
            perceptual_scale=FLAGS.perceptual_scale,
            generator_init=FLAGS.srgan_generator_init,
        )
    if FLAGS.pretext == "pmg":
        from fgssl_tf.pretext import pmg

        return pmg.PMGConfig(
            backbone_weights=FLAGS.backbone_weights,
            backbone_lr_ratio=FLAGS.backbone_lr_ratio,
            feature_size=FLAGS.pmg_feature_size,
            head_channels=FLAGS.pmg_head_channels,
        )
    return None  # the pretext's defaults
