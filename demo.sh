#!/usr/bin/env bash
# Set up (once) and run the main job on the offline default data (elpv): SRGAN pretraining (about
# 45 seconds of training), the export for TF Serving, and its discriminator measured against the same network
# without pretraining, with 10% of the labels (3 seeds each): fine-tuned, and frozen with a linear probe.
set -euo pipefail
cd "$(dirname "$0")"
scripts/bootstrap.sh
encoder=savedmodels/srgan_demo_discriminator
reports=$encoder/evaluations/demo
few_labels=(--dataset=elpv --label_fraction=0.1 --seeds=0,1,2)
.venv/bin/python -m fgssl_tf.train --flagfile=flags/srgan_demo.cfg "$@"
.venv/bin/python tools/evaluate.py --encoder=$encoder "${few_labels[@]}" --protocol=finetune \
  --output_dir=$reports/finetune10
.venv/bin/python tools/evaluate.py --baseline=supervised --architecture_from=$encoder "${few_labels[@]}" \
  --protocol=finetune --output_dir=$reports/finetune10-from_scratch
.venv/bin/python tools/evaluate.py --encoder=$encoder "${few_labels[@]}" --protocol=linear \
  --output_dir=$reports/linear10
.venv/bin/python tools/evaluate.py --baseline=random_init --architecture_from=$encoder "${few_labels[@]}" \
  --protocol=linear --output_dir=$reports/linear10-random_init
.venv/bin/python tools/compare_evaluations.py --markdown=$reports/comparison.md \
  $reports/finetune10-from_scratch $reports/finetune10 $reports/linear10-random_init $reports/linear10
