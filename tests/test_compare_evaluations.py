"""tools/compare_evaluations.py: reports side by side, each against the first of its protocol."""

import json

import numpy as np
import pytest

from fgssl_tf.errors import FgsslError
from fgssl_tf.evaluation.compare import comparison_table, load_report


def _report(tmp_path, name, protocol, balanced, *, baseline=None, fingerprint="abc", label_fraction=1.0):
    """A report as evaluate writes it, from per-seed balanced accuracies (the other metrics follow them)."""
    balanced = np.asarray(balanced)
    report = {
        "encoder": None if baseline else f"savedmodels/{name}/1",
        "baseline": baseline,
        "dataset": "elpv",
        "protocol": protocol,
        "label_fraction": label_fraction,
        "image_size": 32,
        "seeds": list(range(len(balanced))),
        "split_fingerprint": fingerprint,
        "encoder_metadata": {"architecture": {"name": name}} if baseline else {"name": name},
        "config": {"init_seed": None, "backbone": {"name": "resnet18"}},
    }
    for metric, values in {
        "accuracy": balanced + 0.3,
        "balanced_accuracy": balanced,
        "macro_f1": balanced - 0.02,
    }.items():
        report[metric], report[metric + "_std"] = float(values.mean()), float(values.std())
    folder = tmp_path / f"{name}-{baseline}-{protocol}"
    folder.mkdir()
    (folder / "report.json").write_text(json.dumps(report))
    return str(folder)


def _rows(markdown):
    return [line for line in markdown.splitlines() if line.startswith("| ")][1:]


def test_each_row_against_the_first_of_its_protocol_with_separation_over_seeds(tmp_path):
    paths = [
        _report(tmp_path, "enc", "finetune", [0.25, 0.26, 0.24], baseline="supervised", label_fraction=0.1),
        _report(tmp_path, "enc", "finetune", [0.36, 0.37, 0.35], label_fraction=0.1),
        _report(tmp_path, "enc", "linear", [0.38, 0.40, 0.36], baseline="random_init"),
        _report(tmp_path, "enc", "linear", [0.40, 0.43, 0.37]),  # ahead by 2 points, inside the spread
        _report(tmp_path, "other", "linear", [0.39]),
        _report(tmp_path, "few", "linear", [0.30, 0.31, 0.29], label_fraction=0.1),  # its own reference
        _report(tmp_path, "fewer", "linear", [0.20, 0.21, 0.19], label_fraction=0.1),
    ]
    rows = _rows(comparison_table([load_report(path) for path in paths]))
    assert len(rows) == 7
    assert rows[0].startswith("| enc's network, from scratch | finetune | 0.1 | 0,1,2 |") and "(reference)" in rows[0]
    assert "| 0.360 ± 0.008 |" in rows[1] and rows[1].endswith("| +11.0 points, separated |")
    assert rows[2].startswith("| enc's network, random init | linear | 1 |") and "(reference)" in rows[2]
    assert rows[3].endswith("| +2.0 points |")  # not separated: 0.38 + 0.016 > 0.40 - 0.024
    assert rows[4].endswith("| +1.0 points (one seed: no spread to compare) |")
    assert rows[5].startswith("| few | linear | 0.1 |") and rows[5].endswith("(reference) |")
    assert rows[6].endswith("| -10.0 points, separated |")


def test_reports_of_another_split_or_that_are_no_reports_are_refused(tmp_path, run_tool):
    ours = _report(tmp_path, "a", "linear", [0.4, 0.5])
    theirs = _report(tmp_path, "b", "linear", [0.4, 0.5], fingerprint="xyz")
    with pytest.raises(FgsslError, match="b was measured on another split .*xyz.*compare reports of the same"):
        comparison_table([load_report(ours), load_report(theirs)])
    (tmp_path / "other.json").write_text(json.dumps({"accuracy": 0.5}))
    with pytest.raises(FgsslError, match="other.json is not an evaluation report"):
        load_report(str(tmp_path / "other.json"))
    (tmp_path / "old.json").write_text(json.dumps({"balanced_accuracy_std": 0.0, "protocol": "linear"}))
    with pytest.raises(FgsslError, match="old.json lacks label_fraction, image_size, .*evaluate again"):
        load_report(str(tmp_path / "old.json"))
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(FgsslError, match="broken.json is not a readable JSON report"):
        load_report(str(tmp_path / "broken.json"))

    table = tmp_path / "table.md"
    done = run_tool("compare_evaluations", [ours, f"{ours}/report.json", f"--markdown={table}"], cwd=tmp_path)
    assert done.returncode == 0 and _rows(table.read_text())[1].endswith("| +0.0 points |") and "| a |" in done.stdout
    for args, message in [
        ([], "pass one or more evaluation reports"),
        ([str(tmp_path / "none")], "none does not exist"),
    ]:
        failed = run_tool("compare_evaluations", args, cwd=tmp_path)
        assert failed.returncode != 0 and message in failed.stderr.strip().splitlines()[-1]
