"""The evaluation tool: protocols, seeds, reports, baselines and bad flags."""

import dataclasses
import json
import os

import numpy as np
import pytest
from conftest import TINY_BACKBONE

from fgssl_tf.config import BackboneConfig
from fgssl_tf.errors import FgsslError
from fgssl_tf.evaluation import EvalConfig, evaluate, markdown_report
from fgssl_tf.evaluation.metrics import classification_metrics

REPORT_KEYS = {"accuracy", "balanced_accuracy", "macro_f1", "per_class_recall", "confusion_matrix", "per_seed"}


def test_linear_probe_cli_beats_majority_and_reports_seeds(trained_encoder, tmp_path, run_tool):
    _, path = trained_encoder
    out = tmp_path / "linear"
    run = run_tool(
        "evaluate",
        [
            f"--encoder={path}",
            "--dataset=elpv",
            "--protocol=linear",
            "--seeds=0,1",
            "--label_fraction=0.5",
            f"--output_dir={out}",
        ],
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert REPORT_KEYS <= set(report)
    assert report["accuracy"] > report["majority_class_rate"] + 0.02
    assert [s["seed"] for s in report["per_seed"]] == [0, 1]
    per_seed = [s["accuracy"] for s in report["per_seed"]]
    assert report["accuracy"] == pytest.approx(np.mean(per_seed))
    assert report["accuracy_std"] == pytest.approx(np.std(per_seed))
    assert np.sum(report["confusion_matrix"]) == 2 * report["split_sizes"]["test"]
    assert "| accuracy |" in (out / "report.md").read_text()


def test_knn_and_default_output_dir_beside_the_encoder(trained_encoder, elpv_small):
    _, path = trained_encoder
    report = evaluate(EvalConfig(encoder=path, protocol="knn"), splits=elpv_small)
    assert report["output_dir"].startswith(os.path.join(os.path.dirname(path), "evaluations"))
    assert report["per_seed"][0]["selected"]["k"] in (1, 5, 10, 20, 50)
    assert 0.0 <= report["balanced_accuracy"] <= 1.0


def test_finetune_trains_the_encoder_and_keeps_the_best_val_epoch(trained_encoder, elpv_small, monkeypatch):
    from fgssl_tf import export
    from fgssl_tf.evaluation import protocols

    _, path = trained_encoder
    encoder = export.load_keras_encoder(path)
    before = [w.numpy().copy() for w in encoder.trainable_weights]
    val_scores = []
    original = protocols._KeepBest.on_epoch_end

    def record(self, epoch, logs=None):
        original(self, epoch, logs)
        val_scores.append(logs["val_accuracy"])

    monkeypatch.setattr(protocols._KeepBest, "on_epoch_end", record)
    result = protocols.finetune(
        encoder,
        lambda x: export.preprocess(x, 32),
        elpv_small.split("train"),
        elpv_small.split("val"),
        elpv_small.split("test"),
        4,
        seed=0,
        metric="accuracy",
        epochs=3,
        learning_rate=1e-3,
        batch_size=64,
    )
    changed = [not np.allclose(a, w.numpy()) for a, w in zip(before, encoder.trainable_weights)]
    assert all(changed)  # every encoder weight was trained, not only the head
    assert result.val_score == max(val_scores)
    assert result.selected["epoch"] == int(np.argmax(val_scores)) + 1
    assert result.test_predictions.shape == (len(elpv_small.test_labels),)


def test_finetune_from_block4_trains_only_block4_and_the_head(elpv_small):
    import keras

    from fgssl_tf import export
    from fgssl_tf.evaluation import protocols
    from fgssl_tf.models import build_resnet

    encoder = build_resnet(TINY_BACKBONE, 32)
    assert protocols.encoder_stages(encoder) == ["stem", "block1", "block2", "block3", "block4"]
    before = {w.path: w.numpy().copy() for w in encoder.weights}
    heads = []
    original_fit = keras.Model.fit

    def fit(self, *args, **kwargs):  # the head is the model's last layer
        heads.append((self.layers[-1], self.layers[-1].get_weights()[0].copy()))
        return original_fit(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(keras.Model, "fit", fit)
        protocols.finetune(
            encoder,
            lambda x: export.preprocess(x, 32),
            elpv_small.split("train"),
            elpv_small.split("val"),
            elpv_small.split("test"),
            4,
            seed=0,
            metric="accuracy",
            epochs=1,
            learning_rate=1e-3,
            batch_size=64,
            trainable_from="block4",
        )
    for weight in encoder.weights:
        moved = not np.array_equal(before[weight.path], weight.numpy())
        # Frozen stages keep even their BN statistics (inference mode); block4 trains.
        assert moved == weight.path.startswith("block4"), weight.path
    head, head_before = heads[0]
    assert not np.allclose(head.get_weights()[0], head_before)  # the paper's frozen-head bug is not here
    with pytest.raises(FgsslError, match="choose all, none or one of stem, block1"):
        protocols.freeze_before(encoder, "layer4")


def test_finetune_report(trained_encoder, elpv_small, tmp_path):
    """With the strong fine-tuning augmentation (the default flip: the other fine-tuning tests): named in the report."""
    _, path = trained_encoder
    config = EvalConfig(
        encoder=path, protocol="finetune", finetune_epochs=1, finetune_augment="strong", output_dir=str(tmp_path)
    )
    report = evaluate(config, splits=elpv_small)
    assert REPORT_KEYS <= set(report) and report["protocol"] == "finetune-strongaug"
    assert report["config"]["finetune_augment"] == "strong"


def test_strong_finetune_augmentation_changes_training_images_only_and_stays_in_range():
    import tensorflow as tf

    from fgssl_tf.evaluation import protocols

    images = tf.random.stateless_uniform([8, 32, 32, 3], seed=[0, 1])

    def augmented(seed, training):
        x = images
        for layer in protocols.finetune_augmentation("strong", seed):
            x = layer(x, training=training)
        return x.numpy()

    assert np.array_equal(augmented(0, training=False), images.numpy())
    train = augmented(0, training=True)
    assert np.abs(train - images.numpy()).mean() > 0.05 and 0.0 <= train.min() and train.max() <= 1.0
    assert len(protocols.finetune_augmentation("flip", 0)) == 1
    with pytest.raises(FgsslError, match="unknown --finetune_augment='autoaugment'"):
        protocols.finetune_augmentation("autoaugment", 0)
    with pytest.raises(FgsslError, match="--finetune_augment=strong only applies to --protocol=finetune"):
        evaluate(EvalConfig(encoder="x", protocol="linear", finetune_augment="strong"))


def test_baselines(elpv_small, tmp_path):
    random_init = evaluate(
        EvalConfig(
            baseline="random_init",
            protocol="linear",
            image_size=32,
            backbone=TINY_BACKBONE,
            output_dir=str(tmp_path / "r"),
        ),
        splits=elpv_small,
    )
    assert random_init["encoder_metadata"]["backbone"]["width"] == 8
    supervised = evaluate(
        EvalConfig(
            baseline="supervised",
            protocol="finetune",
            image_size=32,
            backbone=TINY_BACKBONE,
            finetune_epochs=2,
            finetune_learning_rate=1e-3,
            output_dir=str(tmp_path / "s"),
        ),
        splits=elpv_small,
    )
    assert REPORT_KEYS <= set(supervised)


def test_random_init_of_an_exports_own_architecture(trained_encoder, elpv_small, tmp_path):
    """--architecture_from: the export's network, every weight drawn afresh from the seed; its report sits
    beside the export's own, and from scratch (supervised) starts from the same kind of network."""
    import keras

    from fgssl_tf import export as export_lib
    from fgssl_tf.evaluation import _random_encoder
    from fgssl_tf.evaluation.compare import subject

    _, path = trained_encoder
    config = EvalConfig(baseline="random_init", architecture_from=path, protocol="knn")
    report = evaluate(config, splits=elpv_small)
    assert report["output_dir"] == os.path.join(
        os.path.dirname(path), "evaluations", "v1-random_init-elpv-knn-labels100-seeds0"
    )
    assert report["encoder_metadata"]["architecture_from"] == path and report["image_size"] == 32
    assert "the architecture of" in open(os.path.join(report["output_dir"], "report.md")).read()

    trained = export_lib.load_keras_encoder(path)
    fresh, same, other = (_random_encoder(config, 32, seed) for seed in (0, 0, 1))
    assert [v.shape for v in fresh.weights] == [v.shape for v in trained.weights]
    kernels = [i for i, v in enumerate(trained.weights) if "kernel" in v.path]
    assert len(kernels) > 10
    for i in kernels:
        assert not np.allclose(fresh.weights[i].numpy(), trained.weights[i].numpy()), trained.weights[i].path
        np.testing.assert_array_equal(fresh.weights[i].numpy(), same.weights[i].numpy())
        assert not np.array_equal(fresh.weights[i].numpy(), other.weights[i].numpy())
    images = keras.ops.convert_to_tensor(elpv_small.test_images[:8].astype("float32") / 255.0)
    assert not np.allclose(fresh(images, training=False), trained(images, training=False), atol=1e-3)

    scratch = evaluate(
        EvalConfig(
            baseline="supervised",
            architecture_from=path,
            protocol="finetune",
            finetune_epochs=1,
            output_dir=str(tmp_path / "scratch"),
        ),
        splits=elpv_small,
    )
    assert scratch["encoder_metadata"]["architecture"]["pretext"] == "simclr" and REPORT_KEYS <= set(scratch)
    name = scratch["encoder_metadata"]["architecture"]["name"]  # tools/compare_evaluations.py names both by it
    assert (subject(report), subject(scratch)) == (f"{name}'s network, random init", f"{name}'s network, from scratch")


def test_lpft_starts_from_the_frozen_encoders_linear_probe_and_can_keep_it(trained_encoder, elpv_small, tmp_path):
    """--finetune_head_init=linear_probe: before any step the classifier is the linear probe of the frozen
    encoder on the same labels (epoch 0, a candidate for selection on val); fine-tuning starts from there."""
    import tensorflow as tf

    from fgssl_tf import export as export_lib
    from fgssl_tf.data import preprocess
    from fgssl_tf.evaluation import protocols

    _, path = trained_encoder
    encoder = export_lib.load_keras_encoder(path)
    data = elpv_small

    def prepare(x):
        return preprocess(x, 32)

    splits = [(data.train_images, data.train_labels), (data.val_images, data.val_labels)]
    splits.append((data.test_images, data.test_labels))
    kept = protocols.finetune(encoder, prepare, *splits, 4, 0, "accuracy", 0, 1e-4, 64, head_init="linear_probe")
    features = [
        encoder.predict(tf.data.Dataset.from_tensor_slices(x).batch(64).map(prepare), verbose=0) for x, _ in splits
    ]
    probe = protocols.linear_probe(*[(f, y) for f, (_, y) in zip(features, splits)], 4, 0, "accuracy")
    assert kept.selected == {"epoch": 0}
    assert np.mean(kept.test_predictions == probe.test_predictions) > 0.99  # float32 folding against sklearn's float64
    assert kept.val_score == pytest.approx(probe.val_score, abs=2 / len(data.val_labels))

    report = evaluate(
        EvalConfig(
            encoder=path, protocol="finetune", finetune_epochs=2, finetune_head_init="linear_probe", seeds=(0, 1)
        ),
        splits=elpv_small,
    )
    assert report["output_dir"].endswith("-finetune-lpft-labels100")
    # Each seed (the second through the first's compiled model) starts from the probe, which stays a candidate.
    assert all(run["val_accuracy"] >= probe.val_score for run in report["per_seed"])


def test_a_probe_of_two_classes_becomes_a_head_over_all_four():
    """A label subset without some classes: the binary probe is widened to every class, never predicting the
    missing ones, and the head's argmax equals the probe's prediction."""
    import keras
    import tensorflow as tf

    from fgssl_tf.evaluation import protocols

    rng = np.random.RandomState(0)
    images = rng.randint(0, 256, size=(120, 4, 4, 3)).astype("uint8")
    labels = np.where(images[:, 0, 0, 0] > 127, 2, 0)  # classes 0 and 2 of 4, told apart by one pixel
    encoder = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Flatten()])
    head = keras.layers.Dense(4)
    head.build((None, 48))

    def prepare(x):
        return tf.cast(x, tf.float32) / 255.0

    train, val = (images[:80], labels[:80]), (images[80:], labels[80:])
    protocols.fit_head_on_frozen_features(head, encoder, prepare, train, val, 4, 0, "accuracy", 16)
    features = images.reshape(len(images), -1).astype("float32") / 255.0
    probe = protocols.linear_probe(
        (features[:80], train[1]), (features[80:], val[1]), (features, labels), 4, 0, "accuracy"
    )
    kernel, bias = head.get_weights()
    predicted = np.argmax(features @ kernel + bias, axis=1)
    np.testing.assert_array_equal(predicted, probe.test_predictions)
    assert set(predicted) == {0, 2} and np.mean(predicted == labels) > 0.75  # chance: 0.5


