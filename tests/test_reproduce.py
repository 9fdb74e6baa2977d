"""tools/reproduce.py: a tiny end-to-end comparison whose table is read from the reports,
that resumes instead of redoing work, and repeats its numbers. (That pretraining repeats
itself under a seed is tested in test_models and test_simclr_training.)"""

import json
import os
import re
import shutil
import subprocess
import sys

from conftest import REPO


def _run(output_dir, *extra):
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "reproduce.py"), "--budget=tiny", f"--output_dir={output_dir}", *extra],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def _accuracy_table(markdown):
    section = markdown.split("## Test accuracy")[1].split("##")[0]
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^\| (\w+) \| ([0-9.]+) ± ", section, re.M)}


def test_tiny_comparison_reads_reports_resumes_and_repeats(tmp_path):
    first = tmp_path / "a"
    _run(first)
    markdown = (first / "RESULTS.md").read_text()
    table = _accuracy_table(markdown)
    assert set(table) == {"simclr_original", "random_init"}
    for method, value in table.items():  # every figure is the report's
        with open(first / "evaluations" / f"{method}-pretrain0-linear-labels100" / "report.json") as f:
            assert abs(json.load(f)["accuracy"] - value) < 5e-4
    assert "| simclr_original | " in markdown and "| 73 |" in markdown  # beside the paper's number
    assert "split fingerprint `3eb2fe1f77e875e3`" in markdown

    timings = json.loads((first / "timings.json").read_text())
    # Again, with one report removed: only that evaluation runs anew, from the kept export,
    # and it gives the same number; nothing is trained again.
    redo = "simclr_original-pretrain0-linear-labels100"
    shutil.rmtree(first / "evaluations" / redo)
    _run(first)
    again = json.loads((first / "timings.json").read_text())
    assert {k: v for k, v in again.items() if k != redo} == {k: v for k, v in timings.items() if k != redo}
    assert _accuracy_table((first / "RESULTS.md").read_text()) == table
    assert sorted(os.listdir(first / "savedmodels" / "simclr_original-seed0")) == ["1"]
