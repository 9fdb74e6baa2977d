"""The commands users type: the smoke run end to end, and one-line errors for bad input."""

import glob
import os
import subprocess
import sys

import pytest
from conftest import REPO

SMOKE_CFG = os.path.join(REPO, "flags", "smoke.cfg")


def run(args, cwd, timeout=300):
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


# The pretexts with their own networks, made small enough for the smoke run (the paper:
# SRGAN 96 px crops and 16 blocks of 64; PMG heads of 512 and 1024).
SMALL_NETWORKS = {
    "srgan": ["--srgan_hr_size=32", "--srgan_residual_blocks=2", "--srgan_width=16", "--perceptual_weights=none"],
    "pmg": ["--pmg_feature_size=32", "--pmg_head_channels=64"],
}


@pytest.mark.slow
@pytest.mark.parametrize("pretext", ["simclr", "jigsaw", "srgan", "vicreg"])
def test_smoke_flagfile_trains_checkpoints_and_exports(tmp_path, pretext, capsys, monkeypatch):
    """`python -m fgssl_tf.train --flagfile=flags/smoke.cfg` in this process (its own process, signals and exit
    codes: tests/test_reliability.py and tests/test_distribute.py): no error exit, the export and checkpoints."""
    from absl import flags

    from fgssl_tf import cli, train

    flagfile = os.path.join(REPO, "flags", "smoke.cfg")
    monkeypatch.chdir(tmp_path)
    flags.FLAGS.unparse_flags()
    # An `error:` exit would raise SystemExit here and fail the test with its message.
    cli.run_main(
        train.main,
        cli.parse_flags(["train", f"--flagfile={flagfile}", f"--pretext={pretext}", *SMALL_NETWORKS.get(pretext, [])]),
    )
    stdout = capsys.readouterr().out
    name = "smoke_generator" if pretext == "srgan" else "smoke"  # SRGAN's psnr stage exports its generator
    assert f"exported {name}: savedmodels/{name}/1" in stdout
    assert os.path.isfile(tmp_path / "savedmodels" / name / "1" / "saved_model.pb")
    checkpoints = os.listdir(tmp_path / "runs" / "smoke" / "checkpoints")
    assert "checkpoint" in checkpoints and any(
        name.startswith("ckpt-6.") for name in checkpoints
    )  # 2 epochs of 3 batches


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
        (
            ["--pretext=srgan", "--srgan_stage=gan", "--perceptual_weights=/no/vgg.h5", "--srgan_hr_size=64"],
            "no such file; use one of auto, imagenet, none",
        ),
        (["--gamma_min=2", "--gamma_max=1"], "--gamma_min=2.0 is larger than --gamma_max=1.0"),
        # Contradictory flags: a flag that only another pretext reads, refused before any work.
        (
            ["--pretext=jigsaw", "--view2_pre_ops=gamma", "--temperature=0.1"],
            "--temperature, --view2_pre_ops only apply to --pretext=simclr/vicreg, not --pretext=jigsaw",
        ),
        (
            ["--pretext=vicreg", "--temperature=0.1"],
            "--temperature only apply to --pretext=simclr, not --pretext=vicreg",
        ),
        (
            ["--pretext=simclr", "--variance_weight=5"],
            "--variance_weight only apply to --pretext=vicreg, not --pretext=simclr",
        ),
        (["--pretext=jigsaw", "--lr_schedule=cosine"], "--lr_schedule=cosine is not available for --pretext=jigsaw"),
        (["--source_size=16", "--image_size=32"], "--source_size=16 is for the two-view methods"),
        (["--pretext=srgan", "--srgan_generator_init=."], "--srgan_generator_init is for --srgan_stage=gan"),
        (["--flagfile=BADFILE"], "Unknown command line flag 'no_such_flag'"),
        (["--export_name=../elsewhere"], "is not a plain name"),
        (["--seed=-1"], "--seed=-1"),
        (["--nan_policy=ignore"], "--nan_policy"),
        (["--mixed_precision=float16"], "--mixed_precision"),
        (["--sync_bn=yes"], "--sync_bn"),
        # Issue 21: NaN and Inf at parse time, a missing flagfile, folders that cannot be written, an absurd image size.
        (
            ["--learning_rate=nan", "--weight_decay=nan"],
            "flag --learning_rate=nan: not a finite number; flag --weight_decay=nan: not a finite",
        ),
        (["--temperature=inf"], "flag --temperature=inf: not a finite number"),
        (["--flagfile=MISSING"], "error: Unable to open flagfile: [Errno 2] No such file or directory"),
        (["--export_dir=AFILE/sub"], "--export_dir=AFILE/sub cannot be made: "),
        (["--model_dir=AFILE/run"], "--model_dir=AFILE/run cannot be made: "),
        (["--image_size=100000", "--width=8"], "2624 images at 100000 px need 78720.0 GB of decoded cache"),
    ],
)
def test_train_bad_input_is_one_clear_line(tmp_path, args, message, capsys, monkeypatch):
    """`python -m fgssl_tf.train ARGS` in this process (no interpreter start per case): exit 2, one `error:` line."""
    from absl import flags

    from fgssl_tf import cli, train  # defines the training flags here, once

    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.cfg").write_text("--epochs=2\n--no_such_flag=1\n")
    (tmp_path / "a_file").write_text("")
    replacements = {
        "EMPTY": tmp_path / "empty",
        "BADFILE": tmp_path / "bad.cfg",
        "MISSING": tmp_path / "missing.cfg",
        "AFILE": tmp_path / "a_file",
    }
    for key, value in replacements.items():
        args = [a.replace(key, str(value)) for a in args]
        message = message.replace(key, str(value))
    monkeypatch.chdir(tmp_path)
    flags.FLAGS.unparse_flags()
    with pytest.raises(SystemExit) as stopped:
        cli.run_main(train.main, cli.parse_flags(["train", f"--model_dir={tmp_path / 'run'}", *args]))
    stderr = capsys.readouterr().err
    assert stopped.value.code == 2
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last
    assert "ERROR::" not in stderr and not os.path.exists(tmp_path / "run" / "run_config.json")  # nothing written


