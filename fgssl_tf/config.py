"""Plain dataclass configs shared by the library, the entry points and the tests.

Only the entry points know about absl flags; they build these objects and pass
them down, so every function here can be called from Python or a test directly.
"""

from __future__ import annotations

import dataclasses

# The names the entry points offer as flag choices, kept here (no TensorFlow import) so that a bad flag is refused
# before TensorFlow loads, in a fraction of a second: fgssl_tf/models/resnet.py builds these backbones,
# fgssl_tf/distribute.py makes these strategies.
BACKBONES = ("resnet10", "resnet18", "resnet50")
STRATEGIES = ("auto", "one_device", "mirrored", "multiworker")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where images come from and how they are sized."""

    dataset: str = "elpv"  # "elpv", "cassava" or "folder:PATH"
    image_size: int = 64  # every image is resized (squashed) to image_size x image_size
    # Pretexts that cut random crops (SimCLR, VICReg) cut them from images cached at this larger
    # size, as torchvision's RandomResizedCrop cuts from the original; None: from image_size.
    source_size: int | None = None
    unlabeled_dir: str | None = None  # extra unlabelled images for pretraining
    tfds_data_dir: str | None = None  # where TFDS keeps cassava
    val_fraction: float = 0.2  # carved from train when a source has no validation split
    max_images_per_split: int | None = None  # a stratified subset, for smoke runs
    max_cache_gb: float | None = None  # decoded images kept in memory; None = half the RAM
    near_duplicate_bits: int = 4  # dHash Hamming distance that counts as a duplicate
    allow_unseen_classes: bool = False  # val/test classes that train lacks: left out and counted, not an error


@dataclasses.dataclass(frozen=True)
class BackboneConfig:
    """A ResNet encoder."""

    name: str = "resnet18"  # one of BACKBONES
    small_stem: bool | None = None  # None: on for images of 32 px and less
    synchronized_bn: bool | None = None  # BN statistics over the global batch; None: when there are several replicas
    width: int = 64  # channels of the first stage; 64 is the standard ResNet

    def resolved_small_stem(self, image_size: int) -> bool:
        return image_size <= 32 if self.small_stem is None else self.small_stem


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """SimCLR view augmentation; defaults are the paper's `SimCLR_Original` (docs/paper_fidelity.md, "SimCLR")."""

    random_crop: bool = True  # RandomResizedCrop; off: the whole image (the paper's Resize-only views)
    crop_scale_min: float = 0.08
    crop_ratio_min: float = 3.0 / 4.0
    crop_ratio_max: float = 4.0 / 3.0
    color_jitter_strength: float = 0.8  # brightness/contrast/saturation; hue = strength / 4
    color_jitter_prob: float = 0.4
    grayscale_prob: float = 0.2
    blur_prob: float = 0.5
    blur_sigma_min: float = 0.1
    blur_sigma_max: float = 2.0
    horizontal_flip: bool = False  # the paper's Original has no flip
    vertical_flip: bool = False  # top-bottom flip, p = 0.5 (for images with no "up": cells, tissue, leaves from above)
    rotate90: bool = False  # a random multiple of 90 degrees (square views)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One pretraining run."""

    pretext: str = "simclr"
    model_dir: str = "runs/simclr"
    export_dir: str = "savedmodels"
    export_name: str | None = None  # default: <pretext>_<backbone>_<dataset>
    epochs: int = 10
    batch_size: int = 64  # global batch, split over replicas
    steps_per_epoch: int | None = None  # None: one pass over the pretraining pool
    learning_rate: float | None = None  # None: the pretext's default (simclr 1e-3, jigsaw 1e-2); a schedule's peak
    lr_schedule: str = "constant"  # constant (the paper's) | cosine: linear warm-up, then cosine decay to 0
    warmup_epochs: float = 0.0  # cosine: epochs of linear warm-up
    weight_decay: float | None = None  # coupled L2, as PyTorch; None: the pretext's default
    seed: int = 0
    strategy: str = "auto"  # auto | one_device | mirrored | multiworker
    jit_compile: bool = False
    mixed_precision: str = "none"  # none | bfloat16: bfloat16 compute, float32 weights and losses
    checkpoints_to_keep: int = 3
    validate: bool = True  # the pretext loss on the validation split after each epoch
    verbose: int = 1
    export: bool = True  # False: train and checkpoint only (tests, or a sweep that exports the runs it keeps)
    nan_policy: str = "stop"  # a non-finite loss: stop (naming the step) | skip_batch (go on without that step)
