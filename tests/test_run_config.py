"""fgssl_tf.run_config: one run's configuration, resolved once, saved as run_config.json and read back;
tools/reproduce.py's budget runs built as configurations equal what its --flag strings gave."""

import dataclasses
import json
import os

import pytest
from conftest import REPO

from fgssl_tf.config import BackboneConfig, DataConfig, TrainConfig
from fgssl_tf.errors import FgsslError
from fgssl_tf.pretext import PRETEXTS, pretext_spec
from fgssl_tf.run_config import RUN_CONFIG_FILE, RunConfig, resolve_run

# run_config.json's keys, in order, as every run saved so far has them (old runs resume, tools read them).
SAVED_KEYS = [
    "pretext",
    "backbone",
    "image_size",
    "batch_size",
    "seed",
    "dataset",
    "train",
    "data",
    "backbone_config",
    "pretext_config",
    "data_stats",
]


def _changed(config, keep=()):
    """`config` with every field moved off its default (nested dataclasses too): flipped booleans, other
    numbers, strings and tuples, so a round trip that dropped or retyped any field would show."""
    changes = {}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if field.name in keep or value is None:
            continue
        if dataclasses.is_dataclass(value):
            changes[field.name] = _changed(value)
        elif isinstance(value, bool):
            changes[field.name] = not value
        elif isinstance(value, (int, float)):
            changes[field.name] = value + 1 if isinstance(value, int) else value * 0.5
        elif isinstance(value, str):
            changes[field.name] = value + "_x"
        elif isinstance(value, tuple):
            changes[field.name] = tuple(reversed(value)) + value[:1] if value else ("cutout", "gamma")
    return dataclasses.replace(config, **changes)


@pytest.mark.parametrize("pretext", PRETEXTS)
def test_every_pretext_round_trips_through_run_config_json(pretext, tmp_path):
    plain = resolve_run(TrainConfig(pretext=pretext), DataConfig(), BackboneConfig())
    changed = resolve_run(
        _changed(TrainConfig(pretext=pretext), keep=("pretext",)),
        _changed(DataConfig()),
        BackboneConfig(name="resnet50", small_stem=True, synchronized_bn=False, width=16),
        _changed(pretext_spec(pretext).config_class()),
    )
    for run in (plain, changed):
        path = run.save(str(tmp_path / run.train.model_dir.replace("/", "_")), data_stats={"split_sizes": {"a": 1}})
        assert RunConfig.load(os.path.dirname(path)) == run  # a model_dir or the file itself
        assert RunConfig.load(path) == run
        with open(path) as f:
            assert list(json.load(f)) == SAVED_KEYS
    assert changed != plain


def test_resolving_settles_every_choice_once_and_a_resolved_run_stays_as_it_is():
    for pretext in PRETEXTS:
        spec = pretext_spec(pretext)
        run = resolve_run(TrainConfig(pretext=pretext), DataConfig(image_size=48), BackboneConfig(width=8))
        assert run.train.learning_rate == spec.default_learning_rate
        assert run.train.weight_decay == spec.default_weight_decay
        assert run.pretext == spec.config_class()
        assert resolve_run(run.train, run.data, run.backbone, run.pretext, run.monitor) == run
    jigsaw = resolve_run(TrainConfig(pretext="jigsaw"), DataConfig(image_size=48), BackboneConfig(width=8))
    assert jigsaw.backbone.small_stem is True  # 12 px tile crops, not 48 px images
    simclr = resolve_run(TrainConfig(learning_rate=0.01), DataConfig(image_size=48))
    assert simclr.train.learning_rate == 0.01 and simclr.backbone == BackboneConfig()  # set values are kept
    with pytest.raises(FgsslError, match="use --image_size of at least"):
        resolve_run(TrainConfig(pretext="jigsaw"), DataConfig(image_size=16))
    with pytest.raises(FgsslError, match="--epochs must be at least 1 and --batch_size at least 2"):
        resolve_run(TrainConfig(batch_size=1), DataConfig())


def test_a_run_saved_by_another_version_loads_with_defaults_for_what_it_lacks(tmp_path):
    run = resolve_run(TrainConfig(model_dir=str(tmp_path), seed=3), DataConfig(image_size=48))
    saved = run.to_json()
    saved["train"]["a_removed_setting"] = 1
    del saved["pretext_config"]["temperature"]
    del saved["pretext_config"]["augment"]["blur_prob"]
    (tmp_path / RUN_CONFIG_FILE).write_text(json.dumps(saved))
    assert RunConfig.load(str(tmp_path)) == run  # the missing ones at their defaults (run's are the defaults)
    (tmp_path / RUN_CONFIG_FILE).write_text("{not json")
    with pytest.raises(FgsslError, match="cannot be read as a run's configuration"):
        RunConfig.load(str(tmp_path))


