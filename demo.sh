#!/usr/bin/env bash
# Set up (once) and run the main job on the offline default data (elpv):
# a short SimCLR pretraining, the export for TF Serving, and a linear probe of the
# export beside the same probe of the same backbone at random init.
set -euo pipefail
cd "$(dirname "$0")"
scripts/bootstrap.sh
.venv/bin/python -m fgssl_tf.train --flagfile=flags/simclr_demo.cfg "$@"
.venv/bin/python tools/evaluate.py --encoder=savedmodels/simclr_demo --dataset=elpv --protocol=linear
.venv/bin/python tools/evaluate.py --baseline=random_init --dataset=elpv --protocol=linear \
  --image_size=32 --width=32 --small_stem=false --output_dir=savedmodels/simclr_demo/evaluations/random_init-linear
