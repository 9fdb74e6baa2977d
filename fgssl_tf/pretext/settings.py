"""A pretext's command-line settings, declared as plain data beside its config dataclass.

Each pretext module lists `FlagSpec`s in its `PretextSpec.flags`: the flag's name, the field of
the config it sets (a dotted path for nested configs, e.g. "augment.blur_prob"), its kind,
default, help text, bounds or choices and an optional check. Only the entry points turn them
into absl flags (`fgssl_tf.flags`); the library never reads flags. `config_from_values` builds
the config from the parsed values, so a new pretext needs no code in `fgssl_tf/flags.py`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from typing import Any

KINDS = ("integer", "float", "boolean", "string", "enum", "list")


@dataclasses.dataclass(frozen=True)
class FlagSpec:
    """One command-line flag of a pretext and the config field it sets."""

    name: str
    field: str  # dotted path in the pretext's config dataclass
    kind: str  # one of KINDS
    default: Any
    help: str
    lower_bound: float | None = None
    upper_bound: float | None = None
    choices: tuple | None = None  # enum values
    check: Callable | None = None  # value -> error message or None (or raises FgsslError)
    convert: Callable | None = None  # flag value -> config value (e.g. int of an enum of "2", "4", "8")

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"FlagSpec {self.name!r}: kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if (self.kind == "enum") != (self.choices is not None):
            raise ValueError(f"FlagSpec {self.name!r}: choices go with kind 'enum' and only with it")


def not_a_file_error(value):
    return f"{value!r} is a file; a folder is expected" if value and os.path.isfile(value) else None


def weights_choice_error(choices):
    def check(value):
        if value in choices or os.path.isfile(value):
            return None
        return f"{value!r}: no such file; use one of {', '.join(choices)}, or the path of a weights file"

    return check


def config_from_values(config_class: type, specs, values: Mapping[str, Any]):
    """`config_class` with every field named by `specs` set from `values` (flag name -> value):
    nested dataclass fields by their dotted path, lists as tuples, `convert` applied."""
    fields: dict = {}
    for spec in specs:
        value = values[spec.name]
        if spec.convert is not None:
            value = spec.convert(value)
        elif isinstance(value, list):
            value = tuple(value)
        *parents, leaf = spec.field.split(".")
        node = fields
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return _build(config_class(), fields)


def _build(default, fields: dict):
    changes = {
        name: _build(getattr(default, name), value) if isinstance(value, dict) else value
        for name, value in fields.items()
    }
    return dataclasses.replace(default, **changes)
