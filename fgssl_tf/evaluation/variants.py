"""Encoder variants the evaluation tool runs on some exports, registered by the code that knows them
(e.g. SRGAN's paper variants, fgssl_tf/evaluation/srgan_variants.py), so that `evaluate()` has no special case
for any pretext. A variant owns some `EvalConfig` fields: it checks them, builds the encoder (and, to fine-tune,
its head) they ask for, and names them in the protocol label.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import keras

from fgssl_tf.errors import FgsslError


@dataclasses.dataclass(frozen=True)
class EncoderVariant:
    name: str
    fields: tuple[str, ...]  # the EvalConfig fields it owns; their values key its cached frozen features
    selected: Callable[[Any], bool]  # does this EvalConfig ask for the variant?
    validate: Callable[[Any], None]  # one-line FgsslError on a bad value of its fields; called for every config
    # (config, ServingEncoder, num_classes, finetune) -> (encoder, head or None); finetune=False: the frozen encoder
    # of linear probe and kNN (pooled features, no head)
    build: Callable[[Any, Any, int, bool], tuple[keras.Model, keras.Layer | None]]
    label_parts: Callable[[Any], list[str]]  # its parts of protocol_label, e.g. ['keep14blocks']; [] if unset


_VARIANTS: dict[str, EncoderVariant] = {}


def register(variant: EncoderVariant) -> EncoderVariant:
    if variant.name in _VARIANTS and _VARIANTS[variant.name] is not variant:
        raise FgsslError(f"an evaluation variant named {variant.name!r} is already registered; pick another name")
    _VARIANTS[variant.name] = variant
    return variant


def registered() -> tuple[EncoderVariant, ...]:
    """Every registered variant, in registration order."""
    return tuple(_VARIANTS.values())


def selected(config) -> EncoderVariant | None:
    """The variant `config` asks for, or None for the export's own encoder (or a baseline)."""
    chosen = [variant for variant in _VARIANTS.values() if variant.selected(config)]
    if len(chosen) > 1:
        names = ", ".join(variant.name for variant in chosen)
        raise FgsslError(f"the settings ask for several encoder variants at once ({names}); pick one")
    return chosen[0] if chosen else None
