"""tf.distribute across processes: two workers on localhost train like one process."""

import json
import os
import re
import socket
import subprocess
import sys

import pytest
from conftest import REPO

SMOKE = os.path.join(REPO, "flags", "smoke.cfg")


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _run_workers(cwd, args, timeout=480):
    """`python -m fgssl_tf.train ARGS --strategy=multiworker` as two workers; their (return code, output)."""
    cluster = {"worker": [f"localhost:{port}" for port in _free_ports(2)]}
    workers = []
    for index in range(2):
        env = {
            **os.environ,
            "PYTHONPATH": REPO,
            "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
        }
        workers.append(
            subprocess.Popen(
                [sys.executable, "-m", "fgssl_tf.train", *args, "--strategy=multiworker"],
                cwd=cwd,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    try:
        outputs = [w.communicate(timeout=timeout)[0] for w in workers]
        return [(w.returncode, output) for w, output in zip(workers, outputs)]
    finally:
        for w in workers:
            w.kill()


def _epoch_logs(text, key):
    return [float(v) for v in re.findall(rf" - {key}: ([0-9.]+)", text)]


@pytest.mark.slow
def test_two_workers_train_resume_and_match_one_process(tmp_path, capsys, monkeypatch):
    """Two worker processes (one replica each) against one process mirroring two logical
    CPUs, same flagfile and global batch: the same losses epoch by epoch, before and
    after a resume; the chief alone writes checkpoints, logs and the export."""
    from absl import flags

    from fgssl_tf import cli, train

    common = [f"--flagfile={SMOKE}", "--model_dir=run", "--export_name=mw"]
    workdir = tmp_path / "workers"
    workdir.mkdir()
    first = _run_workers(str(workdir), common)
    for code, output in first:
        assert code == 0, output[-3000:]
    resumed = _run_workers(str(workdir), [*common, "--epochs=3"])
    for code, output in resumed:
        assert code == 0, output[-3000:]
        assert "resumed from run/checkpoints/ckpt-6, saved after epoch 2" in output

    monkeypatch.chdir(tmp_path)
    flags.FLAGS.unparse_flags()
    # --noexport: nothing below reads this process's encoder (the workers' exports are checked).
    cli.run_main(train.main, cli.parse_flags(["train", *common, "--epochs=3", "--strategy=mirrored", "--noexport"]))
    one_process = capsys.readouterr().out
    assert "exported" not in one_process and not (tmp_path / "savedmodels").exists()  # --noexport

    # Epoch 1 (and the validation after it): losses equal to the 4 decimals Keras prints.
    # Epochs 2-3: float rounding in the input gradient of fgssl_tf's Conv2D differs between
    # the two graphs (with Keras' own layer they agree to the last digit), and Adam's first
    # updates, about lr x sign(gradient), turn a rounding-level difference in a near-zero
    # gradient into a full-size step. How far that grows depends on the CPU's kernels: on a
    # 2-core AVX2 machine 2e-4 in loss by epoch 3, on a 2-core AVX-512 machine 7.5e-3 in loss
    # and 2e-2 in val_loss (2026-11-27, also on the commit before any change of that day).
    # The bugs this test is for move them far more: negatives not gathered across workers
    # (ln 31 against ln 63 at the start), a wrong batch per worker, summed gradients.
    # Accuracy (an argmax over near-ties): within 2 of its 192 anchors, 4 once rounding has grown.
    for key, first_epoch_tolerance, later_tolerance in (
        ("loss", 2e-4, 2e-2),
        ("val_loss", 2e-4, 5e-2),
        ("contrastive_accuracy", 2 / 192 + 1e-4, 4 / 192 + 1e-4),
    ):
        expected = _epoch_logs(one_process, key)
        assert len(expected) == 3
        for (_, before), (_, after) in zip(first, resumed):  # each worker logs the cluster's figures
            logged = _epoch_logs(before, key) + _epoch_logs(after, key)
            assert logged[0] == pytest.approx(expected[0], abs=first_epoch_tolerance), key
            assert logged[1:] == pytest.approx(expected[1:], abs=later_tolerance), key

    # The chief (worker 0) alone writes: one export per run, one event file per run.
    assert "exported mw: savedmodels/mw/1" in first[0][1] and "exported mw: savedmodels/mw/2" in resumed[0][1]
    assert "exported" not in first[1][1] + resumed[1][1]
    assert sorted(os.listdir(workdir / "savedmodels" / "mw")) == ["1", "2"]
    checkpoints = os.listdir(workdir / "run" / "checkpoints")
    assert {f"ckpt-{n}.index" for n in (3, 6, 9)} <= set(checkpoints)
    assert len([f for f in os.listdir(workdir / "run" / "logs" / "train") if "tfevents" in f]) == 2


def test_multiworker_without_tf_config_is_one_clear_line(tmp_path, capsys, monkeypatch):
    from absl import flags

    from fgssl_tf import cli, train

    monkeypatch.delenv("TF_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    flags.FLAGS.unparse_flags()
    with pytest.raises(SystemExit) as stopped:
        cli.run_main(train.main, cli.parse_flags(["train", f"--flagfile={SMOKE}", "--strategy=multiworker"]))
    assert stopped.value.code == 2
    assert "--strategy=multiworker needs TF_CONFIG" in capsys.readouterr().err.strip().splitlines()[-1]
