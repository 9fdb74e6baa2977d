"""The paper's downstream variants of an exported SRGAN encoder (docs/paper_fidelity.md, "SRGAN", the table of
trials): the generator with residual blocks removed, the discriminator with conv blocks removed, and the paper's
classifier heads with dropout. Evaluation code: the pretext (fgssl_tf/pretext/srgan.py) only saves the full
networks beside its exported encoders; the evaluation tool builds these variants from them.
"""

from __future__ import annotations

import os

import keras
from keras import layers

from fgssl_tf.errors import FgsslError
from fgssl_tf.evaluation import variants
from fgssl_tf.export import read_metadata
from fgssl_tf.models.layers import Conv2D, batch_norm
from fgssl_tf.pretext.srgan import DISCRIMINATOR_FILE, GENERATOR_FILE, discriminator_features, generator_features


def paper_generator_head(num_classes: int, dropout: float, hidden: int = 1024) -> keras.Sequential:
    """The paper's generator classifier on the upsampled feature map: 3x3 conv to 3
    channels with stride 2, BN, LeakyReLU, flatten, dense 1024, LeakyReLU, dropout, dense."""
    return keras.Sequential(
        [
            layers.ZeroPadding2D(1, name="head_pad"),
            Conv2D(3, 3, 2, padding="valid", name="head_conv"),
            batch_norm("head_bn"),
            layers.LeakyReLU(0.2, name="head_lrelu1"),
            layers.Flatten(name="head_flatten"),
            layers.Dense(hidden, name="head_dense1"),
            layers.LeakyReLU(0.2, name="head_lrelu2"),
            layers.Dropout(dropout, name="head_dropout"),
            layers.Dense(num_classes, name="classifier"),
        ],
        name="paper_generator_head",
    )


def paper_discriminator_head(
    discriminator: keras.Model, remove_conv_blocks: int, num_classes: int, dropout: float
) -> keras.Sequential:
    """The paper's discriminator classifier: the pretrained dense 1024 (frozen, as the paper)
    when no conv block is removed, else a new dense 1024 that trains (bug S5 fixed);
    then LeakyReLU, dropout (bug S6 fixed: it is in the trained model) and a new output layer."""
    if remove_conv_blocks == 0:
        dense = discriminator.get_layer("head_dense")
        dense.trainable = False
    else:
        dense = layers.Dense(discriminator.get_layer("head_dense").units, name="head_dense_new")
    return keras.Sequential(
        [
            layers.Flatten(name="head_flatten"),
            dense,
            layers.LeakyReLU(0.2, name="head_lrelu"),
            layers.Dropout(dropout, name="head_dropout"),
            layers.Dense(num_classes, name="classifier"),
        ],
        name="paper_discriminator_head",
    )


def downstream_network(
    version_dir: str,
    network: str,
    num_classes: int,
    head: str = "linear",
    keep_residual_blocks: int | None = None,
    remove_conv_blocks: int = 0,
    dropout: float = 0.0,
) -> tuple[keras.Model, keras.Layer | None]:
    """(encoder, head) for one of the paper's downstream variants of an exported SRGAN encoder.

    head 'linear': the encoder gives pooled features (linear probe, kNN, or a linear
    head); 'paper': the encoder gives the feature map the paper's head takes, and
    the head is returned. The full networks come from the files saved beside the export.
    """
    filename = GENERATOR_FILE if network == "generator" else DISCRIMINATOR_FILE
    path = os.path.join(version_dir, filename)
    if not os.path.isfile(path):
        raise FgsslError(
            f"{path!r} is missing: the SRGAN variants need the full {network} that training saves beside the encoder; "
            "re-export it"
        )
    full = keras.saving.load_model(path, compile=False)
    paper = head == "paper"
    if network == "generator":
        if remove_conv_blocks:
            raise FgsslError(
                "--remove_conv_blocks applies to SRGAN discriminator encoders; "
                "for the generator use --keep_residual_blocks"
            )
        size = read_metadata(version_dir).get("image_size")
        encoder = generator_features(
            full,
            keep_residual_blocks,
            until="upsampled" if paper else "trunk",
            pooled=not paper,
            input_size=size if paper else None,
        )
        return encoder, paper_generator_head(num_classes, dropout) if paper else None
    if keep_residual_blocks is not None:
        raise FgsslError(
            "--keep_residual_blocks applies to SRGAN generator encoders; for the discriminator use --remove_conv_blocks"
        )
    encoder = discriminator_features(full, remove_conv_blocks, pooled=not paper)
    return encoder, paper_discriminator_head(full, remove_conv_blocks, num_classes, dropout) if paper else None


# --- the evaluation tool's entry (fgssl_tf/evaluation/variants.py) ------------------------------

HEADS = ("linear", "paper")
_NEEDS_SRGAN = "--head=paper, --keep_residual_blocks and --remove_conv_blocks"


def _selected(config) -> bool:
    return config.head == "paper" or config.keep_residual_blocks is not None or config.remove_conv_blocks > 0


def _validate(config) -> None:
    if config.head != "linear" and config.protocol != "finetune":
        raise FgsslError(f"--head={config.head} only applies to --protocol=finetune")
    if config.head not in HEADS:
        raise FgsslError(f"unknown --head={config.head!r}; choose one of {', '.join(HEADS)}")
    if not 0.0 <= config.head_dropout < 1.0:
        raise FgsslError(f"--head_dropout={config.head_dropout} must be in [0, 1)")
    if _selected(config) and config.encoder is None:
        raise FgsslError(f"{_NEEDS_SRGAN} are variants of an exported SRGAN encoder: pass --encoder")


def _build(config, serving, num_classes: int, finetune: bool) -> tuple[keras.Model, keras.Layer | None]:
    """(encoder, head or None) of an SRGAN export's paper variant; the paper's head only to fine-tune."""
    part = serving.metadata.get("encoder_part")
    if serving.metadata.get("pretext") != "srgan" or part not in ("generator", "discriminator"):
        raise FgsslError(
            f"{_NEEDS_SRGAN} apply to SRGAN generator or discriminator encoders; "
            f"{config.encoder} is a {serving.metadata.get('pretext', 'unknown')} encoder"
        )
    return downstream_network(
        config.encoder,
        part,
        num_classes,
        config.head if finetune else "linear",
        config.keep_residual_blocks,
        config.remove_conv_blocks,
        config.head_dropout,
    )


def _label_parts(config) -> list[str]:
    parts = []
    if config.keep_residual_blocks is not None:
        parts.append(f"keep{config.keep_residual_blocks}blocks")
    if config.remove_conv_blocks:
        parts.append(f"minus{config.remove_conv_blocks}convs")
    if config.head == "paper":
        parts.append(f"paperhead-dropout{config.head_dropout:g}")
    return parts


VARIANT = variants.register(
    variants.EncoderVariant(
        name="srgan",
        fields=("head", "head_dropout", "keep_residual_blocks", "remove_conv_blocks"),
        selected=_selected,
        validate=_validate,
        build=_build,
        label_parts=_label_parts,
    )
)
