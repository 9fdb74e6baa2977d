"""The commands users type: the smoke run end to end, and one-line errors for bad input."""

import os
import subprocess
import sys

import pytest

from conftest import REPO


def run(args, cwd, timeout=300):
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("pretext", ["simclr", "jigsaw", "srgan"])
def test_smoke_flagfile_trains_checkpoints_and_exports(tmp_path, pretext):
    flagfile = os.path.join(REPO, "flags", "smoke.cfg")
    result = run(["-m", "fgssl_tf.train", f"--flagfile={flagfile}", f"--pretext={pretext}"], cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    name = "smoke_generator" if pretext == "srgan" else "smoke"  # SRGAN's psnr stage exports its generator
    assert f"exported {name}: savedmodels/{name}/1" in result.stdout
    assert os.path.isfile(tmp_path / "savedmodels" / name / "1" / "saved_model.pb")
    checkpoints = os.listdir(tmp_path / "runs" / "smoke" / "checkpoints")
    assert "checkpoint" in checkpoints and any(name.startswith("ckpt-2") for name in checkpoints)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--pretext=rotnet"], "unknown --pretext='rotnet'"),
        (["--dataset=imagenet"], "unknown --dataset='imagenet'"),
        (["--dataset=folder:/no/such/folder"], "does not exist"),
        (["--dataset=folder:EMPTY"], "class folder"),
        (["--jit_compile", "--max_images_per_split=64", "--batch_size=8"], "CropAndResize"),
        (["--pretext=jigsaw", "--image_size=16"], "use --image_size of at least"),
        (["--pretext=jigsaw", "--jigsaw_permutations=paper", "--jigsaw_num_permutations=7"], "must be even"),
        (["--view2_pre_ops=gamma,sepia"], "unknown augmentation 'sepia'"),
        (["--pretext=srgan", "--srgan_hr_size=96"], "--srgan_hr_size=96 is larger than --image_size=64"),
        (["--pretext=srgan", "--srgan_stage=gan", "--perceptual_weights=/no/vgg.h5", "--srgan_hr_size=64"], "no such file; use --perceptual_weights=imagenet"),
        (["--gamma_min=2", "--gamma_max=1"], "--gamma_min=2.0 is larger than --gamma_max=1.0"),
    ],
)
def test_train_bad_input_is_one_clear_line(tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    args = [a.replace("EMPTY", str(tmp_path / "empty")) for a in args]
    result = run(["-m", "fgssl_tf.train", f"--model_dir={tmp_path / 'run'}", *args], cwd=str(tmp_path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last


def test_evaluate_bad_encoder_is_one_clear_line(tmp_path):
    result = run([os.path.join(REPO, "tools", "evaluate.py"), f"--encoder={tmp_path}"], cwd=str(tmp_path))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "saved_model.pb" in result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("pretext", ["simclr", "jigsaw", "srgan"])
def test_benchmark_prints_its_figures(tmp_path, pretext):
    result = run(
        [os.path.join(REPO, "tools", "benchmark.py"), f"--pretext={pretext}", "--image_size=32", "--width=8",
         "--batch_size=8", "--steps=2", "--warmup=1", "--peak_matrix=256", "--srgan_residual_blocks=2"],
        cwd=str(tmp_path),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    figures = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line and " " not in line)
    assert {"images_per_s", "flop_ratio", "pipeline_ratio", "peak_rss_mb"} <= set(figures)
    assert all(float(value) > 0 for value in figures.values())


def test_every_flagfile_parses_with_its_entry_point(tmp_path):
    """Every flag in flags/*.cfg exists and has a valid value (eval_*.cfg: tools/evaluate.py; the rest: training)."""
    script = (
        "import glob, os, runpy, sys\n"
        "from absl import flags\n"
        "FLAGS = flags.FLAGS\n"
        "evaluation = sys.argv[1] == 'eval'\n"
        "if evaluation:\n"
        "    runpy.run_path(os.path.join(sys.argv[2], 'tools', 'evaluate.py'), run_name='flag_check')\n"
        "else:\n"
        "    import fgssl_tf.train\n"
        "    from fgssl_tf import flags as fgssl_flags\n"
        "for path in sorted(glob.glob(os.path.join(sys.argv[2], 'flags', '*.cfg'))):\n"
        "    if os.path.basename(path).startswith('eval_') != evaluation:\n"
        "        continue\n"
        "    FLAGS.unparse_flags()\n"
        "    FLAGS(['check', '--flagfile=' + path])\n"
        "    if not evaluation:\n"
        "        config = fgssl_flags.pretext_config()\n"
        "        if hasattr(config, 'check') and FLAGS.pretext == 'srgan':\n"
        "            config.check(FLAGS.image_size)\n"
        "    print('ok', os.path.basename(path))\n"
    )
    names = set()
    for kind in ("eval", "train"):
        result = run(["-c", script, kind, REPO], cwd=REPO, timeout=120)
        assert result.returncode == 0, result.stderr[-2000:]
        names |= {line.split()[1] for line in result.stdout.splitlines() if line.startswith("ok ")}
    assert names == {name for name in os.listdir(os.path.join(REPO, "flags")) if name.endswith(".cfg")}