@pytest.mark.parametrize("protocol", ["linear", "knn"])
@pytest.mark.parametrize("classes", [(0, 1), (2, 0)])
def test_inverse_class_weights_lift_a_rare_class_on_the_frozen_protocols(protocol, classes):
    """Two overlapping classes, 9 to 1, apart in direction (kNN reads cosines): unweighted, the rare class is
    mostly out-voted; weighted by N / (K n_c), its recall and the balanced accuracy rise, and the common
    class's recall falls (the trade it makes)."""
    from fgssl_tf.evaluation import protocols

    rng = np.random.RandomState(0)

    def draw(n_common, n_rare):
        angles = np.concatenate([rng.normal(0.0, 0.5, n_common), rng.normal(0.5, 0.5, n_rare)])
        features = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype("float32")
        return features, np.repeat(classes, [n_common, n_rare])  # two of 4 classes

    train, val, test = draw(900, 100), draw(450, 50), draw(900, 100)
    run = protocols.linear_probe if protocol == "linear" else protocols.knn
    common, rare = classes
    recalls = {}
    for weights in ("none", "inverse"):
        result = run(train, val, test, 4, 0, "balanced_accuracy", weights)
        assert set(result.test_predictions) <= set(classes)
        recalls[weights] = classification_metrics(test[1], result.test_predictions, 4)["per_class_recall"]
    assert recalls["inverse"][rare] > recalls["none"][rare] + 0.1
    assert recalls["inverse"][common] < recalls["none"][common]
    assert recalls["inverse"][common] + recalls["inverse"][rare] > recalls["none"][common] + recalls["none"][rare]


