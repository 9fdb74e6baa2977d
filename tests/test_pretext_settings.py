"""Each pretext's flags are declared beside its config (`PretextSpec.flags`): every declaration names a
real config field, and the config built from the flags' defaults is the config's own default."""

import dataclasses

import pytest

from fgssl_tf.errors import FgsslError
from fgssl_tf.pretext import PRETEXTS, pretext_spec
from fgssl_tf.pretext.settings import FlagSpec, config_from_values
from fgssl_tf.views import VIEW_FLAGS, finish_view_flags


def _field(config, path):
    for name in path.split("."):
        assert name in {f.name for f in dataclasses.fields(config)}, f"{type(config).__name__} has no field {name!r}"
        config = getattr(config, name)
    return config


@pytest.mark.parametrize("name", PRETEXTS)
def test_every_flag_sets_a_field_of_its_pretext_config_and_defaults_agree(name):
    spec = pretext_spec(name)
    assert spec.flags, f"{name} declares no flags"
    default = spec.config_class()
    values = {flag.name: flag.default for flag in spec.flags}
    values["image_size"] = 64  # read by SRGAN's finish (its --srgan_hr_size default)
    config = config_from_values(spec.config_class, spec.flags, values)
    config = config if spec.finish is None else spec.finish(config, values)
    for flag in spec.flags:
        _field(default, flag.field)
    # the flags' defaults are the config's defaults (SRGAN's hr_size follows --image_size: min(96, 64))
    expected = dataclasses.replace(default, hr_size=64) if name == "srgan" else default
    assert config == expected


def test_nested_fields_lists_and_conversions_reach_the_config():
    spec = pretext_spec("simclr")
    values = {flag.name: flag.default for flag in spec.flags}
    values.update(blur_prob=0.1, view2_pre_ops=["gamma"], region_crop_min=0.5, temperature=0.2)
    config = config_from_values(spec.config_class, spec.flags, values)
    assert (config.augment.blur_prob, config.view2_pre, config.fine_grained.crop_min) == (0.1, ("gamma",), 0.5)
    assert config.temperature == 0.2 and config.augment.grayscale_prob == 0.2
    srgan = pretext_spec("srgan")
    values = {flag.name: flag.default for flag in srgan.flags} | {"srgan_scale": "8", "image_size": 50}
    config = srgan.finish(config_from_values(srgan.config_class, srgan.flags, values), values)
    assert (config.scale, config.hr_size) == (8, 48)


def test_two_view_pretexts_share_the_view_flags_and_their_range_check():
    for name in ("simclr", "vicreg"):
        assert all(flag in pretext_spec(name).flags for flag in VIEW_FLAGS)
    values = {flag.name: flag.default for flag in VIEW_FLAGS} | {"gamma_min": 3.0}
    with pytest.raises(FgsslError, match=r"--gamma_min=3.0 is larger than --gamma_max=2.5"):
        finish_view_flags(None, values)


def test_a_malformed_declaration_is_refused():
    with pytest.raises(ValueError, match="kind"):
        FlagSpec("x", "x", "number", 0, "help")
    with pytest.raises(ValueError, match="choices"):
        FlagSpec("x", "x", "string", "a", "help", choices=("a",))


def test_shared_flags_help_texts_list_every_registered_pretext_from_its_spec():
    import re

    from absl import flags

    from fgssl_tf import train  # noqa: F401 (defines the training flags here, once)

    def text(name):
        return " ".join(flags.FLAGS[name].help.split())

    specs = {name: pretext_spec(name) for name in PRETEXTS}
    rates = re.findall(r"(\w+): (\w+) ([0-9.e-]+)", text("learning_rate").split("(", 1)[1])
    assert {name: (optimizer, float(rate)) for name, optimizer, rate in rates} == {
        name: (spec.optimizer, spec.default_learning_rate) for name, spec in specs.items()
    }
    decays = re.findall(r"(\w+) ([0-9.e-]+)", text("weight_decay").split("(", 1)[1])
    assert {name: float(decay) for name, decay in decays} == {n: s.default_weight_decay for n, s in specs.items()}
    cosine, own = text("lr_schedule").split("cosine decay to 0 (", 1)[1].split(";", 1)
    assert set(re.findall(r"\w+", cosine)) == {n for n, s in specs.items() if s.cosine_schedule}
    assert {n for n in specs if n in own} == {n for n, s in specs.items() if not s.cosine_schedule}
    assert all(name in text("pretext") for name in specs)
    refusing = text("jit_compile").split("not yet for ", 1)[1].split(":", 1)[0].split("/")
    assert set(refusing) == {n for n, s in specs.items() if s.jit_compile_refused}
    assert set(text("source_size").split(":", 1)[0].split("/")) == {n for n, s in specs.items() if s.uses_source_size}


def test_benchmark_sizes_come_from_the_pretexts_spec():
    """tools/benchmark.py sizes what it times with the pretext's hook: SRGAN's HR crop is the whole
    image and --width its generator's channels; PMG's heads follow --width, with random weights."""
    srgan = pretext_spec("srgan")
    config = srgan.benchmark_config(srgan.config_class(), 48, 16, 5, {"srgan_residual_blocks": 2})
    assert (config.hr_size, config.width, config.residual_blocks) == (48, 16, 2)
    assert [flag.name for flag in srgan.benchmark_flags] == ["srgan_residual_blocks"]
    pmg = pretext_spec("pmg")
    config = pmg.benchmark_config(pmg.config_class(), 48, 16, 5, {})
    assert (config.num_classes, config.feature_size, config.head_channels) == (5, 128, 256)
    assert config.backbone_weights == "none"
    assert all(pretext_spec(name).benchmark_config is None for name in ("simclr", "vicreg", "jigsaw"))