def _old_overrides(budget, method, dataset, output_dir, seed, stage="", pool_size=0):
    """The --flag strings tools/reproduce.py put on a method's flagfile before budget runs were
    configurations (kept here as the reference that `budget_run` must equal)."""
    steps = max(1, budget.images_seen // budget.batch_size // (2 if method.name == "srgan" else 1))
    length = ["--epochs=1", f"--steps_per_epoch={steps}"]
    monitor_every = 0
    if budget.whole_epochs:
        steps_per_epoch = max(1, pool_size // budget.batch_size)
        epochs = max(1, round(steps / steps_per_epoch))
        length = [f"--epochs={epochs}"]
        monitor_every = max(1, epochs // budget.monitor_readings) if budget.monitor_readings else 0
    run = f"{method.name}{'_' + stage if stage else ''}-seed{seed}"
    flags = [
        f"--dataset={dataset}",
        f"--image_size={budget.image_size}",
        f"--width={budget.width}",
        f"--batch_size={budget.batch_size}",
        *length,
        f"--seed={seed}",
        f"--monitor_every={monitor_every}",
        "--verbose=0",
        "--novalidate",
        f"--model_dir={os.path.join(output_dir, 'runs', run)}",
        f"--export_dir={os.path.join(output_dir, 'savedmodels')}",
        f"--export_name={run}",
    ]
    if budget.max_images_per_split:
        flags.append(f"--max_images_per_split={budget.max_images_per_split}")
    if method.name.startswith("jigsaw"):
        flags.append("--small_stem=auto")
    if method.name == "srgan":
        flags += [
            f"--srgan_hr_size={budget.image_size}",
            f"--srgan_residual_blocks={budget.srgan_blocks}",
            f"--srgan_width={budget.srgan_width}",
            f"--srgan_discriminator_width={budget.srgan_width}",
            f"--perceptual_weights={budget.perceptual_weights}",
        ]
        if stage == "gan":
            flags += [
                "--srgan_stage=gan",
                f"--srgan_generator_init={os.path.join(output_dir, 'runs', f'srgan_psnr-seed{seed}')}",
            ]
    flags.append(f"--backbone={budget.backbone}")  # the budget's ResNet for every method (PMG's ResNet-50 too)
    return flags


def _outcome(make, *args):
    try:
        return make(*args)
    except FgsslError as err:  # e.g. a budget's image size too small for a method: refused alike
        return f"error: {err}"


def test_budget_runs_equal_the_flag_strings_they_replace(tmp_path):
    from absl import flags

    import fgssl_tf.train  # noqa: F401 (defines the training flags in this process)
    from fgssl_tf import flags as fgssl_flags
    from fgssl_tf import reproduce

    def parsed(*args):
        flags.FLAGS.unparse_flags()
        flags.FLAGS(["reproduce", *args])
        fgssl_flags.check_pretext_flags()
        return fgssl_flags.run_config()

    output_dir, compared = str(tmp_path), set()
    try:
        for budget in reproduce.BUDGETS.values():
            for method in reproduce.METHODS.values():
                if method.flagfile is None:
                    continue
                flagfile = f"--flagfile={os.path.join(REPO, 'flags', method.flagfile)}"
                method_run = parsed(flagfile)  # parsed once, as tools/reproduce.py does
                for stage in ("psnr", "gan") if method.name == "srgan" else ("",):
                    args = ("elpv", output_dir, 1, stage, 1576)  # dataset, output_dir, seed, stage, pool size
                    new = _outcome(reproduce.budget_run, budget, method, method_run, *args)
                    old = _outcome(parsed, flagfile, *_old_overrides(budget, method, *args))
                    assert new == old, (budget.name, method.name, stage)  # the same run, or the same refusal
                    if isinstance(new, RunConfig):
                        assert new.to_json() == old.to_json()
                        compared.add((budget.name, method.name, stage))
    finally:
        flags.FLAGS.unparse_flags()
    wanted = {
        (b, m) for b in ("small", "medium") for m in reproduce.BUDGETS[b].methods if reproduce.METHODS[m].flagfile
    }
    assert wanted <= {(b, m) for b, m, _ in compared}
    assert {("small", "srgan", "psnr"), ("small", "srgan", "gan"), ("medium", "simclr_tuned", "")} <= compared
