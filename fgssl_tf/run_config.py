"""One pretraining run's whole configuration, resolved once: `RunConfig` and `resolve_run`.

An entry point builds it once (`fgssl_tf.flags.run_config()` from the command line,
`fgssl_tf.reproduce.budget_run` for the comparison) and the trainer runs it as given
(`fgssl_tf.trainer.run`). It is saved as `run_config.json` in the run's model_dir, where the
resume check compares it (docs/reliability.md) and the tools read it back (`RunConfig.load`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import typing

from fgssl_tf.config import BackboneConfig, DataConfig, TrainConfig
from fgssl_tf.errors import FgsslError
from fgssl_tf.pretext import PRETEXTS, pretext_spec, with_pretext_defaults

if typing.TYPE_CHECKING:
    from fgssl_tf.monitor import MonitorConfig

RUN_CONFIG_FILE = "run_config.json"
# The saved sections, under the names run_config.json has always used.
SECTIONS = ("train", "data", "backbone_config", "pretext_config")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """What one run trains and how: every automatic choice settled (`resolve_run`)."""

    train: TrainConfig
    data: DataConfig
    backbone: BackboneConfig
    pretext: typing.Any  # the pretext's config dataclass (`PretextSpec.config_class`)
    # How the run is watched, not what it trains: not saved (a resumed run may change it; docs/reliability.md).
    monitor: MonitorConfig | None = None

    @property
    def spec(self):
        """The pretext's registry entry (`fgssl_tf.pretext.base.PretextSpec`)."""
        return pretext_spec(self.train.pretext)

    def to_json(self) -> dict:
        """The run as run_config.json holds it: a few summary keys, then one section per config."""
        return {
            "pretext": self.train.pretext,
            "backbone": self.backbone.name,
            "image_size": self.data.image_size,
            "batch_size": self.train.batch_size,
            "seed": self.train.seed,
            "dataset": self.data.dataset,
            "train": dataclasses.asdict(self.train),
            "data": dataclasses.asdict(self.data),
            "backbone_config": dataclasses.asdict(self.backbone),
            "pretext_config": dataclasses.asdict(self.pretext),
        }

    def save(self, model_dir: str, data_stats: dict | None = None) -> str:
        """Write `model_dir/run_config.json` (with the data's counts and fingerprint when given); its path."""
        os.makedirs(model_dir, exist_ok=True)
        path = os.path.join(model_dir, RUN_CONFIG_FILE)
        saved = self.to_json() if data_stats is None else {**self.to_json(), "data_stats": data_stats}
        with open(path, "w") as f:
            json.dump(saved, f, indent=2, default=str)
        return path

    @classmethod
    def from_json(cls, saved: dict) -> RunConfig:
        """The configs of a `to_json` dict: nested dataclasses rebuilt, lists back to tuples; keys of
        other versions ignored and missing ones at their defaults (a run saved before a field existed
        trained as its default)."""
        from fgssl_tf.pretext.base import config_from_dict

        train = config_from_dict(TrainConfig, saved.get("train"))
        return cls(
            train,
            config_from_dict(DataConfig, saved.get("data")),
            config_from_dict(BackboneConfig, saved.get("backbone_config")),
            config_from_dict(pretext_spec(train.pretext).config_class, saved.get("pretext_config")),
        )

    @classmethod
    def load(cls, path: str) -> RunConfig:
        """The run saved in `path`: a run's model_dir or its run_config.json."""
        if os.path.isdir(path):
            path = os.path.join(path, RUN_CONFIG_FILE)
        try:
            with open(path) as f:
                saved = json.load(f)
            return cls.from_json(saved)
        except (OSError, ValueError, TypeError, AttributeError) as err:
            raise FgsslError(
                f"{path} cannot be read as a run's configuration ({err}); pass the --model_dir of a training run"
            ) from err


def resolve_run(
    train: TrainConfig,
    data: DataConfig,
    backbone: BackboneConfig | None = None,
    pretext=None,
    monitor: MonitorConfig | None = None,
) -> RunConfig:
    """The run these configs describe, every automatic choice settled, checked before any work: the
    pretext's default learning rate and weight decay, its default config, its backbone choices (Jigsaw's
    stem follows its tile crops). The one place that does this; resolving a resolved run changes nothing."""
    spec = pretext_spec(train.pretext)  # an unknown pretext: its one clear line
    train = with_pretext_defaults(train)
    pretext = spec.config_class() if pretext is None else pretext
    backbone = spec.backbone_for(backbone or BackboneConfig(), data, pretext)  # also too small images' error
    if train.epochs < 1 or train.batch_size < 2:
        raise FgsslError("--epochs must be at least 1 and --batch_size at least 2")
    if data.source_size and (data.source_size < data.image_size or not spec.uses_source_size):
        cutting = ", ".join(name for name in PRETEXTS if pretext_spec(name).uses_source_size)
        raise FgsslError(
            f"--source_size={data.source_size} is for the two-view methods ({cutting}), and at least "
            f"--image_size={data.image_size}; leave it unset otherwise"
        )
    return RunConfig(train, data, backbone, pretext, monitor)
