"""SRGAN: shapes, a psnr stage that beats bicubic, a GAN step that moves both
networks and not VGG, exports that load with TensorFlow alone, the paper's variants."""

import dataclasses
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import IMAGE_SIZE, TINY_BACKBONE, tiny_train_config

from fgssl_tf import trainer
from fgssl_tf.config import DataConfig
from fgssl_tf.data import pipeline
from fgssl_tf.errors import FgsslError
from fgssl_tf.evaluation import EvalConfig, evaluate, protocols
from fgssl_tf.export import preprocess
from fgssl_tf.pretext import srgan

DATA = DataConfig(image_size=IMAGE_SIZE)
TINY = srgan.SRGANConfig(
    stage="psnr",
    scale=4,
    hr_size=32,
    residual_blocks=2,
    width=16,
    discriminator_width=8,
    discriminator_dense=16,
    perceptual_weights="none",
)


def test_generator_scales_and_discriminator_input_size():
    keras.utils.set_random_seed(0)
    for scale in srgan.SCALES:
        generator = srgan.build_generator(dataclasses.replace(TINY, scale=scale, width=8))
        assert generator(tf.zeros([2, 4, 4, 3])).shape == (2, 4 * scale, 4 * scale, 3)
        assert generator(tf.zeros([1, 5, 7, 3])).shape == (1, 5 * scale, 7 * scale, 3)
    discriminator = srgan.build_discriminator(TINY)
    assert discriminator(tf.zeros([3, 32, 32, 3])).shape == (3, 1)
    with pytest.raises(FgsslError, match="built for 32x32 images and got 40x40.*--srgan_hr_size=32"):
        discriminator(tf.zeros([1, 40, 40, 3]))
    # The paper's sizes: 88 px crops halve to 6 x 6 x 512 = 18,432 features before the dense head.
    paper = srgan.SRGANConfig(hr_size=88)
    assert srgan.build_discriminator(paper).get_layer("conv8_lrelu").output.shape[1:] == (6, 6, 512)
    # SRResNet-16: 9x9 stem, 16 x (two 3x3 convs, two BNs, a PReLU), trunk conv + BN,
    # two x4-channel upsample convs + PReLUs, 9x9 output.
    weights = (
        (9 * 9 * 3 * 64 + 64 + 1)
        + 16 * (2 * 9 * 64 * 64 + 2 * 2 * 64 + 1)
        + (9 * 64 * 64 + 2 * 64)
        + 2 * (9 * 64 * 256 + 1)
        + (9 * 9 * 64 * 3 + 3)
    )
    assert sum(int(np.prod(w.shape)) for w in srgan.build_generator(paper).trainable_weights) == weights


@pytest.fixture(scope="module")
def psnr_run(tmp_path_factory, elpv_splits):
    """A short psnr stage on real elpv crops (x4, 32 px HR from 8 px LR)."""
    tmp_path = tmp_path_factory.mktemp("srgan_psnr")
    train = tiny_train_config(
        tmp_path,
        pretext="srgan",
        export_name=None,
        batch_size=16,
        epochs=2,
        steps_per_epoch=150,  # at 2e-3, 1.5 dB over bicubic (29 Nov); 2 x 200 at 1e-3 gave 1.4
        learning_rate=2e-3,
        validate=True,
    )
    return trainer.pretrain(train, DATA, TINY_BACKBONE, TINY, splits=elpv_splits), train


def test_psnr_stage_beats_bicubic_on_validation(psnr_run):
    result, train = psnr_run
    history = result.history
    # Computed on the same centre crops of the validation images: the network's PSNR and bicubic's.
    assert history["val_psnr"][-1] > history["val_bicubic_psnr"][-1] + 0.5, history
    assert history["val_psnr"][-1] > history["val_psnr"][0]
    assert history["val_ssim"][-1] > 0.5
    assert list(result.exports) == ["srgan_generator_elpv"]  # an untrained critic is not exported
    files = os.listdir(result.exports["srgan_generator_elpv"])
    assert {"saved_model.pb", "encoder.keras", srgan.GENERATOR_FILE} <= set(files)
    # TensorBoard: bicubic | SR | HR triplets at the start and after each epoch.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(os.path.join(train.model_dir, "logs", "outputs"), size_guidance={"tensors": 0})
    events.Reload()
    triplets = [tag for tag in events.Tags()["tensors"] if tag.startswith("bicubic_sr_hr")]
    assert len(triplets) == 4 and [e.step for e in events.Tensors(triplets[0])] == [0, 1, 2]
    width, height = (int(v) for v in events.Tensors(triplets[0])[0].tensor_proto.string_val[:2])
    assert (width, height) == (3 * 32, 32)