def test_weights_and_selection_name_the_protocol_and_its_folder():
    """Reports read out or selected differently never share a folder (one would replace the other) or a row."""
    from fgssl_tf.evaluation import default_output_dir, protocol_label

    plain = EvalConfig(encoder="/e/1", protocol="knn")
    balanced = EvalConfig(encoder="/e/1", protocol="knn", class_weights="inverse", selection_metric="balanced_accuracy")
    assert protocol_label(plain) == "knn"
    assert protocol_label(balanced) == "knn-inverseweights-select_balanced_accuracy"
    # A baseline is another network for another width, stem, pooling or seed.
    baseline = EvalConfig(baseline="random_init")
    folders = {
        default_output_dir(
            dataclasses.replace(baseline, backbone=BackboneConfig(width=w, small_stem=stem), seeds=s, pool_grid=g), 64
        )
        for w in (16, 32)
        for stem in (False, True)
        for s in ((0,), (1,), (0, 1))
        for g in (1, 2)
    }
    assert len(folders) == 24
    assert default_output_dir(EvalConfig(baseline="random_init", backbone=BackboneConfig(width=16)), 128) == (
        "reports/random_init-resnet18-w16-128px-elpv-linear-labels100-seeds0"
    )
    assert default_output_dir(dataclasses.replace(baseline, seeds=tuple(range(9)), init_seed=2), 64).endswith(
        "-seeds0to8-init2"
    )


