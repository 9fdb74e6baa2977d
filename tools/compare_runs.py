"""Pretraining runs side by side, from what the monitor recorded: the ablation table.

    python tools/compare_runs.py runs/simclr_original runs/simclr_tuned [--markdown=docs/table.md]

One row per run (its `monitor.json` and `run_config.json`): the settings in which it
differs from the first run, the optimizer steps and training seconds, and the monitor's
kNN and online-probe balanced accuracy before training (the random-init reference) and
at the last reading, with the best reading and the effective rank of the embeddings.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from fgssl_tf import cli  # noqa: E402

FLAGS = cli.tool_flags()  # this tool's own flags: tests run it in-process
flags.DEFINE_string("markdown", None, "Also write the table to this file.", flag_values=FLAGS)
# Run settings that say where things go or how much is printed, not what is trained.
_NOT_SETTINGS = {"model_dir", "export_dir", "export_name", "verbose", "export", "checkpoints_to_keep", "validate"}


def _flatten(config: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        elif key not in _NOT_SETTINGS:
            flat[prefix + key] = value
    return flat


def load_run(model_dir: str) -> dict:
    from fgssl_tf.errors import FgsslError
    from fgssl_tf.run_config import SECTIONS, RunConfig

    paths = {name: os.path.join(model_dir, name) for name in ("monitor.json", "run_config.json")}
    missing = [p for p in paths.values() if not os.path.isfile(p)]
    if missing:
        raise FgsslError(
            f"{missing[0]} is missing: pass the --model_dir of a run trained with the monitor on (--monitor_every >= 1)"
        )
    with open(paths["monitor.json"]) as f:
        readings = json.load(f)
    saved = json.loads(json.dumps(RunConfig.load(model_dir).to_json(), default=str))  # tuples as lists
    settings = _flatten({key: saved[key] for key in SECTIONS})
    return {"name": os.path.basename(os.path.normpath(model_dir)), "readings": readings, "settings": settings}


def _short(key: str) -> str:
    return key.split(".")[-1]


def table(runs: list[dict]) -> str:
    reference = runs[0]["settings"]
    lines = [
        "| run | differs from the first run in | steps | train s | kNN bal. acc. (start → end, best) | "
        "probe bal. acc. (start → end, best) | eff. rank (end) |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        # A setting only one run records (another pretext's, or one added to the package since) is not listed.
        changed = [f"{_short(k)}={v}" for k, v in sorted(run["settings"].items()) if reference.get(k, v) != v]
        first, last = run["readings"][0], run["readings"][-1]

        def cell(name, run=run, first=first, last=last):
            best = max(r[name] for r in run["readings"])
            return f"{first[name]:.3f} → {last[name]:.3f} ({best:.3f})"

        lines.append(
            f"| {run['name']} | {', '.join(changed) or '(reference)'} | {last['step']} | {last['train_seconds']:.0f} | "
            f"{cell('knn_balanced_accuracy')} | {cell('linear_probe_balanced_accuracy')} | "
            f"{last['effective_rank']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv):
    if len(argv) < 2:
        raise app.UsageError("pass one or more run folders (--model_dir of runs trained with the monitor on)")
    cli.print_markdown(table([load_run(path) for path in argv[1:]]), FLAGS.markdown)


if __name__ == "__main__":
    cli.run(main, FLAGS)