@pytest.fixture(scope="module")
def vgg_weights(tmp_path_factory):
    """A local VGG19 weights file (random weights: the real ones download from the internet)."""
    keras.utils.set_random_seed(3)
    path = str(tmp_path_factory.mktemp("vgg") / "vgg19_notop.weights.h5")
    keras.applications.VGG19(include_top=False, weights=None, input_shape=(None, None, 3)).save_weights(path)
    return path


def _gan_config(psnr_train, vgg_weights):
    return dataclasses.replace(TINY, stage="gan", perceptual_weights=vgg_weights, generator_init=psnr_train.model_dir)


def test_gan_step_moves_both_networks_and_not_vgg(tmp_path, psnr_run, vgg_weights, elpv_splits):
    psnr_result, psnr_train = psnr_run
    config = _gan_config(psnr_train, vgg_weights)
    model = trainer.build_pretext_model(
        tiny_train_config(tmp_path, pretext="srgan", batch_size=16), DATA, TINY_BACKBONE, config
    )
    for mine, trained in zip(model.generator.weights, psnr_result.model.generator.weights):  # started from the psnr run
        np.testing.assert_array_equal(mine.numpy(), trained.numpy())
    assert model.perceptual is not None and not model.perceptual.trainable_weights
    assert not any("vgg" in v.path or "block5" in v.path for v in model.weights)  # VGG is not part of the checkpoint
    before = {
        name: [v.numpy().copy() for v in net.weights]
        for name, net in (
            ("generator", model.generator),
            ("discriminator", model.discriminator),
            ("vgg", model.perceptual),
        )
    }
    images = elpv_splits.train_images[:16]
    logs = model.fit(
        pipeline.epoch_batches(images, np.arange(16), 16, 0, 0, 1, 1), epochs=1, steps_per_epoch=1, verbose=0
    ).history
    for key in ("d_loss", "perceptual_loss", "adversarial_loss", "pixel_loss"):
        assert np.isfinite(logs[key][0]) and logs[key][0] > 0, (key, logs)
    for name, net in (
        ("generator", model.generator),
        ("discriminator", model.discriminator),
        ("vgg", model.perceptual),
    ):
        changed = [not np.array_equal(a, v.numpy()) for a, v in zip(before[name], net.weights)]
        if name == "vgg":
            assert not any(changed)
        else:
            assert sum(changed) > len(changed) // 2, name
    assert int(model.discriminator_optimizer.iterations.numpy()) == 1 and int(model.optimizer.iterations.numpy()) == 1


def test_both_stages_in_one_run_switch_at_half_time_and_export_both(tmp_path, elpv_small):
    train = tiny_train_config(tmp_path, pretext="srgan", export_name=None, batch_size=16, epochs=3, steps_per_epoch=2)
    result = trainer.pretrain(train, DATA, TINY_BACKBONE, dataclasses.replace(TINY, stage="both"), splits=elpv_small)
    model = result.model
    assert int(model.optimizer.iterations.numpy()) == 6  # the generator every step
    assert (
        int(model.discriminator_optimizer.iterations.numpy()) == 2
    )  # the critic in the last epoch only (epochs 1-2: psnr)
    assert "d_loss" not in result.history or len(result.history["d_loss"]) == 1
    assert set(result.exports) == {"srgan_generator_elpv", "srgan_discriminator_elpv"}


