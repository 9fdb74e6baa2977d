#!/usr/bin/env bash
# Set up (once) and run the main job on the offline default data (elpv): a one-minute SRGAN
# pretraining, the export for TF Serving, and its discriminator measured against the same network
# without pretraining: fine-tuned on 10% of the labels (3 seeds each) and as a frozen linear probe.
set -euo pipefail
cd "$(dirname "$0")"
scripts/bootstrap.sh
encoder=savedmodels/srgan_demo_discriminator
reports=$encoder/evaluations/demo
few_labels=(--dataset=elpv --protocol=finetune --label_fraction=0.1 --seeds=0,1,2)
.venv/bin/python -m fgssl_tf.train --flagfile=flags/srgan_demo.cfg "$@"
.venv/bin/python tools/evaluate.py --encoder=$encoder "${few_labels[@]}" --output_dir=$reports/finetune10
.venv/bin/python tools/evaluate.py --baseline=supervised --architecture_from=$encoder "${few_labels[@]}" \
  --output_dir=$reports/finetune10-from_scratch
.venv/bin/python tools/evaluate.py --encoder=$encoder --dataset=elpv --protocol=linear --output_dir=$reports/linear
.venv/bin/python tools/evaluate.py --baseline=random_init --architecture_from=$encoder --dataset=elpv --protocol=linear \
  --output_dir=$reports/linear-random_init
.venv/bin/python tools/compare_evaluations.py --markdown=$reports/comparison.md \
  $reports/finetune10-from_scratch $reports/finetune10 $reports/linear-random_init $reports/linear
