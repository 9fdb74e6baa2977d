"""Shared fixtures. Two logical CPU devices are configured before TensorFlow starts,
so tests can run two replicas of MirroredStrategy on one CPU."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Decoded images are kept between test processes (and runs) here, not in the user's ~/.cache;
# subprocess tests inherit it. See fgssl_tf/data/disk_cache.py.
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("FGSSL_CACHE_DIR", os.path.join(_REPO_ROOT, ".pytest_cache", "fgssl_tf"))
# ./test.sh runs two test processes on two cores: one intra-op thread each, so they do not take turns on the
# cores (9% less wall-clock for the same tests: docs/benchmarks.md, seventh session). Subprocesses inherit it.
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(_cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)

from fgssl_tf.config import BackboneConfig, DataConfig, TrainConfig  # noqa: E402
from fgssl_tf.data import load_splits  # noqa: E402

REPO = _REPO_ROOT
IMAGE_SIZE = 32
# Tests of plumbing train a narrow ResNet-10 (one block per stage): what they check does not depend on
# depth, and half the layers take half as long to trace. tests/test_models.py covers ResNet-18 itself.
TINY_BACKBONE = BackboneConfig(name="resnet10", width=8, small_stem=False)


@pytest.fixture(scope="session")
def elpv_splits():
    """Real elpv images at 32 px (all 2,624), loaded once."""
    return load_splits(DataConfig(dataset="elpv", image_size=IMAGE_SIZE))


@pytest.fixture(scope="session")
def elpv_small(elpv_splits):
    """A stratified 400/300/300 subset of elpv, for training tests."""
    from fgssl_tf.data import Splits, label_fraction_subset

    parts = {}
    for name, limit in (("train", 400), ("val", 300), ("test", 300)):
        images, labels = elpv_splits.split(name)
        idx = label_fraction_subset(labels, limit / len(labels), 0)
        parts[name] = (images[idx], labels[idx])
    return Splits(
        *parts["train"],
        *parts["val"],
        *parts["test"],
        class_names=elpv_splits.class_names,
        unlabeled_images=elpv_splits.unlabeled_images,
        stats={**elpv_splits.stats, "split_sizes": {k: len(v[1]) for k, v in parts.items()}},
    )


def tiny_train_config(tmp_path, **overrides) -> TrainConfig:
    values = dict(
        model_dir=str(tmp_path / "run"),
        export_dir=str(tmp_path / "savedmodels"),
        export_name="tiny",
        epochs=2,
        batch_size=32,
        steps_per_epoch=3,
        seed=0,
        verbose=0,
        strategy="one_device",
        validate=False,
    )
    values.update(overrides)
    return TrainConfig(**values)


@pytest.fixture(scope="session")
def trained_encoder(tmp_path_factory, elpv_small):
    """A briefly pretrained SimCLR encoder, exported once for the export and evaluation tests
    (with the pretraining monitor on, which tests/test_monitor.py checks)."""
    from fgssl_tf import trainer
    from fgssl_tf.monitor import MonitorConfig

    tmp_path = tmp_path_factory.mktemp("pretrained")
    config = tiny_train_config(tmp_path, epochs=2, steps_per_epoch=6)
    monitor = MonitorConfig(every=1, max_bank_images=200, max_query_images=100, probe_epochs=3)
    result = trainer.pretrain(
        config, DataConfig(image_size=IMAGE_SIZE), TINY_BACKBONE, splits=elpv_small, monitor=monitor
    )
    return result, result.exports["tiny"]


def load_tool(name: str):
    """tools/NAME.py as a module, imported once per test process (its flags live on its own `FLAGS`)."""
    import importlib.util
    import sys

    module_name = f"fgssl_tool_{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, os.path.join(REPO, "tools", f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]


@pytest.fixture
def run_tool(capsys, monkeypatch):
    """`python tools/NAME.py ARGS` run in this process from `cwd` (no interpreter and TensorFlow start per
    call; fgssl_tf.cli.invoke parses the flags afresh): a CompletedProcess with its exit code and output.
    Tests of what only a process of its own shows (signals, imports, a clean environment) start one."""
    import subprocess

    from fgssl_tf import cli

    def run(name, args, cwd):
        monkeypatch.chdir(cwd)
        tool = load_tool(name)
        capsys.readouterr()  # what the test printed before is not the tool's
        code = cli.invoke(tool.main, tool.FLAGS, [os.path.join(REPO, "tools", f"{name}.py"), *args])
        output = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, output.out, output.err)

    return run


def write_image(path, array, fmt=None, **save_options):
    from PIL import Image

    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.asarray(array)).save(path, format=fmt, **save_options)


def replicated_loss_and_grads(strategy, replica_loss, z1, z2):
    """Run `replica_loss(a, b)` on each replica's slice of the batch (z1, z2): the loss summed
    over replicas and the gradients with respect to z1 and z2, concatenated in replica order."""

    def step(a, b):
        with tf.GradientTape() as tape:
            tape.watch([a, b])
            loss = replica_loss(a, b)
        return loss, tape.gradient(loss, [a, b])

    dataset = tf.data.Dataset.from_tensor_slices((z1, z2)).batch(len(z1))
    a, b = next(iter(strategy.experimental_distribute_dataset(dataset)))
    loss, grads = strategy.run(step, args=(a, b))
    loss = strategy.reduce("SUM", loss, axis=None).numpy()
    grads = [np.concatenate([g.numpy() for g in strategy.experimental_local_results(grad)]) for grad in grads]
    return loss, grads


# The fast tier (`./test.sh -m "not slow"`) leaves out what trains for more than a few seconds. A test
# that asks for one of these fixtures trains or reuses a training run, so it is marked here; slow tests
# without them (CLI subprocesses that train, multi-worker, reproduce runs) carry @pytest.mark.slow.
SLOW_FIXTURES = {"trained_encoder", "elpv_small", "elpv_48px", "psnr_run"}


# Under ./test.sh (two xdist workers, one file at a time, `--no-loadscope-reorder`) the files that take
# longest start first and the short ones fill in at the end, so the two workers finish together
# (longest-processing-time first; xdist's own order, by test count, handed out test_distribute.py,
# 2 tests and minutes of work, last). Order: seconds per file of a whole run (`--durations=0`,
# summed per file, 2026-11-29); files not listed follow in collection order.
LONGEST_FIRST = (
    "test_reliability.py",
    "test_distribute.py",
    "test_cli.py",
    "test_srgan.py",
    "test_pmg.py",
    "test_evaluation_speed.py",
    "test_python_api.py",
    "test_jigsaw.py",
    "test_fine_grained.py",
    "test_simclr_training.py",
    "test_ship.py",
    "test_evaluate.py",
    "test_models.py",
    "test_vicreg.py",
    "test_export.py",
    "test_reproduce.py",
    "test_inspect.py",
)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    if hasattr(config, "workerinput"):  # an xdist worker: the controller hands out files in this order
        rank = {name: position for position, name in enumerate(LONGEST_FIRST)}
        items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: tests keep their order
