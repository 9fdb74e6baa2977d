"""Monitoring during pretraining: collapse signals that tell collapse from spread, and a
monitor that runs before training and after epochs, logged where users look."""

import json
import os

import numpy as np

from fgssl_tf.monitor import embedding_stats, knn_accuracy


def test_collapse_signals_separate_collapse_from_spread():
    rng = np.random.RandomState(0)
    spread = embedding_stats(rng.normal(size=(500, 64)))
    collapsed = embedding_stats(np.tile(rng.normal(size=(1, 64)), (500, 1)) + 1e-6 * rng.normal(size=(500, 64)))
    one_direction = embedding_stats(rng.normal(size=(500, 1)) * rng.normal(size=(1, 64)))
    assert 0.9 < spread["embedding_std"] < 1.1 and spread["effective_rank"] > 0.8 * 64
    assert collapsed["embedding_std"] < 1e-3 and collapsed["effective_rank"] < 1.5
    assert one_direction["effective_rank"] < 1.5  # dimensional collapse, though the rows vary


def test_knn_accuracy_on_separable_and_random_features():
    rng = np.random.RandomState(0)
    labels = rng.randint(0, 3, 300)
    separable = np.eye(3)[labels] + 0.05 * rng.normal(size=(300, 3))
    assert knn_accuracy(separable[:200], labels[:200], separable[200:], labels[200:], 20) == 1.0
    noise = rng.normal(size=(300, 3))
    assert knn_accuracy(noise[:200], labels[:200], noise[200:], labels[200:], 20) < 0.6


def test_monitor_runs_before_training_and_after_each_epoch(trained_encoder):
    result, version = trained_encoder  # pretrained with the monitor on, every epoch
    for name in (
        "monitor_knn_accuracy",
        "monitor_linear_probe_accuracy",
        "monitor_embedding_std",
        "monitor_effective_rank",
        "monitor_seconds",
    ):
        values = result.history[name]
        assert len(values) == 2 and np.all(np.isfinite(values)), (name, values)
    for name in ("monitor_knn_accuracy", "monitor_linear_probe_accuracy"):
        assert all(0.0 <= v <= 1.0 for v in result.history[name])
    assert all(v > 1.0 for v in result.history["monitor_effective_rank"])
    # TensorBoard holds the random-init reference (step 0) and each epoch.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with open(os.path.join(version, "fgssl_metadata.json")) as f:
        model_dir = json.load(f)["run_config"]["train"]["model_dir"]
    events = EventAccumulator(os.path.join(model_dir, "logs", "monitor"), size_guidance={"tensors": 0})
    events.Reload()
    assert [e.step for e in events.Tensors("knn_accuracy")] == [0, 1, 2]
    # monitor.json beside the logs: one entry a reading, with the step and the training time so far.
    with open(os.path.join(model_dir, "monitor.json")) as f:
        readings = json.load(f)
    assert [r["epoch"] for r in readings] == [0, 1, 2] and [r["step"] for r in readings] == [0, 6, 12]
    assert readings[0]["train_seconds"] == 0 < readings[1]["train_seconds"] < readings[2]["train_seconds"]
    assert all(0.0 <= r["knn_balanced_accuracy"] <= 1.0 for r in readings)


def test_compare_runs_tabulates_the_monitor_of_each_run(trained_encoder, tmp_path, run_tool):
    """tools/compare_runs.py: one row per run, the settings it changes, steps and the monitor's readings."""
    import shutil
    import subprocess
    import sys

    from conftest import REPO

    result, version = trained_encoder
    with open(os.path.join(version, "fgssl_metadata.json")) as f:
        model_dir = json.load(f)["run_config"]["train"]["model_dir"]
    variant = tmp_path / "hotter"
    variant.mkdir()
    shutil.copy(os.path.join(model_dir, "monitor.json"), variant / "monitor.json")
    with open(os.path.join(model_dir, "run_config.json")) as f:
        run_config = json.load(f)
    run_config["pretext_config"]["temperature"] = 0.2
    (variant / "run_config.json").write_text(json.dumps(run_config))
    # A process of its own, once: absl.app around cli.run(main, FLAGS), as users run every tool (the tool does not
    # import TensorFlow, so this costs under a second); the error case below runs in this process.
    tool = os.path.join(REPO, "tools", "compare_runs.py")
    command = [sys.executable, tool, model_dir, str(variant), f"--markdown={tmp_path / 'table.md'}"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line for line in (tmp_path / "table.md").read_text().splitlines() if line.startswith("| ")][1:]
    assert len(rows) == 2 and "(reference)" in rows[0] and "temperature=0.2" in rows[1]
    with open(os.path.join(model_dir, "monitor.json")) as f:
        last = json.load(f)[-1]
    assert f"→ {last['knn_balanced_accuracy']:.3f}" in rows[0] and f"| {last['step']} |" in rows[0]
    missing = run_tool("compare_runs", [str(tmp_path)], cwd=tmp_path)
    assert missing.returncode == 2 and missing.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "monitor.json is missing" in missing.stderr