def test_evaluate_negative_seeds_are_one_clear_line(tmp_path, run_tool):
    result = run_tool("evaluate", ["--baseline=random_init", "--image_size=16", "--seeds=0,-1"], cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: flag --seeds=")
    assert "--seeds must be comma-separated integers of 0 or more, got '0,-1'" in result.stderr


def test_a_bad_evaluate_flag_is_refused_before_tensorflow_loads(tmp_path):
    """tools/evaluate.py defines and checks its flags without importing TensorFlow (fgssl_tf.flags takes the
    backbone and strategy names from fgssl_tf/config.py), so a typo costs a fraction of a second, not its import."""
    script = (
        "import runpy, sys\n"
        "sys.argv = [sys.argv[1], '--seeds=0,-1']\n"
        "try:\n"
        "    runpy.run_path(sys.argv[0], run_name='__main__')\n"
        "except SystemExit as stop:\n"
        "    print('exit', stop.code, 'tensorflow' in sys.modules)\n"
    )
    result = run(["-c", script, os.path.join(REPO, "tools", "evaluate.py")], cwd=str(tmp_path))
    assert "--seeds must be comma-separated integers" in result.stderr
    assert result.stdout.split() == ["exit", "2", "False"]


def test_a_tools_help_lists_its_own_flags_and_exits_0(tmp_path):
    """`--help` of a tool (its flags on a set of their own, fgssl_tf.cli.tool_flags): the usage and every flag
    the tool reads, including those fgssl_tf.flags defines for it (--backbone), and exit code 0."""
    result = run([os.path.join(REPO, "tools", "evaluate.py"), "--help"], cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("Evaluate an exported encoder")
    assert all(f"--{name}" in result.stdout for name in ("encoder", "protocol", "backbone", "width", "seeds"))


def test_evaluate_bad_encoder_is_one_clear_line(tmp_path, run_tool):
    result = run_tool("evaluate", [f"--encoder={tmp_path}"], cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "saved_model.pb" in result.stderr.strip().splitlines()[-1]
    result = run_tool("evaluate", [f"--encoder={tmp_path / 'missing'}", "--seeds=0,x"], cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "does not exist" in result.stderr and "--seeds must be comma-separated integers" in result.stderr
    result = run_tool(
        "evaluate", ["--baseline=random_init", f"--architecture_from={tmp_path / 'missing'}"], cwd=tmp_path
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "does not exist; pass the export whose network to draw afresh" in result.stderr


@pytest.mark.slow
def test_benchmark_prints_figures_for_each_pretext_in_one_run(tmp_path, run_tool):
    # PMG is left out here: its four-granularity step takes minutes to trace on a 2-core CPU.
    result = run_tool(
        "benchmark",
        [
            "--pretext=simclr,jigsaw,srgan,vicreg",
            "--image_size=32",
            "--backbone=resnet10",
            "--width=8",
            "--batch_size=8",
            "--steps=2",
            "--warmup=1",
            "--peak_matrix=256",
            "--srgan_residual_blocks=2",
            "--repeats=2",  # interleaved and reduced to medians as with 5; the figures' values are not tested
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    blocks = result.stdout.split("pretext=")[1:]
    assert [block.split()[0] for block in blocks] == ["simclr", "jigsaw", "srgan", "vicreg"]
    for block in blocks:
        figures = dict(line.split("=", 1) for line in block.splitlines() if "=" in line and " " not in line)
        assert set(figures) == {"images_per_s", "flop_ratio", "pipeline_ratio", "peak_rss_mb"}
        assert all(float(value) > 0 for value in figures.values())


@pytest.mark.slow
def test_benchmark_times_the_step_of_a_training_flagfile_with_its_overrides(tmp_path, run_tool):
    """--recipe: the run `python -m fgssl_tf.train --flagfile=smoke.cfg --pretext=vicreg ...` would train
    (the file's network and batch, the overrides' pretext, sizes and schedule, which needs the run's length),
    views cut from the --source_size images."""
    result = run_tool(
        "benchmark",
        [f"--recipe={SMOKE_CFG}", "--steps=2", "--warmup=1", "--repeats=1", "--peak_matrix=256"]
        + ["--", "--pretext=vicreg", "--image_size=24", "--source_size=48", "--lr_schedule=cosine"]
        + ["--view2_pre_ops=gamma", "--extra_augmentation_mode=offline"],  # per-image tables (prepare_data)
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    header = result.stdout.split("pretext=")[1].splitlines()[0]
    assert header.startswith("vicreg backbone=resnet10 width=8 small_stem=False image_size=24 source_size=48 batch=32")
    assert "pretraining pool: " in result.stdout and " images of 48 px" in result.stdout  # the views' source
    figures = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line and " " not in line)
    assert float(figures["images_per_s"]) > 0 and float(figures["flop_ratio"]) > 0
    assert not os.path.exists(tmp_path / "runs")  # nothing written where the recipe would train


def test_benchmark_recipe_errors_are_one_line(tmp_path, run_tool):
    for args, message in (
        ([f"--recipe={tmp_path / 'missing.cfg'}"], "is not a file; pass a training flagfile such as"),
        ([f"--recipe={SMOKE_CFG}", "--", "--image_size=3"], "smoke.cfg: flag --image_size=3: 3 is not integer >= 8"),
        ([f"--recipe={SMOKE_CFG}", "--", "--no_such_flag=1"], "smoke.cfg: Unknown command line flag 'no_such_flag'"),
        (["--", "--image_size=64"], "unexpected arguments --image_size=64: training flags after -- need --recipe"),
        ([f"--recipe={SMOKE_CFG}", "--width=64"], "--width size the tool's own run, not --recipe's: put them after --"),
        ([f"--recipe={SMOKE_CFG}", "--", "--epochs=2", "junk"], "unexpected arguments junk; pass training flags after"),
        (
            [f"--recipe={SMOKE_CFG}", "--", "--learning_rate=nan"],
            "smoke.cfg: flag --learning_rate=nan: not a finite number",
        ),
        (
            [f"--recipe={SMOKE_CFG}", "--peak_matrix=64", "--", "--pretext=jigsaw", "--lr_schedule=cosine"],
            "--lr_schedule=cosine is not available for --pretext=jigsaw",
        ),
    ):
        result = run_tool("benchmark", args, cwd=tmp_path)
        assert result.returncode == 2 and "Traceback" not in result.stderr, args
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ") and message in last, (args, last)


@pytest.mark.slow
def test_benchmark_counts_pmg_flops_per_pass(tmp_path):
    """PMG's pass k backpropagates only through head k and the stages below it, so the count
    for what each loss reaches must be a pruned part of the whole forward, not all of it."""
    import dataclasses

    from conftest import load_tool

    from fgssl_tf import trainer
    from fgssl_tf.config import BackboneConfig, DataConfig, TrainConfig
    from fgssl_tf.pretext import get_pretext

    benchmark = load_tool("benchmark")
    benchmark.FLAGS.unparse_flags()
    benchmark.FLAGS(["benchmark"])
    config = dataclasses.replace(
        get_pretext("pmg").Config(), num_classes=4, feature_size=32, head_channels=64, backbone_weights="none"
    )
    train = TrainConfig(pretext="pmg", model_dir=str(tmp_path / "run"), batch_size=4, verbose=0)
    model = trainer.build_pretext_model(
        train, DataConfig(dataset="elpv", image_size=32), BackboneConfig(name="resnet10", width=8), config
    )
    forward, shape, reach = benchmark.premade_inputs(model, "pmg", 4, 32)
    whole, *reached = [benchmark.forward_flops(forward, shape, output) for output in (None, *reach)]
    total = benchmark.training_flops(forward, shape, reach)
    assert len(reached) == 4
    assert all(0 < flops < 0.9 * whole for flops in reached[:3])  # a granularity head and the stages below it
    assert 0.95 * whole < reached[3] <= whole  # the concatenated head reaches (nearly) everything
    assert total == 4 * whole + 2 * sum(reached)


def test_every_flagfile_parses_with_its_entry_point(monkeypatch):
    """Every flag in flags/*.cfg exists and has a valid value (eval_*.cfg: tools/evaluate.py's flags; the rest:
    training's)."""
    from absl import flags
    from conftest import load_tool

    import fgssl_tf.train  # noqa: F401 (defines the training flags here, once)
    from fgssl_tf import flags as fgssl_flags

    evaluate_flags = load_tool("evaluate").FLAGS
    names = set()
    for path in sorted(glob.glob(os.path.join(REPO, "flags", "eval_*.cfg"))):
        evaluate_flags.unparse_flags()
        # eval_*.cfg name encoders trained later: the check that they exist is tested elsewhere
        evaluate_flags(["check", "--flagfile=" + path, "--encoder=" + REPO])
        names.add(os.path.basename(path))
    evaluate_flags.unparse_flags()
    monkeypatch.chdir(REPO)
    try:
        for path in sorted(glob.glob(os.path.join(REPO, "flags", "*.cfg"))):
            if os.path.basename(path).startswith("eval_"):
                continue
            flags.FLAGS.unparse_flags()
            flags.FLAGS(["check", "--flagfile=" + path])  # an unknown flag or a bad value raises
            fgssl_flags.check_pretext_flags()
            config = fgssl_flags.pretext_config()
            if hasattr(config, "check") and flags.FLAGS.pretext == "srgan":
                config.check(flags.FLAGS.image_size)
            names.add(os.path.basename(path))
    finally:
        flags.FLAGS.unparse_flags()
    assert names == {name for name in os.listdir(os.path.join(REPO, "flags")) if name.endswith(".cfg")}


def _checked_or_not(flag) -> str:
    """'ok NAME' for a flag that is an enum, a boolean, a bounded number or has a validator; else 'unchecked NAME'."""
    from absl.flags import _argument_parser as parsers

    parser = flag.parser
    bounded = getattr(parser, "lower_bound", None) is not None or getattr(parser, "upper_bound", None) is not None
    enum = isinstance(parser, (parsers.EnumParser, parsers.EnumClassParser))
    checked = flag.boolean or enum or bounded or bool(flag.validators)
    return ("ok " if checked else "unchecked ") + flag.name


def test_every_flag_of_train_and_evaluate_is_checked_when_parsed():
    """Each flag is an enum, a boolean, a bounded number, or has a validator of its own (training's and
    tools/evaluate.py's)."""
    from absl import flags
    from conftest import load_tool

    import fgssl_tf.train  # noqa: F401 (defines the training flags here, once)

    evaluate_flags = load_tool("evaluate").FLAGS
    lines = [_checked_or_not(flag) for flag in flags.FLAGS.get_flags_for_module("fgssl_tf.flags")]
    lines += [_checked_or_not(evaluate_flags[name]) for name in evaluate_flags if evaluate_flags[name].name == name]
    assert len([line for line in lines if line.startswith("ok ")]) > 80
    assert [line for line in lines if not line.startswith("ok ")] == []


def test_benchmark_refuses_an_unknown_pretext_in_its_list(tmp_path, run_tool):
    result = run_tool("benchmark", ["--pretext=simclr,rotnet"], cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert (
        last.startswith("error: flag --pretext=")
        and "rotnet" in last
        and "choose a comma list of simclr, jigsaw, srgan, pmg" in last
    )
