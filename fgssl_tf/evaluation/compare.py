"""Evaluation reports side by side: is an encoder ahead of its baseline, and by more than the seeds spread?

Each row is compared with the first report of its protocol, label fraction and image size (its
reference): the difference in balanced accuracy and, over two or more seeds each, whether the two are
separated (the lower one's mean plus its std below the higher one's mean minus its std). Reports of
different test splits are refused: their figures do not compare.
"""

from __future__ import annotations

import json
import os

from fgssl_tf.errors import FgsslError

REQUIRED_KEYS = (
    "protocol",
    "label_fraction",
    "image_size",
    "seeds",
    "split_fingerprint",
    "dataset",
    "baseline",
    "encoder",
    *(f"{metric}{suffix}" for metric in ("accuracy", "balanced_accuracy", "macro_f1") for suffix in ("", "_std")),
)


def load_report(path: str) -> dict:
    """A report.json written by `evaluate`, or the folder holding one."""
    file = os.path.join(path, "report.json") if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise FgsslError(f"{file} does not exist: pass a report.json written by tools/evaluate.py, or its folder")
    try:
        with open(file) as f:
            report = json.load(f)
    except (OSError, ValueError) as error:
        raise FgsslError(f"{file} is not a readable JSON report ({error}): evaluate again to rewrite it") from None
    if not isinstance(report, dict) or "balanced_accuracy_std" not in report:
        raise FgsslError(f"{file} is not an evaluation report: pass a report.json written by tools/evaluate.py")
    missing = [key for key in REQUIRED_KEYS if key not in report]
    if missing:
        raise FgsslError(
            f"{file} lacks {', '.join(missing)}: it was written by an older fgssl_tf; evaluate again to rewrite it"
        )
    return report


def subject(report: dict) -> str:
    """What was measured, in words: an export's name, or a baseline and its network."""
    metadata = report.get("encoder_metadata") or {}
    if report.get("encoder"):
        return metadata.get("name") or report["encoder"]
    architecture = metadata.get("architecture") or {}
    if architecture.get("name"):
        network = f"{architecture['name']}'s network"  # --architecture_from: the export's own network
    else:
        network = (report.get("config") or {}).get("backbone", {}).get("name", "backbone")
    if report["baseline"] == "supervised":
        return f"{network}, from scratch"
    init_seed = (report.get("config") or {}).get("init_seed")
    return f"{network}, random init{'' if init_seed is None else f' (seed {init_seed})'}"


def _spread_note(a: dict, b: dict, metric: str) -> str:
    if min(len(a["seeds"]), len(b["seeds"])) < 2:
        return " (one seed: no spread to compare)"
    low, high = sorted((a, b), key=lambda report: report[metric])
    return ", separated" if low[metric] + low[metric + "_std"] < high[metric] - high[metric + "_std"] else ""


def comparison_table(reports: list[dict], metric: str = "balanced_accuracy") -> str:
    """A markdown table, one row per report, each against the first report of its protocol, labels and size."""
    first = reports[0]
    for report in reports[1:]:
        if report["split_fingerprint"] != first["split_fingerprint"]:
            raise FgsslError(
                f"{subject(report)} was measured on another split (dataset {report['dataset']}, fingerprint "
                f"{report['split_fingerprint']}) than {subject(first)} ({first['dataset']}, "
                f"{first['split_fingerprint']}): compare reports of the same dataset and split"
            )
    lines = [
        f"| encoder | protocol | labels | seeds | accuracy | balanced accuracy | macro-F1 | "
        f"{metric.replace('_', ' ')} against the first row of its protocol, labels and size |",
        "|---|---|---|---|---|---|---|---|",
    ]
    references = {}
    for report in reports:
        reference = references.setdefault((report["protocol"], report["label_fraction"], report["image_size"]), report)
        cells = [f"{report[name]:.3f} ± {report[name + '_std']:.3f}" for name in ("accuracy", "balanced_accuracy")]
        cells.append(f"{report['macro_f1']:.3f} ± {report['macro_f1_std']:.3f}")
        if report is reference:
            difference = "(reference)"
        else:
            gap = 100 * (report[metric] - reference[metric])
            difference = f"{gap:+.1f} points{_spread_note(report, reference, metric)}"
        lines.append(
            f"| {subject(report)} | {report['protocol']} | {report['label_fraction']:g} | "
            f"{','.join(str(seed) for seed in report['seeds'])} | {' | '.join(cells)} | {difference} |"
        )
    return "\n".join(lines) + "\n"