def test_perceptual_weights_choices_fail_clearly(tmp_path, monkeypatch):
    with pytest.raises(FgsslError, match="no such file.*imagenet.*none"):
        srgan._load_perceptual(str(tmp_path / "missing.weights.h5"))

    def offline(*args, **kwargs):
        raise OSError("URL fetch failure: no internet")

    import keras.src.applications.vgg19 as keras_vgg19

    monkeypatch.setattr(keras_vgg19.file_utils, "get_file", offline)
    with pytest.raises(FgsslError, match="could not load the VGG19 weights 'imagenet'.*a path to a weights file, none"):
        srgan._load_perceptual("imagenet")
    assert srgan._load_perceptual("auto") is None  # the default: a warning, and no perceptual term
    train = tiny_train_config(tmp_path, pretext="srgan")
    with pytest.raises(FgsslError, match="no checkpoint.*run the psnr stage first"):
        trainer.build_pretext_model(
            train, DATA, TINY_BACKBONE, dataclasses.replace(TINY, stage="gan", generator_init=str(tmp_path / "nothing"))
        )
    with pytest.raises(FgsslError, match="larger than --image_size"):
        trainer.build_pretext_model(train, DATA, TINY_BACKBONE, dataclasses.replace(TINY, hr_size=64))
    with pytest.raises(FgsslError, match="multiple of --srgan_scale"):
        trainer.build_pretext_model(train, DATA, TINY_BACKBONE, dataclasses.replace(TINY, hr_size=30, scale=4))


@pytest.fixture(scope="module")
def gan_exports(tmp_path_factory, psnr_run, vgg_weights, elpv_small):
    tmp_path = tmp_path_factory.mktemp("srgan_gan")
    train = tiny_train_config(tmp_path, pretext="srgan", export_name=None, batch_size=16, epochs=1, steps_per_epoch=2)
    result = trainer.pretrain(train, DATA, TINY_BACKBONE, _gan_config(psnr_run[1], vgg_weights), splits=elpv_small)
    return result.exports


def test_both_encoders_reload_with_tensorflow_alone(gan_exports):
    assert set(gan_exports) == {"srgan_generator_elpv", "srgan_discriminator_elpv"}
    script = (
        "import sys, numpy as np, tensorflow as tf\n"
        "for path in sys.argv[1:]:\n"
        "    f = tf.saved_model.load(path).signatures['serving_default']\n"
        "    out = f(images=tf.constant(np.full((2, 50, 70, 1), 128, np.uint8)))['embedding']\n"
        "    print(out.shape[1], bool(np.isfinite(out.numpy()).all()))\n"
        "print('fgssl_tf' in sys.modules)\n"
    )
    paths = [gan_exports["srgan_generator_elpv"], gan_exports["srgan_discriminator_elpv"]]
    out = subprocess.run(
        [sys.executable, "-c", script, *paths],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": ""},
    )
    lines = out.stdout.split()
    assert lines == ["16", "True", "64", "True", "False"], out.stdout  # generator width; discriminator 8 x width
    for path in paths:
        with open(os.path.join(path, "fgssl_metadata.json")) as f:
            metadata = json.load(f)
        assert metadata["image_size"] == 32 and metadata["pretext"] == "srgan" and metadata["backbone"] is None


def test_paper_variants_train_their_heads_and_keep_the_encoder_frozen(gan_exports, elpv_small):
    version = gan_exports["srgan_generator_elpv"]
    full_trunk = srgan.downstream_network(version, "generator", 4)[0]
    fewer, _ = srgan.downstream_network(version, "generator", 4, keep_residual_blocks=1)
    x = preprocess(tf.constant(elpv_small.test_images[:4]), 32)
    assert fewer(x).shape == full_trunk(x).shape == (4, 16)
    assert not np.allclose(fewer(x), full_trunk(x))  # a block fewer is a different encoder
    assert not any(layer.name.startswith("block2_") for layer in fewer.layers)
    with pytest.raises(FgsslError, match="has 2 residual blocks"):
        srgan.downstream_network(version, "generator", 4, keep_residual_blocks=3)

    train = (elpv_small.train_images[:64], elpv_small.train_labels[:64])
    val = (elpv_small.val_images[:32], elpv_small.val_labels[:32])
    for part, options in (
        ("generator", {"keep_residual_blocks": 1}),
        ("discriminator", {"remove_conv_blocks": 1}),
        ("discriminator", {}),
    ):
        encoder, head = srgan.downstream_network(
            gan_exports[f"srgan_{part}_elpv"], part, 4, "paper", dropout=0.5, **options
        )
        frozen = [w.numpy().copy() for w in encoder.weights]
        head.build(encoder.output_shape)
        pretrained = [layer.name for layer in head.layers if layer.weights and not layer.trainable]
        initial = {w.path: w.numpy().copy() for w in head.trainable_weights}
        protocols.finetune(
            encoder,
            lambda b: preprocess(b, 32),
            train,
            val,
            val,
            4,
            0,
            "accuracy",
            1,
            1e-3,
            32,
            "none",
            head,
            "inverse",
        )
        assert any(layer.name == "head_dropout" and layer.rate == 0.5 for layer in head.layers)
        for before, w in zip(frozen, encoder.weights):
            np.testing.assert_array_equal(before, w.numpy())
        assert all(not np.array_equal(initial[w.path], w.numpy()) for w in head.trainable_weights), (
            part
        )  # bugs S4/S5 of docs/paper_fidelity.md: heads train
        # Remove no conv block: the discriminator's own pretrained dense layer stays, frozen (as the paper).
        assert pretrained == (["head_dense"] if part == "discriminator" and not options else [])


