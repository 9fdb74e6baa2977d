"""Evaluation work shared instead of repeated (fgssl_tf/evaluation/cache.py): the same reports
as a run that recomputes everything, and the frozen encoder run once per split."""

import dataclasses
import os

import numpy as np
import pytest
from conftest import IMAGE_SIZE, TINY_BACKBONE

from fgssl_tf import evaluation
from fgssl_tf import export as export_lib
from fgssl_tf.evaluation import EvalConfig, cache, evaluate

SEEDS = (0, 1)
RUNS = [(protocol, fraction) for protocol in ("linear", "knn") for fraction in (1.0, 0.1)]  # as tools/reproduce.py
FIGURES = ("per_seed", "accuracy", "balanced_accuracy", "macro_f1", "confusion_matrix", "per_class_recall")


def _subjects(encoder_path):
    return {
        "export": dict(encoder=encoder_path),
        "random_init": dict(baseline="random_init", image_size=IMAGE_SIZE, backbone=TINY_BACKBONE),
    }


def _config(subject: dict, protocol: str, fraction: float, output_dir) -> EvalConfig:
    return EvalConfig(
        **subject, protocol=protocol, label_fraction=fraction, seeds=SEEDS, batch_size=64, output_dir=str(output_dir)
    )


@pytest.fixture(scope="module")
def shared_run(trained_encoder, elpv_small, tmp_path_factory):
    """The four frozen-encoder evaluations of one encoder in a row, the cache on, counting encoder runs."""
    _, path = trained_encoder
    out = tmp_path_factory.mktemp("shared")
    calls = {"export": [], "random_init": []}
    embed, keras_features = export_lib.ServingEncoder.embed, evaluation._keras_features

    def counted_embed(self, images, *args):
        calls["export"].append(len(images))
        return embed(self, images, *args)

    def counted_keras_features(encoder, images, *args):
        calls["random_init"].append(len(images))
        return keras_features(encoder, images, *args)

    export_lib.ServingEncoder.embed, evaluation._keras_features = counted_embed, counted_keras_features
    try:
        cache.clear()
        reports = {
            (name, protocol, fraction): evaluate(
                _config(subject, protocol, fraction, out / f"{name}-{protocol}-{fraction}"), splits=elpv_small
            )
            for name, subject in _subjects(path).items()
            for protocol, fraction in RUNS
        }
        # A re-export in place (new files, new times) must not reuse the old embeddings.
        for name in os.listdir(path):
            if os.path.isfile(os.path.join(path, name)):
                os.utime(os.path.join(path, name), ns=(1, 1))
        evaluate(_config(_subjects(path)["export"], "knn", 1.0, out / "after-reexport"), splits=elpv_small)
    finally:
        export_lib.ServingEncoder.embed, evaluation._keras_features = embed, keras_features
    return reports, calls


def test_the_frozen_encoder_runs_once_per_split_for_every_protocol_fraction_and_seed(shared_run, elpv_small):
    _, calls = shared_run
    sizes = [len(elpv_small.split(name)[1]) for name in ("train", "val", "test")]
    assert calls["random_init"] == sizes  # 4 evaluations x 2 seeds: one pass over each split
    assert calls["export"] == sizes + sizes  # and once more after the export changed on disk


def test_shared_embeddings_and_fits_give_the_reports_of_a_run_without_them(
    shared_run, trained_encoder, elpv_small, tmp_path
):
    reports, _ = shared_run
    _, path = trained_encoder
    with cache.disabled():
        for name, subject in _subjects(path).items():
            for protocol, fraction in RUNS:
                fresh = evaluate(
                    _config(subject, protocol, fraction, tmp_path / f"{name}-{protocol}-{fraction}"), splits=elpv_small
                )
                shared = reports[(name, protocol, fraction)]
                for figure in FIGURES:
                    assert shared[figure] == fresh[figure], (name, protocol, fraction, figure)
    full_labels = reports[("random_init", "linear", 1.0)]["per_seed"]
    assert full_labels[0]["train_images"] == full_labels[1]["train_images"] == len(elpv_small.train_labels)
    subsets = reports[("random_init", "linear", 0.1)]["per_seed"]
    assert subsets[0]["train_images"] < len(elpv_small.train_labels)  # seeds of their own label subsets


def test_a_changed_embedding_is_refused_not_shared():
    cache.clear()
    images = np.zeros([2, 4, 4, 3], np.uint8)
    features = cache.embeddings(("key",), images, lambda x: np.ones([len(x), 3], np.float32))
    with pytest.raises(ValueError):
        features[0, 0] = 2.0  # read-only: a caller cannot change what later reports read
    again = cache.embeddings(("key",), images.copy(), lambda x: pytest.fail("recomputed"))
    assert again is features
    other = cache.embeddings(("key",), images + 1, lambda x: np.zeros([len(x), 3], np.float32))
    assert other[0, 0] == 0.0  # other pixels, other entry
    cache.clear()


def test_finetuning_every_seed_in_one_compiled_model_gives_the_reports_of_fresh_models(elpv_small, tmp_path):
    import keras

    from fgssl_tf.evaluation import CLASSIFIER_FILE

    config = EvalConfig(
        baseline="random_init",
        image_size=IMAGE_SIZE,
        backbone=TINY_BACKBONE,
        protocol="finetune",
        seeds=(0, 1),  # each seed its own random encoder, head, flips and batch order
        finetune_epochs=1,
        batch_size=64,
    )
    shared = evaluate(dataclasses.replace(config, output_dir=str(tmp_path / "shared")), splits=elpv_small)
    with cache.disabled():
        fresh = evaluate(dataclasses.replace(config, output_dir=str(tmp_path / "fresh")), splits=elpv_small)
    for figure in FIGURES:
        assert shared[figure] == fresh[figure], figure
    # The first seed's classifier keeps that seed's best weights, not the last seed's.
    weights = [
        keras.saving.load_model(os.path.join(report["output_dir"], CLASSIFIER_FILE)).get_weights()
        for report in (shared, fresh)
    ]
    assert len(weights[0]) == len(weights[1])
    assert all(np.array_equal(a, b) for a, b in zip(*weights))