def test_class_weights_reach_the_frozen_protocols_through_evaluate(elpv_small, tmp_path):
    """evaluate() hands --class_weights to the linear probe and kNN, and the report names it."""
    reports = {
        (protocol, weights): evaluate(
            EvalConfig(
                baseline="random_init",
                image_size=32,
                backbone=TINY_BACKBONE,
                protocol=protocol,
                class_weights=weights,
                selection_metric="balanced_accuracy",
                output_dir=str(tmp_path / f"{protocol}-{weights}"),
            ),
            splits=elpv_small,
        )
        for protocol in ("linear", "knn")
        for weights in ("none", "inverse")
    }
    for protocol in ("linear", "knn"):
        plain, weighted = reports[(protocol, "none")], reports[(protocol, "inverse")]
        assert weighted["protocol"] == f"{protocol}-inverseweights-select_balanced_accuracy"
        assert weighted["confusion_matrix"] != plain["confusion_matrix"]


def test_architecture_from_needs_a_baseline_and_the_exports_own_image_size(trained_encoder):
    _, path = trained_encoder
    with pytest.raises(FgsslError, match="--architecture_from gives a baseline its architecture"):
        evaluate(EvalConfig(encoder=path, architecture_from=path))
    with pytest.raises(FgsslError, match="--image_size=64 differs from the 32 px .*leave --image_size out"):
        evaluate(EvalConfig(baseline="random_init", architecture_from=path, image_size=64))
    with pytest.raises(FgsslError, match="--pool_grid shapes a ResNet baseline"):
        evaluate(EvalConfig(baseline="random_init", architecture_from=path, pool_grid=2))
    with pytest.raises(FgsslError, match="saved_model.pb"):
        evaluate(EvalConfig(baseline="random_init", architecture_from=os.path.dirname(path) + "-missing"))


