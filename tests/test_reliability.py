"""Reliability: NaN losses, unreadable checkpoints, pre-emption (SIGTERM) and kills (SIGKILL)."""

import concurrent.futures
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from conftest import IMAGE_SIZE, REPO, TINY_BACKBONE, tiny_train_config

from fgssl_tf import trainer
from fgssl_tf.config import DataConfig
from fgssl_tf.errors import FgsslError
from fgssl_tf.optim import nonfinite_steps
from fgssl_tf.pretext import simclr

DATA = DataConfig(image_size=IMAGE_SIZE)


@pytest.fixture
def nan_at_call(monkeypatch):
    """Make SimCLR's training loss NaN on its n-th training call (1-based)."""

    def poison(n):
        calls = tf.Variable(0, dtype=tf.int64, trainable=False)
        original = simclr.SimCLRModel._loss

        def poisoned(self, view1, view2, training):
            loss, hits, replicas = original(self, view1, view2, training)
            if training:
                calls.assign_add(1)
                loss = loss * tf.where(tf.equal(calls, n), np.nan, 1.0)
            return loss, hits, replicas

        monkeypatch.setattr(simclr.SimCLRModel, "_loss", poisoned)

    return poison


def _checkpoint_numbers(run_dir):
    state = tf.train.get_checkpoint_state(os.path.join(run_dir, "checkpoints"))
    return [int(p.rsplit("-", 1)[1]) for p in state.all_model_checkpoint_paths] if state else []


@pytest.fixture(scope="module")
def two_epoch_run(tmp_path_factory, elpv_small):
    """`tiny_train_config(epochs=2)` trained once (ckpt-3 and ckpt-6): the tests that start from such a run copy
    it into their own tmp_path/run (a moved model_dir resumes: docs/reliability.md) instead of training it again."""
    tmp_path = tmp_path_factory.mktemp("two_epochs")
    trainer.pretrain(tiny_train_config(tmp_path, export=False, epochs=2), DATA, TINY_BACKBONE, splits=elpv_small)
    return tmp_path / "run"


def test_nan_loss_stops_naming_the_step_and_keeps_finite_checkpoints(tmp_path, elpv_small, nan_at_call):
    nan_at_call(5)  # 3 steps per epoch: epoch 2, batch 2
    config = tiny_train_config(tmp_path, export=False, epochs=3)
    with pytest.raises(
        FgsslError, match=r"non-finite loss or gradients in epoch 2, batch 2 \(step 5\).*--nan_policy=skip_batch"
    ):
        trainer.pretrain(config, DATA, TINY_BACKBONE, splits=elpv_small)
    assert _checkpoint_numbers(config.model_dir) == [3]  # epoch 1 only; nothing written after the NaN
    reader = tf.train.load_checkpoint(os.path.join(config.model_dir, "checkpoints", "ckpt-3"))
    for name in reader.get_variable_to_shape_map():
        value = reader.get_tensor(name)
        if np.issubdtype(np.asarray(value).dtype, np.floating):
            assert np.all(np.isfinite(value)), name


def test_nan_policy_skip_batch_goes_on_without_that_step(tmp_path, elpv_small, nan_at_call):
    nan_at_call(5)
    config = tiny_train_config(tmp_path, export=False, epochs=2, nan_policy="skip_batch")
    result = trainer.pretrain(config, DATA, TINY_BACKBONE, splits=elpv_small)
    assert nonfinite_steps(result.model) == 1
    assert int(result.model.optimizer.iterations.numpy()) == 5  # 6 batches, one refused
    assert result.history["skipped_nonfinite_steps"] == [0.0, 1.0]
    assert all(np.isfinite(result.history["loss"]))  # the refused step's loss is not in the mean
    for variable in result.model.variables:
        if "float" in str(variable.dtype):
            assert np.all(np.isfinite(variable.numpy())), variable.path