def test_evaluation_tool_runs_a_variant_and_names_it(gan_exports, elpv_small, tmp_path):
    version = gan_exports["srgan_generator_elpv"]
    config = EvalConfig(
        encoder=version,
        protocol="finetune",
        head="paper",
        head_dropout=0.5,
        keep_residual_blocks=1,
        trainable_from="none",
        class_weights="inverse",
        finetune_epochs=1,
        batch_size=32,
        output_dir=str(tmp_path / "r"),
    )
    report = evaluate(config, splits=elpv_small)
    assert report["protocol"] == "finetune-from-none-keep1blocks-paperhead-dropout0.5-inverseweights"
    assert 0.0 <= report["balanced_accuracy"] <= 1.0
    linear = evaluate(
        EvalConfig(
            encoder=gan_exports["srgan_discriminator_elpv"], remove_conv_blocks=2, output_dir=str(tmp_path / "l")
        ),
        splits=elpv_small,
    )
    assert linear["protocol"] == "linear-minus2convs"
    assert linear["accuracy"] > 0.0
    with pytest.raises(FgsslError, match="only applies to --protocol=finetune"):
        evaluate(EvalConfig(encoder=version, head="paper"), splits=elpv_small)
    with pytest.raises(FgsslError, match="applies to SRGAN discriminator"):
        evaluate(EvalConfig(encoder=version, remove_conv_blocks=1), splits=elpv_small)


def _one_gan_step(strategy, images):
    """One gan-stage step (critic, then generator) with plain SGD on both: Adam's first
    step divides each gradient by its own magnitude and so amplifies float rounding."""
    config = dataclasses.replace(TINY, stage="gan")
    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = srgan.build(config, learning_rate=0.05, seed=0)
        model.discriminator_optimizer = keras.optimizers.SGD(0.05)
        model.compile(optimizer=keras.optimizers.SGD(0.05))
        model.optimizer.build(model.generator.trainable_variables)
        model.discriminator_optimizer.build(model.discriminator.trainable_variables)
    # One batch: tracing the step (twice, on 2 replicas) costs more than running it; eagerly, each replica
    # still runs in MirroredStrategy's replica context (synchronized batch norm, global batch).
    model.run_eagerly = True
    weights = model.generator.trainable_weights + model.discriminator.trainable_weights
    initial = [v.numpy() for v in weights]
    dataset = tf.data.Dataset.from_tensor_slices((images, np.zeros(len(images), np.int64))).batch(len(images))
    logs = model.fit(dataset, epochs=1, verbose=0).history
    return logs, [v.numpy() - w for v, w in zip(weights, initial)]


def test_two_replicas_train_like_one(elpv_small):
    """Generator and critic losses, and both networks' updates, equal on 2 replicas and 1
    (batch norm synchronized: the default with several replicas; crops drawn for the global batch)."""
    from fgssl_tf.distribute import make_strategy

    images = elpv_small.train_images[:16]
    one, updates_one = _one_gan_step(make_strategy("one_device"), images)
    two, updates_two = _one_gan_step(make_strategy("mirrored"), images)
    for name in ("loss", "pixel_loss", "adversarial_loss", "d_loss"):
        assert two[name][0] == pytest.approx(one[name][0], rel=1e-5), name
    assert (
        two["d_real_accuracy"][0] == one["d_real_accuracy"][0]
        and two["d_fake_accuracy"][0] == one["d_fake_accuracy"][0]
    )
    assert sum(np.abs(u).max() > 0 for u in updates_one) == len(updates_one)  # every weight of both networks moved
    for a, b in zip(updates_one, updates_two):
        assert np.abs(b - a).max() <= 1e-3 * np.abs(a).max() + 1e-9
