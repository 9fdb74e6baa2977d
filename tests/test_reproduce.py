"""tools/reproduce.py: a tiny end-to-end comparison whose table is read from the reports,
that resumes instead of redoing work, and repeats its numbers. (That pretraining repeats
itself under a seed is tested in test_models and test_simclr_training.)"""

import json
import os
import re
import shutil

import pytest
from conftest import REPO


def _run(run_tool, output_dir, *extra):
    result = run_tool("reproduce", ["--budget=tiny", f"--output_dir={output_dir}", *extra], cwd=output_dir.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def _accuracy_table(markdown):
    section = markdown.split("## Test accuracy")[1].split("##")[0]
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^\| (\w+) \| ([0-9.]+) ± ", section, re.M)}


@pytest.mark.slow
def test_tiny_comparison_reads_reports_resumes_and_repeats(tmp_path, run_tool):
    first = tmp_path / "a"
    _run(run_tool, first)
    markdown = (first / "RESULTS.md").read_text()
    table = _accuracy_table(markdown)
    assert set(table) == {"simclr_original", "random_init"}
    for method, value in table.items():  # every figure is the report's
        with open(first / "evaluations" / f"{method}-pretrain0-linear-labels100" / "report.json") as f:
            assert abs(json.load(f)["accuracy"] - value) < 5e-4
    assert "| simclr_original | " in markdown and "| 73 |" in markdown  # beside the paper's number
    assert "split fingerprint `3eb2fe1f77e875e3`" in markdown
    assert re.search(r"^Wall-clock total: [0-9.]+ minutes \(.*; one run from nothing\)$", markdown, re.M)

    timings = json.loads((first / "timings.json").read_text())
    # Again, with one report removed: only that evaluation runs anew, from the kept export,
    # and it gives the same number; nothing is trained again.
    redo = "simclr_original-pretrain0-linear-labels100"
    shutil.rmtree(first / "evaluations" / redo)
    _run(run_tool, first)
    again = json.loads((first / "timings.json").read_text())
    assert {k: v for k, v in again.items() if k != redo} == {k: v for k, v in timings.items() if k != redo}
    assert _accuracy_table((first / "RESULTS.md").read_text()) == table
    assert "resuming kept runs and reports)" in (first / "RESULTS.md").read_text()
    assert sorted(os.listdir(first / "savedmodels" / "simclr_original-seed0")) == ["1"]


def test_medium_budget_counts_whole_epochs_and_records_the_monitor():
    from fgssl_tf import reproduce
    from fgssl_tf.config import DataConfig, TrainConfig
    from fgssl_tf.run_config import resolve_run

    budget = reproduce.BUDGETS["medium"]
    assert {"simclr_original", "simclr_tuned", "random_init", "supervised"} <= set(budget.methods)
    method_run = resolve_run(TrainConfig(pretext="simclr", epochs=150), DataConfig())  # as a flagfile gives it
    run = reproduce.budget_run(budget, reproduce.METHODS["simclr_tuned"], method_run, "elpv", "/out", 2, pool_size=1576)
    epochs = budget.images_seen // (1576 // budget.batch_size * budget.batch_size)
    assert run.train.epochs == epochs and run.train.steps_per_epoch == method_run.train.steps_per_epoch  # not set
    assert run.monitor.every == epochs // budget.monitor_readings and run.train.seed == 2
    # The small budget keeps its one long epoch (its published table was made that way).
    small = reproduce.budget_run(
        reproduce.BUDGETS["small"], reproduce.METHODS["simclr_original"], method_run, "elpv", "/out", 0
    )
    assert small.train.epochs == 1 and small.train.steps_per_epoch == 240 and small.monitor.every == 0
    for name in [*budget.methods, "vicreg_tuned"]:  # every flagfile the budget names is there
        flagfile = reproduce.METHODS[name].flagfile
        assert flagfile is None or os.path.isfile(os.path.join(REPO, "flags", flagfile))


def test_random_init_baseline_draws_its_weights_from_the_init_seed(elpv_small):
    from fgssl_tf.config import BackboneConfig
    from fgssl_tf.evaluation import EvalConfig, evaluate

    def knn(tmp, init_seed):
        config = EvalConfig(
            baseline="random_init",
            protocol="knn",
            image_size=32,
            seeds=(0,),
            init_seed=init_seed,
            backbone=BackboneConfig(name="resnet10", width=8, small_stem=False),
            output_dir=str(tmp),
        )
        return evaluate(config, splits=elpv_small)["per_seed"][0]["confusion_matrix"]

    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        default, same, other = knn(f"{tmp}/a", None), knn(f"{tmp}/b", 0), knn(f"{tmp}/c", 1)
    assert default == same and other != default  # init_seed=0 is today's baseline; another seed, other weights


def test_unknown_protocol_is_one_clear_line(tmp_path, run_tool):
    result = run_tool(
        "reproduce", ["--budget=medium", "--protocols=linear,probe", f"--output_dir={tmp_path}"], tmp_path
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: unknown --protocols probe; the medium budget has")


def test_a_network_other_than_the_resnet_is_also_compared_with_itself_at_random_init(
    trained_encoder, elpv_small, tmp_path, monkeypatch
):
    """SRGAN's encoders are not the budget's ResNet: each gets a row of its own network at random init
    (frozen protocols, the pretraining seed's weights), beside the random ResNet's."""
    import dataclasses

    from fgssl_tf import export as export_lib
    from fgssl_tf import reproduce

    _, export = trained_encoder
    srgan = dataclasses.replace(reproduce.METHODS["srgan"], encoders=("generator",))  # one encoder: half the work
    assert srgan.own_random_init and not reproduce.METHODS["simclr_original"].own_random_init
    monkeypatch.setitem(reproduce.METHODS, "srgan", srgan)
    budget = dataclasses.replace(
        reproduce.BUDGETS["tiny"], protocols=("knn", "finetune"), methods=("srgan",), pretrain_seeds=(1,)
    )
    stages = []

    def pretrain(method, seed, stage):
        stages.append((method.name, seed, stage))
        return {"generator": export}

    rows = reproduce.run_comparison(budget, "elpv", str(tmp_path), elpv_small, pretrain)
    assert stages == [("srgan", 1, "psnr"), ("srgan", 1, "gan")]
    assert list(rows) == ["srgan_generator", "srgan_generator_random_init"]
    assert set(rows["srgan_generator"]) == {"knn@100%", "finetune@100%"}
    assert set(rows["srgan_generator_random_init"]) == {"knn@100%"}
    (path,) = rows["srgan_generator_random_init"]["knn@100%"]
    report = json.load(open(path))
    assert report["baseline"] == "random_init" and report["encoder"] is None
    assert report["encoder_metadata"]["architecture_from"] == export_lib.resolve_version_dir(export)
    assert report["config"]["init_seed"] == 1
    table = reproduce.results_markdown(budget, "elpv", rows, str(tmp_path), "reproduce", "a test machine")
    assert re.search(r"\| srgan_generator_random_init \|\s+\| [0-9.]+ ± [0-9.]+ \|\s+\|", table), table


def test_the_table_says_where_pretraining_beats_no_pretraining(tmp_path):
    """The lead section judges each encoder against its yardstick (its own random network where there is one,
    else the ResNet's; from scratch for fine-tuning) by the bar: 3 points ahead and separated by a std."""
    from fgssl_tf import reproduce

    def reports(name, column, figures):
        path = tmp_path / name / column / "report.json"
        path.parent.mkdir(parents=True)
        per_seed = [{"accuracy": f, "balanced_accuracy": f, "macro_f1": f} for f in figures]
        sample = {"split_fingerprint": "f", "split_sizes": {}, "majority_class_rate": 0.5}
        path.write_text(json.dumps({"per_seed": per_seed, **sample}))
        return [str(path)]

    rows = {
        "simclr_tuned": {
            "linear@100%": reports("t", "l", [0.45, 0.46, 0.47]),  # +5, separated: met
            "knn@100%": reports("t", "k", [0.43, 0.44, 0.45]),  # level with a wide random spread
            "finetune@10%": reports("t", "f", [0.31, 0.32, 0.33]),  # +2, separated: under the 3 points
        },
        "srgan_generator": {"linear@100%": reports("g", "l", [0.36, 0.37, 0.38])},
        "srgan_generator_random_init": {"linear@100%": reports("gr", "l", [0.30, 0.31, 0.32])},
        "random_init": {
            "linear@100%": reports("r", "l", [0.40, 0.41, 0.42]),
            "knn@100%": reports("r", "k", [0.40, 0.44, 0.48]),
        },
        "supervised": {"finetune@10%": reports("s", "f", [0.29, 0.30, 0.30])},
    }
    budget = reproduce.BUDGETS["medium"]
    table = reproduce.results_markdown(budget, "elpv", rows, str(tmp_path), "reproduce", "a test machine")
    section = table.split("## Against no pretraining")[1].split("\n## ")[0]
    lines = {line.split(" | ")[0][2:]: line for line in section.splitlines() if line.startswith("| ")}
    assert lines["method"] == "| method | linear@100% | finetune@10% | knn@100% |"
    assert lines["simclr_tuned"] == "| simclr_tuned | **+5.0, met** | +2.3, separated | +0.0 |"
    assert lines["srgan_generator"] == "| srgan_generator | **+6.0, met** |  |  |"  # its own network, not the ResNet
    assert not {"random_init", "supervised", "srgan_generator_random_init"} & set(lines)