def test_unreadable_newest_checkpoint_falls_back_to_the_one_before(tmp_path, elpv_small, two_epoch_run, caplog):
    shutil.copytree(two_epoch_run, tmp_path / "run")  # trained: tiny_train_config(tmp_path, export=False, epochs=2)
    checkpoints = os.path.join(tmp_path, "run", "checkpoints")
    data_file = next(f for f in os.listdir(checkpoints) if f.startswith("ckpt-6.data"))
    with open(os.path.join(checkpoints, data_file), "r+b") as f:  # a torn write: half the file
        f.truncate(os.path.getsize(f.name) // 2)
    resumed = trainer.pretrain(
        tiny_train_config(tmp_path, export=False, epochs=3), DATA, TINY_BACKBONE, splits=elpv_small
    )
    assert "ckpt-6 is unreadable" in caplog.text
    assert resumed.initial_epoch == 1 and int(resumed.model.optimizer.iterations.numpy()) == 9
    for name in os.listdir(checkpoints):
        if name.startswith("ckpt-"):
            os.remove(os.path.join(checkpoints, name))
    with open(os.path.join(checkpoints, "ckpt-9.index"), "w") as f:
        f.write("garbage")
    with pytest.raises(FgsslError, match="no checkpoint under .* could be read .*move that folder away"):
        trainer.pretrain(tiny_train_config(tmp_path, export=False, epochs=4), DATA, TINY_BACKBONE, splits=elpv_small)


def _train_command(run_dir, epochs):
    return [
        sys.executable,
        "-m",
        "fgssl_tf.train",
        "--pretext=simclr",
        "--dataset=elpv",
        "--image_size=32",
        "--backbone=resnet10",
        "--width=8",
        "--small_stem=false",
        "--batch_size=16",
        "--steps_per_epoch=8",
        f"--epochs={epochs}",
        "--max_images_per_split=160",
        "--monitor_every=0",
        "--novalidate",
        "--verbose=0",
        "--strategy=one_device",
        f"--model_dir={run_dir}",
        f"--export_dir={run_dir}/savedmodels",
    ]


def _wait_for_checkpoint(process, run_dir, newer_than, timeout=240):
    """Poll until the run has saved a checkpoint numbered above `newer_than`; returns its number."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        numbers = [n for n in _checkpoint_numbers(run_dir) if n > newer_than]
        if numbers:
            return max(numbers)
        assert process.poll() is None, process.communicate()
        time.sleep(0.02)
    raise AssertionError("no checkpoint appeared")


def _interrupted_then_resumed(tmp_path, env, broken_dir):
    """The broken run: SIGTERM after its first checkpoint, SIGKILL after the next, then the same command to the end."""
    # Pre-emption: SIGTERM somewhere after epoch 1 -> the batch in flight ends, a checkpoint is saved, exit 143.
    run = subprocess.Popen(
        _train_command(broken_dir, 3), cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    # At once: epoch 2 is 8 steps of a tiny network, about 0.1 s on a 2-core CPU since the faster views of 8 Dec,
    # and a signal sent 0.1 s after epoch 1's checkpoint landed on the epoch's end (ckpt-16), not inside it.
    _wait_for_checkpoint(run, broken_dir, 0)
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 143, err
    assert "stopped: stopped by SIGTERM in epoch" in err and "re-run the same command to resume" in err
    saved = max(_checkpoint_numbers(broken_dir))
    assert saved % 8, saved  # saved mid-epoch
    reader = tf.train.load_checkpoint(os.path.join(broken_dir, "checkpoints", f"ckpt-{saved}"))
    positions = {
        k.split("/")[0]: reader.get_tensor(k)
        for k in reader.get_variable_to_shape_map()
        if k.startswith(("epoch/", "step_in_epoch/"))
    }
    assert positions["epoch"] * 8 + positions["step_in_epoch"] == saved

    # A kill: SIGKILL after the next checkpoint; the re-run resumes from the last one written.
    run = subprocess.Popen(
        _train_command(broken_dir, 3), cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    _wait_for_checkpoint(run, broken_dir, saved)
    time.sleep(0.2)
    run.kill()
    run.wait()
    assert not os.path.isdir(os.path.join(broken_dir, "savedmodels"))  # it died before the end
    resumed = subprocess.run(
        _train_command(broken_dir, 3), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr


@pytest.mark.slow
def test_sigterm_saves_mid_epoch_and_sigkill_loses_only_the_epoch_then_resume_equals_an_uninterrupted_run(
    tmp_path, monkeypatch
):
    from absl import flags

    from fgssl_tf import cli, train

    env = {**os.environ, "PYTHONPATH": REPO, "CUDA_VISIBLE_DEVICES": ""}
    straight_dir, broken_dir = str(tmp_path / "straight"), str(tmp_path / "broken")
    # The broken run's processes in the background (a thread waits on them; .result() raises what failed there) ...
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as background:
        broken = background.submit(_interrupted_then_resumed, tmp_path, env, broken_dir)
        # ... and meanwhile the uninterrupted run: the same command in this process, without the export nothing reads.
        monkeypatch.chdir(tmp_path)
        flags.FLAGS.unparse_flags()
        cli.run_main(train.main, cli.parse_flags(["train", *_train_command(straight_dir, 3)[3:], "--noexport"]))
        broken.result()

    final = {}
    for name, run_dir in (("straight", straight_dir), ("broken", broken_dir)):
        assert max(_checkpoint_numbers(run_dir)) == 24
        reader = tf.train.load_checkpoint(os.path.join(run_dir, "checkpoints", "ckpt-24"))
        final[name] = {
            k: reader.get_tensor(k)
            for k in reader.get_variable_to_shape_map()
            if not k.startswith(("_CHECKPOINTABLE", "save_counter"))
        }
    assert final["straight"].keys() == final["broken"].keys()
    compared = 0
    for key, value in final["straight"].items():
        if np.issubdtype(np.asarray(value).dtype, np.number):
            np.testing.assert_allclose(final["broken"][key], value, rtol=1e-4, atol=1e-5, err_msg=key)
            compared += 1
    assert compared > 100  # weights, batch-norm statistics, Adam moments, step counters
    with open(os.path.join(broken_dir, "run_config.json")) as f:
        assert json.load(f)["train"]["epochs"] == 3


@pytest.mark.slow
def test_awkward_image_files_are_converted_or_skipped_and_counted_in_tensorboard(tmp_path):
    """The data-fault table of docs/reliability.md: what each kind of file becomes."""
    from conftest import write_image
    from PIL import Image

    from fgssl_tf.data import load_splits

    rng = np.random.RandomState(0)
    root = tmp_path / "data"
    for label in ("alpha", "beta"):
        for i in range(8):
            write_image(str(root / label / f"{i}.png"), rng.randint(0, 255, (24, 24, 3)).astype(np.uint8))
    faults = root / "alpha"
    Image.new("RGB", (10_000, 10_000), (100, 150, 200)).save(faults / "huge.jpg", quality=80)
    Image.fromarray(np.full((20, 30), 51400, np.uint16)).save(faults / "sixteen_bit.png")  # 51400 / 65535 = 200 / 255
    Image.new("RGB", (20, 20), (200, 50, 10)).convert("CMYK").save(faults / "cmyk.jpg", quality=95)
    Image.new("RGB", (1, 1), (7, 8, 9)).save(faults / "one_pixel.png")
    (faults / "zero_bytes.jpg").write_bytes(b"")
    (faults / "text.png").write_text("not an image")
    (faults / "truncated.jpg").write_bytes((faults / "huge.jpg").read_bytes()[:3000])
    splits = load_splits(DataConfig(dataset=f"folder:{root}", image_size=16, val_fraction=0.2))
    assert splits.stats["skipped_files"] == 3
    assert {os.path.basename(p) for p in splits.stats["skipped_paths"]} == {
        "zero_bytes.jpg",
        "text.png",
        "truncated.jpg",
    }
    everything = np.concatenate([splits.split(n)[0] for n in ("train", "val", "test")])
    assert len(everything) == 16 + 4

    def has(colour, tolerance):
        return bool(
            np.any(
                np.all(
                    np.abs(everything.astype(int) - colour).reshape(len(everything), -1, 3).max(axis=1) <= tolerance,
                    axis=-1,
                )
            )
        )

    assert has((100, 150, 200), 3)  # the 10,000 x 10,000 JPEG, squashed to 16 px
    assert has((200, 200, 200), 1)  # 16-bit gray, scaled to 8 bits
    assert has((200, 50, 10), 8)  # CMYK JPEG, back to RGB
    assert has((7, 8, 9), 0)  # one pixel, repeated

    trainer.pretrain(
        tiny_train_config(tmp_path, export=False, epochs=1, steps_per_epoch=1, batch_size=4),
        DataConfig(dataset=f"folder:{root}", image_size=16),
        TINY_BACKBONE,
        splits=splits,
    )
    values = {}
    for path in tf.io.gfile.glob(str(tmp_path / "run" / "logs" / "data" / "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                values[value.tag] = value
    assert float(tf.make_ndarray(values["data/skipped_files"].tensor)) == 3
    listing = tf.make_ndarray(values["data/skipped_paths"].tensor).item().decode()
    assert listing.startswith("3 unreadable image files skipped") and "truncated.jpg" in listing


def test_a_full_disk_at_checkpoint_time_keeps_the_last_good_one(tmp_path, elpv_small, two_epoch_run, monkeypatch):
    shutil.copytree(two_epoch_run, tmp_path / "run")  # trained: tiny_train_config(tmp_path, export=False, epochs=2)

    def disk_full(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tf.train.CheckpointManager, "save", disk_full)
    with pytest.raises(
        FgsslError,
        match=r"could not write a checkpoint after epoch 3 .*No space left.*ckpt-6 is kept; free space and re-run",
    ):
        trainer.pretrain(tiny_train_config(tmp_path, export=False, epochs=3), DATA, TINY_BACKBONE, splits=elpv_small)
    monkeypatch.undo()
    assert _checkpoint_numbers(tmp_path / "run") == [3, 6]
    resumed = trainer.pretrain(
        tiny_train_config(tmp_path, export=False, epochs=3), DATA, TINY_BACKBONE, splits=elpv_small
    )
    assert resumed.initial_epoch == 2 and int(resumed.model.optimizer.iterations.numpy()) == 9


def test_resume_refuses_every_changed_setting_naming_it_and_allows_the_listed_ones(tmp_path, elpv_small, two_epoch_run):
    """Each kind of setting (train, data, backbone, pretext, the pretext's nested augmentation, a
    field a config gains later) is compared with the saved run before any work; the allow-list resumes."""
    import dataclasses

    from fgssl_tf.config import AugmentConfig

    config = tiny_train_config(tmp_path, export=False, epochs=2)
    shutil.copytree(two_epoch_run, tmp_path / "run")  # trained: this config
    saved = (tmp_path / "run" / "run_config.json").read_bytes()
    with_knob = dataclasses.make_dataclass(
        "KnobConfig", [("new_knob", int, dataclasses.field(default=0))], bases=(simclr.SimCLRConfig,), frozen=True
    )
    changes = [
        ({"train": dataclasses.replace(config, learning_rate=0.01)}, "train.learning_rate: 0.001 -> 0.01"),
        ({"train": dataclasses.replace(config, steps_per_epoch=4)}, "train.steps_per_epoch: 3 -> 4"),
        ({"data": DataConfig(image_size=IMAGE_SIZE, val_fraction=0.3)}, "data.val_fraction: 0.2 -> 0.3"),
        ({"backbone": dataclasses.replace(TINY_BACKBONE, width=16)}, "backbone_config.width: 8 -> 16"),
        ({"pretext_config": simclr.SimCLRConfig(temperature=0.2)}, "pretext_config.temperature: 0.5 -> 0.2"),
        (
            {"pretext_config": simclr.SimCLRConfig(augment=AugmentConfig(blur_prob=0.1))},
            "pretext_config.augment.blur_prob: 0.5 -> 0.1",
        ),
        ({"pretext_config": with_knob(new_knob=3)}, "pretext_config.new_knob: 0 -> 3"),
    ]
    for change, named in changes:
        arguments = {"train": config, "data": DATA, "backbone": TINY_BACKBONE, **change}
        with pytest.raises(FgsslError, match="holds a run with other settings") as refused:
            trainer.pretrain(**arguments, splits=elpv_small)
        assert named in str(refused.value) and "docs/reliability.md" in str(refused.value)
        assert (tmp_path / "run" / "run_config.json").read_bytes() == saved  # nothing rewritten
    # The same settings over other images: refused once the data is loaded, before any training.
    fewer = dataclasses.replace(
        elpv_small, stats={**elpv_small.stats, "split_sizes": {"train": 399, "val": 300, "test": 300}}
    )
    with pytest.raises(FgsslError, match=r"holds a run on other data \(split_sizes: \{'train': 400.*'train': 399"):
        trainer.pretrain(config, DATA, TINY_BACKBONE, splits=fewer)
    assert (tmp_path / "run" / "run_config.json").read_bytes() == saved
    # The allow-list: more epochs, another export place, verbosity, NaN policy, strategy; a new field at its default.
    allowed = dataclasses.replace(
        config,
        epochs=3,
        export_dir=str(tmp_path / "elsewhere"),
        verbose=2,
        nan_policy="skip_batch",
        strategy="auto",
        checkpoints_to_keep=5,
    )
    resumed = trainer.pretrain(allowed, DATA, TINY_BACKBONE, with_knob(), splits=elpv_small)
    assert resumed.initial_epoch == 2 and int(resumed.model.optimizer.iterations.numpy()) == 9
    with open(tmp_path / "run" / "run_config.json") as f:
        assert json.load(f)["train"]["epochs"] == 3


def test_the_allow_list_in_the_code_is_the_one_in_the_docs():
    with open(os.path.join(REPO, "docs", "reliability.md")) as f:
        section = f.read().split("### What a resumed run may change", 1)[1].split("\n#", 1)[0]
    documented = {line.split("`")[1] for line in section.splitlines() if line.startswith("| `")}
    assert documented == set(trainer.RESUMABLE_CHANGES)


def test_a_deleted_or_emptied_checkpoint_state_file_resumes_from_the_checkpoint_files(
    tmp_path, elpv_small, two_epoch_run, caplog
):
    def config(epochs):
        return tiny_train_config(tmp_path, export=False, epochs=epochs)

    shutil.copytree(two_epoch_run, tmp_path / "run")  # trained: config(2), ckpt-3 and ckpt-6
    state_file = tmp_path / "run" / "checkpoints" / "checkpoint"
    state_file.unlink()
    resumed = trainer.pretrain(config(3), DATA, TINY_BACKBONE, splits=elpv_small)
    assert resumed.initial_epoch == 2 and int(resumed.model.optimizer.iterations.numpy()) == 9  # not epoch 1 again
    assert "rebuilt it from the 2 checkpoint files there (newest ckpt-6)" in caplog.text
    state_file.write_text("")  # emptied: TensorFlow's own reader raises ValueError on it
    resumed = trainer.pretrain(config(4), DATA, TINY_BACKBONE, splits=elpv_small)
    assert resumed.initial_epoch == 3 and int(resumed.model.optimizer.iterations.numpy()) == 12
    assert _checkpoint_numbers(tmp_path / "run") == [6, 9, 12]  # kept (3): the ones found again, and the new ones


def test_sigterm_and_resume_name_the_same_epoch_and_batch(tmp_path, elpv_small, monkeypatch, caplog):
    original = trainer._NonFiniteWatch.on_train_batch_end

    def signal_in_epoch_2_batch_2(self, batch, logs=None):
        original(self, batch, logs)
        if self.current_epoch == 1 and batch == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # handled by the trainer: the batch ends, a checkpoint is saved

    monkeypatch.setattr(trainer._NonFiniteWatch, "on_train_batch_end", signal_in_epoch_2_batch_2)
    config = tiny_train_config(tmp_path, export=False, epochs=3)
    with pytest.raises(FgsslError, match="stopped by SIGTERM in epoch 2, batch 2 of 3; saved .*ckpt-5"):
        trainer.pretrain(config, DATA, TINY_BACKBONE, splits=elpv_small)
    monkeypatch.undo()
    caplog.set_level(logging.INFO, logger="fgssl_tf")
    resumed = trainer.pretrain(config, DATA, TINY_BACKBONE, splits=elpv_small)
    assert "ckpt-5, saved in epoch 2, batch 2 of 3" in caplog.text
    assert resumed.initial_epoch == 1 and int(resumed.model.optimizer.iterations.numpy()) == 9


def test_a_validation_split_smaller_than_the_batch_is_one_smaller_batch(tmp_path, elpv_small, caplog):
    import dataclasses

    small = dataclasses.replace(
        elpv_small, val_images=elpv_small.val_images[:20], val_labels=elpv_small.val_labels[:20]
    )
    config = tiny_train_config(tmp_path, export=False, epochs=1, steps_per_epoch=1, validate=True)
    result = trainer.pretrain(config, DATA, TINY_BACKBONE, splits=small)
    assert "fewer than --batch_size=32: validating on one batch of 20" in caplog.text
    assert len(result.history["val_loss"]) == 1 and np.isfinite(result.history["val_loss"][0])
    one = dataclasses.replace(elpv_small, val_images=elpv_small.val_images[:1], val_labels=elpv_small.val_labels[:1])
    config = tiny_train_config(tmp_path / "one", export=False, epochs=1, steps_per_epoch=1, validate=True)
    result = trainer.pretrain(config, DATA, TINY_BACKBONE, splits=one)
    assert "too few to validate" in caplog.text and "val_loss" not in result.history