@pytest.mark.parametrize(
    "config,message",
    [
        (EvalConfig(encoder="x", protocol="svm"), "unknown --protocol"),
        (EvalConfig(), "exactly one of"),
        (EvalConfig(encoder="x", baseline="random_init"), "exactly one of"),
        (EvalConfig(baseline="supervised", protocol="linear", image_size=32), "finetune"),
        (EvalConfig(baseline="random_init"), "--image_size"),
        (EvalConfig(encoder="/nonexistent/1"), "saved_model.pb"),
        (EvalConfig(encoder="x", finetune_head_init="linear_probe"), "only applies to --protocol=finetune"),
        (EvalConfig(encoder="x", protocol="finetune", finetune_head_init="svm"), "unknown --finetune_head_init"),
        (
            EvalConfig(encoder="x", protocol="finetune", finetune_head_init="linear_probe", head="paper"),
            "fits a linear head: use it with --head=linear",
        ),
    ],
)
def test_bad_settings_fail_clearly(config, message):
    with pytest.raises(FgsslError, match=message):
        evaluate(config)


def test_metrics_on_an_imbalanced_example():
    y_true = np.array([0, 0, 0, 0, 1, 1, 2])
    y_pred = np.array([0, 0, 0, 0, 0, 1, 0])
    scores = classification_metrics(y_true, y_pred, 3)
    assert scores["accuracy"] == pytest.approx(5 / 7)
    assert scores["balanced_accuracy"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert scores["per_class_recall"] == pytest.approx([1.0, 0.5, 0.0])
    assert scores["confusion_matrix"][0] == [4, 0, 0]
    report = {
        "encoder": "e",
        "dataset": "d",
        "split_fingerprint": "f",
        "split_sizes": {},
        "image_size": 8,
        "protocol": "linear",
        "label_fraction": 1.0,
        "seeds": [0],
        "selection": "s",
        "majority_class_rate": 0.5,
        "class_names": ["a", "b", "c"],
        **{k: 0.1 for k in ("accuracy", "balanced_accuracy", "macro_f1")},
        **{f"{k}_std": 0.0 for k in ("accuracy", "balanced_accuracy", "macro_f1")},
        **scores,
    }
    assert "| a | 4 | 0 | 0 |" in markdown_report(report)
